"""A bounded on-disk cache of DICOM Part 10 instances; least recently used evicted first.

Layout under the cache root::

    objects/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm   complete instances, served as is
    tmp/<random>.part                                     writes in progress, never served
    index.sqlite                                          size and last access of each entry

Presence is the file system's: a final name only ever appears through ``os.replace`` of a
complete temporary file, so whatever a crash leaves behind, a partial file is never served
(stale leftovers in ``tmp/`` are removed at start-up). No fsync by default: after a power
loss a renamed file may come back empty or short, which is acceptable for a cache only
because retrieval re-checks what it reads; pass ``fsync=True`` to close that gap.

Accounting is SQLite's (WAL, shared by every process using the folder): one row per entry
with its size and last access, and a one-row total kept by triggers, so the size is known
after a restart without rescanning. If the index file is missing (first use, or deleted),
it is rebuilt from the files (:meth:`InstanceCache.rescan`), last access taken from mtime.
A row is written before its file is renamed into place: a crash between the two leaves a
row without a file (counted until evicted, never served) rather than a file nobody counts.

Hits do not write: :meth:`~InstanceCache.path` and :meth:`~InstanceCache.open` note the
access in memory; the notes go to SQLite every ``touch_flush_seconds`` and before any
eviction, so the LRU order is at most that stale. Several processes may read one folder
(each flushes its own notes). Eviction may remove a file another process has just looked
up: :meth:`~InstanceCache.open` is immune (an open file outlives its unlink), users of
:meth:`~InstanceCache.path` must treat a vanished file as a miss. Writers are serialised
per process; concurrent writers in several processes are safe for readers, and at worst
leave the accounting off by an entry until :meth:`~InstanceCache.rescan`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from drimbox.domain.errors import InvalidIdentifier, InvalidInput
from drimbox.domain.identifiers import is_valid_uid

log = logging.getLogger(__name__)

Key = tuple[str, str, str]
"""(Study Instance UID, Series Instance UID, SOP Instance UID)."""

_SCHEMA = """
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS entry (
    study TEXT NOT NULL, series TEXT NOT NULL, sop TEXT NOT NULL,
    size INTEGER NOT NULL, last_access REAL NOT NULL,
    PRIMARY KEY (study, series, sop)
);
CREATE INDEX IF NOT EXISTS entry_lru ON entry (last_access);
CREATE TABLE IF NOT EXISTS total (
    id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL, entries INTEGER NOT NULL
);
INSERT OR IGNORE INTO total VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS entry_added AFTER INSERT ON entry BEGIN
    UPDATE total SET bytes = bytes + NEW.size, entries = entries + 1;
END;
CREATE TRIGGER IF NOT EXISTS entry_removed AFTER DELETE ON entry BEGIN
    UPDATE total SET bytes = bytes - OLD.size, entries = entries - 1;
END;
CREATE TRIGGER IF NOT EXISTS entry_resized AFTER UPDATE OF size ON entry BEGIN
    UPDATE total SET bytes = bytes - OLD.size + NEW.size;
END;
"""
_UPSERT = """
INSERT INTO entry (study, series, sop, size, last_access) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (study, series, sop) DO UPDATE SET size = excluded.size,
    last_access = excluded.last_access
