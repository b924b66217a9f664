"""The access trail on disk: an append-only, hash-chained JSON Lines file and a SQLite index.

``<folder>/trail.jsonl`` holds one record per line, in canonical JSON (sorted keys, no
spaces, UTF-8)::

    {"event":<FHIR AuditEvent>,"hash":"<hex>","prev":"<hex>","seq":<n>}

``seq`` counts from 1; ``prev`` is the previous record's ``hash`` (64 zeros for the first);
``hash = sha256(prev + canonical(event))``. Editing, deleting, inserting or reordering a line
breaks the link of that line or of the next one, which :meth:`JsonlTrail.verify` reports.
A forger who rewrites the whole suffix of the chain is only caught against an external
anchor: publish :meth:`JsonlTrail.head` regularly (and the index below catches a truncation
as long as it is not deleted too).

Writers. Appends are serialised by a thread lock and an exclusive ``fcntl.flock`` on the
file, so several processes (the Source workers) may append to one trail; each process must
open its own :class:`JsonlTrail` (an instance notices a fork and reopens its file). Under the
lock the writer reads the chain's head from the *end* of the file (a few KiB, never the whole
file; skipped when the file has not changed since its own last append), writes the line with
``O_APPEND`` and fsyncs it before returning: an acknowledged record survives a crash.

Torn lines. A crash (or a full disk) can leave a final line cut short. It is never rewritten
or truncated (the file is append-only): the next append first ends it with a newline, then
chains its record to the last *complete* record, reusing the lost record's ``seq`` (that
record was never acknowledged). :meth:`~JsonlTrail.verify` reports such fragments in
``torn_lines`` without breaking the chain. An unreadable line is only accepted as a torn
fragment if the chain resumes right after it (else it is a break) and if the index never
acknowledged a record at that place (else the acknowledged record was damaged: a break).

Index. ``<folder>/index.sqlite`` maps each record's byte position to its seq, hash, patient
(INS, OID) and time, so :meth:`~JsonlTrail.for_patient` reads only the lines it returns. It
is written after the fsync of each line and can always be rebuilt from the trail: when it is
missing or behind (a process died between the two), it catches up at start and on the next
append. An index that knows records the trail no longer holds means the trail was truncated
or rewritten: opening (or appending) then raises :class:`TrailCorrupted`; move the index
aside only after investigating.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from drimbox.adapters.audit.fhir import patient_of, to_audit_event
from drimbox.domain.audit import AccessRecord, TrailCorrupted, VerifyReport
from drimbox.domain.errors import InvalidInput
from drimbox.domain.identifiers import Ins
from drimbox.services.audit import DEFAULT_LIMIT, check_limit

log = logging.getLogger(__name__)

TRAIL_FILE = "trail.jsonl"
INDEX_FILE = "index.sqlite"
GENESIS = "0" * 64
_CHUNK = 64 * 1024
_SCAN_CHUNK = 1024 * 1024
_HEX = frozenset("0123456789abcdef")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    pos INTEGER PRIMARY KEY,
    length INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    ins TEXT,
    oid TEXT,
    at TEXT NOT NULL,
    event_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_patient ON records (ins, at, seq);
"""


def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev: str, event: dict[str, Any]) -> str:
    return hashlib.sha256(prev.encode("ascii") + canonical(event)).hexdigest()


