"""Instances for retrieval requests: from the cache, else pulled from the PACS once.

A miss starts one fill per series (what the request lacks of it); every request that needs
that series waits on the same fill and gets each instance as soon as it arrives, in arrival
order, so the first bytes leave before the PACS has sent the last one.

Write-behind: an arrived instance is handed to the streaming responses from memory and
written to the disk cache later, once no fill and no stream is running (or when the bytes
held pass a budget). On this kind of machine writing fresh files costs as much CPU as the
whole transfer; deferring it takes it off the path a professional waits on. Whoever needs a
file (frames, metadata, ZIP, import) gets it written on demand.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Generator, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from drimbox.domain.errors import DrimboxError, NotFound, PeerUnavailable

log = logging.getLogger(__name__)

Item = tuple[str, str]
"""(Series Instance UID, SOP Instance UID)."""
Key = tuple[str, str, str]
"""(Study, Series, SOP Instance UID)."""


class InstanceStore(Protocol):
    def path(self, study: str, series: str, sop: str) -> Path | None: ...

    def put(self, study: str, series: str, sop: str, data: bytes) -> Path: ...


class SeriesFetcher(Protocol):
    """Pulls ``sops`` of one series from the PACS, calling ``store(sop, part10)`` for each.

    ``context`` is what the request that started the fill passed to ``arrivals`` (the
    Conso's remote Source and the professional's token; nothing for a PACS)."""

    def __call__(
        self,
        study: str,
        series: str,
        sops: Collection[str],
        store: Callable[[str, bytes], None],
        context: Any = None,
    ) -> None: ...


class InstanceUnavailable(DrimboxError):
    """The PACS did not deliver an instance the manifest lists (deleted since?)."""


class _Fill:
    def __init__(self, study: str, series: str, sops: frozenset[str], context: Any) -> None:
        self.study, self.series, self.sops, self.context = study, series, sops, context
        self.arrived: set[str] = set()
        self.done = False
        self.error: DrimboxError | None = None


class ImageProvider:
    def __init__(
        self,
        store: InstanceStore,
        fetch: SeriesFetcher,
        *,
        parallel_series: int = 4,
        wait_timeout: float = 300.0,
        write_behind_bytes: int = 512 << 20,
    ) -> None:
        """``write_behind_bytes``: arrived instances held in memory until written (0: write
        each one before handing it over)."""
        self.store = store
        self.fetch = fetch
        self.wait_timeout = wait_timeout
        self.write_behind_bytes = write_behind_bytes
        self._fills: dict[tuple[str, str], _Fill] = {}
        self._changed = threading.Condition()
        self._pool = ThreadPoolExecutor(parallel_series, thread_name_prefix="fill")
        self._unwritten: dict[Key, bytes] = {}
        self._unwritten_bytes = 0
        self._queue: deque[Key] = deque()
        self._streams = 0
        self._write_lock = threading.Lock()
        self._closed = False
        self._writer: threading.Thread | None = None
        if write_behind_bytes:
            self._writer = threading.Thread(target=self._write_behind, name="cache-writer",
                                            daemon=True)  # fmt: skip
            self._writer.start()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def cached(
        self, study: str, items: Iterable[Item]
    ) -> tuple[list[tuple[Item, Path]], list[Item]]:
        """Split ``items`` into cached (with their file) and missing."""
        hits: list[tuple[Item, Path]] = []
        misses: list[Item] = []
        for item in items:
            path = self.store.path(study, *item)
            if path is None and (study, *item) in self._unwritten:
                path = self._write((study, *item))
            if path is None:
                misses.append(item)
            else:
                hits.append((item, path))
        return hits, misses

    def provide(
        self, study: str, items: list[Item], context: Any = None
    ) -> Iterator[tuple[Item, Path]]:
        """Every one of ``items``: the cached ones first, then the others as they arrive."""
        hits, misses = self.cached(study, items)
        yield from hits
        if misses:
            yield from self.arrivals(study, misses, context)

    def arrivals(
        self, study: str, missing: list[Item], context: Any = None
    ) -> Iterator[tuple[Item, Path]]:
        """The ``missing`` instances, each as soon as it is cached (blocking; a thread's job).

        Raises ``PeerUnavailable`` when the PACS cannot be reached, ``InstanceUnavailable``
        when it answered without some of them.
        """
        for item, found in self.arrivals_data(study, missing, context, stream=False):
            if not isinstance(found, Path):
                path = self._write((study, *item))
                if path is None:
                    raise InstanceUnavailable(f"instance {item[1]} was evicted before use")
                found = path
            yield item, found

    def arrivals_data(
        self, study: str, missing: list[Item], context: Any = None, *, stream: bool = True
    ) -> Generator[tuple[Item, Path | bytes]]:
        """Like :meth:`arrivals`, but an instance not yet written comes as its bytes: for a
        response streaming them on (``stream``: the cache writes wait until it ends)."""
        pending: dict[Item, _Fill] = {}
        by_series: dict[str, set[str]] = {}
        for series, sop in missing:
            by_series.setdefault(series, set()).add(sop)
        if stream:
            with self._changed:
                self._streams += 1
        try:
            for series, sops in by_series.items():
                fill = self._join(study, series, frozenset(sops), context)
                pending.update({(series, sop): fill for sop in sops})
            deadline = time.monotonic() + self.wait_timeout
            while pending:
                ready = self._wait(pending, deadline)
                for item in ready:
                    del pending[item]
                    data = self._unwritten.get((study, *item))
                    if data is not None:
                        yield item, data
                        continue
                    path = self.store.path(study, *item)
                    if path is None:  # evicted already: a cache far too small for the load
                        raise InstanceUnavailable(f"instance {item[1]} was evicted before use")
                    yield item, path
        finally:
            if stream:
                with self._changed:
                    self._streams -= 1
                    self._changed.notify_all()

    # -- write-behind -------------------------------------------------------------------------

    def _hold(self, key: Key, data: bytes) -> bool:
        """Keep ``data`` for the writer; False when over budget (then write it now)."""
        with self._changed:
            if self._writer is None or self._unwritten_bytes + len(data) > self.write_behind_bytes:
                return False
            if key not in self._unwritten:
                self._unwritten_bytes += len(data)
                self._queue.append(key)
            self._unwritten[key] = data
            return True

    def _write(self, key: Key) -> Path | None:
        """Write ``key`` if it is still held; its cache file (None if gone meanwhile)."""
        with self._write_lock:  # one writer per file: a reader never sees it half written
            data = self._unwritten.get(key)
            if data is None:
                return self.store.path(*key)
            path = self.store.put(*key, data)
            with self._changed:
                if self._unwritten.get(key) is data:
                    del self._unwritten[key]
                    self._unwritten_bytes -= len(data)
            return path

    def _write_behind(self) -> None:
        while True:
            with self._changed:
                while not self._closed and (
                    not self._queue
                    or ((self._fills or self._streams)
                        and self._unwritten_bytes < self.write_behind_bytes // 2)
                ):  # fmt: skip
                    self._changed.wait(0.5)
                if self._closed:
                    return
                key = self._queue.popleft()
            try:
                self._write(key)
            except Exception:  # a cache: the instance is fetched again when asked
                log.exception("writing instance %s to the cache failed", key[2])
                with self._changed:
                    data = self._unwritten.pop(key, None)
                    if data is not None:
                        self._unwritten_bytes -= len(data)

    def _join(self, study: str, series: str, sops: frozenset[str], context: Any) -> _Fill:
        with self._changed:
            fill = self._fills.get((study, series))
            if fill is not None and not fill.done and sops <= fill.sops:
                return fill
            fill = _Fill(study, series, sops, context)
            self._fills[(study, series)] = fill
        self._pool.submit(self._run, fill)
        return fill

    def _wait(self, pending: dict[Item, _Fill], deadline: float) -> list[Item]:
        with self._changed:
            while True:
                ready = [item for item, fill in pending.items() if item[1] in fill.arrived]
                if ready:
                    return ready
                failed = [(item, fill) for item, fill in pending.items() if fill.done]
                if failed:
                    item, fill = failed[0]
                    if fill.error is not None:
                        raise fill.error
                    raise InstanceUnavailable(
                        f"the PACS did not deliver instance {item[1]} of series {item[0]}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerUnavailable("the PACS is too slow to deliver the instances")
                self._changed.wait(left)

    def _run(self, fill: _Fill) -> None:
        started = time.monotonic()

        def store(sop: str, data: bytes) -> None:
            if sop not in fill.sops:
                return  # not asked for: a manifest never widens through the PACS
            if not self._hold((fill.study, fill.series, sop), bytes(data)):
                self.store.put(fill.study, fill.series, sop, data)
            with self._changed:
                fill.arrived.add(sop)
                self._changed.notify_all()

        try:
            self.fetch(fill.study, fill.series, fill.sops, store, fill.context)
        except DrimboxError as exc:
            fill.error = exc if not isinstance(exc, NotFound) else InstanceUnavailable(str(exc))
            log.warning("fill of series %s from the PACS failed: %s", fill.series, exc)
        except Exception as exc:
            fill.error = PeerUnavailable(f"retrieval from the PACS failed: {exc}")
            log.exception("fill of series %s from the PACS failed", fill.series)
        finally:
            with self._changed:
                fill.done = True
                if self._fills.get((fill.study, fill.series)) is fill:
                    del self._fills[(fill.study, fill.series)]
                self._changed.notify_all()
            log.info(
                "filled series %s: %d/%d instances in %.2f s", fill.series, len(fill.arrived),
                len(fill.sops), time.monotonic() - started,
            )  # fmt: skip
