"""``drimbox index``: the national index (IHE XDS.b registry + repository, JSON API).

Startup migrates the database to the current schema, then serves:
``POST /registry``, ``/repository``, ``/xds`` (SOAP 1.2, ITI-18/41/43/57),
``GET /api/...`` (JSON for web front ends, ``/api/openapi.json``) and ``GET /health``.
"""

from __future__ import annotations

import logging

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from drimbox.adapters.index_api.routes import IndexApi
from drimbox.adapters.storage.index_db import IndexDb, open_index_db
from drimbox.adapters.xds.context import XdsServices
from drimbox.adapters.xds.routes import SoapEndpoint, soap_routes
from drimbox.domain.access import ActorKind, CallerIdentity
from drimbox.log import configure_logging
from drimbox.services.index.access import DmpAccessRules
from drimbox.services.index.journal import IndexContext
from drimbox.services.index.query import QueryService
from drimbox.services.index.register import RegisterService
from drimbox.services.index.update import UpdateService
from drimbox.settings import CallerSettings, IndexSettings

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


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def create_index_app(db: IndexDb, settings: IndexSettings) -> Starlette:
    """Wire the store, the access rules and the services into one ASGI app."""
    ctx = IndexContext(db, DmpAccessRules(), settings.repository_unique_id)
    services = XdsServices(RegisterService(ctx), QueryService(ctx), UpdateService(ctx))
    caller = default_caller(settings.default_caller)

    def caller_for(request: Request) -> CallerIdentity:
        return caller  # the trust layer will derive it from the request's credentials

    soap = SoapEndpoint(services, caller_for, settings.max_body_bytes)
    api = IndexApi(services.query, caller_for)
    routes = [*soap_routes(soap), *api.routes(), Route("/health", _health, methods=["GET"])]
    return Starlette(routes=routes)


def run_index(settings: IndexSettings) -> int:
    configure_logging(settings.logging.level, settings.logging.json_format)
    db = open_index_db(settings.db_url)
    log.info("index database %s migrated", db.engine.url.render_as_string(hide_password=True))
    app = create_index_app(db, settings)
    log.info("XDS endpoint on http://%s:%d/registry", settings.host, settings.port)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
    try:
        uvicorn.Server(config).run()
    finally:
        db.close()
    return 0
