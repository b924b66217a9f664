"""The Source's durable outbox (submissions waiting for the index) and its publication archive.

Both live in the inbox's SQLite database (``synchronous=FULL``) so that handling a report
message, queuing its submission and recording what the exam's current manifest is commit in
one transaction: after a crash either all three happened or none did.

Outbox order: like the inbox, one head per patient, so a replacement or a depublication never
overtakes the publication it follows. A transient failure (index down, slow, busy) postpones
the head with exponential backoff; a permanent rejection parks the operation as ``failed``
with the registry's error (shown on the admin page) and lets the patient's queue move on.

The archive (``publications``) is what this box has published, per study: the current KOS
(bytes and uid), the report message it was built from, and the state. The Source's WADO-RS
serves only instances of a published manifest, and life-cycle events start from it.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from drimbox.services.source.inbox import Inbox

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    patient TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    action TEXT NOT NULL,
    kos_uid TEXT NOT NULL DEFAULT '',
    kos BLOB,
    report_raw BLOB,
    report_uid TEXT NOT NULL DEFAULT '',
    publish_report INTEGER NOT NULL DEFAULT 0,
    replaces_kos_uid TEXT NOT NULL DEFAULT '',
    replaces_report_uid TEXT NOT NULL DEFAULT '',
    message_id INTEGER,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    not_before REAL NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',   -- pending | done | failed
    done_at TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (patient, id) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS publications (
    study_uid TEXT PRIMARY KEY,
    patient TEXT NOT NULL,
    patient_id TEXT NOT NULL,
    kos_uid TEXT NOT NULL,
    kos BLOB NOT NULL,
    report_uid TEXT NOT NULL DEFAULT '',
    report_raw BLOB,
    indexed_kos_uid TEXT NOT NULL DEFAULT '',
    indexed_report_uid TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS publications_by_kos ON publications (kos_uid);
CREATE INDEX IF NOT EXISTS publications_by_indexed_kos ON publications (indexed_kos_uid);
"""
_OUT_COLUMNS = """id, patient, patient_id, study_uid, action, kos_uid, kos, report_raw, report_uid,
       publish_report, replaces_kos_uid, replaces_report_uid, message_id, created_at, attempts,
       last_error, state"""
_OUT_PENDING = f"""
SELECT {_OUT_COLUMNS} FROM outbox AS o
WHERE state = 'pending' AND not_before <= ?
  AND id = (SELECT MIN(id) FROM outbox WHERE patient = o.patient AND state = 'pending')
ORDER BY id LIMIT ?
"""
_PUB_COLUMNS = """study_uid, patient, patient_id, kos_uid, kos, report_uid, report_raw,
       indexed_kos_uid, indexed_report_uid, state, updated_at, last_error"""


class Action(StrEnum):
    PUBLISH = "publish"
    """ITI-41 of the KOS (and report), replacing the previous version when there is one."""
    DEPUBLISH = "depublish"
    """ITI-57 to status Deleted of the KOS (and of the report this box published)."""


class PublicationState(StrEnum):
    QUEUED = "queued"
    """A submission is in the outbox; the manifest is not in the index yet."""
    PUBLISHED = "published"
    FAILED = "failed"
    """The index refused the last submission; see ``last_error``."""
    DEPUBLISHING = "depublishing"
    DELETED = "deleted"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, slots=True)
class Operation:
    """One queued call to the index."""

    id: int
    patient: str
    patient_id: str
    """XDS patient id ``INS^^^&OID&ISO^NH``."""
    study_uid: str
    action: Action
    kos_uid: str = ""
    kos: bytes = b""
    report_raw: bytes = b""
    """The HL7 message whose report gives the metadata (authors, codes) and maybe the CDA."""
    report_uid: str = ""
    publish_report: bool = False
    replaces_kos_uid: str = ""
    replaces_report_uid: str = ""
    message_id: int | None = None
    created_at: str = ""
    attempts: int = 0
    last_error: str | None = None
    state: str = "pending"


