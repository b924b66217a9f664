"""Cache fills: one pull per series however many requests wait, instances handed over as they
arrive, failures reported to every waiter."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pytest

from drimbox.domain.errors import PeerUnavailable
from drimbox.services.source.images import ImageProvider, InstanceUnavailable


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, study: str, series: str, sop: str) -> Path | None:
        p = self.root / f"{series}-{sop}"
        return p if p.exists() else None

    def put(self, study: str, series: str, sop: str, data: bytes) -> Path:
        p = self.root / f"{series}-{sop}"
        p.write_bytes(data)
        return p


class SlowPacs:
    def __init__(self, delay: float = 0.05, fail: Exception | None = None, skip: str = "") -> None:
        self.calls: list[tuple[str, frozenset[str], Any]] = []
        self.delay, self.fail, self.skip = delay, fail, skip
        self.lock = threading.Lock()

    def __call__(self, study: str, series: str, sops: Collection[str],
                 store: Callable[[str, bytes], None], context: Any = None) -> None:  # fmt: skip
        with self.lock:
            self.calls.append((series, frozenset(sops), context))
        if self.fail is not None:
            raise self.fail
        for sop in sorted(sops):
            time.sleep(self.delay)
            if sop != self.skip:
                store(sop, sop.encode())
        store("9.9.9", b"not asked for")  # a PACS answering more than asked


def test_concurrent_requests_share_one_fill_and_stream(tmp_path: Path) -> None:
    pacs = SlowPacs()
    provider = ImageProvider(Store(tmp_path), pacs)
    items = [("1.1", f"1.2.{i}") for i in range(5)]
    results: list[list[str]] = []
    firsts: list[float] = []
    started = time.monotonic()

    def consume() -> None:
        got = []
        for (_, sop), path in provider.arrivals("1", items, context="token"):
            if not got:
                firsts.append(time.monotonic() - started)
            assert path.read_bytes() == sop.encode()
            got.append(sop)
        results.append(got)

    threads = [threading.Thread(target=consume) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(pacs.calls) == 1 and pacs.calls[0][2] == "token"
    assert all(sorted(r) == sorted(s for _, s in items) for r in results) and len(results) == 3
    assert max(firsts) < 5 * 0.05  # the first instance before the last was pulled
    assert not (tmp_path / "1.1-9.9.9").exists()  # nothing beyond what was asked is cached
    hits, misses = provider.cached("1", items)
    assert len(hits) == 5 and not misses


def test_a_pacs_failure_reaches_every_waiter(tmp_path: Path) -> None:
    provider = ImageProvider(Store(tmp_path), SlowPacs(fail=PeerUnavailable("PACS down")))
    with pytest.raises(PeerUnavailable, match="PACS down"):
        list(provider.arrivals("1", [("1.1", "1.2.1")]))


def test_an_instance_the_pacs_lacks_is_reported(tmp_path: Path) -> None:
    provider = ImageProvider(Store(tmp_path), SlowPacs(delay=0, skip="1.2.2"))
    with pytest.raises(InstanceUnavailable, match=r"1\.2\.2"):
        list(provider.arrivals("1", [("1.1", "1.2.1"), ("1.1", "1.2.2")]))


def test_a_stalled_pacs_times_out(tmp_path: Path) -> None:
    provider = ImageProvider(Store(tmp_path), SlowPacs(delay=2), wait_timeout=0.2)
    with pytest.raises(PeerUnavailable, match="too slow"):
        list(provider.arrivals("1", [("1.1", "1.2.1")]))


def _eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_stream_gets_the_bytes_and_the_cache_is_written_after_it(tmp_path: Path) -> None:
    provider = ImageProvider(Store(tmp_path), SlowPacs(delay=0.01))
    items = [("1.1", f"1.2.{i}") for i in range(4)]
    stream = provider.arrivals_data("1", items)
    got = [next(stream) for _ in items]  # the stream is still sending the last one
    # handed over from memory while the stream runs; nothing written before it ends
    assert all(data == sop.encode() for (_, sop), data in got)
    time.sleep(0.3)
    assert not list(tmp_path.iterdir())
    stream.close()
    assert _eventually(lambda: len(list(tmp_path.iterdir())) == 4)
    hits, misses = provider.cached("1", items)
    assert len(hits) == 4 and not misses
    provider.close()


def test_who_needs_a_file_gets_it_written_at_once(tmp_path: Path) -> None:
    provider = ImageProvider(Store(tmp_path), SlowPacs(delay=0.01))
    items = [("1.1", f"1.2.{i}") for i in range(3)]
    streaming = provider.arrivals_data("1", items)  # a stream holds the writer back
    next(streaming)
    # a frames/ZIP request for the same instances: files, written for it
    paths = [path for _, path in provider.arrivals("1", items)]
    assert [p.read_bytes() for p in paths] == [f"1.2.{i}".encode() for i in range(3)]
    streaming.close()
    provider.close()


def test_without_a_budget_every_instance_is_written_before_it_is_handed_over(
    tmp_path: Path,
) -> None:
    provider = ImageProvider(Store(tmp_path), SlowPacs(delay=0), write_behind_bytes=0)
    for (_, sop), found in provider.arrivals_data("1", [("1.1", "1.2.1")]):
        assert isinstance(found, Path) and found.read_bytes() == sop.encode()
    provider.close()
