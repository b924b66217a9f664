"""Import of a consulted exam into the site's own PACS, under the local patient id.

One job per (exam, local patient id): asking again returns the running or finished job, or
resumes an interrupted one where it stopped (instances already stored are not sent again).
Each instance is fetched (the box's cache, else the Source), rewritten with the local
identity and stored; progress is durable (SQLite), so a restart shows what was done.
"""

from __future__ import annotations

import logging
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drimbox.domain.errors import DrimboxError

log = logging.getLogger(__name__)

Item = tuple[str, str]
Fetch = Callable[[str, list[Item], Any], Iterator[tuple[Item, Path]]]
"""(study, items, context) -> each item's cached file, as it becomes available."""
Send = Callable[[list[Path]], tuple[int, list[tuple[Path, str]]]]
"""files -> (how many stored, [(file, why) failed])."""
Localize = Callable[[bytes], bytes]

_SCHEMA = """
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS import_jobs (
    id INTEGER PRIMARY KEY, study_uid TEXT NOT NULL, kos_uid TEXT NOT NULL,
    ipp TEXT NOT NULL, requested_by TEXT NOT NULL, total INTEGER NOT NULL,
    state TEXT NOT NULL, error TEXT, created_at REAL NOT NULL, updated_at REAL NOT NULL,
    UNIQUE (study_uid, ipp)
);
CREATE TABLE IF NOT EXISTS import_items (
    job_id INTEGER NOT NULL, sop_uid TEXT NOT NULL, state TEXT NOT NULL, error TEXT,
    PRIMARY KEY (job_id, sop_uid)
);
"""
_BATCH = 32


@dataclass(frozen=True, slots=True)
class ImportJob:
    id: int
    study_uid: str
    kos_uid: str
    ipp: str
    requested_by: str
    total: int
    stored: int
    failed: int
    state: str
    """running, done, failed (some instances refused) or interrupted (retry to resume)."""
    error: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "study_uid": self.study_uid, "ipp": self.ipp,
                "total": self.total, "stored": self.stored, "failed": self.failed,
                "state": self.state, "error": self.error}  # fmt: skip


class Importer:
    def __init__(self, db_path: Path, fetch: Fetch, send: Send, workdir: Path) -> None:
        self.fetch, self.send, self.workdir = fetch, send, workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._running: set[int] = set()
        with self._lock:  # a restart interrupted whatever was running
            self._db.execute("UPDATE import_jobs SET state = 'interrupted', error = ?"
                             " WHERE state = 'running'", ("le service a redémarré",))  # fmt: skip

    def start(
        self, study: str, kos_uid: str, items: Sequence[Item], ipp: str, who: str,
        localize: Localize, context: Any,
    ) -> ImportJob:  # fmt: skip
        now = time.time()
        with self._lock:
            row = self._db.execute(
                "SELECT id, state FROM import_jobs WHERE study_uid = ? AND ipp = ?", (study, ipp)
            ).fetchone()
            if row is not None and (row[0] in self._running or row[1] == "done"):
                return self._job(row[0])
            if row is None:
                job_id = int(self._db.execute(
                    "INSERT INTO import_jobs (study_uid, kos_uid, ipp, requested_by, total, state,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
                    (study, kos_uid, ipp, who, len(items), now, now)).lastrowid or 0)  # fmt: skip
            else:
                job_id = row[0]
                self._db.execute("UPDATE import_jobs SET state = 'running', error = NULL,"
                                 " updated_at = ? WHERE id = ?", (now, job_id))  # fmt: skip
                self._db.execute("DELETE FROM import_items WHERE job_id = ? AND state != 'stored'",
                                 (job_id,))  # fmt: skip
            self._running.add(job_id)
        threading.Thread(target=self._run, args=(job_id, study, list(items), localize, context),
                         name=f"import-{job_id}", daemon=True).start()  # fmt: skip
        return self._job(job_id)

    def job(self, job_id: int) -> ImportJob | None:
        with self._lock:
            exists = self._db.execute(
                "SELECT 1 FROM import_jobs WHERE id = ?", (job_id,)
            ).fetchone()
        return self._job(job_id) if exists else None

    def _job(self, job_id: int) -> ImportJob:
        with self._lock:
            row = self._db.execute(
                "SELECT id, study_uid, kos_uid, ipp, requested_by, total, state, error"
                " FROM import_jobs WHERE id = ?", (job_id,)).fetchone()  # fmt: skip
            counts = dict(self._db.execute(
                "SELECT state, COUNT(*) FROM import_items WHERE job_id = ? GROUP BY state",
                (job_id,)).fetchall())  # fmt: skip
        return ImportJob(row[0], row[1], row[2], row[3], row[4], row[5],
                         int(counts.get("stored", 0)), int(counts.get("failed", 0)), row[6],
                         row[7])  # fmt: skip

    def _stored(self, job_id: int) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT sop_uid FROM import_items WHERE job_id = ?"
                                    " AND state = 'stored'", (job_id,)).fetchall()  # fmt: skip
        return {r[0] for r in rows}

    def _record(self, job_id: int, results: list[tuple[str, str, str | None]]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT OR REPLACE INTO import_items (job_id, sop_uid, state, error)"
                " VALUES (?, ?, ?, ?)", [(job_id, *r) for r in results])  # fmt: skip
            self._db.execute("UPDATE import_jobs SET updated_at = ? WHERE id = ?",
                             (time.time(), job_id))  # fmt: skip

    def _finish(self, job_id: int, state: str, error: str | None) -> None:
        with self._lock:
            self._db.execute("UPDATE import_jobs SET state = ?, error = ?, updated_at = ?"
                             " WHERE id = ?", (state, error, time.time(), job_id))  # fmt: skip
            self._running.discard(job_id)

    def _run(
        self, job_id: int, study: str, items: list[Item], localize: Localize, context: Any
    ) -> None:
        todo = [i for i in items if i[1] not in self._stored(job_id)]
        try:
            with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
                batch: list[tuple[str, Path]] = []
                for (_, sop), path in self.fetch(study, todo, context):
                    out = Path(tmp) / f"{sop}.dcm"
                    out.write_bytes(localize(path.read_bytes()))
                    batch.append((sop, out))
                    if len(batch) >= _BATCH:
                        self._send(job_id, batch)
                        batch = []
                if batch:
                    self._send(job_id, batch)
        except DrimboxError as exc:
            log.warning("import %d of %s interrupted: %s", job_id, study, exc)
            self._finish(job_id, "interrupted", str(exc))
            return
        except Exception as exc:
            log.exception("import %d of %s failed", job_id, study)
            self._finish(job_id, "interrupted", f"erreur inattendue: {exc}")
            return
        job = self._job(job_id)
        if job.failed:
            self._finish(job_id, "failed", f"{job.failed} instance(s) refusée(s) par le PACS")
        else:
            self._finish(job_id, "done", None)

    def _send(self, job_id: int, batch: list[tuple[str, Path]]) -> None:
        _, failed = self.send([p for _, p in batch])
        reasons = {p: why for p, why in failed}
        self._record(job_id, [(sop, "failed" if p in reasons else "stored", reasons.get(p))
                              for sop, p in batch])  # fmt: skip
        for path, why in failed:
            log.warning("import %d: %s refused: %s", job_id, path.name, why)

    def close(self) -> None:
        with closing(self._db):
            pass
