"""SQLite index of the embedded PACS: patient/study/series/instance attributes for queries.

The files are the source of truth; the index can be rebuilt from them (see
``PacsStore.recover``), which is why commits need not fsync (WAL, synchronous=NORMAL): the
instance file itself is fsync'd before a store is acknowledged.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL DEFAULT '',
    issuer_of_patient_id TEXT NOT NULL DEFAULT '',
    patient_name TEXT NOT NULL DEFAULT '',
    patient_birth_date TEXT NOT NULL DEFAULT '',
    patient_sex TEXT NOT NULL DEFAULT '',
    study_date TEXT NOT NULL DEFAULT '',
    study_time TEXT NOT NULL DEFAULT '',
    accession_number TEXT NOT NULL DEFAULT '',
    study_id TEXT NOT NULL DEFAULT '',
    study_description TEXT NOT NULL DEFAULT '',
    referring_physician_name TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS studies_patient ON studies(patient_id);
CREATE INDEX IF NOT EXISTS studies_date ON studies(study_date);
CREATE INDEX IF NOT EXISTS studies_accession ON studies(accession_number);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL DEFAULT '',
    series_number INTEGER,
    series_description TEXT NOT NULL DEFAULT '',
    body_part_examined TEXT NOT NULL DEFAULT '',
    series_date TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    instance_number INTEGER,
    rows INTEGER,
    columns INTEGER,
    number_of_frames INTEGER,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    metadata TEXT
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid, instance_number);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
"""


class Level(StrEnum):
    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


@dataclass(frozen=True, slots=True)
class Attribute:
    level: Level
    sql: str
    vr: str


_N_STUDY_SERIES = "(SELECT count(*) FROM series x WHERE x.study_uid = st.study_uid)"
_N_STUDY_INST = "(SELECT count(*) FROM instances x WHERE x.study_uid = st.study_uid)"
_MODALITIES = (
    "(SELECT group_concat(m, '\\') FROM (SELECT DISTINCT modality AS m FROM series x"
    " WHERE x.study_uid = st.study_uid ORDER BY m))"
)

# Keys we match and return, by DICOM keyword (PS3.4 C.6.1.1 / C.6.2.1 and PS3.18 table 10.6.1-5)
ATTRIBUTES: dict[str, Attribute] = {
    "PatientID": Attribute(Level.PATIENT, "st.patient_id", "LO"),
    "IssuerOfPatientID": Attribute(Level.PATIENT, "st.issuer_of_patient_id", "LO"),
    "PatientName": Attribute(Level.PATIENT, "st.patient_name", "PN"),
    "PatientBirthDate": Attribute(Level.PATIENT, "st.patient_birth_date", "DA"),
    "PatientSex": Attribute(Level.PATIENT, "st.patient_sex", "CS"),
    "StudyInstanceUID": Attribute(Level.STUDY, "st.study_uid", "UI"),
    "StudyDate": Attribute(Level.STUDY, "st.study_date", "DA"),
    "StudyTime": Attribute(Level.STUDY, "st.study_time", "TM"),
    "AccessionNumber": Attribute(Level.STUDY, "st.accession_number", "SH"),
    "StudyID": Attribute(Level.STUDY, "st.study_id", "SH"),
    "StudyDescription": Attribute(Level.STUDY, "st.study_description", "LO"),
    "ReferringPhysicianName": Attribute(Level.STUDY, "st.referring_physician_name", "PN"),
    "ModalitiesInStudy": Attribute(Level.STUDY, _MODALITIES, "CS"),
    "NumberOfStudyRelatedSeries": Attribute(Level.STUDY, _N_STUDY_SERIES, "IS"),
    "NumberOfStudyRelatedInstances": Attribute(Level.STUDY, _N_STUDY_INST, "IS"),
    "SeriesInstanceUID": Attribute(Level.SERIES, "se.series_uid", "UI"),
    "Modality": Attribute(Level.SERIES, "se.modality", "CS"),
    "SeriesNumber": Attribute(Level.SERIES, "se.series_number", "IS"),
    "SeriesDescription": Attribute(Level.SERIES, "se.series_description", "LO"),
    "BodyPartExamined": Attribute(Level.SERIES, "se.body_part_examined", "CS"),
    "SeriesDate": Attribute(Level.SERIES, "se.series_date", "DA"),
    "NumberOfSeriesRelatedInstances": Attribute(
        Level.SERIES, "(SELECT count(*) FROM instances x WHERE x.series_uid = se.series_uid)", "IS"
    ),
    "SOPInstanceUID": Attribute(Level.IMAGE, "i.sop_uid", "UI"),
    "SOPClassUID": Attribute(Level.IMAGE, "i.sop_class_uid", "UI"),
    "InstanceNumber": Attribute(Level.IMAGE, "i.instance_number", "IS"),
    "Rows": Attribute(Level.IMAGE, "i.rows", "US"),
    "Columns": Attribute(Level.IMAGE, "i.columns", "US"),
    "NumberOfFrames": Attribute(Level.IMAGE, "i.number_of_frames", "IS"),
    "AvailableTransferSyntaxUID": Attribute(Level.IMAGE, "i.transfer_syntax_uid", "UI"),
}

