"""``drimbox box``: the site's DRIMbox. Wires the Source publication path:

RIS --HL7 MLLP--> inbox --C-FIND PACS, KOS--> outbox --ITI-41/57--> index
PACS --C-STORE IOCM note--> inbox (replacement or depublication)

plus the HTTP side (admin page; the Source WADO-RS and the Conso come with their issues).
"""

from __future__ import annotations

import logging
import signal
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from drimbox.adapters.audit.recorder import open_recorder
from drimbox.adapters.box_web.admin import admin_routes
from drimbox.adapters.cache.instance_cache import InstanceCache
from drimbox.adapters.dicomweb.errors import EXCEPTION_HANDLERS
from drimbox.adapters.dimse.iocm_scp import IocmListener, serve_iocm
from drimbox.adapters.dimse.pacs_query import PacsAddress, find_exam
from drimbox.adapters.documents.manifest_codec import KosCodec
from drimbox.adapters.hl7.listener import serve_mllp
from drimbox.adapters.hl7.mllp import MllpServer
from drimbox.adapters.hl7.parse import parse_message
from drimbox.adapters.http_limits import BodyLimit
from drimbox.adapters.pacs_fetch import CGetFetcher, DicomwebFetcher
from drimbox.adapters.source_web.wado import SourceWado, TokenVerifier
from drimbox.adapters.trust.introspection import IntrospectionUnavailable, TokenIntrospector
from drimbox.adapters.trust.peer_tls import client_context
from drimbox.adapters.trust.whitelist_refresh import WhitelistRefresher
from drimbox.adapters.xds import submission_builder as sb
from drimbox.adapters.xds.client import XdsClient
from drimbox.adapters.xds.source_gateway import Assertions, XdsSourceGateway
from drimbox.domain.manifest import ExamInventory
from drimbox.domain.report import ReportMessage
from drimbox.domain.xds import Code
from drimbox.entrypoints.conso import Conso, start_conso
from drimbox.entrypoints.workers import WorkerPool
from drimbox.log import configure_logging
from drimbox.services.source.images import ImageProvider
from drimbox.services.source.inbox import IOCM_EVENT, Accepted, Inbox
from drimbox.services.source.outbox import Operation, Outbox, PublicationState
from drimbox.services.source.prefetch import Prefetcher
from drimbox.services.source.published import PublishedContent
from drimbox.services.source.publisher import Preparer, Sender, SourcePipeline, SourcePolicy
from drimbox.settings import BoxSettings, ConfigError

log = logging.getLogger(__name__)


class _WakingInbox:
    """The inbox as the HL7 listener sees it: accepting a message wakes the pipeline."""

    def __init__(self, inbox: Inbox, wake: Any) -> None:
        self.inbox, self.wake = inbox, wake

    def accept(self, raw: bytes, report: ReportMessage) -> Accepted:
        accepted = self.inbox.accept(raw, report)
        self.wake()
        return accepted

    def reject(self, raw: bytes, reason: str, *, ack: str, control_id: str = "") -> object:
        return self.inbox.reject(raw, reason, ack=ack, control_id=control_id)


def submission_source(settings: BoxSettings) -> sb.SubmissionSource:
    site = settings.site
    return sb.SubmissionSource(
        source_id=site.source_id,
        healthcare_facility_type=Code(site.facility_type.code, site.facility_type.system,
                                      site.facility_type.display),
        practice_setting=Code(site.practice_setting.code, site.practice_setting.system,
                              site.practice_setting.display),
    )  # fmt: skip


