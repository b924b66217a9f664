"""The Conso side of ``drimbox box``: wires the history (index), the viewer proxy (Source
boxes), import (the site's PACS), download and the OHIF viewer into HTTP routes; and, with a
patients' provider configured, the patient's portal (``/patient/``) with its own DICOMweb
root (``/patient/dicomweb``) and viewer (``/patient/viewer``)."""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.routing import BaseRoute

from drimbox.adapters.audit.recorder import AccessRecorder
from drimbox.adapters.cache.instance_cache import InstanceCache
from drimbox.adapters.conso_web.auth import SessionAuth, TokenVerifier
from drimbox.adapters.conso_web.contextual import ContextualCalls
from drimbox.adapters.conso_web.pages import ConsoPages
from drimbox.adapters.conso_web.proxy import ConsoProxy, RemoteSourceFetcher
from drimbox.adapters.dimse.scu import send_files
from drimbox.adapters.documents.manifest_codec import KosCodec
from drimbox.adapters.source_web.wado import MetadataCache
from drimbox.adapters.trust.peer_tls import client_context
from drimbox.adapters.xds.client import XdsClient
from drimbox.adapters.xds.conso_index import XdsIndexReader
from drimbox.services.conso.history import HistoryService, ManifestBook
from drimbox.services.conso.importer import Importer
from drimbox.services.conso.sessions import SessionStore
from drimbox.services.conso.sources import AllowedSources
from drimbox.services.source.images import ImageProvider
from drimbox.settings import BoxSettings, ConfigError

log = logging.getLogger(__name__)

PROXY_ROOT = "/conso/dicomweb"
VIEWER = "/viewer"
PATIENT_PROXY_ROOT = "/patient/dicomweb"
PATIENT_VIEWER = "/patient/viewer"


@dataclass
class Conso:
    images: ImageProvider
    importer: Importer
    client: XdsClient
    http: httpx.Client
    cache: InstanceCache
    proxy: ConsoProxy
    routes: list[BaseRoute] = field(default_factory=list)
    closers: list[Callable[[], None]] = field(default_factory=list)
    patients: Any = None
    """The patients' sessions (``PatientSessions``) when the portal is on."""

    def stop(self) -> None:
        self.images.close()
        self.importer.close()
        self.client.close()
        self.http.close()
        self.cache.close()
        for close in self.closers:
            close()


def ohif_dist(settings: BoxSettings) -> Path | None:
    folder = settings.conso.ohif_dir or (
        Path(os.environ["DRIMBOX_OHIF_DIR"]) if os.environ.get("DRIMBOX_OHIF_DIR") else None
    )
    if folder is not None and not (folder / "index.html").is_file():
        raise ConfigError(f"box.conso.ohif_dir: no OHIF build (index.html) in {folder}")
    return folder


def _index_http(settings: BoxSettings) -> httpx.Client | None:
    from drimbox.entrypoints.box import index_http

    return index_http(settings)


