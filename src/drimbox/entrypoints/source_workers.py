"""The Source WADO-RS on a port of its own (``box.source_port``), served by worker processes
sharing it (SO_REUSEPORT): what other boxes call scales with the cores, while the main
process keeps the pipeline, the Conso and the admin page. Each worker opens the box's
archive and image cache (SQLite and files, shared between processes) read-mostly."""

from __future__ import annotations

import logging
import os
import socket
import ssl
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from drimbox.adapters.audit.recorder import open_recorder
from drimbox.adapters.cache.instance_cache import InstanceCache
from drimbox.adapters.dicomweb.errors import EXCEPTION_HANDLERS
from drimbox.adapters.documents.manifest_codec import KosCodec
from drimbox.adapters.hl7.parse import parse_message
from drimbox.adapters.http_limits import BodyLimit, limited_protocol
from drimbox.adapters.source_web.wado import SourceWado
from drimbox.adapters.trust.peer_tls import PeerPolicy
from drimbox.entrypoints.workers import WorkerPool
from drimbox.log import configure_logging
from drimbox.services.source.images import ImageProvider
from drimbox.services.source.inbox import Inbox
from drimbox.services.source.outbox import Outbox
from drimbox.services.source.published import PublishedContent
from drimbox.settings import BoxSettings

log = logging.getLogger(__name__)


def source_app(settings: BoxSettings, outbox: Outbox, images: ImageProvider) -> Starlette:
    from drimbox.entrypoints.box import listed_boxes, start_whitelist, token_verifier

    # each worker keeps its own copy of the whitelist current
    listed = listed_boxes(start_whitelist(settings))
    peers = PeerPolicy(settings.tls.allowed_boxes, listed) if settings.tls.cert else None
    recorder = open_recorder(settings.data_dir / "trail", settings.base_url)
    wado = SourceWado(PublishedContent(outbox, KosCodec()), images, token_verifier(settings),
                      settings.wado_base, peers=peers, recorder=recorder)  # fmt: skip

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "pid": os.getpid()})

    return Starlette(routes=[Route("/health", health), *wado.routes("/dicomweb")],
                     exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
                     middleware=[Middleware(BodyLimit)])  # fmt: skip


def _source_worker(settings_json: str, number: int, parent_pid: int) -> None:
    from drimbox.entrypoints.box import pacs_fetcher

    settings = BoxSettings.model_validate_json(settings_json)
    configure_logging(settings.logging.level, settings.logging.json_format)
    outbox = Outbox(Inbox(settings.data_dir / "source", parse_message))
    cache = InstanceCache(settings.data_dir / "cache", settings.cache_max_bytes, owner=False)
    images = ImageProvider(cache, pacs_fetcher(settings, cache))
    sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.source_port))
    sock.listen(2048)
    if os.getppid() != parent_pid:
        return  # the parent is already gone: do not serve its port
    log.info("Source WADO-RS worker %d on %s:%d", number, settings.host, settings.source_port)
    config = uvicorn.Config(source_app(settings, outbox, images), log_level="warning",
                            access_log=False, loop="uvloop", **tls_options(settings))  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])


def tls_options(settings: BoxSettings, client_certs: bool = True) -> dict[str, Any]:
    """uvicorn options: mutual TLS on the Source port (the caller's certificate reaches the
    application), server TLS only on the users' port; plain HTTP when no certificate. Either
    way the protocol bounds what a slow or greedy client holds (``adapters/http_limits``)."""
    tls = settings.tls
    if tls.cert is None or not (client_certs or tls.users_https):
        return {"http": limited_protocol()}
    options: dict[str, Any] = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
    if client_certs:
        options.update(ssl_ca_certs=str(tls.trust_anchors), ssl_cert_reqs=ssl.CERT_REQUIRED,
                       http=limited_protocol(peer_certificate=True))  # fmt: skip
    else:
        options["http"] = limited_protocol()
    return options


def start_source_workers(settings: BoxSettings) -> WorkerPool:
    count = settings.source_workers or max(2, os.cpu_count() or 1)
    pool = WorkerPool(_source_worker, settings.model_dump_json(by_alias=True), count, "source")
    pool.start()
    return pool
