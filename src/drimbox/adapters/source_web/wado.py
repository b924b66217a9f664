"""WADO-RS / QIDO-RS of the Source box, for other boxes (DRIM-M "Accès aux documents de santé
en imagerie", IHE RAD-107, DICOM PS3.18).

Every request but the health check carries the professional's Pro Santé Connect token
(``Authorization: Bearer``, checked by introspection) and the manifest that grants access
(``KOS-SOPInstanceUID``): only what that published manifest lists is reachable, whatever
the PACS holds. A patient's token (their portal fetching their own images) is accepted for a
manifest of that patient only (the token's INS is the manifest's), and recorded as theirs.
Instances come from the box's cache, pulled from the PACS on a miss and streamed as they
arrive; each is sent in the best transfer syntax the consumer accepts that
we can produce from it (per-part ``transfer-syntax``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydicom import dcmread
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from drimbox.adapters.audit.patient import patient_actor
from drimbox.adapters.audit.recorder import AccessRecorder, patient_ins, professional
from drimbox.adapters.dicomweb import multipart as mp
from drimbox.adapters.dicomweb.errors import HttpProblem
from drimbox.adapters.dicomweb.media_types import (
    ANY_SYNTAX,
    EXPLICIT_VR_LE,
    MediaRange,
    NotAcceptable,
    accepts,
    parse_accept,
)
from drimbox.adapters.dicomweb.negotiation import choose_syntax
from drimbox.adapters.dicomweb.part10 import stored_syntax
from drimbox.adapters.dicomweb.render import parse_render_params, render
from drimbox.adapters.dicomweb.transcode import transcode_with_syntax
from drimbox.adapters.source_web import qido
from drimbox.adapters.source_web.frames import read_frames
from drimbox.adapters.storage.pacs_store import BULK_BASE, metadata_json
from drimbox.adapters.trust.introspection import (
    IntrospectionUnavailable,
    TokenRejected,
    bearer_token,
)
from drimbox.adapters.trust.peer_tls import PeerPolicy, peer_of
from drimbox.domain.audit import Action, Actor, Outcome
from drimbox.domain.errors import InvalidInput, NotFound
from drimbox.domain.identifiers import Ins, is_valid_uid
from drimbox.domain.manifest import ImagingManifest
from drimbox.services.source.images import ImageProvider, Item
from drimbox.services.source.published import PublishedContent, Selected

log = logging.getLogger(__name__)
audit = logging.getLogger("drimbox.audit")

DICOM_JSON = "application/dicom+json"
KOS_HEADER = "kos-sopinstanceuid"
_WHOLE_FILE = 32 << 20  # larger instances go out in chunks
_CHUNK = 4 << 20


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class Caller:
    """Whose token a request carries."""

    who: str
    """The professional's national id, or the patient's ``sub`` at their provider."""
    patient: Ins | None = None
    """A patient's own INS (their token): they reach their own exams only."""
    claims: Any = None

    def owns(self, manifest: ImagingManifest) -> bool:
        """A professional may use any manifest; a patient only one naming them."""
        own = self.patient
        m = manifest.patient
        return own is None or (m.ins == own.value and m.ins_oid == own.oid)


@dataclass(frozen=True, slots=True)
class Access:
    """A checked request: who asks, through which manifest, for what."""

    who: str
    kos_uid: str
    manifest: ImagingManifest
    selected: list[Selected]
    caller: Caller | None = None


