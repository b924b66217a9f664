"""DICOMweb server routes (PS3.18): QIDO-RS, WADO-RS (instances, metadata, frames, bulk
data) and STOW-RS over any ``DicomwebBackend``. The embedded PACS mounts it on its store; the
box reuses it for the Source endpoint."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.encaps import generate_fragmented_frames
from pydicom.uid import UID
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from drimbox.adapters.dicomweb import multipart as mp
from drimbox.adapters.dicomweb.errors import EXCEPTION_HANDLERS, HttpProblem
from drimbox.adapters.dicomweb.json_model import row_json
from drimbox.adapters.dicomweb.media_types import (
    ANY_SYNTAX,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    NotAcceptable,
    accepts,
    choose_dicom_syntax,
    parse_accept,
)
from drimbox.adapters.dicomweb.qido import parse_qido
from drimbox.adapters.dicomweb.transcode import transcode
from drimbox.adapters.storage.dicom_index import Level, StoredInstance
from drimbox.adapters.storage.pacs_store import BULK_BASE, Stored
from drimbox.domain.errors import InvalidInput, NotFound
from drimbox.domain.identifiers import is_valid_uid

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"


class DicomwebBackend(Protocol):
    def find(
        self,
        level: Level,
        filters: dict[str, str],
        return_keys: Sequence[str],
        fuzzy: bool,
        limit: int | None,
        offset: int,
    ) -> list[dict[str, Any]]: ...

    def instances(
        self, study: str, series: str | None = None, sop: str | None = None
    ) -> list[StoredInstance]: ...

    def path_of(self, inst: StoredInstance) -> Path: ...

    def metadata(
        self, study: str, series: str | None = None, sop: str | None = None
    ) -> list[str]: ...

    def ingest(
        self, data: bytes | memoryview, origin: str, expected_sop: str | None = None
    ) -> Stored: ...


def _uids(request: Request) -> tuple[str, str | None, str | None]:
    params = request.path_params
    for key in ("study", "series", "instance"):
        value = params.get(key)
        if value is not None and not is_valid_uid(value):
            raise HttpProblem(400, f"{key} UID {value[:80]!r} is not a valid DICOM UID")
    return params["study"], params.get("series"), params.get("instance")


def _base_url(request: Request, prefix: str) -> str:
    return str(request.base_url).rstrip("/") + prefix


class DicomwebApp:
    def __init__(self, backend: DicomwebBackend, prefix: str = "", max_stow_bytes: int = 2 << 30):
        self.backend = backend
        self.prefix = prefix.rstrip("/")
        self.max_stow_bytes = max_stow_bytes

    def routes(self) -> list[Route]:
        p = self.prefix
        study = p + "/studies/{study}"
        series = study + "/series/{series}"
        inst = series + "/instances/{instance}"
        return [
            Route(p + "/studies", self.search(Level.STUDY), methods=["GET"]),
            Route(p + "/studies", self.stow, methods=["POST"]),
            Route(p + "/series", self.search(Level.SERIES), methods=["GET"]),
            Route(p + "/instances", self.search(Level.IMAGE), methods=["GET"]),
            Route(study, self.retrieve, methods=["GET"]),
            Route(study, self.stow, methods=["POST"]),
            Route(study + "/metadata", self.retrieve_metadata, methods=["GET"]),
            Route(study + "/series", self.search(Level.SERIES), methods=["GET"]),
            Route(study + "/instances", self.search(Level.IMAGE), methods=["GET"]),
            Route(series, self.retrieve, methods=["GET"]),
            Route(series + "/metadata", self.retrieve_metadata, methods=["GET"]),
            Route(series + "/instances", self.search(Level.IMAGE), methods=["GET"]),
            Route(inst, self.retrieve, methods=["GET"]),
            Route(inst + "/metadata", self.retrieve_metadata, methods=["GET"]),
            Route(inst + "/frames/{frames}", self.retrieve_frames, methods=["GET"]),
            Route(inst + "/bulk/{tag}", self.retrieve_bulk, methods=["GET"]),
        ]

    # -- QIDO-RS --------------------------------------------------------------------------

    def search(self, level: Level) -> Callable[[Request], Any]:
        async def handler(request: Request) -> Response:
            scope = {
                k: v
                for k, v in (
                    ("StudyInstanceUID", request.path_params.get("study")),
                    ("SeriesInstanceUID", request.path_params.get("series")),
                )
                if v is not None
            }
            for value in scope.values():
                if not is_valid_uid(value):
                    raise HttpProblem(400, f"{value[:80]!r} is not a valid DICOM UID")
            q = parse_qido(request.query_params.multi_items(), level)
            rows = self.backend.find(
                level, {**q.filters, **scope}, q.include, q.fuzzy, q.limit, q.offset
            )
            base = _base_url(request, self.prefix)
            body = [row_json(r, self._retrieve_url(base, level, r)) for r in rows]
            return Response(json.dumps(body, separators=(",", ":")), media_type=DICOM_JSON)

        return handler

    @staticmethod
    def _retrieve_url(base: str, level: Level, row: dict[str, Any]) -> str | None:
        if level is Level.STUDY:
            return f"{base}/studies/{row['StudyInstanceUID']}"
        if level is Level.SERIES:
            return f"{base}/studies/{row['StudyInstanceUID']}/series/{row['SeriesInstanceUID']}"
        return None

    # -- WADO-RS --------------------------------------------------------------------------

    def _select(self, request: Request) -> list[StoredInstance]:
        study, series, sop = _uids(request)
        found = self.backend.instances(study, series, sop)
        if not found:
            raise NotFound("no such study, series or instance here")
        return found

    async def retrieve(self, request: Request) -> Response:
        instances = self._select(request)
        ranges = parse_accept(request.headers.getlist("accept"))
        wanted = choose_dicom_syntax(ranges)
        boundary = mp.new_boundary()
        backend = self.backend
        if wanted not in (ANY_SYNTAX, EXPLICIT_VR_LE, IMPLICIT_VR_LE) and any(
            i.transfer_syntax_uid != wanted for i in instances
        ):
            # refuse before the first byte rather than fail mid-stream
            raise NotAcceptable(f"transfer syntax {wanted} is not offered by this server")

        return MultipartInstances(instances, backend, wanted, boundary)

    async def retrieve_metadata(self, request: Request) -> Response:
        study, series, sop = _uids(request)
        if not accepts(parse_accept(request.headers.getlist("accept")), DICOM_JSON):
            raise NotAcceptable("metadata is available as application/dicom+json only")
        items = await run_in_threadpool(self.backend.metadata, study, series, sop)
        if not items:
            raise NotFound("no such study, series or instance here")
        base = _base_url(request, self.prefix)
        payload = ("[" + ",".join(items) + "]").replace(BULK_BASE, base)
        return Response(payload, media_type=DICOM_JSON)

    async def retrieve_frames(self, request: Request) -> Response:
        inst = self._select(request)[0]
        try:
            numbers = [int(n) for n in request.path_params["frames"].split(",")]
        except ValueError:
            raise HttpProblem(400, "frame list must be comma-separated integers") from None
        if not numbers or min(numbers) < 1:
            raise HttpProblem(400, "frame numbers start at 1")
        ranges = parse_accept(request.headers.getlist("accept"))
        frames, media, syntax = await run_in_threadpool(
            _read_frames, self.backend.path_of(inst), numbers, ranges
        )
        return _multipart_response(frames, media, syntax)

    async def retrieve_bulk(self, request: Request) -> Response:
        inst = self._select(request)[0]
        tag = request.path_params["tag"].upper()
        if tag not in ("7FE00010", "7FE00008", "7FE00009"):
            raise NotFound(f"no bulk data element {tag[:8]} is served")
        ds = await run_in_threadpool(dcmread, self.backend.path_of(inst))
        elem = ds.get(int(tag, 16))
        if elem is None:
            raise NotFound(f"the instance has no element {tag}")
        syntax = str(ds.file_meta.TransferSyntaxUID)
        return _multipart_response([bytes(elem.value)], "application/octet-stream", syntax)

    # -- STOW-RS --------------------------------------------------------------------------

    async def stow(self, request: Request) -> Response:
        study_scope = request.path_params.get("study")
        if study_scope is not None and not is_valid_uid(study_scope):
            raise HttpProblem(400, "study UID in the URL is not a valid DICOM UID")
        _, ptype, boundary = mp.parse_content_type(request.headers.get("content-type", ""))
        if ptype not in (None, "application/dicom"):
            raise HttpProblem(415, f"STOW-RS accepts application/dicom parts, not {ptype}")
        declared = int(request.headers.get("content-length") or 0)
        if declared > self.max_stow_bytes:
            raise HttpProblem(413, f"request body over {self.max_stow_bytes} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_stow_bytes:
                raise HttpProblem(413, f"request body over {self.max_stow_bytes} bytes")
        parts = mp.split_parts(bytes(body), boundary)
        if not parts:
            raise HttpProblem(400, "the multipart body has no part")
        origin = f"stow@{request.client.host if request.client else '?'}"
        result = await run_in_threadpool(self._store_parts, parts, origin, study_scope)
        return result

    def _store_parts(
        self, parts: list[tuple[dict[str, str], memoryview]], origin: str, study_scope: str | None
    ) -> Response:
        ok: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for headers, content in parts:
            ctype = headers.get("content-type", "application/dicom").split(";")[0].strip()
            if ctype != "application/dicom":
                failed.append(_failed_item("", "", 0xC000))
                continue
            try:
                stored = self.backend.ingest(content, origin)
                inst = stored.instance
                if study_scope is not None and inst.study_uid != study_scope:
                    # PS3.18 10.5.3.2: instance of another study than the URL's
                    failed.append(_failed_item(inst.sop_class_uid, inst.sop_uid, 0xA900))
                    continue
                ok.append(
                    {
                        "00081150": {"vr": "UI", "Value": [inst.sop_class_uid]},
                        "00081155": {"vr": "UI", "Value": [inst.sop_uid]},
                    }
                )
            except InvalidInput as exc:
                log.info("STOW part rejected: %s", exc)
                failed.append(_failed_item("", "", 0xC000))
            except OSError:
                log.exception("STOW part could not be stored")
                failed.append(_failed_item("", "", 0xA700))
        body: dict[str, Any] = {}
        if ok:
            body["00081199"] = {"vr": "SQ", "Value": ok}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": failed}
        status = 200 if not failed else (202 if ok else 409)
        return JSONResponse(body, status_code=status, media_type=DICOM_JSON)


class MultipartInstances(Response):
    """Streams stored instances as multipart/related parts.

    Each part header and each file go to ``send`` as separate messages: concatenating them
    would allocate (and fault in) a fresh copy of every instance, which halves throughput.
    """

    def __init__(
        self,
        instances: list[StoredInstance],
        backend: DicomwebBackend,
        syntax: str,
        boundary: str,
    ) -> None:
        self.instances = instances
        self.backend = backend
        self.syntax = syntax
        self.boundary = boundary
        self.background = None
        self.status_code = 200
        ctype = mp.content_type(
            "application/dicom", boundary, None if syntax == ANY_SYNTAX else syntax
        )
        self.raw_headers = [(b"content-type", ctype.encode("latin-1"))]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        first = True
        for inst in self.instances:
            header = mp.part_header(self.boundary, "application/dicom", first)
            await send({"type": "http.response.body", "body": header, "more_body": True})
            first = False
            path = self.backend.path_of(inst)
            if self.syntax in (ANY_SYNTAX, inst.transfer_syntax_uid):
                with open(path, "rb") as fh:
                    data = fh.read()
            else:
                data = await run_in_threadpool(transcode, path, self.syntax)
            await send({"type": "http.response.body", "body": data, "more_body": True})
        closing = mp.closing(self.boundary)
        await send({"type": "http.response.body", "body": closing, "more_body": False})


def _failed_item(sop_class: str, sop: str, reason: int) -> dict[str, Any]:
    item: dict[str, Any] = {"00081197": {"vr": "US", "Value": [reason]}}
    if sop_class:
        item["00081150"] = {"vr": "UI", "Value": [sop_class]}
    if sop:
        item["00081155"] = {"vr": "UI", "Value": [sop]}
    return item


def _multipart_response(parts: list[bytes], media: str, syntax: str | None) -> Response:
    boundary = mp.new_boundary()
    chunks = []
    for i, part in enumerate(parts):
        extra = f"Content-Length: {len(part)}\r\n"
        chunks.append(mp.part_header(boundary, media, i == 0, extra))
        chunks.append(part)
    chunks.append(mp.closing(boundary))
    return Response(b"".join(chunks), media_type=mp.content_type(media, boundary, syntax))


def _read_frames(path: Path, numbers: list[int], ranges: list[Any]) -> tuple[list[bytes], str, str]:
    ds = dcmread(path)
    if "PixelData" not in ds:
        raise NotFound("the instance has no pixel data")
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    count = int(ds.get("NumberOfFrames") or 1)
    if max(numbers) > count:
        raise NotFound(f"the instance has {count} frame(s)")
    if syntax.is_encapsulated:
        if not accepts(ranges, "application/octet-stream", "application/octet-stream") and not any(
            getattr(r, "transfer_syntax", None) in ("*", str(syntax)) for r in ranges
        ):
            raise NotAcceptable(f"frames are stored as {syntax.name}")
        frames = [
            b"".join(f) for f in generate_fragmented_frames(ds.PixelData, number_of_frames=count)
        ]
        return [frames[n - 1] for n in numbers], "application/octet-stream", str(syntax)
    if not accepts(ranges, "application/octet-stream", "application/octet-stream"):
        raise NotAcceptable("uncompressed frames are available as application/octet-stream")
    size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
    size = size * int(ds.BitsAllocated) // 8
    data = ds.PixelData
    return (
        [bytes(data[(n - 1) * size : n * size]) for n in numbers],
        "application/octet-stream",
        (EXPLICIT_VR_LE),
    )


def create_app(
    backend: DicomwebBackend, prefix: str = "", max_stow_bytes: int = 2 << 30
) -> Starlette:
    web = DicomwebApp(backend, prefix, max_stow_bytes)
    return Starlette(routes=web.routes(), exception_handlers=EXCEPTION_HANDLERS)  # type: ignore[arg-type]
