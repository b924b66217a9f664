"""``drimbox pacs``: the embedded PACS process tree.

The parent process recovers the store, serves DICOMweb (uvicorn) and supervises DIMSE worker
processes: Python runs each association in a thread under one GIL, so parallel associations
only scale across processes. The workers share one listening socket and a worker takes a new
association only while no other worker has fewer: four associations land on four workers.
(SO_REUSEPORT spreads them by a hash instead, and two associations drawn by one worker share
its GIL while another worker idles: a third less throughput, at random.)
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

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


def _serve_dimse(
    settings: PacsSettings, provider: PacsServiceProvider, number: int,
    listener: socket.socket, load: Any, ready: Any,
) -> None:  # fmt: skip
    # query/retrieve associations are relayed to pynetdicom on a private loopback port
    internal = serve(provider, "127.0.0.1", 0, settings.aet, [], settings.max_pdu)
    relay = internal.server_address[:2]
    front = UpperLayerAcceptor(
        settings.aet, provider.store_request, (str(relay[0]), int(relay[1])), QR_CLASSES[1:],
        settings.allowed_calling_aets, settings.max_pdu, settings.network_timeout,
        settings.max_associations,
    )  # fmt: skip
    log.info("DIMSE worker %d on %s:%d as %s", number, settings.host, settings.port, settings.aet)
    serve_balanced(listener, load, ready, number, front.handle)


def serve_balanced(
    listener: socket.socket, load: Any, ready: Any, me: int,
    handle: Callable[[socket.socket, tuple[str, int]], None],
) -> None:  # fmt: skip
    """Accept on the shared ``listener`` only while no worker has fewer associations than
    this one (``load``: a shared array of counts), one thread per association. Several
    workers may wait in ``accept`` at once; the kernel gives each connection to one."""
    with load.get_lock():
        load[me] = 0  # a restarted worker starts empty
    with ready.get_lock():
        ready.value += 1
        if ready.value >= len(load):  # the last worker ready opens the port (restarts: again)
            listener.listen(128)
    while True:
        while load[me] > min(load[:]):
            time.sleep(0.002)
        try:
            conn, address = listener.accept()
        except OSError as exc:
            log.warning("DIMSE accept failed: %s", exc)
            time.sleep(0.1)
            continue
        with load.get_lock():
            load[me] += 1
        threading.Thread(target=_association, args=(conn, address, handle, load, me),
                         daemon=True).start()  # fmt: skip


def _association(
    conn: socket.socket, address: tuple[str, int],
    handle: Callable[[socket.socket, tuple[str, int]], None], load: Any, me: int,
) -> None:  # fmt: skip
    try:
        handle(conn, address)
    except Exception:
        log.exception("association from %s failed", address[0])
    finally:
        conn.close()
        with load.get_lock():
            load[me] -= 1


def _dimse_worker(
    settings_json: str, number: int, parent_pid: int, listener: socket.socket, load: Any,
    ready: Any,
) -> None:  # fmt: skip
    settings = PacsSettings.model_validate_json(settings_json)
    configure_logging(settings.logging.level, settings.logging.json_format)
    provider = PacsServiceProvider(_open_store(settings), settings.move_destinations)
    if os.getppid() != parent_pid:
        return  # the parent is already gone: do not start serving its port
    _serve_dimse(settings, provider, number, listener, load, ready)


def _listener(host: str, port: int) -> socket.socket:
    """Bound here, listening once a worker is ready to accept (``serve_balanced``): until
    then a client finds the port closed rather than waiting on a worker that is starting."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _exit_on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def run_pacs(settings: PacsSettings) -> int:
    # until uvicorn installs its own handlers, a SIGTERM must still run ``pool.stop()``:
    # dying outright would leave workers serving the port
    signal.signal(signal.SIGTERM, _exit_on_signal)
    configure_logging(settings.logging.level, settings.logging.json_format)
    store = _open_store(settings)
    store.recover()
    # two per core: a worker blocked on the disk (fsync) leaves its core to another
    workers = settings.workers or max(2, min(2 * (os.cpu_count() or 1), 8))
    listener = _listener(settings.host, settings.port)
    spawn = multiprocessing.get_context("spawn")
    load, ready = spawn.Array("i", workers), spawn.Value("i", 0)
    pool = WorkerPool(_dimse_worker, settings.model_dump_json(by_alias=True), workers, "dimse",
                      (listener, load, ready))  # fmt: skip
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