def _is_digest(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


@dataclass(frozen=True, slots=True)
class _Line:
    """A line that parses as a record (its chain is not checked here)."""

    seq: int
    prev: str
    hash: str
    event: dict[str, Any]


def _parse(raw: bytes) -> _Line | None:
    try:
        obj = json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError
        return None
    if not isinstance(obj, dict):
        return None
    seq, prev, digest, event = obj.get("seq"), obj.get("prev"), obj.get("hash"), obj.get("event")
    if type(seq) is not int or seq < 1 or not isinstance(event, dict):
        return None
    if not (_is_digest(prev) and _is_digest(digest)):
        return None
    return _Line(seq, str(prev), str(digest), event)


@dataclass(frozen=True, slots=True)
class _Head:
    """The end of the trail as the writer needs it."""

    size: int
    """File size this head was read at."""
    seq: int
    hash: str
    pos: int
    """Byte position of the last complete record (-1: none)."""
    terminated: bool
    """The file ends with a newline (an append needs none first)."""


def _iter_lines(fd: int, start: int, end: int) -> Iterator[tuple[int, bytes, bool]]:
    """(position, bytes without newline, ended by a newline) of the lines in [start, end)."""
    pos, buf, buf_start = start, b"", start
    while pos < end:
        chunk = os.pread(fd, min(_SCAN_CHUNK, end - pos), pos)
        if not chunk:
            break
        pos += len(chunk)
        buf += chunk
        i = 0
        while (nl := buf.find(b"\n", i)) >= 0:
            yield buf_start + i, buf[i:nl], True
            i = nl + 1
        buf, buf_start = buf[i:], buf_start + i
    if buf:
        yield buf_start, buf, False


def _read_head(fd: int, size: int) -> _Head:
    """The last complete record, read backwards from the end of the file."""
    if size == 0:
        return _Head(0, 0, GENESIS, -1, True)
    terminated = os.pread(fd, 1, size - 1) == b"\n"
    pos, carry = size, b""
    while True:
        start = max(0, pos - _CHUNK)
        data = os.pread(fd, pos - start, start) + carry
        pos = start
        line_end = len(data)
        while True:
            nl = data.rfind(b"\n", 0, line_end)
            if nl < 0 and pos > 0:
                break  # this line starts before the buffer: read more
            line = _parse(data[nl + 1 : line_end])
            if line is not None:
                return _Head(size, line.seq, line.hash, pos + nl + 1, terminated)
            if nl < 0:
                return _Head(size, 0, GENESIS, -1, terminated)  # nothing but fragments
            line_end = nl
        carry = data[:line_end]


def _utc_text(at: datetime) -> str:
    if at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInput("'since' must carry a time zone")
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@contextlib.contextmanager
def _flocked(fd: int, kind: int = fcntl.LOCK_EX) -> Iterator[None]:
    fcntl.flock(fd, kind)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


class JsonlTrail:
    """The access trail of one box (see the module docstring for the format and guarantees).

    ``fsync=False`` is for tests and benchmarks only: a crash may then lose acknowledged
    records. ``observer`` names this box in every AuditEvent's ``source``.
    """

    def __init__(self, folder: Path, *, fsync: bool = True, observer: str = "drimbox") -> None:
        self.folder = Path(folder)
        self.path = self.folder / TRAIL_FILE
        self.index_path = self.folder / INDEX_FILE
        self.fsync = fsync
        self.observer = observer
        self._open()

    # -- life cycle -------------------------------------------------------------------------

    def _open(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._db_lock = threading.Lock()
        self._head: _Head | None = None
        self.folder.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            if created:
                self._fsync_folder()
            with _flocked(self._fd):
                self._db = self._connect()
                try:
                    self._check_index()
                    self._catch_up(_read_head(self._fd, os.fstat(self._fd).st_size))
                except BaseException:
                    self._db.close()
                    raise
        except BaseException:
            os.close(self._fd)
            raise

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.index_path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA busy_timeout = 30000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_SCHEMA)
        return db

    def _fsync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _check_fork(self) -> None:
        """After a fork, the inherited descriptors would share the parent's lock: reopen."""
        if os.getpid() != self._pid:
            inherited = self._fd
            self._open()
            os.close(inherited)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                with self._db_lock:
                    self._db.close()

    def __enter__(self) -> JsonlTrail:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- index --------------------------------------------------------------------------------

    def _last_indexed(self) -> tuple[int, int, int, str] | None:
        with self._db_lock:
            row = self._db.execute(
                "SELECT pos, length, seq, hash FROM records ORDER BY pos DESC LIMIT 1"
            ).fetchone()
        return None if row is None else (int(row[0]), int(row[1]), int(row[2]), str(row[3]))

    def _check_index(self) -> None:
        """The last record the index knows must still be in the trail, unchanged."""
        last = self._last_indexed()
        if last is None:
            return
        pos, length, seq, digest = last
        size = os.fstat(self._fd).st_size
        line = _parse(os.pread(self._fd, length, pos)) if pos + length <= size else None
        if line is None or line.seq != seq or line.hash != digest:
            raise TrailCorrupted(
                f"{self.index_path} knows record seq {seq} at byte {pos} but {self.path} "
                "no longer holds it there (truncated or rewritten): run verify, investigate, "
                "then move the index aside to rebuild it"
            )

    def _catch_up(self, head: _Head) -> None:
        """Index the records after the last indexed one, up to ``head`` (under the flock)."""
        last = self._last_indexed()
        last_pos = -1 if last is None else last[0]
        if last_pos == head.pos:
            return
        if last_pos > head.pos:
            raise TrailCorrupted(
                f"{self.index_path} knows a record at byte {last_pos}, after the last record "
                f"of {self.path} (seq {head.seq} at byte {head.pos}): the trail was truncated"
            )
        start = 0 if last is None else last[0] + last[1]
        rows = []
        for pos, raw, _ in _iter_lines(self._fd, start, head.size):
            line = _parse(raw)
            if line is not None:
                rows.append(self._row(pos, len(raw), line))
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        if rows:
            log.info("audit trail index: caught up %d record(s)", len(rows))

    @staticmethod
    def _row(pos: int, length: int, line: _Line) -> tuple[Any, ...]:
        patient = patient_of(line.event)
        return (
            pos,
            length,
            line.seq,
            line.hash,
            patient[0] if patient else None,
            patient[1] if patient else None,
            str(line.event.get("recorded", "")),
            str(line.event.get("id", "")),
        )

    # -- writing ------------------------------------------------------------------------------

    def record(self, record: AccessRecord) -> str:
        """Append ``record`` as a chained AuditEvent, fsynced; return the event id."""
        event_id = str(uuid.uuid4())
        event = to_audit_event(record, event_id, observer=self.observer)
        body = canonical(event)
        with self._lock:
            self._check_fork()
            with _flocked(self._fd):
                self._append(event, body)
        return event_id

    def _append(self, event: dict[str, Any], body: bytes) -> None:
        size = os.fstat(self._fd).st_size
        head = self._head
        if head is None or head.size != size:  # another process appended, or first append
            head = _read_head(self._fd, size)
            self._catch_up(head)
        self._head = None  # until this append is complete and durable
        seq = head.seq + 1
        digest = hashlib.sha256(head.hash.encode("ascii") + body).hexdigest()
        line = canonical({"event": event, "hash": digest, "prev": head.hash, "seq": seq})
        prefix = b"" if head.terminated else b"\n"  # end a torn line first
        data = memoryview(prefix + line + b"\n")
        while data:
            data = data[os.write(self._fd, data) :]
        if self.fsync:
            os.fsync(self._fd)
        pos = size + len(prefix)
        try:
            with self._db_lock:
                self._db.execute(
                    "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    self._row(pos, len(line), _Line(seq, head.hash, digest, event)),
                )
        except sqlite3.Error:
            # The record is durable; the index catches up at the next tail read.
            log.exception("audit trail index: could not index seq %d", seq)
            return
        self._head = _Head(pos + len(line) + 1, seq, digest, pos, True)

    def head(self) -> tuple[int, str]:
        """(seq, hash) of the last record: publish it elsewhere to anchor the chain."""
        with self._lock:
            self._check_fork()
            with _flocked(self._fd):
                head = _read_head(self._fd, os.fstat(self._fd).st_size)
        return head.seq, head.hash

    # -- reading ------------------------------------------------------------------------------

    def for_patient(
        self, ins: Ins | str, since: datetime | None = None, limit: int = DEFAULT_LIMIT
    ) -> list[dict[str, Any]]:
        """AuditEvents about the patient, newest first (an :class:`Ins` also matches its OID).

        Each line read is checked against its own hash and the index; a mismatch raises
        :class:`TrailCorrupted`.
        """
        limit = check_limit(limit)
        sql = "SELECT pos, length, seq, hash FROM records WHERE ins = ?"
        params: list[Any] = [ins.value if isinstance(ins, Ins) else ins]
        if isinstance(ins, Ins):
            sql += " AND oid = ?"
            params.append(ins.oid)
        if since is not None:
            sql += " AND at >= ?"
            params.append(_utc_text(since))
        sql += " ORDER BY at DESC, seq DESC LIMIT ?"
        params.append(limit)
        self._check_fork()
        with self._db_lock:
            rows = self._db.execute(sql, params).fetchall()
        events = []
        for pos, length, seq, digest in rows:
            line = _parse(os.pread(self._fd, length, pos))
            if (
                line is None
                or line.seq != seq
                or line.hash != digest
                or chain_hash(line.prev, line.event) != digest
            ):
                raise TrailCorrupted(f"audit record seq {seq} at byte {pos} was altered")
            events.append(line.event)
        return events

    def verify(self) -> VerifyReport:
        """Walk the whole trail (as it was when called) and report the first break."""
        with self._lock:
            self._check_fork()
            with _flocked(self._fd):
                size = os.fstat(self._fd).st_size
                last = self._last_indexed()
        db = sqlite3.connect(self.index_path)
        try:
            db.execute("PRAGMA busy_timeout = 30000")
            acknowledged = db.execute(
                "SELECT pos, seq, hash FROM records WHERE pos <= ? ORDER BY pos",
                (-1 if last is None else last[0],),
            )
            walk = _Walk(acknowledged)
            for number, (pos, raw, _) in enumerate(_iter_lines(self._fd, 0, size), start=1):
                if not walk.line(number, pos, raw):
                    break
            return walk.report()
        finally:
            db.close()


class _Walk:
    """The state of :meth:`JsonlTrail.verify` walking the lines in order."""

    def __init__(self, acknowledged: Iterator[tuple[int, int, str]]) -> None:
        self.acknowledged = acknowledged
        self.next_ack = next(acknowledged, None)
        self.records = 0
        self.prev = GENESIS
        self.fragments: list[int] = []
        self.torn: list[int] = []
        self.broken_line: int | None = None
        self.problem = ""

    def _break(self, number: int, problem: str) -> bool:
        self.broken_line = number
        self.problem = problem
        return False

    def _take_ack(self, pos: int) -> tuple[int, str] | None:
        """The index's (seq, hash) for the record at ``pos``, if it acknowledged one there."""
        if self.next_ack is None or self.next_ack[0] != pos:
            return None
        _, seq, digest = self.next_ack
        self.next_ack = next(self.acknowledged, None)
        return seq, digest

    def line(self, number: int, pos: int, raw: bytes) -> bool:
        """Check one line; False once the chain is broken."""
        if self.next_ack is not None and self.next_ack[0] < pos:
            return self._break(
                number,
                f"the index acknowledged a record at byte {self.next_ack[0]}, "
                "which is not the start of a line: the trail was rewritten",
            )
        ack = self._take_ack(pos)
        line = _parse(raw)
        if line is None:
            if ack:
                return self._break(number, f"line {number} was acknowledged and is unreadable")
            self.fragments.append(number)
            return True
        expected = self.records + 1
        if line.prev != self.prev:
            if self.fragments:
                return self._break(
                    self.fragments[0],
                    f"line {self.fragments[0]} is unreadable and the chain does not resume "
                    "after it",
                )
            return self._break(
                number,
                f"seq {line.seq} does not link to the record before it: a record was deleted, "
                "inserted, moved or replaced here",
            )
        if line.seq != expected:
            return self._break(number, f"seq {line.seq} found where {expected} was expected")
        if chain_hash(line.prev, line.event) != line.hash:
            return self._break(number, f"the content of seq {line.seq} was altered")
        if ack and ack != (line.seq, line.hash):
            return self._break(number, f"seq {line.seq} is not the record the index acknowledged")
        self.torn += self.fragments
        self.fragments.clear()
        self.records += 1
        self.prev = line.hash
        return True

    def report(self) -> VerifyReport:
        if not self.problem and self.next_ack is not None:
            self.problem = (
                f"the index acknowledged a record at byte {self.next_ack[0]}, beyond the end "
                "of the trail: the trail was truncated"
            )
        broken = self.records + 1 if self.problem else None
        torn = self.torn + (self.fragments if broken is None else [])
        return VerifyReport(
            records=self.records,
            last_seq=self.records,
            last_hash=self.prev,
            broken_seq=broken,
            broken_line=self.broken_line,
            problem=self.problem,
            torn_lines=tuple(torn),
        )
