"""The Source's durable inbox of report messages: stored before AA, delivered in order.

Storage is one SQLite database in WAL mode with ``synchronous=FULL``: every commit fsyncs the
WAL, so a message whose insert returned survives a crash or power loss, and the duplicate
check (unique sender + control id) happens in the same atomic statement. A folder of files
would need fsync on the file and the directory plus a separate duplicate index that can
disagree with the files after a crash. (``synchronous=NORMAL`` in WAL mode may lose the last
commits on power loss: not acceptable once the RIS has our AA.)

Delivery: :meth:`Inbox.pending` returns, for each patient, the oldest message not yet done,
so messages of one patient are handled in arrival order (a correction never overtakes the
report it corrects) while different patients proceed independently. A message stays pending
until :meth:`Inbox.done`; after a restart everything not done is delivered again, so the
consumer must be idempotent.

Refused messages are not queued: :meth:`Inbox.reject` keeps them under ``rejected/`` with
their reason, for the site's IT team. A message that cannot be handled yet (images still
arriving, PACS down) is put back with :meth:`Inbox.retry_later`; one that needs a human (the
PACS contradicts the report) is :meth:`Inbox.hold`-ed until an admin releases it.

The same database holds the Source's outbox and publication archive
(``drimbox.services.source.outbox``), so that "message handled" and "submission queued"
commit together (:meth:`Inbox.transaction`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drimbox.domain.report import ReportMessage

log = logging.getLogger(__name__)

ReportDecoder = Callable[[bytes], ReportMessage]
"""Turns a stored raw message back into its report (the HL7 parser, injected)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sending_application TEXT NOT NULL,
    sending_facility TEXT NOT NULL,
    control_id TEXT NOT NULL,
    patient TEXT NOT NULL,
    event TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    received_at TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    raw BLOB NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    done_at TEXT,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | done | held
    not_before REAL NOT NULL DEFAULT 0,      -- epoch seconds: retry no earlier
    UNIQUE (sending_application, sending_facility, control_id)
);
CREATE INDEX IF NOT EXISTS pending_by_patient ON messages (patient, id) WHERE state = 'pending';
"""
_COLUMNS = """id, patient, event, study_uid, control_id, sending_application, received_at, raw,
       attempts, last_error, state"""
_PENDING = f"""
SELECT {_COLUMNS}
FROM messages AS m
WHERE state = 'pending' AND not_before <= ?
  AND id = (SELECT MIN(id) FROM messages WHERE patient = m.patient AND state = 'pending')
ORDER BY id
LIMIT ?
"""
IOCM_EVENT = "iocm"
"""``event`` of a queued IOCM rejection note (``raw`` is then the DICOM object, not HL7)."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True, slots=True)
class Accepted:
    id: int
    duplicate: bool
    """True when the same sender already sent this control id: acknowledged, not stored."""


