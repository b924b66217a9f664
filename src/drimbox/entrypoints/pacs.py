"""``drimbox pacs``: the embedded PACS process tree.

The parent process recovers the store, serves DICOMweb (uvicorn) and supervises DIMSE worker
processes that share the DIMSE port with SO_REUSEPORT: pynetdicom runs each association in a
thread under one GIL, so parallel associations only scale across processes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import uvicorn

from drimbox.adapters.dicomweb.server import create_app
from drimbox.adapters.dimse.contexts import QR_CLASSES
from drimbox.adapters.dimse.scp import PacsServiceProvider, serve
from drimbox.adapters.dimse.upper_layer import UpperLayerAcceptor
from drimbox.adapters.storage.pacs_store import PacsStore
from drimbox.entrypoints.workers import WorkerPool
from drimbox.log import configure_logging
from drimbox.settings import PacsSettings

log = logging.getLogger("drimbox.pacs")


def _open_store(settings: PacsSettings) -> PacsStore:
    return PacsStore(settings.storage, settings.duplicates, settings.fsync)


def _serve_dimse(settings: PacsSettings, provider: PacsServiceProvider, number: int) -> None:
    # query/retrieve associations are relayed to pynetdicom on a private loopback port
    internal = serve(provider, "127.0.0.1", 0, settings.aet, [], settings.max_pdu)
    relay = internal.server_address[:2]
    front = UpperLayerAcceptor(
        settings.aet, provider.store_request, (str(relay[0]), int(relay[1])), QR_CLASSES[1:],
        settings.allowed_calling_aets, settings.max_pdu, settings.network_timeout,
        settings.max_associations,
    )  # fmt: skip
    server = front.make_server(settings.host, settings.port)
    log.info("DIMSE worker %d on %s:%d as %s", number, settings.host, settings.port, settings.aet)
    server.serve_forever()


def _dimse_worker(settings_json: str, number: int, parent_pid: int) -> None:
    settings = PacsSettings.model_validate_json(settings_json)
    configure_logging(settings.logging.level, settings.logging.json_format)
    provider = PacsServiceProvider(_open_store(settings), settings.move_destinations)
    if os.getppid() != parent_pid:
        return  # the parent is already gone: do not start serving its port
    _serve_dimse(settings, provider, number)


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def run_pacs(settings: PacsSettings) -> int:
    # until uvicorn installs its own handlers, a SIGTERM must still run ``pool.stop()``:
    # dying outright would leave workers serving the port
    signal.signal(signal.SIGTERM, _exit_on_signal)
    configure_logging(settings.logging.level, settings.logging.json_format)
    store = _open_store(settings)
    store.recover()
    # two per core: associations are spread by a hash (SO_REUSEPORT), and one worker that
    # draws several of them shares a GIL; more workers even the draw out
    workers = settings.workers or max(2, min(2 * (os.cpu_count() or 1), 8))
    pool = WorkerPool(_dimse_worker, settings.model_dump_json(by_alias=True), workers, "dimse")
    try:
        pool.start()
        log.info(
            "PACS %s: DIMSE %s:%d (%d worker(s)), storage %s",
            settings.aet, settings.host, settings.port, workers, store.files.root,
        )  # fmt: skip
        if settings.http_port:
            config = uvicorn.Config(
                create_app(store),
                host=settings.host,
                port=settings.http_port,
                log_level="warning",
                access_log=False,
                loop="uvloop",
                http="httptools",
            )
            log.info("DICOMweb on http://%s:%d/", settings.host, settings.http_port)
            uvicorn.Server(config).run()
        else:
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            stop.wait()
    finally:
        pool.stop()
    return 0