class MetadataCache:
    """DICOM JSON of instances (bulk data by reference), least recently used out first."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, str] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, sop: str) -> str | None:
        with self._lock:
            found = self._items.get(sop)
            if found is not None:
                self._items.move_to_end(sop)
            return found

    def put(self, sop: str, text: str) -> None:
        with self._lock:
            old = self._items.pop(sop, None)
            self._bytes += len(text) - (len(old) if old else 0)
            self._items[sop] = text
            while self._bytes > self.max_bytes and self._items:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)


class SourceWado:
    def __init__(
        self,
        content: PublishedContent,
        images: ImageProvider,
        verifier: TokenVerifier,
        wado_base: str,
        *,
        metadata: MetadataCache | None = None,
        peers: PeerPolicy | None = None,
        recorder: AccessRecorder | None = None,
    ) -> None:
        self.peers = peers or PeerPolicy(None)
        self.recorder = recorder
        self.content = content
        self.images = images
        self.verifier = verifier
        self.base = wado_base.rstrip("/")
        self.metadata = metadata or MetadataCache()

    def routes(self, prefix: str = "/dicomweb") -> list[Route]:
        p = prefix.rstrip("/")
        study = p + "/studies/{study}"
        series = study + "/series/{series}"
        inst = series + "/instances/{instance}"
        get = ["GET"]
        return [
            Route(p, self.health, methods=get),
            Route(p + "/", self.health, methods=get),
            Route(p + "/studies", self.search_studies, methods=get),
            Route(study, self.retrieve, methods=get),
            Route(study + "/metadata", self.retrieve_metadata, methods=get),
            Route(study + "/series", self.search_series, methods=get),
            Route(study + "/instances", self.search_instances, methods=get),
            Route(study + "/rendered", self.rendered, methods=get),
            Route(study + "/thumbnail", self.thumbnail, methods=get),
            Route(series, self.retrieve, methods=get),
            Route(series + "/metadata", self.retrieve_metadata, methods=get),
            Route(series + "/instances", self.search_instances, methods=get),
            Route(series + "/rendered", self.rendered, methods=get),
            Route(series + "/thumbnail", self.thumbnail, methods=get),
            Route(inst, self.retrieve, methods=get),
            Route(inst + "/metadata", self.retrieve_metadata, methods=get),
            Route(inst + "/rendered", self.rendered, methods=get),
            Route(inst + "/thumbnail", self.thumbnail, methods=get),
            Route(inst + "/frames/{frames}", self.retrieve_frames, methods=get),
            Route(inst + "/frames/{frames}/rendered", self.rendered, methods=get),
            Route(inst + "/bulk/{tag}", self.retrieve_bulk, methods=get),
        ]

    # -- access control -------------------------------------------------------------------

    async def _access(self, request: Request, whole_study_ok: bool = True) -> Access:
        params = request.path_params
        for key in ("study", "series", "instance"):
            value = params.get(key)
            if value is not None and not is_valid_uid(value):
                raise HttpProblem(400, f"{key} UID {value[:80]!r} is not a valid DICOM UID")
        caller = await self._authenticate(request)
        kos_uid = _kos_uid(request)
        manifest, selected = self.content.select(
            kos_uid, params["study"], params.get("series"), params.get("instance")
        )
        self._check_owner(caller, manifest, kos_uid, request)
        return Access(caller.who, kos_uid, manifest, selected, caller)

    async def _authenticate(self, request: Request) -> Caller:
        self.peers.check(request.scope)  # mTLS: a listed box, before anything else
        # a verifier that knows patients' tokens says which kind it saw; else professionals
        verify = getattr(self.verifier, "verify_identity", self.verifier.verify)
        try:
            token = bearer_token(request.headers.get("authorization"))
            known = getattr(self.verifier, "known_identity", None) or getattr(
                self.verifier, "known", None
            )
            principal: Any = known(token) if known is not None else None
            if principal is None:
                principal = await run_in_threadpool(verify, token)
        except TokenRejected as exc:
            challenge = {"WWW-Authenticate": exc.www_authenticate()}
            raise HttpProblem(401, f"authentication failed: {exc}", challenge) from None
        except IntrospectionUnavailable as exc:
            log.error("token introspection unavailable: %s", exc)
            raise HttpProblem(503, "the identity provider cannot be reached") from None
        if getattr(principal, "is_patient", False):
            return Caller(str(principal.subject), principal.patient, principal.claims)
        return Caller(
            str(getattr(principal, "subject_name_id", "") or getattr(principal, "subject", ""))
        )

    def _check_owner(
        self, caller: Caller, manifest: ImagingManifest, kos_uid: str, request: Request
    ) -> None:
        """A patient's token reaches that patient's manifests only; another patient's is
        answered as if it did not exist, and the attempt is in that patient's trail."""
        if caller.owns(manifest):
            return
        log.warning("patient %s refused manifest %s of another patient", caller.who,
                    kos_uid[:80])  # fmt: skip
        if self.recorder is not None:
            m = manifest
            self.recorder.record(
                self._actor(caller, request), Action.IMAGES_RETRIEVE,
                patient_ins(m.patient.ins, m.patient.ins_oid), study_uid=m.study.study_uid,
                outcome=Outcome.REFUSED, detail="le jeton d'un autre patient", source=self.base,
                client_ip=request.client.host if request.client else "",
            )  # fmt: skip
        raise NotFound(f"no published manifest {kos_uid[:80]} here")

    @staticmethod
    def _actor(caller: Caller, request: Request) -> Actor:
        peer = peer_of(request.scope)
        client = peer.common_name if peer else ""
        if caller.patient is not None:
            return patient_actor(caller.who, dict(caller.claims or {}), client_id=client)
        return professional(caller.who, client_id=client)

    def _audit(self, access: Access, request: Request, what: str, count: int) -> None:
        if self.recorder is not None:
            m = access.manifest
            self.recorder.record(
                self._actor(access.caller or Caller(access.who), request),
                Action.IMAGES_RETRIEVE, patient_ins(m.patient.ins, m.patient.ins_oid),
                study_uid=m.study.study_uid, source=self.base,
                client_ip=request.client.host if request.client else "", once_per_window=True,
            )  # fmt: skip
        audit.debug(
            "source %s by %s via KOS %s: study %s, %d instance(s)", what, access.who,
            access.kos_uid, access.manifest.study.study_uid, count,
            extra={"event": "wado-rs", "who": access.who, "kos": access.kos_uid,
                   "study": access.manifest.study.study_uid, "path": request.url.path,
                   "client": request.client.host if request.client else ""},
        )  # fmt: skip

    # -- health ---------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "UP", "service": "drimbox-source-wado-rs"})

    # -- WADO-RS retrieve -----------------------------------------------------------------

    async def retrieve(self, request: Request) -> Response:
        ranges = _accept(request)
        choose_syntax(ranges, {EXPLICIT_VR_LE})  # 406 before anything starts
        access = await self._access(request)
        items = [(s.series_uid, s.sop_uid) for s in access.selected]
        study = access.manifest.study.study_uid
        if len(items) == 1:  # a stat: cheaper than the thread hop for one instance
            hits, misses = self.images.cached(study, items)
        else:
            hits, misses = await run_in_threadpool(self.images.cached, study, items)
        self._audit(access, request, "retrieve", len(items))
        return MultipartDicom(self.images, study, hits, misses, ranges)

    async def retrieve_metadata(self, request: Request) -> Response:
        if not accepts(_accept(request), DICOM_JSON):
            raise NotAcceptable("metadata is available as application/dicom+json only")
        access = await self._access(request)
        study = access.manifest.study.study_uid
        items = [(s.series_uid, s.sop_uid) for s in access.selected]
        texts = await run_in_threadpool(self._metadata, study, items)
        self._audit(access, request, "metadata", len(items))
        payload = ("[" + ",".join(texts) + "]").replace(BULK_BASE, self.base)
        return Response(payload, media_type=DICOM_JSON)

    def _metadata(self, study: str, items: list[Item]) -> list[str]:
        found: dict[Item, str] = {}
        wanted: list[Item] = []
        for item in items:
            text = self.metadata.get(item[1])
            if text is None:
                wanted.append(item)
            else:
                found[item] = text
        if wanted:
            hits, misses = self.images.cached(study, wanted)
            for item, path in [*hits, *self.images.arrivals(study, misses)]:
                ds = dcmread(path, stop_before_pixels=False, defer_size=1024)
                text = metadata_json(ds, study, item[0], item[1])
                self.metadata.put(item[1], text)
                found[item] = text
        return [found[item] for item in items]

    async def retrieve_frames(self, request: Request) -> Response:
        numbers = _frame_numbers(request.path_params["frames"])
        ranges = _accept(request)
        access = await self._access(request)
        path = await self._one_path(access)
        frames, media, syntax = await run_in_threadpool(read_frames, path, numbers, ranges)
        self._audit(access, request, "frames", 1)
        return _multipart(frames, media, syntax)

    async def retrieve_bulk(self, request: Request) -> Response:
        tag = request.path_params["tag"].upper()
        if tag not in ("7FE00010", "7FE00008", "7FE00009"):
            raise NotFound(f"no bulk data element {tag[:8]} is served")
        access = await self._access(request)
        path = await self._one_path(access)
        numbers = None  # every frame, as stored
        frames, media, syntax = await run_in_threadpool(read_frames, path, numbers, [])
        self._audit(access, request, "bulk", 1)
        return _multipart([b"".join(frames)], media, syntax)

    async def _one_path(self, access: Access) -> Path:
        study = access.manifest.study.study_uid
        item = (access.selected[0].series_uid, access.selected[0].sop_uid)
        return await run_in_threadpool(self._path, study, item)

    def _path(self, study: str, item: Item) -> Path:
        hits, misses = self.images.cached(study, [item])
        if hits:
            return hits[0][1]
        for _, path in self.images.arrivals(study, misses):
            return path
        raise NotFound("instance not available")

    # -- rendered -------------------------------------------------------------------------

    async def rendered(self, request: Request) -> Response:
        return await self._render(request, thumbnail=False)

    async def thumbnail(self, request: Request) -> Response:
        return await self._render(request, thumbnail=True)

    async def _render(self, request: Request, thumbnail: bool) -> Response:
        ranges = _accept(request)
        options = parse_render_params(request.query_params.multi_items(), ranges, thumbnail)
        frames_param = request.path_params.get("frames")
        frame = _frame_numbers(frames_param)[0] if frames_param else 1
        access = await self._access(request)
        study = access.manifest.study.study_uid
        images = [s for s in access.selected if s.instance.sop_class_uid not in _NOT_IMAGES]
        if not images:
            raise NotFound("nothing to render here")
        if thumbnail or "instance" in request.path_params:
            # a study's or series' thumbnail: its middle image, the most telling one
            chosen = (
                images[len(images) // 2] if "instance" not in request.path_params else images[0]
            )
            path = await run_in_threadpool(self._path, study, (chosen.series_uid, chosen.sop_uid))
            body = await run_in_threadpool(render, path, options, frame)
            self._audit(access, request, "rendered", 1)
            return Response(body, media_type=options.media_type)
        parts: list[bytes] = []
        for chosen in images:
            path = await run_in_threadpool(self._path, study, (chosen.series_uid, chosen.sop_uid))
            parts.append(await run_in_threadpool(render, path, options, 1))
        self._audit(access, request, "rendered", len(parts))
        return _multipart(parts, options.media_type, None)

    # -- QIDO-RS --------------------------------------------------------------------------

    async def _manifest(self, request: Request) -> tuple[str, ImagingManifest]:
        for key in ("study", "series"):
            value = request.path_params.get(key)
            if value is not None and not is_valid_uid(value):
                raise HttpProblem(400, f"{key} UID {value[:80]!r} is not a valid DICOM UID")
        caller = await self._authenticate(request)
        kos_uid = _kos_uid(request)
        manifest = self.content.manifest(kos_uid)
        self._check_owner(caller, manifest, kos_uid, request)
        study = request.path_params.get("study")
        if study is not None and study != manifest.study.study_uid:
            raise NotFound("the study is not the one of this manifest")
        return caller.who, manifest

    async def search_studies(self, request: Request) -> Response:
        _, manifest = await self._manifest(request)
        return _qido(request, [qido.study_json(manifest, self.base)])

    async def search_series(self, request: Request) -> Response:
        _, manifest = await self._manifest(request)
        rows = [qido.series_json(manifest, s, self.base) for s in manifest.series]
        return _qido(request, rows)

    async def search_instances(self, request: Request) -> Response:
        _, manifest = await self._manifest(request)
        series_uid = request.path_params.get("series")
        rows = [
            qido.instance_json(manifest, s, i, self.base)
            for s, i in manifest.instances()
            if series_uid is None or s.series_uid == series_uid
        ]
        if series_uid is not None and not rows:
            raise NotFound("no such series in this manifest")
        return _qido(request, rows)


_NOT_IMAGES = {
    "1.2.840.10008.5.1.4.1.1.88.59",  # KOS
    "1.2.840.10008.5.1.4.1.1.104.1",  # encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.11.1",  # GSPS
}


def _kos_uid(request: Request) -> str:
    value = request.headers.get(KOS_HEADER, "").strip()
    if not value:
        raise HttpProblem(400, "the KOS-SOPInstanceUID header is required")
    if not is_valid_uid(value):
        raise HttpProblem(400, "the KOS-SOPInstanceUID header is not a valid DICOM UID")
    return value


def _accept(request: Request) -> list[MediaRange]:
    try:
        return parse_accept(request.headers.getlist("accept"))
    except ValueError as exc:
        raise HttpProblem(400, f"invalid Accept header: {exc}") from None


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",")]
    except ValueError:
        raise HttpProblem(400, "frame list must be comma-separated integers") from None
    if not numbers or min(numbers) < 1:
        raise HttpProblem(400, "frame numbers start at 1")
    return numbers