@dataclass(frozen=True, slots=True)
class InboxEntry:
    id: int
    patient: str
    """INS of the patient: the ordering key."""
    event: str
    study_uid: str
    control_id: str
    sending_application: str
    received_at: str
    raw: bytes
    attempts: int
    last_error: str | None
    decode: ReportDecoder = field(repr=False, compare=False)
    state: str = "pending"

    @property
    def report(self) -> ReportMessage:
        """The stored message decoded again (lazily: a failure stays with this patient)."""
        return self.decode(self.raw)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class Inbox:
    """Durable FIFO per patient; thread-safe (the listener accepts from many connections)."""

    def __init__(self, folder: Path, decode: ReportDecoder) -> None:
        self.folder = folder
        self.rejected_folder = folder / "rejected"
        self.rejected_folder.mkdir(parents=True, exist_ok=True)
        self._decode = decode
        self._lock = threading.Lock()
        self._rejected_seq = 0
        # autocommit (isolation_level=None): each statement is its own durable transaction
        self._db = sqlite3.connect(folder / "inbox.sqlite3", isolation_level=None,
                                   check_same_thread=False)  # fmt: skip
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic, durable write transaction on the shared database (inbox + outbox)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def accept(self, raw: bytes, report: ReportMessage) -> Accepted:
        """Store ``raw`` durably (returns once fsync'd); a resent message is stored once."""
        h = report.header
        digest = hashlib.sha256(raw).hexdigest()
        with self._lock:
            try:
                cursor = self._db.execute(
                    "INSERT INTO messages (sending_application, sending_facility, control_id,"
                    " patient, event, study_uid, received_at, sha256, raw)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (h.sending_application, h.sending_facility, h.control_id,
                     report.patient.ins.value, report.event.value, report.study_uid, _now(),
                     digest, raw),
                )  # fmt: skip
                return Accepted(int(cursor.lastrowid or 0), duplicate=False)
            except sqlite3.IntegrityError:
                row = self._db.execute(
                    "SELECT id, sha256 FROM messages WHERE sending_application = ?"
                    " AND sending_facility = ? AND control_id = ?",
                    (h.sending_application, h.sending_facility, h.control_id),
                ).fetchone()
        if row[1] != digest:
            # Same control id, other content: a RIS bug, or a reset counter. HL7 says the
            # control id identifies the message, so we keep the first; log it loudly.
            log.warning("message %s from %s resent with different content; kept the first",
                        h.control_id, h.sending_application)  # fmt: skip
        return Accepted(int(row[0]), duplicate=True)

    def accept_event(
        self,
        *,
        source: str,
        control_id: str,
        patient: str,
        event: str,
        study_uid: str,
        raw: bytes,
    ) -> Accepted:
        """Queue a non-HL7 event for ``patient`` (an IOCM rejection note), once per id."""
        with self._lock:
            try:
                cursor = self._db.execute(
                    "INSERT INTO messages (sending_application, sending_facility, control_id,"
                    " patient, event, study_uid, received_at, sha256, raw)"
                    " VALUES (?, '', ?, ?, ?, ?, ?, ?, ?)",
                    (source, control_id, patient, event, study_uid, _now(),
                     hashlib.sha256(raw).hexdigest(), raw),
                )  # fmt: skip
                return Accepted(int(cursor.lastrowid or 0), duplicate=False)
            except sqlite3.IntegrityError:
                row = self._db.execute(
                    "SELECT id FROM messages WHERE sending_application = ?"
                    " AND sending_facility = '' AND control_id = ?",
                    (source, control_id),
                ).fetchone()
        return Accepted(int(row[0]), duplicate=True)

    def _entry(self, row: tuple[Any, ...]) -> InboxEntry:
        return InboxEntry(
            id=row[0], patient=row[1], event=row[2], study_uid=row[3], control_id=row[4],
            sending_application=row[5], received_at=row[6], raw=bytes(row[7]),
            attempts=row[8], last_error=row[9], decode=self._decode, state=row[10],
        )  # fmt: skip

    def pending(self, limit: int = 100, now: float | None = None) -> list[InboxEntry]:
        """The oldest undone message of each patient whose retry time has come, oldest first."""
        at = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(_PENDING, (at, limit)).fetchall()
        return [self._entry(row) for row in rows]

    def next_due(self) -> float | None:
        """Epoch time at which the next postponed message becomes due (None: none waits)."""
        with self._lock:
            row = self._db.execute(
                "SELECT MIN(not_before) FROM messages WHERE state = 'pending'"
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def done(self, entry_id: int, conn: sqlite3.Connection | None = None) -> None:
        """Mark handled; pass ``conn`` to do it inside :meth:`transaction`."""
        sql = "UPDATE messages SET done_at = ?, state = 'done' WHERE id = ?"
        if conn is not None:
            conn.execute(sql, (_now(), entry_id))
            return
        with self._lock:
            self._db.execute(sql, (_now(), entry_id))

    def retry_later(self, entry_id: int, reason: str, delay: float) -> None:
        """Count a failed attempt; the message stays at its patient's head until ``delay``."""
        with self._lock:
            self._db.execute(
                "UPDATE messages SET attempts = attempts + 1, last_error = ?, not_before = ?"
                " WHERE id = ?",
                (reason[:2000], time.time() + delay, entry_id),
            )

    def hold(self, entry_id: int, reason: str) -> None:
        """Set aside for a human (never published as is); the patient's queue moves on."""
        with self._lock:
            self._db.execute(
                "UPDATE messages SET state = 'held', last_error = ? WHERE id = ?",
                (reason[:2000], entry_id),
            )

    def release(self, entry_id: int) -> bool:
        """Put a held message back in its queue (after a human fixed the PACS or RIS)."""
        with self._lock:
            cursor = self._db.execute(
                "UPDATE messages SET state = 'pending', not_before = 0, attempts = 0"
                " WHERE id = ? AND state = 'held'",
                (entry_id,),
            )
        return cursor.rowcount == 1

    def held(self, limit: int = 200) -> list[InboxEntry]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE state = 'held' ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [self._entry(row) for row in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state")
            return {str(state): int(n) for state, n in rows}

    def failed(self, entry_id: int, reason: str) -> None:
        """Record a failed attempt; the message stays at the head of its patient's queue."""
        with self._lock:
            self._db.execute(
                "UPDATE messages SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                (reason[:2000], entry_id),
            )

    def deliver(self, consumer: Callable[[InboxEntry], None], limit: int = 100) -> int:
        """Hand each patient's next message to ``consumer``; done on success. Returns the count."""
        count = 0
        for entry in self.pending(limit):
            try:
                consumer(entry)
            except Exception as exc:
                log.exception("inbox message %s (%s) failed", entry.id, entry.control_id)
                self.failed(entry.id, f"{type(exc).__name__}: {exc}")
                continue
            self.done(entry.id)
            count += 1
        return count

    def purge_done(self, before: datetime) -> int:
        """Forget messages done before ``before`` (their duplicate check goes with them)."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM messages WHERE state = 'done' AND done_at < ?",
                (before.astimezone(UTC).isoformat(timespec="microseconds"),),
            )
        return cursor.rowcount

    def reject(self, raw: bytes, reason: str, *, ack: str, control_id: str = "") -> Path:
        """Keep a refused message and why under ``rejected/`` (best effort, not fsync'd)."""
        with self._lock:
            self._rejected_seq += 1
            seq = self._rejected_seq
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        # file names never come from the message as is: control ids are untrusted text
        stem = f"{stamp}-{os.getpid()}-{seq:06d}-{_UNSAFE.sub('_', control_id)[:40] or 'none'}"
        path = self.rejected_folder / f"{stem}.hl7"
        _write_atomic(path, raw)
        note = {"received_at": _now(), "ack": ack, "control_id": control_id, "reason": reason}
        _write_atomic(path.with_suffix(".json"),
                      json.dumps(note, ensure_ascii=False, indent=2).encode("utf-8"))  # fmt: skip
        return path


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
