"""The Conso's DICOMweb root for the local viewer (OHIF) and tools: every exam it serves was
listed in the professional's session from the national index, and is fetched from its Source
box (allowed bases only) with the professional's token and the manifest's UID. The patient's
portal has a root of its own over the patients' sessions: a patient reaches the exams their
own listing showed, fetched with their own token (the Source checks the exam is theirs).

Searches are answered from the manifest. Metadata is the Source's (cached here), with its
URLs rewritten to ours; asking for it starts pulling the series into this box's cache, so
that the frames the viewer asks next are served locally. Instances come from the cache or
stream through as the Source delivers them.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from drimbox.adapters.audit.patient import patient_actor
from drimbox.adapters.audit.recorder import AccessRecorder, patient_ins, professional
from drimbox.adapters.dicomweb.errors import HttpProblem
from drimbox.adapters.dicomweb.fetch import DicomwebPacs
from drimbox.adapters.dicomweb.media_types import EXPLICIT_VR_LE, NotAcceptable, accepts
from drimbox.adapters.dicomweb.negotiation import choose_syntax
from drimbox.adapters.source_web import qido
from drimbox.adapters.source_web.frames import read_frames
from drimbox.adapters.source_web.wado import (
    DICOM_JSON,
    MetadataCache,
    MultipartDicom,
    _accept,
    _frame_numbers,
    _multipart,
    _qido,
)
from drimbox.adapters.storage.pacs_store import BULK_BASE
from drimbox.domain.audit import Action, Actor
from drimbox.domain.errors import NotFound
from drimbox.domain.identifiers import is_valid_uid
from drimbox.domain.manifest import ImagingManifest, ManifestSeries
from drimbox.services.conso.history import ManifestBook
from drimbox.services.conso.sessions import Session
from drimbox.services.conso.sources import AllowedSources, SourceNotAllowed
from drimbox.services.source.images import ImageProvider

log = logging.getLogger(__name__)
audit = logging.getLogger("drimbox.audit")

_FORWARDED = ("content-type", "content-length")


@dataclass(frozen=True, slots=True)
class Remote:
    """Where and how to fetch one exam: what a fill needs (``ImageProvider`` context)."""

    base: str
    kos_uid: str
    token: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "KOS-SOPInstanceUID": self.kos_uid}


class RemoteSourceFetcher:
    """``SeriesFetcher`` pulling from another box's Source WADO-RS."""

    def __init__(self, ssl_context: ssl.SSLContext | None, timeout: float = 60.0) -> None:
        self.ssl_context, self.timeout = ssl_context, timeout

    def __call__(
        self, study: str, series: str, sops: Collection[str], store: Any, context: Any = None
    ) -> None:
        if not isinstance(context, Remote):
            raise NotFound("no Source box for this exam")
        # a connection per series fill, through the standard library (the bulk of a study)
        with DicomwebPacs(context.base, headers=context.headers(), timeout=self.timeout,
                          ssl_context=self.ssl_context) as source:  # fmt: skip
            source.fetch_series(study, series, store, sops=sops)


