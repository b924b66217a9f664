"""The Source's instance cache: bounds, LRU order, atomicity, UID checks, restarts, readers."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from drimbox.adapters.cache import InstanceCache
from drimbox.domain.errors import InvalidIdentifier, InvalidInput

STUDY, SERIES = "1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.1.1"


def blob(tag: int, size: int = 1000) -> bytes:
    """A Part 10 lookalike of exactly ``size`` bytes (the cache checks only the prefix)."""
    head = b"\x00" * 128 + b"DICM"
    return head + bytes([tag % 256]) * (size - len(head))


def sop(n: int) -> str:
    return f"{SERIES}.{n}"


def index_rows(root: Path) -> dict[str, float]:
    with sqlite3.connect(root / "index.sqlite") as db:
        return dict(db.execute("SELECT sop, last_access FROM entry").fetchall())


def test_put_and_read_back(tmp_path: Path) -> None:
    with InstanceCache(tmp_path / "c", 10_000) as cache:
        path = cache.put(STUDY, SERIES, sop(1), blob(1))
        assert path == cache.path(STUDY, SERIES, sop(1))
        assert path.read_bytes() == blob(1)
        src = tmp_path / "src.dcm"
        src.write_bytes(blob(2))
        cache.put(STUDY, SERIES, sop(2), src)
        with cache.open(STUDY, SERIES, sop(2)) as stream:  # type: ignore[union-attr]
            assert stream.read() == blob(2)
        assert cache.path(STUDY, SERIES, sop(3)) is None
        assert cache.open(STUDY, SERIES, sop(3)) is None
        assert cache.series_instances(STUDY, SERIES) == sorted([sop(1), sop(2)])
        assert cache.missing(STUDY, SERIES, [sop(1), sop(3)]) == {sop(3)}
        assert cache.has_series(STUDY, SERIES, [sop(1), sop(2)])
        assert not cache.has_series(STUDY, SERIES, [sop(1), sop(3)])
        assert cache.missing(STUDY, "1.2.3", [sop(1)]) == {sop(1)}
        stats = cache.stats()
        assert (stats.entries, stats.size_bytes, stats.puts) == (2, 2000, 2)
        assert (stats.hits, stats.misses) == (2, 2)


def test_replacing_an_entry_keeps_the_size_right(tmp_path: Path) -> None:
    with InstanceCache(tmp_path / "c", 10_000) as cache:
        cache.put(STUDY, SERIES, sop(1), blob(1, 1000))
        cache.put(STUDY, SERIES, sop(1), blob(2, 3000))
        assert cache.size_bytes == 3000
        assert cache.stats().entries == 1


def test_least_recently_used_goes_first(tmp_path: Path) -> None:
    with InstanceCache(tmp_path / "c", 3000) as cache:
        for n in (1, 2, 3):
            cache.put(STUDY, SERIES, sop(n), blob(n))
        assert cache.path(STUDY, SERIES, sop(1)) is not None  # 1 is now more recent than 2
        cache.put(STUDY, SERIES, sop(4), blob(4))
        assert cache.series_instances(STUDY, SERIES) == sorted([sop(1), sop(3), sop(4)])
        cache.put(STUDY, SERIES, sop(5), blob(5))
        assert cache.series_instances(STUDY, SERIES) == sorted([sop(1), sop(4), sop(5)])
        assert cache.stats().evictions == 2


def test_size_never_exceeds_the_limit(tmp_path: Path) -> None:
    with InstanceCache(tmp_path / "c", 10_000) as cache:
        for n in range(40):
            cache.put(STUDY, SERIES, sop(n), blob(n, 900 + 50 * (n % 5)))
            assert cache.size_bytes <= 10_000
        on_disk = sum(p.stat().st_size for p in (tmp_path / "c" / "objects").rglob("*.dcm"))
        assert on_disk == cache.size_bytes
        assert cache.stats().entries == len(cache.series_instances(STUDY, SERIES))


def test_an_entry_larger_than_the_cache_evicts_the_rest_but_stays(tmp_path: Path) -> None:
    with InstanceCache(tmp_path / "c", 2500) as cache:
        cache.put(STUDY, SERIES, sop(1), blob(1))
        cache.put(STUDY, SERIES, sop(2), blob(2, 5000))
        assert cache.series_instances(STUDY, SERIES) == [sop(2)]


def test_hits_do_not_write_until_flushed(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with InstanceCache(root, 10_000, touch_flush_seconds=3600) as cache:
        cache.put(STUDY, SERIES, sop(1), blob(1))
        before = index_rows(root)[sop(1)]
        time.sleep(0.01)
        for _ in range(100):
            assert cache.path(STUDY, SERIES, sop(1)) is not None
        assert index_rows(root)[sop(1)] == before
        cache.flush()
        assert index_rows(root)[sop(1)] > before


def test_evict_study(tmp_path: Path) -> None:
    other = "1.2.826.0.1.3680043.10.2"
    with InstanceCache(tmp_path / "c", 10_000) as cache:
        cache.put(STUDY, SERIES, sop(1), blob(1))
        cache.put(STUDY, "1.2.3.4", "1.2.3.4.5", blob(2))
        cache.put(other, "1.2.3.5", "1.2.3.5.6", blob(3))
        assert cache.evict_study(STUDY) == 2
        assert cache.path(STUDY, SERIES, sop(1)) is None
        assert not (tmp_path / "c" / "objects" / STUDY).exists()
        assert cache.path(other, "1.2.3.5", "1.2.3.5.6") is not None
        assert cache.size_bytes == 1000


@pytest.mark.parametrize(
    "bad", ["../../etc", "1.2.3/4", "1.2.03", "1.2.3\n", "", "1..2", " 1.2", "1.2.3.4" * 20]
)
def test_invalid_uids_are_refused(tmp_path: Path, bad: str) -> None:
    with InstanceCache(tmp_path / "c", 10_000) as cache:
        with pytest.raises(InvalidIdentifier):
            cache.put(STUDY, SERIES, bad, blob(1))
        with pytest.raises(InvalidIdentifier):
            cache.put(bad, SERIES, sop(1), blob(1))
        with pytest.raises(InvalidIdentifier):
            cache.path(STUDY, bad, sop(1))
        with pytest.raises(InvalidIdentifier):
            cache.missing(STUDY, SERIES, [sop(1), bad])
        with pytest.raises(InvalidIdentifier):
            cache.series_instances(bad, SERIES)
        with pytest.raises(InvalidIdentifier):
            cache.evict_study(bad)
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


def test_not_dicom_is_refused(tmp_path: Path) -> None:
    with InstanceCache(tmp_path / "c", 10_000) as cache:
        with pytest.raises(InvalidInput, match="DICM"):
            cache.put(STUDY, SERIES, sop(1), b"<html>not an image</html>")
        assert cache.size_bytes == 0
        assert not list((tmp_path / "c" / "tmp").iterdir())


def test_a_write_cut_short_is_never_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with InstanceCache(tmp_path / "c", 10_000) as cache:

        def crash(src: str, dst: str) -> None:
            raise OSError("disk gone")

        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="disk gone"):
            cache.put(STUDY, SERIES, sop(1), blob(1))
        monkeypatch.undo()
        assert cache.path(STUDY, SERIES, sop(1)) is None
        assert cache.size_bytes == 0
        assert not list((tmp_path / "c" / "tmp").iterdir())


def test_leftover_temp_files_are_not_served_and_old_ones_cleared(tmp_path: Path) -> None:
    root = tmp_path / "c"
    InstanceCache(root, 10_000).close()
    # what a crash mid-write leaves: a partial object under tmp/, never under objects/
    partial = root / "tmp" / "tmpabc123.part"
    partial.write_bytes(blob(1)[:300])
    fresh = root / "tmp" / "tmpdef456.part"  # another process writing right now
    fresh.write_bytes(blob(2)[:300])
    an_hour_ago = time.time() - 4000
    os.utime(partial, (an_hour_ago, an_hour_ago))
    with InstanceCache(root, 10_000) as cache:
        assert cache.path(STUDY, SERIES, sop(1)) is None
        assert cache.series_instances(STUDY, SERIES) == []
        assert not partial.exists()
        assert fresh.exists()


def test_restart_keeps_entries_and_lru_order(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with InstanceCache(root, 3000) as cache:
        for n in (1, 2, 3):
            cache.put(STUDY, SERIES, sop(n), blob(n))
        cache.path(STUDY, SERIES, sop(1))  # flushed by close()
    with InstanceCache(root, 3000) as cache:
        assert cache.size_bytes == 3000
        assert cache.path(STUDY, SERIES, sop(2)) is not None
        assert cache.path(STUDY, SERIES, sop(2)).read_bytes() == blob(2)  # type: ignore[union-attr]
        cache.put(STUDY, SERIES, sop(4), blob(4))
        assert cache.series_instances(STUDY, SERIES) == sorted([sop(1), sop(2), sop(4)])


def test_lost_index_is_rebuilt_from_the_files(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with InstanceCache(root, 10_000) as cache:
        for n in (1, 2):
            cache.put(STUDY, SERIES, sop(n), blob(n))
    for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
        (root / name).unlink(missing_ok=True)
    with InstanceCache(root, 10_000) as cache:
        assert cache.stats().entries == 2
        assert cache.size_bytes == 2000
    with InstanceCache(root, 1500) as cache:  # a smaller limit applies at once
        assert cache.rescan() == 2
        assert cache.stats().entries == 1


def test_concurrent_readers_and_a_writer(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    with InstanceCache(tmp_path / "c", 20_000, touch_flush_seconds=0.01) as cache:
        for n in range(10):
            cache.put(STUDY, SERIES, sop(n), blob(n))
        stop = threading.Event()

        def read() -> None:
            try:
                while not stop.is_set():
                    for n in range(40):
                        stream = cache.open(STUDY, SERIES, sop(n))
                        if stream is not None:
                            with stream:
                                assert stream.read() == blob(n)  # whole, never partial
            except BaseException as exc:
                errors.append(exc)

        readers = [threading.Thread(target=read) for _ in range(4)]
        for t in readers:
            t.start()
        for n in range(10, 40):  # evicts as it goes: 20 fit
            cache.put(STUDY, SERIES, sop(n), blob(n))
        stop.set()
        for t in readers:
            t.join()
        assert not errors
        assert cache.size_bytes <= 20_000


def _read_all(root: str, count: int, rounds: int) -> int:
    """In another process: read every entry ``rounds`` times; returns how many were whole."""
    whole = 0
    with InstanceCache(Path(root), 1 << 30) as cache:
        for _ in range(rounds):
            for n in range(count):
                stream = cache.open(STUDY, SERIES, sop(n))
                if stream is None:
                    continue
                with stream:
                    if stream.read() != blob(n):
                        raise AssertionError(f"entry {n} read partial or corrupt")
                whole += 1
    return whole


def test_another_process_reads_while_this_one_writes(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with InstanceCache(root, 1 << 30) as cache:
        for n in range(20):
            cache.put(STUDY, SERIES, sop(n), blob(n))
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(2) as pool:
            pending = [pool.apply_async(_read_all, (str(root), 40, 20)) for _ in range(2)]
            for n in range(20, 40):
                cache.put(STUDY, SERIES, sop(n), blob(n))
            counts = [p.get(timeout=60) for p in pending]
    assert all(c >= 20 * 20 for c in counts)
