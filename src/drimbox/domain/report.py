"""What a validated imaging report message says, once checked. Pure, no I/O.

The RIS sends one of these per report event (HL7 v2 ORU^R01 or MDM^T02/T10/T04 carrying a
CDA R2 report). The Source publishes, replaces or depublishes the exam's KOS from it, so
everything here has already passed its syntax and consistency checks: a ``ReportMessage``
always has a checked INS, a Study Instance UID and an accession number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

from drimbox.domain.identifiers import Ins


class ReportEvent(StrEnum):
    """What the message asks the Source to do with the exam's publication."""

    NEW = "new"
    """First validated version (ORC-1 ``NW``, MDM ``T02``): publish the KOS."""
    CORRECTION = "correction"
    """A new version of the report (ORC-1 ``RO``/``XO``, MDM ``T10``, or a CDA with a higher
    ``versionNumber`` and ``relatedDocument RPLC``): replace the KOS."""
    CANCELLATION = "cancellation"
    """The report is withdrawn (ORC-1 ``CA``, MDM ``T04``): depublish the KOS."""


@dataclass(frozen=True, slots=True)
class LocalIdentifier:
    """An identifier issued by a local authority: IPP, order or accession number."""

    value: str
    issuer_oid: str
    """Universal id of the assigning authority (may be empty when the sender omits it)."""
    namespace: str = ""
    """Assigning authority's local name (HL7 HD-1), for display and logs only."""


@dataclass(frozen=True, slots=True)
class PatientIdentity:
    """The patient as the RIS identifies it (PID), the INS checked against the CDA."""

    ins: Ins
    ipp: LocalIdentifier | None
    birth_family: str
    first_given: str
    given_names: tuple[str, ...]
    """Every given name of the birth certificate, in order (INS strict traits)."""
    used_family: str | None
    birth_date: date | None
    sex: str
    """``M``, ``F`` or ``U`` (HL7 table 0001 subset used by the INS)."""
    identity_reliability: str
    """PID-32: ``VALI`` for a qualified INS; empty when the sender does not say."""


@dataclass(frozen=True, slots=True)
class Professional:
    """A health professional identified by their national id (``8`` + RPPS)."""

    national_id: str
    family: str
    given: str

    @property
    def rpps(self) -> str:
        """The 11-digit RPPS number (national id without its leading type digit ``8``)."""
        return self.national_id[1:] if self.national_id.startswith("8") else self.national_id


@dataclass(frozen=True, slots=True)
class Structure:
    """The health structure (FINESS-based national id) responsible for the report."""

    national_id: str
    name: str


@dataclass(frozen=True, slots=True)
class DocumentVersion:
    """Identity of one version of the CDA report."""

    document_id: str
    """CDA ``id`` (``root`` or ``root^extension``); TXA-12 in MDM messages."""
    set_id: str
    version: int
    replaces: str | None
    """Document id of the version this one replaces (``relatedDocument RPLC``)."""


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """The MSH fields the Source keeps (HD-1 namespace ids; the raw fields stay in HL7)."""

    control_id: str
    sending_application: str
    sending_facility: str
    message_type: str
    """``ORU^R01``, ``MDM^T02``, ``MDM^T10`` or ``MDM^T04``."""
    version: str
    sent: str
    """MSH-7 as sent (HL7 DTM, with its UTC offset when the sender gives one)."""


@dataclass(frozen=True, slots=True)
class ReportMessage:
    """One checked report message: identity, exam references, authorship, the CDA."""

    header: MessageHeader
    event: ReportEvent
    patient: PatientIdentity
    placer_order: LocalIdentifier | None
    filler_order: LocalIdentifier | None
    accession: LocalIdentifier
    study_uid: str
    radiologist: Professional | None
    structure: Structure | None
    document: DocumentVersion
    cda: bytes = field(repr=False)