"""
_TOUCH = (
    "UPDATE entry SET last_access = max(last_access, ?) WHERE study = ? AND series = ? AND sop = ?"
)
_OLDEST = """
SELECT study, series, sop, size FROM entry
WHERE NOT (study = ? AND series = ? AND sop = ?)
ORDER BY last_access, rowid LIMIT 256
"""
_DELETE = "DELETE FROM entry WHERE study = ? AND series = ? AND sop = ?"

STALE_TEMP_SECONDS = 3600.0
"""A temporary file older than this is a crashed write (one in progress is much younger)."""


@dataclass(frozen=True, slots=True)
class CacheStats:
    entries: int
    size_bytes: int
    max_bytes: int
    hits: int
    misses: int
    puts: int
    evictions: int


def _check_uids(*uids: str) -> None:
    for uid in uids:
        if not is_valid_uid(uid):
            raise InvalidIdentifier(f"{str(uid)[:80]!r} is not a valid DICOM UID")


def _check_part10(head: bytes | memoryview) -> None:
    if bytes(head[128:132]) != b"DICM":
        raise InvalidInput("not a DICOM Part 10 object (no DICM prefix after the preamble)")


class InstanceCache:
    """DICOM instances on disk, at most ``max_bytes`` of them (see the module docstring)."""

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        *,
        touch_flush_seconds: float = 5.0,
        fsync: bool = False,
        owner: bool = True,
    ) -> None:
        """``owner=False`` for a process that shares the folder with its owner (a serving
        worker): it must not sweep ``tmp/``, where the owner may be writing."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.root = root.resolve()
        self.max_bytes = max_bytes
        self.touch_flush_seconds = touch_flush_seconds
        self.fsync = fsync
        self._objects = self.root / "objects"
        self._tmp = self.root / "tmp"
        self._objects.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        index = self.root / "index.sqlite"
        new_index = not index.exists()
        # autocommit; explicit transactions where several statements must go together
        self._db = sqlite3.connect(index, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()  # the connection, and row/file order of put and evict
        self._notes_lock = threading.Lock()  # LRU notes and counters: the hot path
        self._touched: dict[Key, float] = {}
        self._last_flush = time.monotonic()
        self._hits = self._misses = self._puts = self._evictions = 0
        if owner:
            self._clear_stale_temp()
        if new_index:
            self.rescan()

    # -- reading (hot path: no SQLite) ----------------------------------------------------

    def path(self, study: str, series: str, sop: str) -> Path | None:
        """The cached file, or None; counts as an access for the LRU order."""
        final = self._final(study, series, sop)
        if not final.is_file():
            self._note_miss()
            return None
        self._touch((study, series, sop))
        return final

    def open(self, study: str, series: str, sop: str) -> BinaryIO | None:
        """The cached file opened for reading (immune to a concurrent eviction), or None."""
        try:
            stream = self._final(study, series, sop).open("rb")
        except FileNotFoundError:
            self._note_miss()
            return None
        self._touch((study, series, sop))
        return stream

    def missing(self, study: str, series: str, sop_uids: Iterable[str]) -> set[str]:
        """The SOP Instance UIDs of ``sop_uids`` not in the cache (one directory listing)."""
        wanted = set(sop_uids)
        _check_uids(study, series, *wanted)
        return wanted - set(self._listing(study, series))

    def has_series(self, study: str, series: str, sop_uids: Iterable[str]) -> bool:
        return not self.missing(study, series, sop_uids)

    def series_instances(self, study: str, series: str) -> list[str]:
        """SOP Instance UIDs cached for one series, sorted."""
        _check_uids(study, series)
        return sorted(self._listing(study, series))

    # -- writing --------------------------------------------------------------------------

    def put(self, study: str, series: str, sop: str, data: bytes | memoryview | Path) -> Path:
        """Store one Part 10 instance (bytes, or a file to copy); replaces any cached copy."""
        final = self._final(study, series, sop)
        tmp, size = self._write_temp(data)
        try:
            with self._lock:
                self._db.execute(_UPSERT, (study, series, sop, size, time.time()))
                try:
                    self._rename(tmp, final)
                except BaseException:
                    if not final.exists():  # no older copy either: nothing to count
                        self._db.execute(_DELETE, (study, series, sop))
                    raise
                with self._notes_lock:
                    self._puts += 1
                if self.size_bytes > self.max_bytes:
                    self._evict(keep=(study, series, sop))
        finally:
            tmp.unlink(missing_ok=True)  # no-op once renamed
        return final

    def evict_study(self, study: str) -> int:
        """Remove every cached instance of a study; returns how many there were."""
        _check_uids(study)
        with self._lock:
            with self._transaction():
                count = self._db.execute("DELETE FROM entry WHERE study = ?", (study,)).rowcount
            shutil.rmtree(self._objects / study, ignore_errors=True)
            with self._notes_lock:
                self._touched = {k: t for k, t in self._touched.items() if k[0] != study}
                self._evictions += count
        return count

    def flush(self) -> None:
        """Write the access notes taken since the last flush to the index."""
        with self._notes_lock:
            touched, self._touched = self._touched, {}
            self._last_flush = time.monotonic()
        if not touched:
            return
        with self._lock, self._transaction():
            self._db.executemany(_TOUCH, [(at, *key) for key, at in touched.items()])

    def rescan(self) -> int:
        """Rebuild the index from the files (lost index, or writers in several processes)."""
        rows = list(self._scan())
        with self._lock:
            with self._transaction():
                self._db.execute("DELETE FROM entry")
                self._db.execute("UPDATE total SET bytes = 0, entries = 0")
                self._db.executemany(_UPSERT, rows)
            log.info("instance cache %s: index rebuilt from %d files", self.root, len(rows))
            if self.size_bytes > self.max_bytes:
                self._evict(keep=None)
        return len(rows)

    # -- figures --------------------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT bytes FROM total").fetchone()[0])

    def stats(self) -> CacheStats:
        with self._lock:
            size, entries = self._db.execute("SELECT bytes, entries FROM total").fetchone()
        with self._notes_lock:
            return CacheStats(
                int(entries), int(size), self.max_bytes,
                self._hits, self._misses, self._puts, self._evictions,
            )  # fmt: skip

    def close(self) -> None:
        self.flush()
        with self._lock:
            self._db.close()

    def __enter__(self) -> InstanceCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _final(self, study: str, series: str, sop: str) -> Path:
        # the only way a path is built: from three checked UIDs (digits and dots, no "..")
        _check_uids(study, series, sop)
        return self._objects / study / series / f"{sop}.dcm"

    def _listing(self, study: str, series: str) -> Iterator[str]:
        try:
            names = os.listdir(self._objects / study / series)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(".dcm"):
                yield name[:-4]

    def _note_miss(self) -> None:
        with self._notes_lock:
            self._misses += 1

    def _touch(self, key: Key) -> None:
        now = time.time()
        with self._notes_lock:
            self._hits += 1
            self._touched[key] = now
            due = time.monotonic() - self._last_flush >= self.touch_flush_seconds
        if due:
            self.flush()

    def _write_temp(self, data: bytes | memoryview | Path) -> tuple[Path, int]:
        fd, name = tempfile.mkstemp(suffix=".part", dir=self._tmp)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(data, Path):
                    with data.open("rb") as src:
                        head = src.read(132)
                        _check_part10(head)
                        out.write(head)
                        shutil.copyfileobj(src, out, 1 << 20)
                else:
                    _check_part10(data)
                    out.write(data)
                out.flush()
                if self.fsync:
                    os.fsync(out.fileno())
                size = out.tell()
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp, size

    def _rename(self, tmp: Path, final: Path) -> None:
        for _ in range(3):
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(tmp, final)
                return
            except FileNotFoundError:
                if not tmp.exists():
                    raise
                # another process evicted the last file of this series and removed its folder
        raise OSError(f"cannot create the folder of {final}")

    def _evict(self, keep: Key | None) -> None:
        """Remove least recently used entries until the total fits (``keep`` is spared)."""
        self.flush()  # hits since the last flush must count
        spared = keep or ("", "", "")
        while (excess := self.size_bytes - self.max_bytes) > 0:
            victims: list[tuple[str, str, str]] = []
            for study, series, sop, size in self._db.execute(_OLDEST, spared):
                victims.append((study, series, sop))
                excess -= size
                if excess <= 0:
                    break
            if not victims:
                return  # only the spared entry is left: it stays until the next put
            with self._transaction():
                self._db.executemany(_DELETE, victims)
            for study, series, sop in victims:
                self._remove_file(study, series, sop)
            with self._notes_lock:
                self._evictions += len(victims)
            log.debug("instance cache: evicted %d instances", len(victims))

    def _remove_file(self, study: str, series: str, sop: str) -> None:
        if not all(map(is_valid_uid, (study, series, sop))):
            return  # not a row we wrote
        final = self._objects / study / series / f"{sop}.dcm"
        final.unlink(missing_ok=True)
        # drop emptied folders; a folder still in use is simply not empty
        with contextlib.suppress(OSError):
            final.parent.rmdir()
            final.parent.parent.rmdir()

    def _scan(self) -> Iterator[tuple[str, str, str, int, float]]:
        for study in os.scandir(self._objects):
            if not (study.is_dir() and is_valid_uid(study.name)):
                continue
            for series in os.scandir(study.path):
                if not (series.is_dir() and is_valid_uid(series.name)):
                    continue
                for entry in os.scandir(series.path):
                    sop = entry.name[:-4]
                    if entry.name.endswith(".dcm") and is_valid_uid(sop):
                        st = entry.stat()
                        yield study.name, series.name, sop, st.st_size, st.st_mtime

    def _clear_stale_temp(self) -> None:
        horizon = time.time() - STALE_TEMP_SECONDS
        for leftover in self._tmp.iterdir():
            with contextlib.suppress(OSError):
                if leftover.stat().st_mtime < horizon:
                    leftover.unlink()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
