"""Fill the Source's image cache ahead of demand: pull published exams from the site's PACS.

When the Source publishes an exam (or a consumer starts reading one), it asks for a
prefetch; background workers then retrieve what the cache lacks, so that WADO-RS requests
from other sites are served from disk instead of waiting for the PACS.

- Dedupe: a request is reduced to the instances neither cached nor already queued or being
  retrieved; requests for one study are merged and retrieved together (one call, which the
  retrieve adapter spreads over its associations). A series listed without instances is
  retrieved whole, deduplicated only against another such request.
- One study is retrieved by one worker at a time; new requests for it wait their turn.
- PACS unavailable, or instances that did not arrive (still on their way to the PACS?):
  the study is retried after ``retry_delays`` (the last one repeats), at most
  ``max_attempts`` times, for what is still missing then. New requests for a study waiting
  to be retried wait with it. Any other error (the PACS refused the retrieve, the study is
  unknown) is logged and dropped: retrying as is will not help.
- Nothing is persisted: the queue is a hint, a restart forgets it and the next request (or
  a cache miss) asks again.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from drimbox.domain.errors import DrimboxError, InvalidIdentifier, PeerUnavailable
from drimbox.domain.identifiers import is_valid_uid

log = logging.getLogger(__name__)

SeriesSelection = tuple[str, Sequence[str]]
"""(Series Instance UID, SOP Instance UIDs); no SOP Instance UID: the whole series."""


class CachedInstances(Protocol):
    """What the prefetcher asks of the cache (``adapters.cache.InstanceCache``)."""

    def missing(self, study: str, series: str, sop_uids: Iterable[str]) -> set[str]: ...


class RetrieveStudy(Protocol):
    """Pull instances of one study into the cache (``adapters.dimse.retrieve.retrieve`` with
    its PACS address and cache bound). Raises PeerUnavailable when the PACS cannot be
    reached; other DrimboxErrors are final."""

    def __call__(self, study_uid: str, series: Sequence[SeriesSelection]) -> object: ...


@dataclass(frozen=True, slots=True)
class PrefetchStats:
    queued_studies: int
    running_studies: int
    retrieved: int
    """Retrievals that ended without an error."""
    retried: int
    failed: int
    """Retrievals dropped: final error, or PACS still unavailable after max_attempts."""


Work = dict[str, frozenset[str] | None]
"""Series UID -> SOP Instance UIDs wanted (None: the whole series)."""


def _merge(into: Work, series_uid: str, sops: frozenset[str] | None) -> None:
    if series_uid not in into:
        into[series_uid] = sops
        return
    have = into[series_uid]
    into[series_uid] = None if have is None or sops is None else have | sops


class Prefetcher:
    """Background retrieval into the cache; see the module docstring."""

    def __init__(
        self,
        retrieve: RetrieveStudy,
        cache: CachedInstances,
        *,
        workers: int = 1,
        retry_delays: Sequence[float] = (5.0, 30.0, 120.0, 600.0),
        max_attempts: int = 10,
    ) -> None:
        if workers < 1 or not retry_delays or max_attempts < 1:
            raise ValueError("workers, retry_delays and max_attempts must be positive")
        self._retrieve = retrieve
        self._cache = cache
        self._workers = workers
        self._delays = tuple(retry_delays)
        self._max_attempts = max_attempts
        self._cond = threading.Condition()
        self._queued: dict[str, Work] = {}  # insertion order is FIFO order
        self._not_before: dict[str, float] = {}  # study -> monotonic time of its retry
        self._timers: list[tuple[float, str]] = []  # heap of the same, to sleep until due
        self._attempts: dict[str, int] = {}
        self._running: dict[str, Work] = {}
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._retrieved = self._retried = self._failed = 0

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> Prefetcher:
        with self._cond:
            if self._threads:
                return self
            self._stopping = False
            for n in range(self._workers):
                thread = threading.Thread(target=self._work, name=f"prefetch-{n}", daemon=True)
                self._threads.append(thread)
                thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the workers after their current retrieval; what is queued is forgotten."""
        with self._cond:
            self._stopping = True
            threads, self._threads = self._threads, []
            if self._queued:
                log.info("prefetch stopped with %d studies still queued", len(self._queued))
            self._cond.notify_all()
        for thread in threads:
            thread.join(timeout)

    def __enter__(self) -> Prefetcher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- requests -------------------------------------------------------------------------

    def prefetch(self, study_uid: str, series: Sequence[SeriesSelection]) -> bool:
        """Queue what the cache lacks and nobody asked for yet; False if that is nothing.
        Returns at once: the retrieval happens in the background."""
        uids = [study_uid, *(s for s, _ in series), *(i for _, sops in series for i in sops)]
        bad = next((u for u in uids if not is_valid_uid(u)), None)
        if bad is not None:
            raise InvalidIdentifier(f"{str(bad)[:80]!r} is not a valid DICOM UID")
        # the cache is asked outside the lock: a directory listing per series
        needed: list[tuple[str, frozenset[str] | None]] = []
        for series_uid, sops in series:
            wanted = frozenset(self._cache.missing(study_uid, series_uid, sops)) if sops else None
            if wanted is None or wanted:  # else all cached
                needed.append((series_uid, wanted))
        added: Work = {}
        with self._cond:
            for series_uid, wanted in needed:
                fresh = self._unasked(study_uid, series_uid, wanted)
                if fresh is None or fresh:
                    _merge(added, series_uid, fresh)
            for series_uid, fresh in added.items():
                _merge(self._queued.setdefault(study_uid, {}), series_uid, fresh)
            if added:
                self._cond.notify_all()  # wait_idle shares the condition: wake every worker
        if added:
            log.debug("prefetch of study %s: %d series queued", study_uid, len(added))
        return bool(added)

    def _unasked(
        self, study_uid: str, series_uid: str, wanted: frozenset[str] | None
    ) -> frozenset[str] | None:
        """The part of ``wanted`` neither queued nor running (None: the whole series)."""
        for table in (self._queued, self._running):
            work = table.get(study_uid, {})
            if series_uid not in work:
                continue
            have = work[series_uid]
            if have is None:
                return frozenset()  # the whole series is on its way
            if wanted is not None:  # a whole series is more than any list: keep asking
                wanted = wanted - have
        return wanted

    # -- waiting and figures --------------------------------------------------------------

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued (retries included) or running; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queued or self._running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stats(self) -> PrefetchStats:
        with self._cond:
            return PrefetchStats(
                len(self._queued), len(self._running), self._retrieved, self._retried,
                self._failed,
            )  # fmt: skip

    # -- workers --------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                study = self._next_study()
                if study is None:
                    return
                work = self._queued.pop(study)
                self._not_before.pop(study, None)
                self._running[study] = work
            try:
                self._run(study, work)
            finally:
                with self._cond:
                    del self._running[study]
                    self._cond.notify_all()

    def _next_study(self) -> str | None:
        """The oldest study that is due and not running; waits for one. None: stopping."""
        while not self._stopping:
            now = time.monotonic()
            for study in self._queued:
                if study not in self._running and self._not_before.get(study, 0.0) <= now:
                    return study
            while self._timers and self._timers[0][0] <= now:
                heapq.heappop(self._timers)
            wake = self._timers[0][0] - now if self._timers else None
            self._cond.wait(wake)
        return None

    def _run(self, study: str, work: Work) -> None:
        try:
            selection = self._still_missing(study, work)
            if not selection:
                return  # cached meanwhile (by an earlier request or a read-through)
            self._retrieve(study, selection)
            # what the PACS did not send (still arriving there?) is asked again later
            short = sum(len(sops) for _, sops in self._still_missing(study, work))
        except PeerUnavailable as exc:
            self._retry_later(study, work, f"PACS unavailable ({exc})")
            return
        except DrimboxError as exc:
            log.warning("prefetch of study %s dropped: %s", study, exc)
            self._count_failure(study)
            return
        except Exception:
            log.exception("prefetch of study %s dropped: unexpected error", study)
            self._count_failure(study)
            return
        if short:
            self._retry_later(study, work, f"{short} instances did not arrive")
            return
        with self._cond:
            self._attempts.pop(study, None)
            self._retrieved += 1

    def _still_missing(self, study: str, work: Work) -> list[SeriesSelection]:
        selection: list[SeriesSelection] = []
        for series_uid, sops in work.items():
            if sops is None:
                selection.append((series_uid, []))
            elif still := self._cache.missing(study, series_uid, sops):
                selection.append((series_uid, sorted(still)))
        return selection

    def _count_failure(self, study: str) -> None:
        with self._cond:
            self._attempts.pop(study, None)
            self._failed += 1

    def _retry_later(self, study: str, work: Work, why: str) -> None:
        with self._cond:
            attempt = self._attempts.get(study, 0) + 1
            if attempt >= self._max_attempts:
                log.error("prefetch of study %s dropped after %d attempts: %s", study, attempt, why)
                self._attempts.pop(study, None)
                self._failed += 1
                return
            self._attempts[study] = attempt
            self._retried += 1
        try:  # what arrived before the failure is kept
            left = dict(self._still_missing(study, work))
        except OSError:
            left = {}
        delay = self._delays[min(attempt, len(self._delays)) - 1]
        log.warning(
            "prefetch of study %s: %s; attempt %d of %d in %g s",
            study, why, attempt + 1, self._max_attempts, delay,
        )  # fmt: skip
        if not left:
            return
        with self._cond:
            queued = self._queued.setdefault(study, {})
            for series_uid, sops in left.items():
                _merge(queued, series_uid, frozenset(sops) if sops else None)
            due = time.monotonic() + delay
            self._not_before[study] = due
            heapq.heappush(self._timers, (due, study))
            self._cond.notify_all()