# What each level returns by default (PS3.18 table 6.7.1-2 and friends)
DEFAULT_KEYS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: (
        "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex",
    ),
    Level.STUDY: (
        "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
        "StudyDescription", "ReferringPhysicianName", "ModalitiesInStudy",
        "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
        "PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex",
    ),
    Level.SERIES: (
        "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
        "SeriesDescription", "BodyPartExamined", "SeriesDate", "NumberOfSeriesRelatedInstances",
    ),
    Level.IMAGE: (
        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
        "InstanceNumber", "Rows", "Columns", "NumberOfFrames",
    ),
}  # fmt: skip

_LEVEL_ORDER = [Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE]

_FROM = {
    Level.PATIENT: "studies st",
    Level.STUDY: "studies st",
    Level.SERIES: "series se JOIN studies st ON st.study_uid = se.study_uid",
    Level.IMAGE: (
        "instances i JOIN series se ON se.series_uid = i.series_uid"
        " JOIN studies st ON st.study_uid = i.study_uid"
    ),
}
_ORDER = {
    Level.PATIENT: "",
    Level.STUDY: " ORDER BY st.study_date DESC, st.study_time DESC, st.study_uid",
    Level.SERIES: " ORDER BY se.series_number, se.series_uid",
    Level.IMAGE: " ORDER BY i.instance_number, i.sop_uid",
}


class QueryError(ValueError):
    """A query key or value that cannot be matched (unknown key, bad range...)."""


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    sop_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    instance_number: int | None
    rows: int | None
    columns: int | None
    number_of_frames: int | None
    study: Mapping[str, str]
    series: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    number_of_frames: int | None


_INSTANCE_COLS = (
    "sop_uid, series_uid, study_uid, sop_class_uid, transfer_syntax_uid, path, size,"
    " number_of_frames"
)


def _scope(study: str, series: str | None, sop: str | None) -> tuple[str, list[str]]:
    """WHERE clause (with ORDER BY) selecting a study, a series or one instance."""
    where, params = "study_uid = ?", [study]
    if series is not None:
        where += " AND series_uid = ?"
        params.append(series)
    if sop is not None:
        where += " AND sop_uid = ?"
        params.append(sop)
    return where + " ORDER BY series_uid, instance_number, sop_uid", params