class ConsoProxy:
    def __init__(
        self,
        sessions: Any,
        book: ManifestBook,
        allowed: AllowedSources,
        images: ImageProvider,
        proxy_prefix: str,
        *,
        timeout: float = 60.0,
        verify: ssl.SSLContext | bool = True,
        users_url: str = "",
        recorder: AccessRecorder | None = None,
        metadata: MetadataCache | None = None,
    ) -> None:
        self.users_url = users_url.rstrip("/")
        self.recorder = recorder
        # ``adapters.conso_web.auth.SessionAuth``, or the patients' (``patient_auth``)
        self.sessions = sessions
        self.book = book
        self.allowed = allowed
        self.images = images
        self.prefix = proxy_prefix.rstrip("/")
        self.metadata = metadata or MetadataCache()
        # identity: a gzipped body would be passed on without its Content-Encoding
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(timeout), follow_redirects=False,
                                      headers={"Accept-Encoding": "identity"},
                                      verify=verify)  # fmt: skip
        self._prefetching: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def routes(self, prefix: str) -> list[Route]:
        p = prefix.rstrip("/")
        study = p + "/studies/{study}"
        series = study + "/series/{series}"
        inst = series + "/instances/{instance}"
        get = ["GET"]
        return [
            Route(p + "/studies", self.search_studies, methods=get),
            Route(study, self.retrieve, methods=get),
            Route(study + "/metadata", self.retrieve_metadata, methods=get),
            Route(study + "/series", self.search_series, methods=get),
            Route(study + "/instances", self.search_instances, methods=get),
            Route(study + "/thumbnail", self.forward, methods=get),
            Route(study + "/rendered", self.forward, methods=get),
            Route(series, self.retrieve, methods=get),
            Route(series + "/metadata", self.retrieve_metadata, methods=get),
            Route(series + "/instances", self.search_instances, methods=get),
            Route(series + "/thumbnail", self.forward, methods=get),
            Route(series + "/rendered", self.forward, methods=get),
            Route(inst, self.retrieve, methods=get),
            Route(inst + "/metadata", self.retrieve_metadata, methods=get),
            Route(inst + "/frames/{frames}", self.retrieve_frames, methods=get),
            Route(inst + "/rendered", self.forward, methods=get),
            Route(inst + "/thumbnail", self.forward, methods=get),
            Route(inst + "/frames/{frames}/rendered", self.forward, methods=get),
            Route(inst + "/bulk/{tag}", self.forward, methods=get),
        ]

    async def close(self) -> None:
        await self.http.aclose()

    # -- resolving an exam ----------------------------------------------------------------

    async def _exam(self, request: Request) -> tuple[Session, ImagingManifest, Remote]:
        for key in ("study", "series", "instance"):
            value = request.path_params.get(key)
            if value is not None and not is_valid_uid(value):
                raise HttpProblem(400, f"{key} UID {value[:80]!r} is not a valid DICOM UID")
        session = await self.sessions.require(request)
        study = request.path_params["study"]
        kos_uid = session.exams.get(study)
        if kos_uid is None:
            raise NotFound("this exam was not listed in your session: open the patient's history")
        manifest = self.book.get(kos_uid)
        series_uid = request.path_params.get("series")
        series = [s for s in manifest.series if series_uid is None or s.series_uid == series_uid]
        if not series:
            raise NotFound("no such series in this exam")
        return session, manifest, Remote(self._source_base(series), kos_uid, session.access_token)

    def _base(self, request: Request) -> str:
        """Our root as users reach it: the configured URL, else the one the request names
        (URLs in answers must lead the viewer back here)."""
        return (self.users_url or str(request.base_url).rstrip("/")) + self.prefix

    def remote_for(self, session: Session, manifest: ImagingManifest, kos_uid: str) -> Remote:
        return Remote(self._source_base(list(manifest.series)), kos_uid, session.access_token)

    def _source_base(self, series: list[ManifestSeries]) -> str:
        url = next((s.retrieve_url for s in series if s.retrieve_url), "")
        if not url:
            raise NotFound("the manifest gives no Retrieve URL for this exam")
        try:
            return self.allowed.base_for(url)
        except SourceNotAllowed as exc:
            log.warning("refused Retrieve URL %s: %s", url[:200], exc)
            raise HttpProblem(403, str(exc)) from None

    def _items(self, manifest: ImagingManifest, request: Request) -> list[tuple[str, str]]:
        series, sop = request.path_params.get("series"), request.path_params.get("instance")
        items = [
            (s.series_uid, i.sop_instance_uid)
            for s, i in manifest.instances()
            if (series is None or s.series_uid == series)
            and (sop is None or i.sop_instance_uid == sop)
        ]
        if not items:
            raise NotFound("no such instance in this exam")
        return items

    def _audit(self, session: Session, manifest: ImagingManifest, what: str) -> None:
        if self.recorder is not None:
            self.recorder.record(
                actor_of(session), Action.IMAGES_VIEW,
                patient_ins(manifest.patient.ins, manifest.patient.ins_oid),
                study_uid=manifest.study.study_uid, detail=what, once_per_window=True,
            )  # fmt: skip
        audit.debug("conso %s by %s: study %s", what, session.subject,
                    manifest.study.study_uid)  # fmt: skip

    # -- searches, from the manifest ------------------------------------------------------

    async def search_studies(self, request: Request) -> Response:
        session = await self.sessions.require(request)
        rows = []
        for kos_uid in list(session.exams.values()):
            try:
                rows.append(qido.study_json(self.book.get(kos_uid), self._base(request)))
            except NotFound:
                continue
        return _qido(request, rows)

    async def search_series(self, request: Request) -> Response:
        _, manifest, _ = await self._exam(request)
        base = self._base(request)
        return _qido(request, [qido.series_json(manifest, s, base) for s in manifest.series])

    async def search_instances(self, request: Request) -> Response:
        _, manifest, _ = await self._exam(request)
        series_uid = request.path_params.get("series")
        rows = [
            qido.instance_json(manifest, s, i, self._base(request))
            for s, i in manifest.instances()
            if series_uid is None or s.series_uid == series_uid
        ]
        return _qido(request, rows)

    # -- metadata: the Source's, cached, URLs rewritten -----------------------------------

    async def retrieve_metadata(self, request: Request) -> Response:
        if not accepts(_accept(request), DICOM_JSON):
            raise NotAcceptable("metadata is available as application/dicom+json only")
        session, manifest, remote = await self._exam(request)
        path = request.url.path.split("/studies/", 1)[1]
        key = f"{remote.kos_uid}/{path}"
        text = self.metadata.get(key)
        if text is None:
            upstream = await self._get(remote, "/studies/" + path, {"Accept": DICOM_JSON})
            body = upstream.content.decode("utf-8")
            json.loads(body)  # a Source that answers garbage is not passed on
            text = body.replace(remote.base, BULK_BASE)
            self.metadata.put(key, text)
        self._prefetch(manifest, remote, self._items(manifest, request))
        self._audit(session, manifest, "metadata")
        return Response(text.replace(BULK_BASE, self._base(request)), media_type=DICOM_JSON)

    def _prefetch(
        self, manifest: ImagingManifest, remote: Remote, items: list[tuple[str, str]]
    ) -> None:
        """Pull what the viewer will ask next into the cache, in the background."""
        study = manifest.study.study_uid
        key = (study, ",".join(sorted({s for s, _ in items})))
        with self._lock:
            if key in self._prefetching:
                return
            self._prefetching.add(key)

        def run() -> None:
            try:
                _, misses = self.images.cached(study, items)
                for _ in self.images.arrivals(study, misses, remote):
                    pass
            except Exception as exc:  # the viewer's own requests will report it
                log.info("background fetch of %s failed: %s", study, exc)
            finally:
                with self._lock:
                    self._prefetching.discard(key)

        threading.Thread(target=run, name="conso-prefetch", daemon=True).start()

    # -- instances and frames -------------------------------------------------------------

    async def retrieve(self, request: Request) -> Response:
        ranges = _accept(request)
        choose_syntax(ranges, {EXPLICIT_VR_LE})
        session, manifest, remote = await self._exam(request)
        items = self._items(manifest, request)
        study = manifest.study.study_uid
        hits, misses = await run_in_threadpool(self.images.cached, study, items)
        self._audit(session, manifest, "retrieve")
        return MultipartDicom(self.images, study, hits, misses, ranges, remote)

    async def retrieve_frames(self, request: Request) -> Response:
        numbers = _frame_numbers(request.path_params["frames"])
        ranges = _accept(request)
        _, manifest, remote = await self._exam(request)
        items = self._items(manifest, request)
        study = manifest.study.study_uid
        hits, _ = await run_in_threadpool(self.images.cached, study, items)
        if hits:
            frames, media, syntax = await run_in_threadpool(
                read_frames, hits[0][1], numbers, ranges
            )
            return _multipart(frames, media, syntax)
        series_items = [(s, i) for s, i in self._items_of_series(manifest, items[0][0])]
        self._prefetch(manifest, remote, series_items)
        return await self.forward(request)

    @staticmethod
    def _items_of_series(manifest: ImagingManifest, series: str) -> list[tuple[str, str]]:
        return [(s.series_uid, i.sop_instance_uid) for s, i in manifest.instances()
                if s.series_uid == series]  # fmt: skip

    # -- straight through -----------------------------------------------------------------

    async def forward(self, request: Request) -> Response:
        """Rendered images, thumbnails, bulk data, uncached frames: streamed from the Source."""
        session, manifest, remote = await self._exam(request)
        path = "/studies/" + request.url.path.split("/studies/", 1)[1]
        query = request.url.query
        headers = {"Accept": ", ".join(request.headers.getlist("accept")) or "*/*"}
        upstream_request = self.http.build_request(
            "GET", remote.base + path + (f"?{query}" if query else ""),
            headers={**remote.headers(), **headers},
        )  # fmt: skip
        upstream = await self._send(upstream_request, stream=True)
        self._audit(session, manifest, "forward")
        return StreamingResponse(
            _body(upstream), status_code=upstream.status_code,
            headers={k: v for k, v in upstream.headers.items() if k.lower() in _FORWARDED},
        )  # fmt: skip

    async def _get(self, remote: Remote, path: str, headers: dict[str, str]) -> httpx.Response:
        request = self.http.build_request(
            "GET", remote.base + path, headers={**remote.headers(), **headers}
        )
        return await self._send(request, stream=False)

    async def _send(self, request: httpx.Request, stream: bool) -> httpx.Response:
        try:
            response = await self.http.send(request, stream=stream)
        except httpx.HTTPError as exc:
            log.warning("Source %s unreachable: %s", request.url.host, exc)
            raise HttpProblem(
                502, "the Source box holding these images cannot be reached"
            ) from None
        if response.is_success:
            return response
        if stream:
            await response.aread()
            await response.aclose()
        status = response.status_code
        log.info("Source %s answered %d to %s", request.url.host, status, request.url.path)
        if status == 404:
            raise NotFound("the Source box no longer offers these images")
        if status == 401:
            raise HttpProblem(401, "your session has expired: log in again")
        if status == 406:
            raise NotAcceptable("the Source box cannot provide that representation")
        raise HttpProblem(502, f"the Source box answered {status}")


def actor_of(session: Session) -> Actor:
    """Who the trail names for a session's access: the patient on their portal, else the
    professional."""
    if session.patient is not None:
        return patient_actor(session.subject, session.claims)
    return professional(session.subject, session.claims)


async def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        await response.aclose()