def _qido(request: Request, rows: list[dict[str, Any]]) -> Response:
    if not accepts(_accept(request), DICOM_JSON) and not accepts(
        _accept(request), "application/json"
    ):
        raise NotAcceptable("QIDO-RS answers in application/dicom+json")
    try:
        wanted = qido.filters(request.query_params.multi_items())
    except InvalidInput as exc:
        raise HttpProblem(400, str(exc)) from None
    body = [r for r in rows if qido.matches(r, wanted)]
    text = json.dumps([dict(sorted(r.items())) for r in body], separators=(",", ":"))
    return Response(text, media_type=DICOM_JSON)


def _multipart(parts: list[bytes], media: str, syntax: str | None) -> Response:
    boundary = mp.new_boundary()
    chunks = []
    part_type = f"{media}; transfer-syntax={syntax}" if syntax else media
    for i, part in enumerate(parts):
        extra = f"Content-Length: {len(part)}\r\n"
        chunks.append(mp.part_header(boundary, part_type, i == 0, extra))
        chunks.append(part)
    chunks.append(mp.closing(boundary))
    return Response(b"".join(chunks), media_type=mp.content_type(media, boundary, syntax))


class MultipartDicom(Response):
    """Streams instances as ``multipart/related; type="application/dicom"`` parts: the cached
    ones first, straight from disk; the others as the PACS delivers them."""

    def __init__(
        self,
        images: ImageProvider,
        study: str,
        hits: list[tuple[Item, Path]],
        misses: list[Item],
        ranges: list[MediaRange],
        context: Any = None,
    ) -> None:
        self.images, self.study, self.hits, self.misses = images, study, hits, misses
        self.context = context
        self.ranges = ranges
        self.boundary = mp.new_boundary()
        self.background = None
        self.status_code = 200
        self._choices: dict[str, str] = {}
        first = _head_syntax(hits[0][1]) if hits else EXPLICIT_VR_LE
        declared = self._choose(first)
        ctype = mp.content_type(
            "application/dicom", self.boundary, None if declared == ANY_SYNTAX else declared
        )
        self.raw_headers = [(b"content-type", ctype.encode("latin-1"))]

    def _choose(self, stored: str) -> str:
        choice = self._choices.get(stored)
        if choice is None:
            choice = self._choices[stored] = choose_syntax(self.ranges, {stored})
        return choice

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        paths = self._paths()
        # nothing cached: wait for the first arrival, so that a PACS that is down or lost
        # the images gives an error status rather than a stream cut short
        head = await anext(paths, None)
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        first = True
        if head is not None:
            first = await self._send_part(send, head, first)
        async for path in paths:
            first = await self._send_part(send, path, first)
        await send(
            {"type": "http.response.body", "body": mp.closing(self.boundary), "more_body": False}
        )

    async def _paths(self) -> AsyncIterator[Path | bytes]:
        for _, path in self.hits:
            yield path
        if not self.misses:
            return
        arrivals = self.images.arrivals_data(self.study, self.misses, self.context)
        try:
            while True:
                nxt = await run_in_threadpool(_next, arrivals)
                if nxt is None:
                    return
                yield nxt[1]
        finally:
            arrivals.close()  # a client gone: the cache writes need not wait for it

    async def _send_part(self, send: Callable[[Any], Any], path: Path | bytes, first: bool) -> bool:
        if not isinstance(path, Path):  # arrived, not yet in the cache: from memory
            return await self._send_data(send, path, first)
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(0)
            head = fh.read(_CHUNK) if size > _WHOLE_FILE else fh.read()
            stored = stored_syntax(head)
            wanted = self._choose(stored)
            if wanted in (ANY_SYNTAX, stored):
                await self._part_header(send, stored, first)
                await send({"type": "http.response.body", "body": head, "more_body": True})
                while size > _WHOLE_FILE and (chunk := fh.read(_CHUNK)):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                return False
        try:
            data, syntax = await run_in_threadpool(transcode_with_syntax, path, wanted)
        except NotAcceptable as exc:
            # the headers are gone: this one instance goes out uncompressed (its part says so)
            log.warning("cannot send %s as %s (%s): explicit VR little endian", path.name,
                        wanted, exc)  # fmt: skip
            data, syntax = await run_in_threadpool(transcode_with_syntax, path, EXPLICIT_VR_LE)
        await self._part_header(send, syntax, first)
        await send({"type": "http.response.body", "body": data, "more_body": True})
        return False

    async def _send_data(self, send: Callable[[Any], Any], data: bytes, first: bool) -> bool:
        stored = stored_syntax(data[:_CHUNK])
        wanted = self._choose(stored)
        if wanted not in (ANY_SYNTAX, stored):
            try:
                data, stored = await run_in_threadpool(transcode_with_syntax, data, wanted)
            except NotAcceptable as exc:
                log.warning("cannot send an instance as %s (%s): explicit VR little endian",
                            wanted, exc)  # fmt: skip
                data, stored = await run_in_threadpool(transcode_with_syntax, data, EXPLICIT_VR_LE)
        await self._part_header(send, stored, first)
        await send({"type": "http.response.body", "body": data, "more_body": True})
        return False

    async def _part_header(self, send: Callable[[Any], Any], syntax: str, first: bool) -> None:
        header = mp.part_header(
            self.boundary, f"application/dicom; transfer-syntax={syntax}", first
        )
        await send({"type": "http.response.body", "body": header, "more_body": True})


_T = TypeVar("_T")


def _next(iterator: Iterator[tuple[Item, _T]]) -> tuple[Item, _T] | None:
    return next(iterator, None)


def _head_syntax(path: Path) -> str:
    with open(path, "rb") as fh:
        return stored_syntax(fh.read(4096))