def start_conso(
    settings: BoxSettings,
    verifier: TokenVerifier,
    listed: Callable[[str], bool] | None = None,
    recorder: AccessRecorder | None = None,
) -> Conso:
    """``listed``: hosts of the signed whitelist of boxes (also allowed as Sources)."""
    conso = settings.conso
    try:
        allowed = AllowedSources(conso.allowed_sources, listed)
    except ValueError as exc:
        raise ConfigError(f"box.conso.allowed_sources: {exc}") from None
    folder = settings.data_dir / "conso"
    folder.mkdir(parents=True, exist_ok=True)
    cache = InstanceCache(settings.data_dir / "conso-cache", conso.cache_max_bytes)
    tls = settings.tls
    # towards Source boxes: our certificate, and theirs checked against the anchors
    verify = client_context(str(tls.cert) if tls.cert else None,
                            str(tls.key) if tls.key else None,
                            str(tls.trust_anchors) if tls.trust_anchors else None)  # fmt: skip
    http = httpx.Client(timeout=httpx.Timeout(conso.source_timeout), follow_redirects=False,
                        verify=verify)  # fmt: skip
    images = ImageProvider(cache, RemoteSourceFetcher(verify, conso.source_timeout))
    client = XdsClient(
        settings.index_url, timeout=settings.index_timeout, client=_index_http(settings)
    )
    index = XdsIndexReader(client)
    book = ManifestBook()
    auth = SessionAuth(SessionStore(conso.session_idle), verifier, conso.secure_cookie)
    proxy = ConsoProxy(auth, book, allowed, images, PROXY_ROOT,
                       timeout=conso.source_timeout, verify=verify,
                       users_url=conso.users_url, recorder=recorder)  # fmt: skip
    pacs = settings.pacs

    def send(files: list[Path]) -> tuple[int, list[tuple[Path, str]]]:
        report = send_files(files, pacs.host, pacs.port, pacs.aet, pacs.calling_aet)
        return report.sent, report.failed

    importer = Importer(folder / "imports.sqlite", images.provide, send, folder / "work")
    pages = ConsoPages(auth, HistoryService(index, KosCodec(), book), index, proxy, importer,
                       viewer_url=VIEWER + "/viewer", workdir=folder / "work")  # fmt: skip
    pages.recorder = recorder
    contextual = ContextualCalls(folder)
    pages.contextual = contextual
    routes: list[BaseRoute] = [*pages.routes("/conso"), *contextual.routes("/conso"),
                               *proxy.routes(PROXY_ROOT)]  # fmt: skip
    oidc = None
    if conso.oidc.issuer:
        from drimbox.adapters.conso_web.login import OidcLogin
        from drimbox.adapters.oidc.relying_party import OidcClient

        o = conso.oidc
        oidc = OidcClient(o.issuer, o.client_id, o.client_secret, o.redirect_uri,
                          scopes=o.scopes, acr_values=o.acr_values or None,
                          allow_http=o.allow_http)  # fmt: skip
        routes += OidcLogin(oidc, auth).routes("/conso")
        pages.login_url = "/conso/login"
    dist = ohif_dist(settings)
    closers: list[Callable[[], None]] = []
    patients = None
    if conso.patient_oidc.issuer and recorder is not None:
        patients, more = _patient_portal(settings, recorder, index, book, allowed, images,
                                         verify, proxy.metadata, folder, dist, closers)  # fmt: skip
        routes += more
    if dist is not None:
        from drimbox.adapters.viewer.ohif import viewer_routes

        routes += viewer_routes(dist, mount=VIEWER, dicomweb_root=PROXY_ROOT)
    else:
        log.warning("no OHIF build configured (box.conso.ohif_dir): the viewer is not served")
    log.info("Conso: history from %s, %d allowed Source box(es), viewer %s",
             settings.index_url, len(conso.allowed_sources), "on" if dist else "off")  # fmt: skip
    return Conso(images, importer, client, http, cache, proxy, routes, closers, patients)


def _patient_portal(
    settings: BoxSettings, recorder: AccessRecorder, index: XdsIndexReader, book: ManifestBook,
    allowed: AllowedSources, images: ImageProvider, verify: ssl.SSLContext | bool,
    metadata: MetadataCache, folder: Path, dist: Path | None,
    closers: list[Callable[[], None]],
) -> tuple[Any, list[BaseRoute]]:  # fmt: skip
    """The patient's portal: exams from the index (JSON API and ITI-43, with the patient's
    token), the patients' own DICOMweb root and viewer, and their access trail."""
    from drimbox.adapters.conso_web.patient import PatientPortal
    from drimbox.adapters.conso_web.patient_auth import PatientSessions
    from drimbox.adapters.index_api.client import IndexApiClient
    from drimbox.adapters.oidc.relying_party import OidcClient
    from drimbox.services.conso.patient_record import PatientRecord

    conso = settings.conso
    p = conso.patient_oidc
    client = OidcClient(p.issuer, p.client_id, p.client_secret, p.redirect_uri,
                        scopes=p.scopes, acr_values=p.acr_values or None,
                        allow_http=p.allow_http)  # fmt: skip
    index_http = _index_http(settings)  # mutual TLS with the index, as for ITI calls
    api = IndexApiClient(settings.index_url, client=index_http, timeout=settings.index_timeout)
    closers.append(index_http.close if index_http is not None else api.close)
    sessions = PatientSessions(secure_cookie=conso.secure_cookie, users_url=conso.users_url)
    proxy = ConsoProxy(sessions, book, allowed, images, PATIENT_PROXY_ROOT,
                       timeout=conso.source_timeout, verify=verify, users_url=conso.users_url,
                       recorder=recorder, metadata=metadata)  # fmt: skip
    portal = PatientPortal(
        client, recorder, sessions, record=PatientRecord(api, index, KosCodec(), book),
        proxy=proxy, viewer_url=PATIENT_VIEWER + "/viewer" if dist else "",
        workdir=folder / "work",
    )  # fmt: skip
    routes: list[BaseRoute] = [*portal.routes("/patient"), *proxy.routes(PATIENT_PROXY_ROOT)]
    if dist is not None:
        from drimbox.adapters.viewer.ohif import viewer_routes

        routes += viewer_routes(dist, mount=PATIENT_VIEWER, dicomweb_root=PATIENT_PROXY_ROOT,
                                name="DRIMbox — espace patient")  # fmt: skip
    return sessions, routes
