"""Tables of the national index (SQLAlchemy 2 declarative models).

Every table starts its primary key with ``patient_id`` (the INS in its registry form
``INS^^^&OID&ISO^NH``) so that PostgreSQL can partition it by hash of the patient and Citus
can distribute it on that column: a patient's whole history lives on one shard. Lookups
without a patient (ITI-43 by document uniqueId, GetDocuments by entryUUID) use the global
secondary indexes below; with Citus they become router queries on a reference table, to be
added when we shard (see docs/index.md).

The schema is created and evolved by the Alembic migrations in ``index_migrations``; a test
checks that these models and the migrations agree.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

PATIENT = String(80)
UUID_ = String(64)
OID = String(128)
CODE = String(128)
DTM = String(14)


class Base(DeclarativeBase):
    pass


class SubmissionSetRow(Base):
    __tablename__ = "submission_sets"

    patient_id: Mapped[str] = mapped_column(PATIENT, primary_key=True)
    entry_uuid: Mapped[str] = mapped_column(UUID_, primary_key=True)
    unique_id: Mapped[str] = mapped_column(OID, unique=True)
    source_id: Mapped[str] = mapped_column(OID)
    submission_time: Mapped[str] = mapped_column(DTM)
    content_type_code: Mapped[str] = mapped_column(CODE, default="")
    content_type_scheme: Mapped[str] = mapped_column(CODE, default="")
    author_person: Mapped[str] = mapped_column(String(256), default="")
    status: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ebrim: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index("ix_submission_sets_patient_time", "patient_id", "submission_time"),
        Index("ix_submission_sets_entry_uuid", "entry_uuid"),
    )


class DocumentEntryRow(Base):
    __tablename__ = "document_entries"

    patient_id: Mapped[str] = mapped_column(PATIENT, primary_key=True)
    entry_uuid: Mapped[str] = mapped_column(UUID_, primary_key=True)
    logical_id: Mapped[str] = mapped_column(UUID_)
    version: Mapped[int] = mapped_column(Integer, default=1)
    unique_id: Mapped[str] = mapped_column(OID, unique=True)
    status: Mapped[str] = mapped_column(String(64))
    mime_type: Mapped[str] = mapped_column(String(128))
    class_code: Mapped[str] = mapped_column(CODE)
    class_scheme: Mapped[str] = mapped_column(CODE)
    type_code: Mapped[str] = mapped_column(CODE)
    type_scheme: Mapped[str] = mapped_column(CODE)
    format_code: Mapped[str] = mapped_column(CODE)
    format_scheme: Mapped[str] = mapped_column(CODE)
    practice_setting_code: Mapped[str] = mapped_column(CODE)
    practice_setting_scheme: Mapped[str] = mapped_column(CODE)
    hcft_code: Mapped[str] = mapped_column(CODE)
    hcft_scheme: Mapped[str] = mapped_column(CODE)
    creation_time: Mapped[str] = mapped_column(DTM)
    service_start_time: Mapped[str] = mapped_column(DTM, default="")
    service_stop_time: Mapped[str] = mapped_column(DTM, default="")
    author_person: Mapped[str] = mapped_column(String(256), default="")
    author_institution: Mapped[str] = mapped_column(String(256), default="")
    legal_authenticator: Mapped[str] = mapped_column(String(256), default="")
    source_patient_id: Mapped[str] = mapped_column(PATIENT, default="")
    title: Mapped[str] = mapped_column(String(512), default="")
    hash: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    repository_unique_id: Mapped[str] = mapped_column(OID)
    submission_set_uuid: Mapped[str] = mapped_column(UUID_)
    hidden_by_patient: Mapped[bool] = mapped_column(Boolean, default=False)
    ebrim: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index("ix_document_entries_patient_time", "patient_id", "creation_time"),
        Index("ix_document_entries_entry_uuid", "entry_uuid"),
        Index("ix_document_entries_logical_id", "logical_id"),
    )


def _child_fk() -> ForeignKeyConstraint:
    return ForeignKeyConstraint(
        ["patient_id", "entry_uuid"],
        ["document_entries.patient_id", "document_entries.entry_uuid"],
        ondelete="CASCADE",
    )


class EventCodeRow(Base):
    """eventCodeList: modality (1.2.250.1.213.1.1.5.618) and anatomic region codes."""

    __tablename__ = "document_event_codes"

    patient_id: Mapped[str] = mapped_column(PATIENT, primary_key=True)
    entry_uuid: Mapped[str] = mapped_column(UUID_, primary_key=True)
    code: Mapped[str] = mapped_column(CODE, primary_key=True)
    scheme: Mapped[str] = mapped_column(CODE, primary_key=True)

    __table_args__ = (_child_fk(), Index("ix_document_event_codes_code", "patient_id", "code"))


class ConfidentialityCodeRow(Base):
    __tablename__ = "document_confidentiality_codes"

    patient_id: Mapped[str] = mapped_column(PATIENT, primary_key=True)
    entry_uuid: Mapped[str] = mapped_column(UUID_, primary_key=True)
    code: Mapped[str] = mapped_column(CODE, primary_key=True)
    scheme: Mapped[str] = mapped_column(CODE, primary_key=True)

    __table_args__ = (_child_fk(),)


class ReferenceIdRow(Base):
    """referenceIdList: accession number, Study Instance UID, order (CXi strings)."""

    __tablename__ = "document_reference_ids"

    patient_id: Mapped[str] = mapped_column(PATIENT, primary_key=True)
    entry_uuid: Mapped[str] = mapped_column(UUID_, primary_key=True)
    reference_id: Mapped[str] = mapped_column(String(256), primary_key=True)

    __table_args__ = (
        _child_fk(),
        Index("ix_document_reference_ids_ref", "patient_id", "reference_id"),
    )


class AssociationRow(Base):
    __tablename__ = "associations"

    patient_id: Mapped[str] = mapped_column(PATIENT, primary_key=True)
    entry_uuid: Mapped[str] = mapped_column(UUID_, primary_key=True)
    association_type: Mapped[str] = mapped_column(String(128))
    source_uuid: Mapped[str] = mapped_column(UUID_)
    target_uuid: Mapped[str] = mapped_column(UUID_)
    submission_set_uuid: Mapped[str] = mapped_column(UUID_)
    ebrim: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index("ix_associations_source", "source_uuid"),
        Index("ix_associations_target", "target_uuid"),
    )


class DocumentContentRow(Base):
    """The repository: document bytes, stored in the same transaction as the metadata."""

    __tablename__ = "document_contents"

    patient_id: Mapped[str] = mapped_column(PATIENT, primary_key=True)
    unique_id: Mapped[str] = mapped_column(OID, primary_key=True)
    mime_type: Mapped[str] = mapped_column(String(128))
    content: Mapped[bytes] = mapped_column(LargeBinary)

    __table_args__ = (Index("ix_document_contents_unique_id", "unique_id", unique=True),)


class DocumentVersionRow(Base):
    """Metadata versions superseded by ITI-57 metadata updates (kept, Deprecated)."""

    __tablename__ = "document_entry_versions"

    patient_id: Mapped[str] = mapped_column(PATIENT, primary_key=True)
    entry_uuid: Mapped[str] = mapped_column(UUID_, primary_key=True)
    logical_id: Mapped[str] = mapped_column(UUID_)
    version: Mapped[int] = mapped_column(Integer)
    unique_id: Mapped[str] = mapped_column(OID)
    superseded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ebrim: Mapped[str] = mapped_column(Text)


class PatientRow(Base):
    """Per-patient choices that the access rules read (opposition)."""

    __tablename__ = "patients"

    patient_id: Mapped[str] = mapped_column(PATIENT, primary_key=True)
    opposed: Mapped[bool] = mapped_column(Boolean, default=False)
    opposes_break_glass: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AccessLogRow(Base):
    """Append-only (triggers refuse UPDATE and DELETE): who did what on a patient's record."""

    __tablename__ = "access_log"

    patient_id: Mapped[str] = mapped_column(PATIENT, primary_key=True)
    event_id: Mapped[str] = mapped_column(UUID_, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    action: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(32))
    actor_kind: Mapped[str] = mapped_column(String(32))
    actor_name: Mapped[str] = mapped_column(String(256))
    actor_id: Mapped[str] = mapped_column(String(128))
    profession: Mapped[str] = mapped_column(String(128))
    structure: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(128))
    access_mode: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    documents: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_access_log_patient_at", "patient_id", "at"),)
