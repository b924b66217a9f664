"""``drimbox index``: the national index (IHE XDS.b registry + repository, JSON API).

Startup migrates the database to the current schema, then serves:
``POST /registry``, ``/repository``, ``/xds`` (SOAP 1.2, ITI-18/41/43/57),
``GET /api/...`` (JSON for web front ends, ``/api/openapi.json``) and ``GET /health``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import ssl
import threading
from typing import Any

import uvicorn
from lxml import etree
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from drimbox.adapters.http_limits import limited_protocol
from drimbox.adapters.index_api.routes import IndexApi
from drimbox.adapters.storage.index_db import IndexDb, make_engine, open_index_db
from drimbox.adapters.trust.chain import load_trust_anchors
from drimbox.adapters.trust.index_caller import IndexAuthenticator
from drimbox.adapters.trust.introspection import TokenIntrospector
from drimbox.adapters.trust.patient_caller import PatientAwareAuthenticator, with_patients
from drimbox.adapters.xds.context import XdsServices
from drimbox.adapters.xds.routes import SoapEndpoint, soap_routes
from drimbox.domain.access import ActorKind, CallerIdentity
from drimbox.log import configure_logging
from drimbox.services.index.access import DmpAccessRules
from drimbox.services.index.journal import IndexContext
from drimbox.services.index.query import QueryService
from drimbox.services.index.register import RegisterService
from drimbox.services.index.update import UpdateService
from drimbox.settings import CallerSettings, ConfigError, IndexSettings

log = logging.getLogger("drimbox.index")


def default_caller(settings: CallerSettings) -> CallerIdentity:
    return CallerIdentity(
        who=settings.who,
        kind=ActorKind(settings.kind),
        rpps=settings.rpps,
        profession=settings.profession,
        structure=settings.structure,
        role=settings.role,
        patient_id=settings.patient_id,
    )


def index_authenticator(settings: IndexSettings) -> PatientAwareAuthenticator:
    """Who calls: a professional (token or VIHF), a patient (their own token), or the
    development default caller when allowed."""
    trust = settings.trust
    tokens = None
    if trust.introspection_url:
        tokens = TokenIntrospector(trust.introspection_url, trust.client_id, trust.client_secret)
    anchors = load_trust_anchors(trust.vihf_trust_anchors) if trust.vihf_trust_anchors else []
    default = default_caller(settings.default_caller) if trust.allow_default_caller else None
    if default is not None:
        log.warning("index: calls without credentials run as %r (development setting)",
                    default.who)  # fmt: skip
    return with_patients(IndexAuthenticator(tokens=tokens, vihf_anchors=anchors, default=default))


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_index_app(db: IndexDb, settings: IndexSettings) -> Starlette:
    """Wire the store, the access rules and the services into one ASGI app."""
    ctx = IndexContext(db, DmpAccessRules(), settings.repository_unique_id)
    services = XdsServices(RegisterService(ctx), QueryService(ctx), UpdateService(ctx))
    authenticator = index_authenticator(settings)

    def caller_for(request: Request, soap_header: etree._Element | None = None) -> CallerIdentity:
        return authenticator.caller(request.headers, soap_header)

    soap = SoapEndpoint(services, caller_for, settings.max_body_bytes)
    api = IndexApi(services.query, caller_for)
    routes = [*soap_routes(soap), *api.routes(), Route("/health", _health, methods=["GET"])]
    return Starlette(routes=routes)


def _serve(settings: IndexSettings, sock: socket.socket | None) -> None:
    """One HTTP server process: its own engine and app, on the shared socket if given."""
    configure_logging(settings.logging.level, settings.logging.json_format)
    db = IndexDb(make_engine(settings.db_url))
    config = uvicorn.Config(
        create_index_app(db, settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http=limited_protocol(),  # slow and greedy clients bounded (adapters/http_limits)
        **index_tls_options(settings),
    )
    try:
        uvicorn.Server(config).run(sockets=[sock] if sock is not None else None)
    finally:
        db.close()


def index_tls_options(settings: IndexSettings) -> dict[str, Any]:
    """uvicorn options: mutual TLS when the index has a certificate (boxes must present
    theirs, chaining to the configured roots)."""
    tls = settings.tls
    if tls.cert is None:
        return {}
    if tls.key is None or tls.client_trust_anchors is None:
        raise ConfigError("index.tls.cert needs index.tls.key and index.tls.client_trust_anchors")
    return {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key),
            "ssl_ca_certs": str(tls.client_trust_anchors),
            "ssl_cert_reqs": ssl.CERT_REQUIRED}  # fmt: skip


def _worker(settings_json: str, sock: socket.socket) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    _serve(IndexSettings.model_validate_json(settings_json), sock)


def run_index(settings: IndexSettings) -> int:
    configure_logging(settings.logging.level, settings.logging.json_format)
    db = open_index_db(settings.db_url)  # migrates once, before any worker starts
    log.info("index database %s migrated", db.engine.url.render_as_string(hide_password=True))
    db.close()
    workers = settings.workers or (os.cpu_count() or 1)
    log.info(
        "XDS endpoint on %s://%s:%d/registry (%d process(es))",
        "https" if settings.tls.cert else "http", settings.host, settings.port, workers,
    )  # fmt: skip
    if workers == 1:
        _serve(settings, None)
        return 0
    # Python runs one request at a time per process: parsing and validating a submission is
    # CPU work, so more cores need more processes, all accepting on one socket
    sock = socket.create_server((settings.host, settings.port), reuse_port=False, backlog=2048)
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_worker, args=(settings.model_dump_json(by_alias=True), sock))
        for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        if not all(p.is_alive() for p in procs):
            log.error("an index worker exited; stopping")
            break
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.join(10)
    sock.close()
    return 0
