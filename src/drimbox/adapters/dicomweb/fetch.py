"""WADO-RS client: pull a series (or one instance) from a PACS's DICOMweb service, handing
over each instance as soon as its part of the multipart response has arrived.

Instances are asked for with ``transfer-syntax=*`` so the PACS sends what it stores, without
transcoding (PS3.18 8.7.3.5.2); a server that answers 406 to that is asked once more with
no transfer syntax (explicit VR little endian then). Content coding is refused
(``Accept-Encoding: identity``): DICOM does not compress with gzip, and the cost would be
paid twice.

Error contract: 404/410 -> ``NotFound``; no connection, timeouts, 5xx, 408/429 ->
``PacsUnavailable`` (retry later); anything that is not a multipart of Part 10
``application/dicom`` objects of the series asked for -> ``InvalidInput``.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import logging
import ssl
from collections.abc import Callable, Collection, Generator, Mapping

import httpx
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from drimbox.adapters.dicomweb.multipart import MultipartError, MultipartStream
from drimbox.adapters.dicomweb.part10 import quick_uids
from drimbox.domain.errors import InvalidIdentifier, InvalidInput, NotFound, PeerUnavailable
from drimbox.domain.identifiers import is_valid_uid

__all__ = ["ACCEPT_AS_STORED", "ACCEPT_DEFAULT", "DicomwebPacs", "PacsUnavailable"]

log = logging.getLogger(__name__)

ACCEPT_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_DEFAULT = 'multipart/related; type="application/dicom"'
MAX_REDIRECTS = 3
_UID_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
_READ_SIZE = 1 << 20


class PacsUnavailable(PeerUnavailable):
    """The PACS cannot be reached, times out or fails (5xx): retry later.

    A ``PeerUnavailable``, hence a ``DrimboxError``: callers that retry any unavailable
    peer treat a PACS the same way.
    """


def _check_uid(value: str, what: str) -> str:
    if not is_valid_uid(value):
        raise InvalidIdentifier(f"{what} UID {value[:70]!r} is not a valid DICOM UID")
    return value


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default


class DicomwebPacs:
    """A PACS's WADO-RS service at ``base_url`` (e.g. ``http://pacs:8042/dicom-web``).

    ``headers`` (authorization...) go with every request; they are never sent to another
    host, since redirects are followed only within the same scheme, host and port.
    ``timeout`` bounds connecting and each read, not the whole transfer. A ``client``
    given is used as is (and not closed by ``close``), except that this class never lets
    it follow redirects. Safe to use from several threads at once.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        client: httpx.Client | None = None,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Without ``client``, requests go through the standard library's ``http.client``
        (``ssl_context`` for https: certificates, client certificate): the body then streams
        into one reused buffer, a third of httpx's CPU for a study; with ``client``, httpx
        does the transfer (tests script it with a mock transport)."""
        try:
            base = httpx.URL(base_url.rstrip("/"))
        except httpx.InvalidURL as exc:
            raise InvalidInput(f"invalid DICOMweb base URL {base_url[:100]!r}: {exc}") from None
        if base.scheme not in ("http", "https") or not base.host:
            raise InvalidInput(f"DICOMweb base URL {base_url[:100]!r} is not http(s)://host/...")
        if base.query or base.fragment:
            raise InvalidInput("DICOMweb base URL must have no query or fragment")
        self.base_url = str(base)
        self._origin = _origin(base)
        self._timeout = httpx.Timeout(timeout)
        # Accept and Accept-Encoding are this class's to set
        self._headers = {
            k: v
            for k, v in (headers or {}).items()
            if k.lower() not in ("accept", "accept-encoding")
        }
        self._seconds = timeout
        self._ssl = ssl_context
        self._stdlib = client is None
        self._owns_client = client is None
        self._client = client or httpx.Client(timeout=self._timeout, follow_redirects=False)

    def __repr__(self) -> str:
        return f"DicomwebPacs({self.base_url!r})"

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> DicomwebPacs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public ------------------------------------------------------------------------------

    def fetch_series(
        self,
        study: str,
        series: str,
        on_instance: Callable[[str, bytes], None],
        sops: Collection[str] | None = None,
    ) -> int:
        """Retrieve a series; call ``on_instance(sop_uid, part10_bytes)`` for each instance
        as soon as it has arrived (only those in ``sops`` when given); return how many were
        delivered. Exceptions from ``on_instance`` propagate and end the transfer.

        With ``sops``, the transfer stops once every one of them has been delivered; those
        the series lacks are simply not delivered (compare the count).
        """
        _check_uid(study, "study")
        _check_uid(series, "series")
        wanted = None if sops is None else frozenset(sops)
        if wanted is not None and not wanted:
            return 0
        path = f"/studies/{study}/series/{series}"
        delivered: set[str] = set()
        with contextlib.closing(self._instances(path, study, series)) as instances:
            for sop, data in instances:
                if wanted is not None and sop not in wanted:
                    continue
                if sop in delivered:
                    log.warning("%s sent instance %s twice; the copy is dropped", self, sop)
                    continue
                on_instance(sop, data)
                delivered.add(sop)
                if wanted is not None and len(delivered) == len(wanted):
                    break  # closing the generator drops the rest of the response
        return len(delivered)

    def fetch_instance(self, study: str, series: str, sop: str) -> bytes:
        """The Part 10 bytes of one instance, as the PACS stores it."""
        _check_uid(study, "study")
        _check_uid(series, "series")
        _check_uid(sop, "SOP instance")
        path = f"/studies/{study}/series/{series}/instances/{sop}"
        found: list[bytes] = []
        with contextlib.closing(self._instances(path, study, series)) as instances:
            for got, data in instances:
                if got != sop:
                    raise InvalidInput(f"asked for instance {sop}, the PACS sent {got}")
                if found:
                    raise InvalidInput(f"the PACS sent instance {sop} more than once")
                found.append(data)
        if not found:
            raise NotFound(f"the PACS returned no instance {sop}")
        return found[0]

    # -- internals ---------------------------------------------------------------------------

    def _instances(self, path: str, study: str, series: str) -> Generator[tuple[str, bytes]]:
        """(SOP Instance UID, Part 10 bytes) of each part, as the response streams in."""
        with contextlib.closing(self._parts(path)) as parts:
            for headers, body in parts:
                yield self._instance(headers, body, study, series)

    @staticmethod
    def _instance(
        headers: dict[str, str], body: bytes, study: str, series: str
    ) -> tuple[str, bytes]:
        ctype = headers.get("content-type", "application/dicom")
        if ctype.split(";", 1)[0].strip().lower() != "application/dicom":
            raise InvalidInput(f"the PACS sent a {ctype[:60]} part, not application/dicom")
        sop, got_study, got_series = _identify(body)
        if (got_study, got_series) != (study, series):
            raise InvalidInput(
                f"instance {sop} belongs to series {got_series} of study {got_study}, "
                f"not to the series {series} asked for"
            )
        return sop, body

    def _parts(self, path: str) -> Generator[tuple[dict[str, str], bytes]]:
        if self._stdlib:
            yield from self._stdlib_parts(path)
            return
        url = httpx.URL(self.base_url + path)
        accept = ACCEPT_AS_STORED
        redirects = 0
        while True:
            request = self._client.build_request(
                "GET",
                url,
                headers={**self._headers, "Accept": accept, "Accept-Encoding": "identity"},
                timeout=self._timeout,
            )
            response = self._send(request)
            try:
                if response.is_redirect:
                    url = self._redirect_target(response, redirects)
                    redirects += 1
                    continue
                if response.status_code == 406 and accept == ACCEPT_AS_STORED:
                    log.info("%s refuses transfer-syntax=*: asking without it", url)
                    accept = ACCEPT_DEFAULT
                    continue
                _check_status(response)
                if response.status_code == 204:
                    return
                yield from _read_multipart(response)
                return
            finally:
                response.close()

    def _stdlib_parts(self, path: str) -> Generator[tuple[dict[str, str], bytes]]:
        url = httpx.URL(self.base_url + path)
        accept = ACCEPT_AS_STORED
        redirects = 0
        while True:
            conn, response = self._stdlib_get(url, accept)
            try:
                if response.status in (301, 302, 303, 307, 308):
                    url = self._redirect_to(url, response.getheader("location") or "", redirects)
                    redirects += 1
                    continue
                if response.status == 406 and accept == ACCEPT_AS_STORED:
                    log.info("%s refuses transfer-syntax=*: asking without it", url)
                    accept = ACCEPT_DEFAULT
                    continue
                if response.status not in (200, 204):
                    _raise_for_status(response.status, str(url), _stdlib_error_text(response))
                if response.status == 204:
                    return
                yield from _read_stdlib_multipart(response, str(url))
                return
            finally:
                conn.close()

    def _stdlib_get(
        self, url: httpx.URL, accept: str
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        port = url.port or (443 if url.scheme == "https" else 80)
        conn: http.client.HTTPConnection
        if url.scheme == "https":
            context = self._ssl or ssl.create_default_context()
            conn = http.client.HTTPSConnection(url.host, port, timeout=self._seconds,
                                               context=context)  # fmt: skip
        else:
            conn = http.client.HTTPConnection(url.host, port, timeout=self._seconds)
        target = url.raw_path.decode("ascii")
        headers = {**self._headers, "Accept": accept, "Accept-Encoding": "identity"}
        try:
            conn.request("GET", target, headers=headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise PacsUnavailable(f"PACS {url} unreachable: {type(exc).__name__}: {exc}") from exc

    def _redirect_to(self, url: httpx.URL, location: str, redirects: int) -> httpx.URL:
        try:
            target = url.join(location)
        except httpx.InvalidURL:
            raise InvalidInput(f"the PACS redirects to an invalid URL {location[:100]!r}") from None
        if _origin(target) != self._origin:
            raise PacsUnavailable(
                f"the PACS redirects to another host ({target.scheme}://{target.host}); "
                "not followed"
            )
        if redirects >= MAX_REDIRECTS:
            raise PacsUnavailable(f"the PACS redirects more than {MAX_REDIRECTS} times")
        return target

    def _send(self, request: httpx.Request) -> httpx.Response:
        """Send, once more on a new connection if a kept-alive one turns out to be closed
        (the server may close it just as it is reused; a GET is safe to repeat)."""
        try:
            return self._client.send(request, stream=True, follow_redirects=False)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            log.debug("%s: %s; retrying on a new connection", request.url, _describe(exc))
        except httpx.TransportError as exc:
            raise PacsUnavailable(f"PACS {request.url} unreachable: {_describe(exc)}") from exc
        try:
            return self._client.send(request, stream=True, follow_redirects=False)
        except httpx.TransportError as exc:
            raise PacsUnavailable(f"PACS {request.url} unreachable: {_describe(exc)}") from exc

    def _redirect_target(self, response: httpx.Response, redirects: int) -> httpx.URL:
        return self._redirect_to(response.url, response.headers.get("location", ""), redirects)


def _read_multipart(response: httpx.Response) -> Generator[tuple[dict[str, str], bytes]]:
    ctype = response.headers.get("content-type", "")
    try:
        media = ctype.split(";", 1)[0].strip().lower()
        if media != "multipart/related":
            raise MultipartError(f"expected multipart/related, got {media or 'nothing'}")
        boundary = _boundary(ctype)
        stream = MultipartStream(boundary)
    except MultipartError as exc:
        raise InvalidInput(f"WADO-RS response from {response.url}: {exc}") from None
    try:
        for chunk in response.iter_bytes():
            yield from stream.feed(chunk)
    except httpx.DecodingError as exc:
        raise InvalidInput(f"WADO-RS response from {response.url}: {exc}") from exc
    except httpx.TransportError as exc:
        raise PacsUnavailable(
            f"PACS {response.url} failed after {stream.parts} instances: {_describe(exc)}"
        ) from exc
    stream.close()


def _boundary(content_type: str) -> str:
    """The boundary parameter, quoted or not (a quoted one may hold ``;``, ``,``, spaces)."""
    for param in _split_params(content_type)[1:]:
        name, sep, value = param.partition("=")
        if sep and name.strip().lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            if value:
                return value
    raise MultipartError("multipart/related without a boundary parameter")


def _split_params(value: str) -> list[str]:
    """Split a header value on ``;`` outside double quotes."""
    out: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            out.append("".join(current))
            current = []
            continue
        current.append(ch)
    out.append("".join(current))
    return out


def _read_stdlib_multipart(
    response: http.client.HTTPResponse, url: str
) -> Generator[tuple[dict[str, str], bytes]]:
    ctype = response.getheader("content-type") or ""
    try:
        media = ctype.split(";", 1)[0].strip().lower()
        if media != "multipart/related":
            raise MultipartError(f"expected multipart/related, got {media or 'nothing'}")
        stream = MultipartStream(_boundary(ctype))
    except MultipartError as exc:
        raise InvalidInput(f"WADO-RS response from {url}: {exc}") from None
    if (response.getheader("content-encoding") or "identity").lower() != "identity":
        raise InvalidInput(f"WADO-RS response from {url}: content coding was not asked for")
    buffer = memoryview(bytearray(_READ_SIZE))
    while True:
        try:
            count = response.readinto(buffer)
        except (OSError, http.client.HTTPException) as exc:
            raise PacsUnavailable(
                f"PACS {url} failed after {stream.parts} instances: {type(exc).__name__}: {exc}"
            ) from exc
        if not count:
            break
        yield from stream.feed(buffer[:count])
    stream.close()


def _stdlib_error_text(response: http.client.HTTPResponse) -> str:
    try:
        return response.read(300).decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException):
        return ""


def _check_status(response: httpx.Response) -> None:
    status = response.status_code
    if status in (200, 204):
        return
    _raise_for_status(status, str(response.request.url), _error_text(response))


def _raise_for_status(status: int, url: str, detail: str) -> None:
    where = f"PACS {url}"
    if status in (404, 410):
        raise NotFound(f"{where}: {status} {detail}".strip())
    if status >= 500 or status in (408, 429):
        raise PacsUnavailable(f"{where}: {status} {detail}".strip())
    raise InvalidInput(f"{where} refused the request: {status} {detail}".strip())


def _error_text(response: httpx.Response) -> str:
    """The start of an error body, for the message (never the whole of a large body)."""
    try:
        data = b""
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= 300:
                break
    except httpx.HTTPError:
        return ""
    return data[:300].decode("utf-8", "replace").strip()


def _describe(exc: httpx.TransportError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _identify(data: bytes) -> tuple[str, str, str]:
    """(SOP Instance, Study, Series UIDs) of a Part 10 object, reading only its header."""
    quick = quick_uids(data)
    if quick is not None and all(is_valid_uid(u) for u in quick):
        return quick
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=_UID_TAGS)
        has_meta = bool(getattr(ds.file_meta, "TransferSyntaxUID", None))
        study, series, sop = (str(ds.get(keyword, "")) for keyword in _UID_TAGS)
    except (InvalidDicomError, EOFError, ValueError, TypeError, KeyError, OSError) as exc:
        raise InvalidInput(f"a part is not a DICOM Part 10 object: {exc}") from None
    if not has_meta:
        raise InvalidInput("a part has no File Meta Information (not a DICOM Part 10 object)")
    for what, uid in (("SOP Instance", sop), ("Study Instance", study), ("Series", series)):
        if not is_valid_uid(uid):
            raise InvalidInput(f"a part has no valid {what} UID ({uid[:70]!r})")
    return sop, study, series