def load_signing(
    settings: BoxSettings,
) -> tuple[sb.SubmissionSigner | None, Assertions | None]:
    """The structure's key: XAdES signer of submission sets and VIHF assertions of calls."""
    if settings.signing_key is None and settings.signing_chain is None:
        log.warning("no signing key configured: submissions unsigned, calls without VIHF")
        return None, None
    if settings.signing_key is None or settings.signing_chain is None:
        raise ConfigError("box.signing_key and box.signing_chain go together")
    from drimbox.adapters.trust import dsg
    from drimbox.adapters.trust.chain import load_trust_anchors
    from drimbox.adapters.trust.errors import TrustError
    from drimbox.adapters.trust.pki import load_key
    from drimbox.adapters.trust.vihf import CodedValue
    from drimbox.adapters.xds.source_assertion import SourceAssertions, SourceIdentity

    try:
        key = load_key(settings.signing_key)
        chain = load_trust_anchors(settings.signing_chain)
    except (OSError, ValueError, TrustError) as exc:
        raise ConfigError(f"box.signing_key/box.signing_chain: {exc}") from None

    def sign(
        signature_unique_id: str,
        submission_set_unique_id: str,
        documents: Sequence[tuple[str, bytes]],
    ) -> bytes:
        return dsg.sign_submission_set(
            signature_id=signature_unique_id, submission_set_unique_id=submission_set_unique_id,
            documents=[dsg.SignedDocument(uid, data) for uid, data in documents],
            key=key, chain=chain, signing_time=datetime.now(UTC),
        )  # fmt: skip

    site = settings.site
    sector = CodedValue(site.facility_type.code, site.facility_type.system,
                        site.facility_type.display)  # fmt: skip
    identity = SourceIdentity(lps_id=site.source_id, lps_homologation=site.lps_homologation,
                              structure_id=site.structure_id, structure_name=site.name,
                              sector=sector)  # fmt: skip
    return sign, SourceAssertions(identity, key, chain)


def _mllp_tls(settings: BoxSettings) -> ssl.SSLContext | None:
    if settings.mllp_tls_cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.mllp_tls_cert, settings.mllp_tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"box.mllp_tls_cert: {exc}") from None
    return context


@dataclass
class SourceBox:
    """A running Source: listeners and pipeline (the HTTP app is served by the caller)."""

    settings: BoxSettings
    inbox: Inbox
    outbox: Outbox
    pipeline: SourcePipeline
    mllp: MllpServer
    iocm: IocmListener | None
    client: XdsClient
    cache: InstanceCache
    images: ImageProvider
    prefetcher: Prefetcher | None = None
    routes: list[BaseRoute] = field(default_factory=list)
    conso: Conso | None = None
    source_pool: WorkerPool | None = None
    whitelist: WhitelistRefresher | None = None

    def stop(self) -> None:
        if self.whitelist is not None:
            self.whitelist.stop()
        if self.source_pool is not None:
            self.source_pool.stop()
        self.mllp.stop()
        self.images.close()
        if self.conso is not None:
            self.conso.stop()
        if self.iocm is not None:
            self.iocm.stop()
        self.pipeline.stop()
        if self.prefetcher is not None:
            self.prefetcher.stop()
        self.cache.close()
        self.client.close()
        self.inbox.close()