@dataclass(frozen=True, slots=True)
class Publication:
    """What this box has published (or is publishing) for one study."""

    study_uid: str
    patient: str
    patient_id: str
    kos_uid: str
    """The latest manifest (queued or published)."""
    kos: bytes
    report_uid: str
    """Document id of the latest report version."""
    report_raw: bytes
    """The HL7 message of the latest report: metadata for IOCM-driven replacements."""
    indexed_kos_uid: str
    """The manifest the index holds now (empty when none): what a replacement replaces."""
    indexed_report_uid: str
    """The report this box published and the index holds now (empty when none)."""
    state: PublicationState
    updated_at: str = ""
    last_error: str | None = None


def _operation(row: tuple[Any, ...]) -> Operation:
    return Operation(
        id=row[0], patient=row[1], patient_id=row[2], study_uid=row[3], action=Action(row[4]),
        kos_uid=row[5], kos=bytes(row[6] or b""), report_raw=bytes(row[7] or b""),
        report_uid=row[8], publish_report=bool(row[9]), replaces_kos_uid=row[10],
        replaces_report_uid=row[11], message_id=row[12], created_at=row[13], attempts=row[14],
        last_error=row[15], state=row[16],
    )  # fmt: skip


def _publication(row: tuple[Any, ...]) -> Publication:
    return Publication(
        study_uid=row[0], patient=row[1], patient_id=row[2], kos_uid=row[3], kos=bytes(row[4]),
        report_uid=row[5], report_raw=bytes(row[6] or b""), indexed_kos_uid=row[7],
        indexed_report_uid=row[8], state=PublicationState(row[9]), updated_at=row[10],
        last_error=row[11],
    )  # fmt: skip