def _like_pattern(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _glob_pattern(value: str) -> str:
    return value.replace("[", "[[]")


def _range_condition(expr: str, vr: str, value: str) -> tuple[str, list[Any]]:
    low, _, high = value.partition("-")
    clauses, params = [], []
    if low:
        clauses.append(f"{expr} >= ?")
        params.append(low)
    if high:
        clauses.append(f"{expr} <= ?")
        # a time range end "1200" includes 12:00:59.999
        params.append(high + ("\uffff" if vr != "DA" else ""))
    if not clauses:
        raise QueryError(f"empty range for {vr} value {value!r}")
    return " AND ".join(clauses), params


def match_condition(attr: Attribute, value: str, fuzzy: bool = False) -> tuple[str, list[Any]]:
    """SQL for one key of a C-FIND identifier or QIDO query (PS3.4 C.2.2.2)."""
    expr, vr = attr.sql, attr.vr
    if vr == "PN" and fuzzy and "*" not in value:
        value = value + "*"  # QIDO fuzzy matching: prefix match on name components
    if vr in ("UI", "CS") and "\\" in value:
        values = [v for v in value.split("\\") if v]
        if expr == _MODALITIES:
            return (
                "EXISTS (SELECT 1 FROM series y WHERE y.study_uid = st.study_uid AND y.modality"
                f" IN ({','.join('?' * len(values))}))",
                values,
            )
        return f"{expr} IN ({','.join('?' * len(values))})", values
    if expr == _MODALITIES:
        return (
            "EXISTS (SELECT 1 FROM series y WHERE y.study_uid = st.study_uid AND y.modality = ?)",
            [value],
        )
    if vr in ("DA", "TM", "DT") and "-" in value:
        return _range_condition(expr, vr, value)
    if vr in ("IS", "US"):
        try:
            return f"{expr} = ?", [int(value)]
        except ValueError:
            raise QueryError(f"{value!r} is not an integer") from None
    if vr == "PN":
        return f"{expr} LIKE ? ESCAPE '\\'", [_like_pattern(value)]
    if "*" in value or "?" in value:
        return f"{expr} GLOB ?", [_glob_pattern(value)]
    return f"{expr} = ?", [value]


class DicomIndex:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        # one writer per process at a time: threads queue here instead of inside SQLite
        self._write_lock = threading.Lock()
        with self._connect() as conn:
            conn.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    def _writer(self) -> sqlite3.Connection:
        """A connection that fails fast on a locked database (see ``_begin_write``)."""
        conn: sqlite3.Connection | None = getattr(self._local, "writer", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA busy_timeout=0")
            self._local.writer = conn
        return conn

    def _begin_write(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, retried every 0.2 ms while another process writes.

        SQLite's own busy handler sleeps 1, 2, 5, 10... ms between tries, which costs more
        than the few hundred microseconds an index write holds the lock.
        """
        deadline = time.monotonic() + 30
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.0002)

    @property
    def conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    # -- writes ---------------------------------------------------------------------------

    def get_instance(self, sop_uid: str) -> StoredInstance | None:
        row = self.conn.execute(
            f"SELECT {_INSTANCE_COLS} FROM instances WHERE sop_uid = ?", (sop_uid,)
        ).fetchone()
        return StoredInstance(*row) if row else None

    def add(self, rec: InstanceRecord) -> None:
        """Insert or replace one instance, and create or refresh its study and series."""
        with self._write_lock:
            self._add(self._writer(), rec)

    def _add(self, conn: sqlite3.Connection, rec: InstanceRecord) -> None:
        study = dict(rec.study)
        series = dict(rec.series)
        self._begin_write(conn)
        try:
            cols = ", ".join(study)
            conn.execute(
                f"INSERT INTO studies (study_uid, {cols}) VALUES (?{', ?' * len(study)})"
                f" ON CONFLICT(study_uid) DO UPDATE SET "
                + ", ".join(f"{k} = excluded.{k}" for k in study),
                (rec.study_uid, *study.values()),
            )
            cols = ", ".join(series)
            conn.execute(
                f"INSERT INTO series (series_uid, study_uid, {cols})"
                f" VALUES (?, ?{', ?' * len(series)})"
                f" ON CONFLICT(series_uid) DO UPDATE SET "
                + ", ".join(f"{k} = excluded.{k}" for k in series),
                (rec.series_uid, rec.study_uid, *series.values()),
            )
            conn.execute(
                "INSERT OR REPLACE INTO instances (sop_uid, series_uid, study_uid, sop_class_uid,"
                " instance_number, rows, columns, number_of_frames, transfer_syntax_uid, path,"
                " size, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    rec.sop_uid, rec.series_uid, rec.study_uid, rec.sop_class_uid,
                    rec.instance_number, rec.rows, rec.columns, rec.number_of_frames,
                    rec.transfer_syntax_uid, rec.path, rec.size,
                ),
            )  # fmt: skip
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def delete_instance(self, sop_uid: str) -> None:
        with self._write_lock:
            self._delete(self._writer(), sop_uid)

    def _delete(self, conn: sqlite3.Connection, sop_uid: str) -> None:
        self._begin_write(conn)
        try:
            row = conn.execute(
                "SELECT series_uid, study_uid FROM instances WHERE sop_uid = ?", (sop_uid,)
            ).fetchone()
            if row:
                conn.execute("DELETE FROM instances WHERE sop_uid = ?", (sop_uid,))
                conn.execute(
                    "DELETE FROM series WHERE series_uid = ? AND NOT EXISTS"
                    " (SELECT 1 FROM instances WHERE series_uid = ?)",
                    (row[0], row[0]),
                )
                conn.execute(
                    "DELETE FROM studies WHERE study_uid = ? AND NOT EXISTS"
                    " (SELECT 1 FROM series WHERE study_uid = ?)",
                    (row[1], row[1]),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def set_metadata(self, items: Iterable[tuple[str, str]]) -> None:
        self.conn.executemany(
            "UPDATE instances SET metadata = ? WHERE sop_uid = ?", [(m, s) for s, m in items]
        )

    # -- reads ----------------------------------------------------------------------------

    def all_paths(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT path FROM instances")}

    def instances(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[StoredInstance]:
        where, params = _scope(study_uid, series_uid, sop_uid)
        sql = f"SELECT {_INSTANCE_COLS} FROM instances WHERE {where}"
        return [StoredInstance(*r) for r in self.conn.execute(sql, params)]

    def metadata(
        self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[tuple[str, str | None]]:
        """(path, cached DICOM JSON or None) for each selected instance."""
        where, params = _scope(study_uid, series_uid, sop_uid)
        return list(
            self.conn.execute(f"SELECT path, metadata FROM instances WHERE {where}", params)
        )

    def find(
        self,
        level: Level,
        filters: Mapping[str, str],
        return_keys: Sequence[str] = (),
        fuzzy: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Match ``filters`` (keyword -> DICOM matching value) at ``level``."""
        depth = _LEVEL_ORDER.index(level)
        keys: list[str] = []
        for key in (*DEFAULT_KEYS[level], *filters, *return_keys):
            attr = ATTRIBUTES.get(key)
            if attr is None:
                raise QueryError(f"{key} is not a supported query key")
            if _LEVEL_ORDER.index(attr.level) > depth:
                raise QueryError(f"{key} cannot be used at the {level} level")
            if key not in keys:
                keys.append(key)
        where, params = [], []
        for key, value in filters.items():
            if value in ("", "*"):
                continue  # universal matching
            sql, args = match_condition(ATTRIBUTES[key], value, fuzzy)
            where.append(sql)
            params.extend(args)
        if level is Level.PATIENT:
            return self._find_patients(keys, where, params, limit, offset)
        select = ", ".join(ATTRIBUTES[k].sql for k in keys)
        sql = f"SELECT {select} FROM {_FROM[level]}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += _ORDER[level]
        sql += " LIMIT ? OFFSET ?"
        params.extend([-1 if limit is None else limit, offset])
        return [dict(zip(keys, row, strict=True)) for row in self.conn.execute(sql, params)]

    def _find_patients(
        self,
        keys: list[str],
        where: list[str],
        params: list[Any],
        limit: int | None,
        offset: int,
    ) -> list[dict[str, Any]]:
        select = ", ".join(f"max({ATTRIBUTES[k].sql})" for k in keys)
        sql = (
            f"SELECT {select}, count(*),"
            " (SELECT count(*) FROM series x JOIN studies y ON y.study_uid = x.study_uid"
            "  WHERE y.patient_id = st.patient_id),"
            " (SELECT count(*) FROM instances x JOIN studies y ON y.study_uid = x.study_uid"
            "  WHERE y.patient_id = st.patient_id)"
            " FROM studies st"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " GROUP BY st.patient_id ORDER BY st.patient_id LIMIT ? OFFSET ?"
        params = [*params, -1 if limit is None else limit, offset]
        out = []
        for row in self.conn.execute(sql, params):
            rec = dict(zip(keys, row[: len(keys)], strict=True))
            rec["NumberOfPatientRelatedStudies"] = row[-3]
            rec["NumberOfPatientRelatedSeries"] = row[-2]
            rec["NumberOfPatientRelatedInstances"] = row[-1]
            out.append(rec)
        return out