def start_source(settings: BoxSettings) -> SourceBox:
    folder = settings.data_dir / "source"
    folder.mkdir(parents=True, exist_ok=True)
    inbox = Inbox(folder, parse_message)
    outbox = Outbox(inbox)
    pacs = settings.pacs

    def finder(study_uid: str, accession: str) -> ExamInventory:
        return find_exam(pacs.host, pacs.port, pacs.aet, pacs.calling_aet, study_uid=study_uid,
                         timeout=pacs.timeout)  # fmt: skip

    policy = SourcePolicy(
        wado_base=settings.wado_base, retrieve_location_uid=settings.site.source_id,
        publish_reports=settings.publish_reports, images_retry=settings.images_retry,
        images_deadline=settings.images_deadline, backoff_initial=settings.backoff_initial,
        backoff_max=settings.backoff_max, institution_name=settings.site.name,
    )  # fmt: skip
    source = submission_source(settings)
    client = XdsClient(
        settings.index_url,
        timeout=settings.index_timeout,
        client=index_http(settings),
        source=source,
    )
    signer, assertions = load_signing(settings)
    gateway = XdsSourceGateway(client, source, signer, assertions)
    codec = KosCodec()
    cache = InstanceCache(settings.data_dir / "cache", settings.cache_max_bytes)
    fetcher = pacs_fetcher(settings, cache)
    images = ImageProvider(cache, fetcher)
    prefetcher = None
    if settings.prefetch:
        prefetcher = Prefetcher(fetcher.study, cache).start()

    def on_published(op: Operation) -> None:
        if prefetcher is not None:  # what the manifest lists is what consumers will ask for
            manifest = codec.decode(op.kos)
            prefetcher.prefetch(op.study_uid, [(s.series_uid, [i.sop_instance_uid for i in
                                                               s.instances])
                                               for s in manifest.series])  # fmt: skip

    pipeline = SourcePipeline(
        Preparer(inbox, outbox, finder, codec, policy),
        Sender(outbox, gateway, parse_message, policy, on_published),
    ).start()
    mllp = serve_mllp(settings.host, settings.mllp_port, _WakingInbox(inbox, pipeline.wake),
                      _mllp_tls(settings))  # fmt: skip

    def on_note(note_uid: str, studies: frozenset[str], raw: bytes) -> None:
        for study_uid in sorted(studies):
            pub = outbox.publication(study_uid)
            if pub is None or pub.state is PublicationState.DELETED:
                log.info("rejection note %s: study %s not published here", note_uid, study_uid)
                continue
            inbox.accept_event(source="IOCM", control_id=f"{note_uid}/{study_uid}",
                               patient=pub.patient, event=IOCM_EVENT, study_uid=study_uid,
                               raw=raw)  # fmt: skip
        pipeline.wake()

    iocm = None
    if settings.dicom_port:
        iocm = serve_iocm(settings.host, settings.dicom_port, settings.dicom_aet, on_note,
                          [settings.pacs.aet])  # fmt: skip
    log.info("Source: MLLP %s:%d, IOCM %s, index %s, Retrieve URLs %s", settings.host,
             mllp.port, f"{settings.dicom_aet}@{settings.host}:{iocm.port}" if iocm else "off",
             settings.index_url, settings.wado_base)  # fmt: skip
    verifier = token_verifier(settings)
    recorder = open_recorder(settings.data_dir / "trail", settings.base_url)
    routes: list[BaseRoute] = []
    source_pool = None
    if settings.source_port:
        from drimbox.entrypoints.source_workers import start_source_workers

        source_pool = start_source_workers(settings)
    else:
        routes += SourceWado(PublishedContent(outbox, codec), images, verifier,
                             settings.wado_base, recorder=recorder).routes("/dicomweb")  # fmt: skip
    whitelist = start_whitelist(settings)
    conso = None
    if settings.conso.enabled:
        conso = start_conso(settings, verifier, listed_boxes(whitelist), recorder)
        routes += conso.routes
    routes += admin(settings, inbox, outbox, pipeline.wake, cache, conso, whitelist, verifier)
    return SourceBox(settings, inbox, outbox, pipeline, mllp, iocm, client, cache, images,
                     prefetcher, routes, conso, source_pool, whitelist)  # fmt: skip


def admin(
    settings: BoxSettings, inbox: Inbox, outbox: Outbox, wake: Callable[[], None],
    cache: InstanceCache, conso: Conso | None, whitelist: WhitelistRefresher | None,
    verifier: TokenVerifier,
) -> list[Route]:  # fmt: skip
    """The admin page and API: the links to the PACS and the index checked, the caches, the
    whitelist, the counters from the access trail and the imports; professionals named in
    ``admin_national_ids`` let in from other machines (Conso session or bearer token)."""
    from drimbox.adapters.audit.jsonl_trail import TRAIL_FILE
    from drimbox.adapters.box_web.admin import (
        AdminGate,
        BoxHealth,
        LinkProbe,
        TrailCounter,
        c_echo,
        http_ping,
    )
    from drimbox.adapters.conso_web.auth import SessionAuth
    from drimbox.services.conso.sessions import SessionStore

    pacs = settings.pacs
    timeout = min(pacs.timeout, 5.0)  # a health check, not a transfer: the page must answer
    probes = [LinkProbe(
        "pacs", "PACS (C-ECHO)", f"{pacs.aet}@{pacs.host}:{pacs.port}",
        lambda: c_echo(pacs.host, pacs.port, pacs.aet, pacs.calling_aet, timeout),
    )]  # fmt: skip
    if pacs.dicomweb_url:
        url = pacs.dicomweb_url.rstrip("/")
        probes.append(LinkProbe("pacs_dicomweb", "PACS (DICOMweb)", url,
                                http_ping(f"{url}/studies?limit=1")))  # fmt: skip
    health_url = f"{settings.index_url.rstrip('/')}/health"
    probes.append(LinkProbe("index", "Index national", health_url,
                            http_ping(health_url, lambda: index_http(settings))))  # fmt: skip
    caches: dict[str, InstanceCache] = {"source": cache}
    if conso is not None:
        caches["conso"] = conso.cache
    health = BoxHealth(
        probes, caches, whitelist.holder if whitelist else None,
        TrailCounter(settings.data_dir / "trail" / TRAIL_FILE),
        settings.data_dir / "conso" / "imports.sqlite" if conso is not None else None,
    )  # fmt: skip
    sessions = None
    if settings.admin_national_ids:  # the Conso's professionals, or tokens alone without it
        sessions = conso.proxy.sessions if conso is not None else SessionAuth(
            SessionStore(), verifier, settings.conso.secure_cookie)  # fmt: skip
    gate = AdminGate(frozenset(settings.admin_national_ids), sessions)
    return admin_routes(inbox, outbox, wake, health=health, gate=gate)