class Outbox:
    """Operations for the index, durable, one head per patient. Shares ``inbox``'s database."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox
        with inbox.transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)

    # -- writing, inside Inbox.transaction()

    @staticmethod
    def enqueue(db: sqlite3.Connection, op: Operation) -> int:
        cursor = db.execute(
            "INSERT INTO outbox (patient, patient_id, study_uid, action, kos_uid, kos,"
            " report_raw, report_uid, publish_report, replaces_kos_uid, replaces_report_uid,"
            " message_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (op.patient, op.patient_id, op.study_uid, op.action.value, op.kos_uid, op.kos,
             op.report_raw, op.report_uid, int(op.publish_report), op.replaces_kos_uid,
             op.replaces_report_uid, op.message_id, _now()),
        )  # fmt: skip
        return int(cursor.lastrowid or 0)

    @staticmethod
    def record(db: sqlite3.Connection, pub: Publication) -> None:
        db.execute(
            "INSERT OR REPLACE INTO publications (study_uid, patient, patient_id, kos_uid, kos,"
            " report_uid, report_raw, indexed_kos_uid, indexed_report_uid, state, updated_at,"
            " last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (pub.study_uid, pub.patient, pub.patient_id, pub.kos_uid, pub.kos, pub.report_uid,
             pub.report_raw, pub.indexed_kos_uid, pub.indexed_report_uid, pub.state.value,
             _now(), pub.last_error),
        )  # fmt: skip

    # -- the sender's side

    def pending(self, limit: int = 100, now: float | None = None) -> list[Operation]:
        at = time.time() if now is None else now
        with self._inbox.reading() as db:
            rows = db.execute(_OUT_PENDING, (at, limit)).fetchall()
        return [_operation(row) for row in rows]

    def next_due(self) -> float | None:
        with self._inbox.reading() as db:
            row = db.execute(
                "SELECT MIN(not_before) FROM outbox WHERE state = 'pending'"
            ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def published(self, op: Operation, report_indexed: bool) -> None:
        """The index holds ``op``'s manifest (and report when ``report_indexed``)."""
        with self._inbox.transaction() as db:
            self._close(db, op)
            db.execute(
                "UPDATE publications SET indexed_kos_uid = ?, updated_at = ? WHERE study_uid = ?",
                (op.kos_uid, _now(), op.study_uid),
            )
            if report_indexed:
                db.execute(
                    "UPDATE publications SET indexed_report_uid = ? WHERE study_uid = ?",
                    (op.report_uid, op.study_uid),
                )
            # a later message may have queued a newer manifest already: its state stays
            db.execute(
                "UPDATE publications SET state = 'published', last_error = NULL"
                " WHERE study_uid = ? AND kos_uid = ?",
                (op.study_uid, op.kos_uid),
            )

    def depublished(self, op: Operation) -> None:
        """The index no longer shows ``op``'s documents."""
        with self._inbox.transaction() as db:
            self._close(db, op)
            db.execute(
                "UPDATE publications SET indexed_kos_uid = CASE WHEN indexed_kos_uid = ? THEN ''"
                " ELSE indexed_kos_uid END, indexed_report_uid = CASE WHEN indexed_report_uid = ?"
                " THEN '' ELSE indexed_report_uid END, updated_at = ? WHERE study_uid = ?",
                (op.kos_uid, op.report_uid, _now(), op.study_uid),
            )
            db.execute(
                "UPDATE publications SET state = 'deleted', last_error = NULL"
                " WHERE study_uid = ? AND kos_uid = ? AND state = 'depublishing'",
                (op.study_uid, op.kos_uid),
            )

    @staticmethod
    def _close(db: sqlite3.Connection, op: Operation) -> None:
        db.execute("UPDATE outbox SET state = 'done', done_at = ? WHERE id = ?", (_now(), op.id))

    def retry_later(self, op: Operation, reason: str, delay: float) -> None:
        with self._inbox.transaction() as db:
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, not_before = ?"
                " WHERE id = ?",
                (reason[:2000], time.time() + delay, op.id),
            )

    def failed(self, op: Operation, reason: str) -> None:
        """A permanent refusal: parked with the registry's reason, the patient's queue moves on."""
        with self._inbox.transaction() as db:
            db.execute(
                "UPDATE outbox SET state = 'failed', attempts = attempts + 1, last_error = ?,"
                " done_at = ? WHERE id = ?",
                (reason[:2000], _now(), op.id),
            )
            db.execute(
                "UPDATE publications SET state = 'failed', updated_at = ?, last_error = ?"
                " WHERE study_uid = ? AND kos_uid = ?",
                (_now(), reason[:2000], op.study_uid, op.kos_uid),
            )

    def retry_failed(self, op_id: int) -> bool:
        """Admin action: send a failed operation again (after the cause was fixed)."""
        with self._inbox.transaction() as db:
            cursor = db.execute(
                "UPDATE outbox SET state = 'pending', not_before = 0, done_at = NULL"
                " WHERE id = ? AND state = 'failed'",
                (op_id,),
            )
        return cursor.rowcount == 1

    def operations(self, state: str, limit: int = 200) -> list[Operation]:
        with self._inbox.reading() as db:
            rows = db.execute(
                f"SELECT {_OUT_COLUMNS} FROM outbox WHERE state = ? ORDER BY id DESC LIMIT ?",
                (state, limit),
            ).fetchall()
        return [_operation(row) for row in rows]

    def counts(self) -> dict[str, int]:
        with self._inbox.reading() as db:
            rows = db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
        return {str(state): int(n) for state, n in rows}

    # -- the archive

    def publication(self, study_uid: str) -> Publication | None:
        with self._inbox.reading() as db:
            row = db.execute(
                f"SELECT {_PUB_COLUMNS} FROM publications WHERE study_uid = ?", (study_uid,)
            ).fetchone()
        return None if row is None else _publication(row)

    def publication_by_kos(self, kos_uid: str) -> Publication | None:
        """The publication whose latest manifest, or the one the index holds, is ``kos_uid``."""
        with self._inbox.reading() as db:
            row = db.execute(
                f"SELECT {_PUB_COLUMNS} FROM publications"
                " WHERE kos_uid = ? OR indexed_kos_uid = ? LIMIT 1",
                (kos_uid, kos_uid),
            ).fetchone()
        return None if row is None else _publication(row)

    def publications(self, limit: int = 200) -> list[Publication]:
        with self._inbox.reading() as db:
            rows = db.execute(
                f"SELECT {_PUB_COLUMNS} FROM publications ORDER BY updated_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [_publication(row) for row in rows]
