"""The prefetcher with a fake cache and a fake retrieve: dedupe, merging, retries, waiting."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence

import pytest

from drimbox.domain.errors import DrimboxError, InvalidIdentifier, PeerUnavailable
from drimbox.services.source.prefetch import Prefetcher, SeriesSelection

STUDY, SERIES, OTHER_SERIES = "1.2.3", "1.2.3.1", "1.2.3.2"


def sops(*numbers: int, series: str = SERIES) -> list[str]:
    return [f"{series}.{n}" for n in numbers]


class FakeCache:
    def __init__(self) -> None:
        self.held: set[tuple[str, str, str]] = set()
        self.lock = threading.Lock()

    def missing(self, study: str, series: str, sop_uids: Iterable[str]) -> set[str]:
        with self.lock:
            return {s for s in sop_uids if (study, series, s) not in self.held}

    def add(self, study: str, series: str, sop_uids: Iterable[str]) -> None:
        with self.lock:
            self.held |= {(study, series, s) for s in sop_uids}


class FakeRetrieve:
    """Records calls; fills the cache; fails as scripted; can be held at the gate."""

    def __init__(self, cache: FakeCache, failures: Sequence[BaseException | None] = ()) -> None:
        self.cache = cache
        self.calls: list[tuple[str, dict[str, list[str]]]] = []
        self.failures = list(failures)
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.partial = 0  # instances stored before a scripted failure
        self.short_calls = 0  # calls that store only ``partial`` instances, and return

    def __call__(self, study_uid: str, series: Sequence[SeriesSelection]) -> object:
        self.calls.append((study_uid, {s: list(i) for s, i in series}))
        self.entered.set()
        self.gate.wait(10)
        failure = self.failures.pop(0) if self.failures else None
        short = self.short_calls > 0
        self.short_calls -= 1
        for series_uid, instances in series:
            keep = instances[: self.partial] if failure or short else instances
            self.cache.add(study_uid, series_uid, keep or [f"{series_uid}.whole"])
        if failure is not None:
            raise failure
        return None


@pytest.fixture
def cache() -> FakeCache:
    return FakeCache()


@pytest.fixture
def started() -> Iterator[list[Prefetcher]]:
    prefetchers: list[Prefetcher] = []
    yield prefetchers
    for p in prefetchers:
        p.stop()


def make(
    retrieve: FakeRetrieve, cache: FakeCache, started: list[Prefetcher], **kwargs: object
) -> Prefetcher:
    prefetcher = Prefetcher(retrieve, cache, retry_delays=(0.05, 0.1), **kwargs)  # type: ignore[arg-type]
    started.append(prefetcher)
    return prefetcher


def test_retrieves_what_is_missing_only(cache: FakeCache, started: list[Prefetcher]) -> None:
    cache.add(STUDY, SERIES, sops(1, 2))
    retrieve = FakeRetrieve(cache)
    prefetcher = make(retrieve, cache, started).start()
    assert prefetcher.prefetch(STUDY, [(SERIES, sops(1, 2, 3, 4))])
    assert prefetcher.wait_idle(5)
    assert retrieve.calls == [(STUDY, {SERIES: sops(3, 4)})]
    assert not prefetcher.prefetch(STUDY, [(SERIES, sops(1, 2, 3, 4))]), "all cached now"
    assert prefetcher.wait_idle(5)
    assert len(retrieve.calls) == 1
    assert prefetcher.stats().retrieved == 1


def test_work_running_or_queued_is_not_asked_twice(
    cache: FakeCache, started: list[Prefetcher]
) -> None:
    retrieve = FakeRetrieve(cache)
    retrieve.gate.clear()
    prefetcher = make(retrieve, cache, started).start()
    assert prefetcher.prefetch(STUDY, [(SERIES, sops(1, 2))])
    assert retrieve.entered.wait(5)
    assert not prefetcher.prefetch(STUDY, [(SERIES, sops(1, 2))]), "running already"
    assert prefetcher.prefetch(STUDY, [(SERIES, sops(2, 3))]), "3 is new"
    assert not prefetcher.prefetch(STUDY, [(SERIES, sops(3))]), "queued already"
    assert not prefetcher.wait_idle(0.1)
    assert prefetcher.stats().running_studies == 1
    retrieve.gate.set()
    assert prefetcher.wait_idle(5)
    assert retrieve.calls == [(STUDY, {SERIES: sops(1, 2)}), (STUDY, {SERIES: sops(3)})]


def test_requests_for_one_study_are_merged(cache: FakeCache, started: list[Prefetcher]) -> None:
    retrieve = FakeRetrieve(cache)
    prefetcher = make(retrieve, cache, started)  # not started: requests pile up
    assert prefetcher.prefetch(STUDY, [(SERIES, sops(1))])
    assert prefetcher.prefetch(STUDY, [(SERIES, sops(2)), (OTHER_SERIES, [])])
    assert prefetcher.prefetch("1.2.4", [(SERIES, sops(9))])
    assert prefetcher.stats().queued_studies == 2
    prefetcher.start()
    assert prefetcher.wait_idle(5)
    assert retrieve.calls == [
        (STUDY, {SERIES: sops(1, 2), OTHER_SERIES: []}),
        ("1.2.4", {SERIES: sops(9)}),
    ]


def test_a_whole_series_is_deduplicated_against_itself(
    cache: FakeCache, started: list[Prefetcher]
) -> None:
    retrieve = FakeRetrieve(cache)
    prefetcher = make(retrieve, cache, started)
    assert prefetcher.prefetch(STUDY, [(SERIES, [])])
    assert not prefetcher.prefetch(STUDY, [(SERIES, [])])
    assert not prefetcher.prefetch(STUDY, [(SERIES, sops(1))]), "the whole series covers it"
    prefetcher.start()
    assert prefetcher.wait_idle(5)
    assert retrieve.calls == [(STUDY, {SERIES: []})]


def test_peer_unavailable_is_retried_for_what_is_still_missing(
    cache: FakeCache, started: list[Prefetcher]
) -> None:
    retrieve = FakeRetrieve(cache, failures=[PeerUnavailable("PACS down"), None])
    retrieve.partial = 2  # two instances arrived before the association broke
    prefetcher = make(retrieve, cache, started).start()
    prefetcher.prefetch(STUDY, [(SERIES, sops(1, 2, 3, 4))])
    assert prefetcher.wait_idle(5)
    assert retrieve.calls == [(STUDY, {SERIES: sops(1, 2, 3, 4)}), (STUDY, {SERIES: sops(3, 4)})]
    stats = prefetcher.stats()
    assert (stats.retried, stats.retrieved, stats.failed) == (1, 1, 0)
    assert not cache.missing(STUDY, SERIES, sops(1, 2, 3, 4))


def test_instances_that_did_not_arrive_are_asked_again(
    cache: FakeCache, started: list[Prefetcher]
) -> None:
    retrieve = FakeRetrieve(cache)
    retrieve.partial, retrieve.short_calls = 1, 2  # the PACS has one more each time
    prefetcher = make(retrieve, cache, started).start()
    prefetcher.prefetch(STUDY, [(SERIES, sops(1, 2, 3)), (OTHER_SERIES, [])])
    assert prefetcher.wait_idle(5)
    assert retrieve.calls == [
        (STUDY, {SERIES: sops(1, 2, 3), OTHER_SERIES: []}),
        (STUDY, {SERIES: sops(2, 3), OTHER_SERIES: []}),
        (STUDY, {SERIES: sops(3), OTHER_SERIES: []}),
    ]
    assert prefetcher.stats().retried == 2


def test_gives_up_after_max_attempts(cache: FakeCache, started: list[Prefetcher]) -> None:
    retrieve = FakeRetrieve(cache, failures=[PeerUnavailable("down")] * 10)
    prefetcher = make(retrieve, cache, started, max_attempts=3).start()
    prefetcher.prefetch(STUDY, [(SERIES, sops(1))])
    assert prefetcher.wait_idle(5)
    assert len(retrieve.calls) == 3
    assert prefetcher.stats().failed == 1


def test_other_errors_are_not_retried(cache: FakeCache, started: list[Prefetcher]) -> None:
    retrieve = FakeRetrieve(cache, failures=[DrimboxError("C-GET failed: 0xC000"), ValueError()])
    prefetcher = make(retrieve, cache, started).start()
    prefetcher.prefetch(STUDY, [(SERIES, sops(1))])
    prefetcher.prefetch("1.2.4", [(SERIES, sops(1))])
    assert prefetcher.wait_idle(5)
    assert len(retrieve.calls) == 2
    assert prefetcher.stats().failed == 2
    # the worker survived both: new work is still done
    prefetcher.prefetch("1.2.5", [(SERIES, sops(1))])
    assert prefetcher.wait_idle(5)
    assert prefetcher.stats().retrieved == 1


def test_several_workers_take_several_studies(cache: FakeCache, started: list[Prefetcher]) -> None:
    retrieve = FakeRetrieve(cache)
    retrieve.gate.clear()
    prefetcher = make(retrieve, cache, started, workers=2).start()
    prefetcher.prefetch("1.2.4", [(SERIES, sops(1))])
    prefetcher.prefetch("1.2.5", [(SERIES, sops(1))])
    prefetcher.prefetch("1.2.6", [(SERIES, sops(1))])
    assert not prefetcher.wait_idle(0.2)
    assert prefetcher.stats().running_studies == 2
    retrieve.gate.set()
    assert prefetcher.wait_idle(5)
    assert {study for study, _ in retrieve.calls} == {"1.2.4", "1.2.5", "1.2.6"}


def test_invalid_uids_are_refused(cache: FakeCache, started: list[Prefetcher]) -> None:
    prefetcher = make(FakeRetrieve(cache), cache, started)
    with pytest.raises(InvalidIdentifier):
        prefetcher.prefetch("1.2.3/../4", [(SERIES, sops(1))])
    with pytest.raises(InvalidIdentifier):
        prefetcher.prefetch(STUDY, [(SERIES, ["1.2.x"])])
    assert prefetcher.stats().queued_studies == 0


def test_stop_ends_the_workers(cache: FakeCache) -> None:
    prefetcher = Prefetcher(FakeRetrieve(cache), cache, workers=2).start()
    threads = [t for t in threading.enumerate() if t.name.startswith("prefetch-")]
    assert len(threads) >= 2
    prefetcher.stop(timeout=5)
    assert not any(t.is_alive() for t in threads)