def pacs_fetcher(settings: BoxSettings, cache: InstanceCache) -> CGetFetcher | DicomwebFetcher:
    pacs = settings.pacs
    if pacs.dicomweb_url:
        from drimbox.adapters.dicomweb.fetch import DicomwebPacs

        return DicomwebFetcher(DicomwebPacs(pacs.dicomweb_url, timeout=pacs.timeout), cache)
    address = PacsAddress(pacs.host, pacs.port, pacs.aet, pacs.calling_aet, pacs.timeout)
    return CGetFetcher(address, cache, pacs.retrieve_associations)


class _NoIdentityProvider:
    def verify(self, token: str) -> object:
        raise IntrospectionUnavailable("no Pro Santé Connect introspection endpoint configured")


def index_http(settings: BoxSettings) -> httpx.Client | None:
    """The HTTP client for index calls: the box's certificate presented (mutual TLS) and the
    index's checked against the box's anchors, when the box has a certificate."""
    tls = settings.tls
    if tls.cert is None:
        return None
    context = client_context(str(tls.cert), str(tls.key) if tls.key else None,
                             str(tls.trust_anchors) if tls.trust_anchors else None)  # fmt: skip
    return httpx.Client(timeout=settings.index_timeout, verify=context)


def start_whitelist(settings: BoxSettings) -> WhitelistRefresher | None:
    """The signed whitelist of boxes, kept current, when one is configured."""
    wl = settings.whitelist
    if not (wl.file or wl.url):
        return None
    from drimbox.adapters.trust.errors import TrustError
    from drimbox.adapters.trust.whitelist_refresh import whitelist_holder

    assert wl.trust_anchors is not None  # the settings validator makes sure
    try:
        return whitelist_holder(wl.file, wl.url, wl.trust_anchors, wl.signer_cn,
                                wl.refresh_seconds)[1]  # fmt: skip
    except TrustError as exc:
        raise ConfigError(f"box.whitelist.trust_anchors: {exc}") from None


def listed_boxes(refresher: WhitelistRefresher | None) -> Callable[[str], bool] | None:
    if refresher is None:
        return None
    holder = refresher.holder
    return lambda host: holder.is_allowed(host, "box")


def token_verifier(settings: BoxSettings) -> TokenVerifier:
    psc = settings.psc
    if not psc.introspection_url:
        log.warning("box.psc.introspection_url unset: WADO-RS from other boxes is refused")
        return _NoIdentityProvider()
    return TokenIntrospector(psc.introspection_url, psc.client_id, psc.client_secret,
                             cache_seconds=psc.cache_seconds,
                             required_acr=psc.required_acr or None)  # fmt: skip


def create_app(box: SourceBox) -> Starlette:
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "messages": box.inbox.counts(),
                             "operations": box.outbox.counts()})  # fmt: skip

    # forms and JSON only on this port: a larger body gets 413 before anything reads it
    return Starlette(routes=[Route("/health", health), *box.routes],
                     exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
                     middleware=[Middleware(BodyLimit)])  # fmt: skip


def run_box(settings: BoxSettings) -> int:
    configure_logging(settings.logging.level, settings.logging.json_format)
    box = start_source(settings)
    try:
        if settings.http_port:
            from drimbox.entrypoints.source_workers import tls_options

            config = uvicorn.Config(create_app(box), host=settings.host, port=settings.http_port,
                                    log_level="warning", access_log=False, loop="uvloop",
                                    **tls_options(settings, client_certs=False))  # fmt: skip
            log.info("box HTTP on http://%s:%d/ (admin: /admin)", settings.host,
                     settings.http_port)  # fmt: skip
            uvicorn.Server(config).run()
        else:
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            stop.wait()
    finally:
        box.stop()
    return 0
