"""Initial schema of the national index.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PATIENT = sa.String(80)
UUID_ = sa.String(64)
OID = sa.String(128)
CODE = sa.String(128)
DTM = sa.String(14)
TZ = sa.DateTime(timezone=True)


def _code_table(name: str) -> None:
    op.create_table(
        name,
        sa.Column("patient_id", PATIENT, primary_key=True),
        sa.Column("entry_uuid", UUID_, primary_key=True),
        sa.Column("code", CODE, primary_key=True),
        sa.Column("scheme", CODE, primary_key=True),
        sa.ForeignKeyConstraint(
            ["patient_id", "entry_uuid"],
            ["document_entries.patient_id", "document_entries.entry_uuid"],
            ondelete="CASCADE",
        ),
    )


def _submission_sets() -> None:
    op.create_table(
        "submission_sets",
        sa.Column("patient_id", PATIENT, primary_key=True),
        sa.Column("entry_uuid", UUID_, primary_key=True),
        sa.Column("unique_id", OID, nullable=False, unique=True),
        sa.Column("source_id", OID, nullable=False),
        sa.Column("submission_time", DTM, nullable=False),
        sa.Column("content_type_code", CODE, nullable=False),
        sa.Column("content_type_scheme", CODE, nullable=False),
        sa.Column("author_person", sa.String(256), nullable=False),
        sa.Column("status", sa.String(64), nullable=False),
        sa.Column("received_at", TZ, nullable=False),
        sa.Column("ebrim", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_submission_sets_patient_time", "submission_sets", ["patient_id", "submission_time"]
    )
    op.create_index("ix_submission_sets_entry_uuid", "submission_sets", ["entry_uuid"])


def _document_columns() -> list[sa.Column[object]]:
    text_columns = [
        ("mime_type", sa.String(128)),
        *((name, CODE) for name in (
            "class_code", "class_scheme", "type_code", "type_scheme", "format_code",
            "format_scheme", "practice_setting_code", "practice_setting_scheme", "hcft_code",
            "hcft_scheme",
        )),
        ("creation_time", DTM), ("service_start_time", DTM), ("service_stop_time", DTM),
        ("author_person", sa.String(256)), ("author_institution", sa.String(256)),
        ("legal_authenticator", sa.String(256)), ("source_patient_id", PATIENT),
        ("title", sa.String(512)), ("hash", sa.String(64)),
    ]  # fmt: skip
    return [sa.Column(name, kind, nullable=False) for name, kind in text_columns]


def _document_entries() -> None:
    op.create_table(
        "document_entries",
        sa.Column("patient_id", PATIENT, primary_key=True),
        sa.Column("entry_uuid", UUID_, primary_key=True),
        sa.Column("logical_id", UUID_, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("unique_id", OID, nullable=False, unique=True),
        sa.Column("status", sa.String(64), nullable=False),
        *_document_columns(),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("repository_unique_id", OID, nullable=False),
        sa.Column("submission_set_uuid", UUID_, nullable=False),
        sa.Column("hidden_by_patient", sa.Boolean, nullable=False),
        sa.Column("ebrim", sa.Text, nullable=False),
    )
    op.create_index(
        "ix_document_entries_patient_time", "document_entries", ["patient_id", "creation_time"]
    )
    op.create_index("ix_document_entries_entry_uuid", "document_entries", ["entry_uuid"])
    op.create_index("ix_document_entries_logical_id", "document_entries", ["logical_id"])


def _children() -> None:
    _code_table("document_event_codes")
    op.create_index("ix_document_event_codes_code", "document_event_codes", ["patient_id", "code"])
    _code_table("document_confidentiality_codes")
    op.create_table(
        "document_reference_ids",
        sa.Column("patient_id", PATIENT, primary_key=True),
        sa.Column("entry_uuid", UUID_, primary_key=True),
        sa.Column("reference_id", sa.String(256), primary_key=True),
        sa.ForeignKeyConstraint(
            ["patient_id", "entry_uuid"],
            ["document_entries.patient_id", "document_entries.entry_uuid"],
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "ix_document_reference_ids_ref", "document_reference_ids", ["patient_id", "reference_id"]
    )


def _associations_and_contents() -> None:
    op.create_table(
        "associations",
        sa.Column("patient_id", PATIENT, primary_key=True),
        sa.Column("entry_uuid", UUID_, primary_key=True),
        sa.Column("association_type", sa.String(128), nullable=False),
        sa.Column("source_uuid", UUID_, nullable=False),
        sa.Column("target_uuid", UUID_, nullable=False),
        sa.Column("submission_set_uuid", UUID_, nullable=False),
        sa.Column("ebrim", sa.Text, nullable=False),
    )
    op.create_index("ix_associations_source", "associations", ["source_uuid"])
    op.create_index("ix_associations_target", "associations", ["target_uuid"])
    op.create_table(
        "document_contents",
        sa.Column("patient_id", PATIENT, primary_key=True),
        sa.Column("unique_id", OID, primary_key=True),
        sa.Column("mime_type", sa.String(128), nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
    )
    op.create_index(
        "ix_document_contents_unique_id", "document_contents", ["unique_id"], unique=True
    )
    op.create_table(
        "document_entry_versions",
        sa.Column("patient_id", PATIENT, primary_key=True),
        sa.Column("entry_uuid", UUID_, primary_key=True),
        sa.Column("logical_id", UUID_, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("unique_id", OID, nullable=False),
        sa.Column("superseded_at", TZ, nullable=False),
        sa.Column("ebrim", sa.Text, nullable=False),
    )


def _patients_and_log() -> None:
    op.create_table(
        "patients",
        sa.Column("patient_id", PATIENT, primary_key=True),
        sa.Column("opposed", sa.Boolean, nullable=False),
        sa.Column("opposes_break_glass", sa.Boolean, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )
    texts = ("action", "outcome", "actor_kind", "actor_name", "actor_id", "profession",
             "structure", "role", "access_mode")  # fmt: skip
    sizes = (64, 32, 32, 256, 128, 128, 128, 128, 32)
    op.create_table(
        "access_log",
        sa.Column("patient_id", PATIENT, primary_key=True),
        sa.Column("event_id", UUID_, primary_key=True),
        sa.Column("at", TZ, nullable=False),
        *(sa.Column(n, sa.String(s), nullable=False) for n, s in zip(texts, sizes, strict=True)),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("documents", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_access_log_patient_at", "access_log", ["patient_id", "at"])


_SQLITE_APPEND_ONLY = [
    "CREATE TRIGGER access_log_no_update BEFORE UPDATE ON access_log "
    "BEGIN SELECT RAISE(ABORT, 'access_log is append-only'); END",
    "CREATE TRIGGER access_log_no_delete BEFORE DELETE ON access_log "
    "BEGIN SELECT RAISE(ABORT, 'access_log is append-only'); END",
]
_PG_APPEND_ONLY = [
    "CREATE FUNCTION access_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'access_log is append-only'; END $$",
    "CREATE TRIGGER access_log_append_only BEFORE UPDATE OR DELETE ON access_log "
    "FOR EACH ROW EXECUTE FUNCTION access_log_append_only()",
]


def upgrade() -> None:
    _submission_sets()
    _document_entries()
    _children()
    _associations_and_contents()
    _patients_and_log()
    # the access log is evidence: the database itself refuses to rewrite it
    dialect = op.get_bind().dialect.name
    statements = {"sqlite": _SQLITE_APPEND_ONLY, "postgresql": _PG_APPEND_ONLY}.get(dialect, [])
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS access_log_append_only ON access_log")
        op.execute("DROP FUNCTION IF EXISTS access_log_append_only()")
    for table in ("access_log", "patients", "document_entry_versions", "document_contents",
                  "associations", "document_reference_ids", "document_confidentiality_codes",
                  "document_event_codes", "document_entries", "submission_sets"):  # fmt: skip
        op.drop_table(table)
