"""Worker processes sharing a listening port (SO_REUSEPORT): Python runs one request or
association at a time per GIL, so serving in parallel means several processes. The parent
supervises them: a worker that dies is restarted, a worker whose parent is gone stops."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

log = logging.getLogger(__name__)

Target = Callable[..., None]
"""(payload, worker number, parent pid, *extra): a module-level function (spawned, so
picklable); ``extra`` may hold sockets and shared arrays, which the spawn start method hands
over to the child."""


def _exit_with_parent(parent_pid: int) -> None:
    # a worker must not outlive the parent (killed with SIGKILL, say): it would keep
    # serving the shared port with a stale configuration
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)


def _bootstrap(
    target: Target, payload: str, number: int, parent_pid: int, extra: tuple[object, ...]
) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    target(payload, number, parent_pid, *extra)


class WorkerPool:
    """Starts ``count`` workers running ``target(payload, number, parent_pid, *extra)``."""

    def __init__(
        self, target: Target, payload: str, count: int, name: str, extra: tuple[object, ...] = ()
    ) -> None:
        self.target, self.payload, self.count, self.name = target, payload, count, name
        self.extra = extra
        self.ctx = multiprocessing.get_context("spawn")
        self.procs: list[BaseProcess] = []
        self.stopping = threading.Event()

    def _spawn(self, number: int) -> BaseProcess:
        proc = self.ctx.Process(
            target=_bootstrap,
            args=(self.target, self.payload, number, os.getpid(), self.extra),
            name=f"drimbox-{self.name}-{number}",
            daemon=True,
        )
        proc.start()
        return proc

    def start(self) -> None:
        self.procs = [self._spawn(i) for i in range(self.count)]
        threading.Thread(target=self._supervise, name=f"{self.name}-supervisor",
                         daemon=True).start()  # fmt: skip

    def _supervise(self) -> None:
        while not self.stopping.wait(1.0):
            for i, proc in enumerate(self.procs):
                if not proc.is_alive() and not self.stopping.is_set():
                    log.error("%s worker %d exited (%s); restarting", self.name, i, proc.exitcode)
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
