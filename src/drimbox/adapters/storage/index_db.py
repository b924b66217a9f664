"""The national index store on SQLAlchemy: SQLite (WAL, embedded default) or PostgreSQL.

``open_index_db(url)`` creates the engine and runs the Alembic migrations shipped in
``index_migrations``. Every write (a whole ITI-41 submission with its documents, an ITI-57
update, an access-log line) is one transaction, committed before the caller answers; SQLite
runs with ``synchronous=FULL`` so a commit survives a power cut.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    create_engine,
    delete,
    event,
    exists,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from drimbox.adapters.storage import index_models as m
from drimbox.adapters.storage.index_rows import (
    access_row,
    association_row,
    document_row,
    entry_from_row,
    event_from_row,
    set_from_row,
    submission_set_row,
)
from drimbox.domain.access import AccessEvent, PatientPolicy
from drimbox.domain.xds import (
    APPROVED,
    DELETED,
    DEPRECATED,
    Association,
    Code,
    DocumentEntry,
    ErrorCode,
    Submission,
    SubmissionSet,
    XdsError,
    dtm_bound,
)
from drimbox.services.index.ports import FindDocumentsQuery, FindSubmissionSetsQuery, StatusChange

MIGRATIONS = Path(__file__).with_name("index_migrations")
D = cast(Table, m.DocumentEntryRow.__table__)
SS = cast(Table, m.SubmissionSetRow.__table__)
EV = cast(Table, m.EventCodeRow.__table__)
CONF = cast(Table, m.ConfidentialityCodeRow.__table__)
REF = cast(Table, m.ReferenceIdRow.__table__)
ASSOC = cast(Table, m.AssociationRow.__table__)
CONTENT = cast(Table, m.DocumentContentRow.__table__)
VERSIONS = cast(Table, m.DocumentVersionRow.__table__)
PATIENTS = cast(Table, m.PatientRow.__table__)
LOG = cast(Table, m.AccessLogRow.__table__)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "busy_timeout=30000"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (Alembic upgrade on our own connection)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def open_index_db(url: str) -> IndexDb:
    engine = make_engine(url)
    migrate(engine)
    return IndexDb(engine)


def _code_match(code_col: Any, scheme_col: Any, codes: Sequence[Code]) -> ColumnElement[bool]:
    return or_(
        *(
            and_(code_col == c.code, scheme_col == c.scheme) if c.scheme else code_col == c.code
            for c in codes
        )
    )


def _child_exists(table: Any, codes: Sequence[Code]) -> ColumnElement[bool]:
    return exists().where(
        table.c.patient_id == D.c.patient_id,
        table.c.entry_uuid == D.c.entry_uuid,
        _code_match(table.c.code, table.c.scheme, codes),
    )


def _time_range(column: Any, low: str, high: str) -> list[ColumnElement[bool]]:
    # ITI TF-2a 3.18.4.1.2.3.7.1: From is inclusive, To is exclusive
    clauses: list[ColumnElement[bool]] = []
    if low:
        clauses.append(column >= dtm_bound(low))
    if high:
        clauses += [column != "", column < dtm_bound(high)]
    return clauses


def _document_filters(query: FindDocumentsQuery) -> list[ColumnElement[bool]]:
    statuses = [s for s in query.statuses if s != DELETED]
    where: list[ColumnElement[bool]] = [D.c.patient_id == query.patient_id]
    where.append(D.c.status.in_(statuses))
    for codes, code_col, scheme_col in (
        (query.class_codes, D.c.class_code, D.c.class_scheme),
        (query.type_codes, D.c.type_code, D.c.type_scheme),
        (query.practice_setting_codes, D.c.practice_setting_code, D.c.practice_setting_scheme),
        (query.hcft_codes, D.c.hcft_code, D.c.hcft_scheme),
        (query.format_codes, D.c.format_code, D.c.format_scheme),
    ):
        if codes:
            where.append(_code_match(code_col, scheme_col, codes))
    where += [_child_exists(EV, group) for group in query.event_codes if group]
    where += [_child_exists(CONF, group) for group in query.confidentiality_codes if group]
    where += _time_range(D.c.creation_time, query.creation_from, query.creation_to)
    where += _time_range(D.c.service_start_time, query.service_start_from, query.service_start_to)
    where += _time_range(D.c.service_stop_time, query.service_stop_from, query.service_stop_to)
    if query.reference_ids:
        where.append(
            exists().where(
                REF.c.patient_id == D.c.patient_id,
                REF.c.entry_uuid == D.c.entry_uuid,
                REF.c.reference_id.in_(query.reference_ids),
            )
        )
    return where


class IndexDb:
    """``IndexStore`` over one SQLAlchemy engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def close(self) -> None:
        self.engine.dispose()

    # -- writes ----------------------------------------------------------------------------

    def register(
        self, submission: Submission, deprecate: Sequence[str], event: AccessEvent
    ) -> None:
        try:
            with self.engine.begin() as conn:
                self._deprecate(conn, submission.submission_set.patient_id, deprecate)
                self._insert_submission(conn, submission, event.at)
                conn.execute(insert(LOG), [access_row(event)])
        except IntegrityError:
            self._raise_duplicate(submission)
            raise

    def _deprecate(self, conn: Connection, patient_id: str, uuids: Sequence[str]) -> None:
        for entry_uuid in uuids:
            result = conn.execute(
                update(D)
                .where(D.c.patient_id == patient_id, D.c.entry_uuid == entry_uuid)
                .where(D.c.status == APPROVED)
                .values(status=DEPRECATED)
            )
            if result.rowcount != 1:
                # a concurrent replacement won the race: the whole submission fails
                raise XdsError(ErrorCode.REGISTRY, f"{entry_uuid} is no longer Approved")

    def _insert_submission(self, conn: Connection, sub: Submission, at: datetime) -> None:
        conn.execute(insert(SS), [submission_set_row(sub.submission_set, at)])
        if sub.entries:
            conn.execute(insert(D), [document_row(e) for e in sub.entries])
            self._insert_children(conn, sub.entries)
        if sub.associations:
            ss_uuid = sub.submission_set.entry_uuid
            conn.execute(insert(ASSOC), [association_row(a, ss_uuid) for a in sub.associations])
        contents = [
            {"patient_id": e.patient_id, "unique_id": e.unique_id, "mime_type": e.mime_type,
             "content": sub.documents[e.entry_uuid]}
            for e in sub.entries if e.entry_uuid in sub.documents
        ]  # fmt: skip
        if contents:
            conn.execute(insert(CONTENT), contents)

    def _insert_children(self, conn: Connection, entries: Iterable[DocumentEntry]) -> None:
        events, confs, refs = [], [], []
        for e in entries:
            key = {"patient_id": e.patient_id, "entry_uuid": e.entry_uuid}
            events += [{**key, "code": c.code, "scheme": c.scheme} for c in set(e.event_codes)]
            confs += [
                {**key, "code": c.code, "scheme": c.scheme} for c in set(e.confidentiality_codes)
            ]
            refs += [{**key, "reference_id": r} for r in set(e.reference_ids)]
        for table, rows in ((EV, events), (CONF, confs), (REF, refs)):
            if rows:
                conn.execute(insert(table), rows)

    def _raise_duplicate(self, submission: Submission) -> None:
        known = self.existing_unique_ids([e.unique_id for e in submission.entries])
        for entry in submission.entries:
            if entry.unique_id in known:
                raise XdsError(
                    ErrorCode.DUPLICATE_UNIQUE_ID,
                    f"{entry.symbolic_id}: uniqueId {entry.unique_id} is already registered",
                ) from None
        ss = submission.submission_set
        if ss.unique_id in self.existing_unique_ids([ss.unique_id]):
            raise XdsError(
                ErrorCode.DUPLICATE_UNIQUE_ID,
                f"{ss.symbolic_id}: submission set uniqueId {ss.unique_id} is already registered",
            ) from None

    def update(
        self,
        submission: Submission,
        changes: Sequence[StatusChange],
        versions: Sequence[tuple[DocumentEntry, DocumentEntry]],
        event: AccessEvent,
    ) -> None:
        with self.engine.begin() as conn:
            for change in changes:
                result = conn.execute(
                    update(D)
                    .where(D.c.patient_id == change.patient_id)
                    .where(D.c.entry_uuid == change.entry_uuid, D.c.status == change.original)
                    .values(status=change.new)
                )
                if result.rowcount != 1:
                    raise XdsError(ErrorCode.BAD_STATUS, f"{change.entry_uuid} changed meanwhile")
            for old, new in versions:
                self._new_version(conn, old, new, event.at)
            conn.execute(insert(SS), [submission_set_row(submission.submission_set, event.at)])
            ss_uuid = submission.submission_set.entry_uuid
            rows = [association_row(a, ss_uuid) for a in submission.associations]
            if rows:
                conn.execute(insert(ASSOC), rows)
            conn.execute(insert(LOG), [access_row(event)])

    def _new_version(
        self, conn: Connection, old: DocumentEntry, new: DocumentEntry, at: datetime
    ) -> None:
        conn.execute(
            insert(VERSIONS),
            [{"patient_id": old.patient_id, "entry_uuid": old.entry_uuid,
              "logical_id": old.logical_id, "version": old.version, "unique_id": old.unique_id,
              "superseded_at": at, "ebrim": old.ebrim}],
        )  # fmt: skip
        result = conn.execute(
            delete(D).where(
                D.c.patient_id == old.patient_id,
                D.c.entry_uuid == old.entry_uuid,
                D.c.version == old.version,
            )
        )
        if result.rowcount != 1:
            raise XdsError(ErrorCode.BAD_STATUS, f"{old.entry_uuid} changed meanwhile")
        conn.execute(insert(D), [document_row(new)])
        self._insert_children(conn, [new])

    def set_patient_policy(self, policy: PatientPolicy, event: AccessEvent) -> None:
        values = {"opposed": policy.opposed, "opposes_break_glass": policy.opposes_break_glass,
                  "updated_at": event.at}  # fmt: skip
        with self.engine.begin() as conn:
            done = conn.execute(
                update(PATIENTS).where(PATIENTS.c.patient_id == policy.patient_id).values(values)
            )
            if done.rowcount == 0:
                conn.execute(insert(PATIENTS), [{"patient_id": policy.patient_id, **values}])
            conn.execute(insert(LOG), [access_row(event)])

    def set_hidden(self, entry_uuid: str, hidden: bool, event: AccessEvent) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(D)
                .where(D.c.patient_id == event.patient_id, D.c.entry_uuid == entry_uuid)
                .values(hidden_by_patient=hidden)
            )
            conn.execute(insert(LOG), [access_row(event)])

    def append_access(self, event: AccessEvent) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(LOG), [access_row(event)])

    # -- reads -----------------------------------------------------------------------------

    def find_documents(self, query: FindDocumentsQuery) -> list[DocumentEntry]:
        stmt = (
            select(D)
            .where(*_document_filters(query))
            .order_by(D.c.creation_time.desc())
            .limit(query.limit + 1)
        )
        with self.engine.connect() as conn:
            return self._entries(conn, conn.execute(stmt).mappings().all())

    def _entries(self, conn: Connection, rows: Sequence[Any]) -> list[DocumentEntry]:
        if not rows:
            return []
        keys = [r["entry_uuid"] for r in rows]
        # the child tables are keyed (patient_id, entry_uuid): give both to use the key
        patients = list({r["patient_id"] for r in rows})
        children: dict[str, dict[str, list[Any]]] = {
            k: {"ev": [], "conf": [], "ref": []} for k in keys
        }
        for name, table in (("ev", EV), ("conf", CONF)):
            stmt = select(table).where(
                table.c.patient_id.in_(patients), table.c.entry_uuid.in_(keys)
            )
            for r in conn.execute(stmt):
                children[r.entry_uuid][name].append(Code(r.code, r.scheme))
        stmt = select(REF).where(REF.c.patient_id.in_(patients), REF.c.entry_uuid.in_(keys))
        for r in conn.execute(stmt):
            children[r.entry_uuid]["ref"].append(r.reference_id)
        return [entry_from_row(r, children[r["entry_uuid"]]) for r in rows]

    def find_submission_sets(self, query: FindSubmissionSetsQuery) -> list[SubmissionSet]:
        stmt = select(SS).where(
            SS.c.patient_id == query.patient_id, SS.c.status.in_(query.statuses)
        )
        if query.source_ids:
            stmt = stmt.where(SS.c.source_id.in_(query.source_ids))
        for clause in _time_range(SS.c.submission_time, query.submission_from, query.submission_to):
            stmt = stmt.where(clause)
        if query.content_types:
            stmt = stmt.where(
                _code_match(SS.c.content_type_code, SS.c.content_type_scheme, query.content_types)
            )
        with self.engine.connect() as conn:
            rows = conn.execute(stmt.order_by(SS.c.submission_time.desc())).mappings().all()
        return [set_from_row(r) for r in rows]

    def entries(
        self, uuids: Sequence[str] = (), unique_ids: Sequence[str] = (), logical: bool = False
    ) -> list[DocumentEntry]:
        clauses = []
        if uuids:
            clauses.append((D.c.logical_id if logical else D.c.entry_uuid).in_(list(uuids)))
        if unique_ids:
            clauses.append(D.c.unique_id.in_(list(unique_ids)))
        if not clauses:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(select(D).where(or_(*clauses))).mappings().all()
            return self._entries(conn, rows)

    def submission_sets(self, uuids: Sequence[str]) -> list[SubmissionSet]:
        if not uuids:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(select(SS).where(SS.c.entry_uuid.in_(list(uuids)))).mappings()
            return [set_from_row(r) for r in rows.all()]

    def associations(self, uuids: Sequence[str]) -> list[Association]:
        if not uuids:
            return []
        ids = list(uuids)
        stmt = select(ASSOC).where(or_(ASSOC.c.source_uuid.in_(ids), ASSOC.c.target_uuid.in_(ids)))
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        return [
            Association(r["entry_uuid"], r["association_type"], r["source_uuid"],
                        r["target_uuid"], r["patient_id"], ebrim=r["ebrim"])
            for r in rows
        ]  # fmt: skip

    def existing_unique_ids(self, unique_ids: Sequence[str]) -> set[str]:
        ids = list(unique_ids)
        if not ids:
            return set()
        with self.engine.connect() as conn:
            docs = conn.execute(select(D.c.unique_id).where(D.c.unique_id.in_(ids))).scalars()
            sets = conn.execute(select(SS.c.unique_id).where(SS.c.unique_id.in_(ids))).scalars()
            return set(docs) | set(sets)

    def content(self, unique_id: str) -> bytes | None:
        stmt = select(CONTENT.c.content).where(CONTENT.c.unique_id == unique_id)
        with self.engine.connect() as conn:
            data = conn.execute(stmt).scalar_one_or_none()
        return bytes(data) if data is not None else None

    def patient_policy(self, patient_id: str) -> PatientPolicy:
        stmt = select(PATIENTS).where(PATIENTS.c.patient_id == patient_id)
        with self.engine.connect() as conn:
            row = conn.execute(stmt).mappings().first()
        if row is None:
            return PatientPolicy(patient_id)
        return PatientPolicy(patient_id, bool(row["opposed"]), bool(row["opposes_break_glass"]))

    def access_log(self, patient_id: str, limit: int = 500) -> list[AccessEvent]:
        stmt = (
            select(LOG)
            .where(LOG.c.patient_id == patient_id)
            .order_by(LOG.c.at.desc(), LOG.c.event_id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [event_from_row(r) for r in conn.execute(stmt).mappings().all()]
