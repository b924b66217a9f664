"""``drimbox pacs``: the embedded PACS process tree.

The parent process recovers the store, serves DICOMweb (uvicorn) and supervises DIMSE worker
processes that share the DIMSE port with SO_REUSEPORT: pynetdicom runs each association in a
thread under one GIL, so parallel associations only scale across processes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.process import BaseProcess

import uvicorn

from drimbox.adapters.dicomweb.server import create_app
from drimbox.adapters.dimse.contexts import QR_CLASSES
from drimbox.adapters.dimse.scp import PacsServiceProvider, serve
from drimbox.adapters.dimse.upper_layer import UpperLayerAcceptor
from drimbox.adapters.storage.pacs_store import PacsStore
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


def _exit_with_parent(parent_pid: int) -> None:
    # a worker must not outlive the parent (killed with SIGKILL, say): it would keep
    # serving the shared port with a stale configuration
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


def _dimse_worker(settings_json: str, number: int, parent_pid: int) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    settings = PacsSettings.model_validate_json(settings_json)
    configure_logging(settings.logging.level, settings.logging.json_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    provider = PacsServiceProvider(_open_store(settings), settings.move_destinations)
    if os.getppid() != parent_pid:
        return  # the parent is already gone: do not start serving its port
    _serve_dimse(settings, provider, number)


class WorkerPool:
    """Starts the DIMSE workers and restarts one that dies."""

    def __init__(self, settings: PacsSettings, count: int) -> None:
        self.settings = settings
        self.count = count
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.stopping = threading.Event()

    def _spawn(self, number: int) -> BaseProcess:
        proc = self.ctx.Process(
            target=_dimse_worker,
            args=(self.settings.model_dump_json(by_alias=True), number, os.getpid()),
            name=f"drimbox-dimse-{number}",
            daemon=True,
        )
        proc.start()
        return proc

    def start(self) -> None:
        self.procs = [self._spawn(i) for i in range(self.count)]
        threading.Thread(target=self._supervise, name="dimse-supervisor", daemon=True).start()

    def _supervise(self) -> None:
        while not self.stopping.wait(1.0):
            for i, proc in enumerate(self.procs):
                if not proc.is_alive() and not self.stopping.is_set():
                    log.error("DIMSE worker %d exited (%s); restarting", i, proc.exitcode)
                    self.procs[i] = self._spawn(i)

    def stop(self) -> None:
        self.stopping.set()
        for proc in self.procs:
            proc.terminate()
        deadline = time.monotonic() + 5
        for proc in self.procs:
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()


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
    pool = WorkerPool(settings, workers)
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
