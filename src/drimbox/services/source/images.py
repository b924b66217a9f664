"""Instances for retrieval requests: from the cache, else pulled from the PACS once.

A miss starts one fill per series (what the request lacks of it); every request that needs
that series waits on the same fill and gets each instance as soon as it lands in the cache,
in arrival order, so the first bytes leave before the PACS has sent the last one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from drimbox.domain.errors import DrimboxError, NotFound, PeerUnavailable

log = logging.getLogger(__name__)

Item = tuple[str, str]
"""(Series Instance UID, SOP Instance UID)."""


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
    ) -> None:
        self.store = store
        self.fetch = fetch
        self.wait_timeout = wait_timeout
        self._fills: dict[tuple[str, str], _Fill] = {}
        self._changed = threading.Condition()
        self._pool = ThreadPoolExecutor(parallel_series, thread_name_prefix="fill")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def cached(
        self, study: str, items: Iterable[Item]
    ) -> tuple[list[tuple[Item, Path]], list[Item]]:
        """Split ``items`` into cached (with their file) and missing."""
        hits: list[tuple[Item, Path]] = []
        misses: list[Item] = []
        for item in items:
            path = self.store.path(study, *item)
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
        pending: dict[Item, _Fill] = {}
        by_series: dict[str, set[str]] = {}
        for series, sop in missing:
            by_series.setdefault(series, set()).add(sop)
        for series, sops in by_series.items():
            fill = self._join(study, series, frozenset(sops), context)
            pending.update({(series, sop): fill for sop in sops})
        deadline = time.monotonic() + self.wait_timeout
        while pending:
            ready = self._wait(pending, deadline)
            for item in ready:
                del pending[item]
                path = self.store.path(study, *item)
                if path is None:  # evicted already: a cache far too small for the load
                    raise InstanceUnavailable(f"instance {item[1]} was evicted before use")
                yield item, path

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
