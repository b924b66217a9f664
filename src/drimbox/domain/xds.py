"""IHE XDS.b metadata as plain data: document entries, submission sets, associations, codes.

Pure model, no I/O. Identifiers and coded values keep their ebRIM string forms (CX, XCN,
XON, ``code^^scheme``) because that is what registries compare and return. The adapters
translate ebRIM XML into these objects; the services apply the rules.

Errors follow ITI TF-3 4.2.4 (registry error codes): ``XdsError`` carries the code that the
SOAP layer puts in ``RegistryError/@errorCode`` and a context naming the faulty object.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from drimbox.domain.errors import DrimboxError
from drimbox.domain.identifiers import Ins

# ITI TF-3 4.2.5: availability status
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"
"""DMP depublication status (CI-SIS): the entry is gone for every query."""
STATUSES = frozenset({APPROVED, DEPRECATED, DELETED})

# Association types (ITI TF-3 4.2.2)
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
APND = "urn:ihe:iti:2007:AssociationType:APND"
XFRM = "urn:ihe:iti:2007:AssociationType:XFRM"
XFRM_RPLC = "urn:ihe:iti:2007:AssociationType:XFRM_RPLC"
SIGNS = "urn:ihe:iti:2007:AssociationType:signs"
UPDATE_AVAILABILITY_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
REPLACING = frozenset({RPLC, XFRM_RPLC})
ASSOCIATION_TYPES = frozenset(
    {HAS_MEMBER, RPLC, APND, XFRM, XFRM_RPLC, SIGNS, UPDATE_AVAILABILITY_STATUS}
)

# French codes (CI-SIS, DRIM-M): see shared/drim-m/spec-digest.md B.5
CLASS_SCHEME = "1.2.250.1.213.1.1.4.1"
TYPE_SCHEME_FR = "1.2.250.1.213.1.1.4.12"
LOINC = "2.16.840.1.113883.6.1"
CONFIDENTIALITY_HL7 = "2.16.840.1.113883.5.25"
CONFIDENTIALITY_FR = "1.2.250.1.213.1.1.4.13"
MODALITY_SCHEME = "1.2.250.1.213.1.1.5.618"
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
KOS_FORMAT_SCHEME = "1.2.840.10008.2.6.1"
RPPS_OID = "1.2.250.1.71.4.2.1"
STRUCTURE_OID = "1.2.250.1.71.4.2.2"
MASQUE_PS = "MASQUE_PS"
INVISIBLE_PATIENT = "INVISIBLE_PATIENT"

# Reference id types (ITI TF-3 4.2.3.2.28, and XDS-I.b for the study)
ACCESSION_REF = "urn:ihe:iti:xds:2013:accession"
STUDY_UID_REF = "urn:ihe:iti:xds:2016:studyInstanceUID"
ORDER_REF = "urn:ihe:iti:xds:2013:order"


class ErrorCode(StrEnum):
    """ITI TF-3 table 4.2.4.1-2: the registry error codes we emit."""

    METADATA = "XDSRegistryMetadataError"
    PATIENT_MISMATCH = "XDSPatientIdDoesNotMatch"
    DUPLICATE_UNIQUE_ID = "XDSDuplicateUniqueIdInRegistry"
    UNKNOWN_PATIENT = "XDSUnknownPatientId"
    MISSING_DOCUMENT = "XDSMissingDocument"
    MISSING_METADATA = "XDSMissingDocumentMetadata"
    NON_IDENTICAL_HASH = "XDSNonIdenticalHash"
    NON_IDENTICAL_SIZE = "XDSNonIdenticalSize"
    REPOSITORY = "XDSRepositoryError"
    REGISTRY = "XDSRegistryError"
    UNKNOWN_REPOSITORY = "XDSUnknownRepositoryId"
    UNKNOWN_STORED_QUERY = "XDSUnknownStoredQuery"
    QUERY_PARAM_NUMBER = "XDSStoredQueryParamNumber"
    TOO_MANY_RESULTS = "XDSTooManyResults"
    DOCUMENT_UNIQUE_ID = "XDSDocumentUniqueIdError"
    UNRESOLVED_REFERENCE = "UnresolvedReferenceException"
    BAD_STATUS = "XDSMetadataUpdateError"
    ACCESS_DENIED = "urn:drimbox:xds:AccessDenied"
    """Not an IHE code (IHE leaves policy refusals to XUA); a drimbox extension."""


class XdsError(DrimboxError):
    """One registry error: ``code`` from ``ErrorCode``, ``context`` names the culprit."""

    def __init__(self, code: ErrorCode, context: str, location: str = "") -> None:
        super().__init__(f"{code}: {context}")
        self.code = code
        self.context = context
        self.location = location


class XdsErrors(DrimboxError):
    """Several registry errors found while checking one request (all are reported)."""

    def __init__(self, errors: list[XdsError]) -> None:
        super().__init__("; ".join(str(e) for e in errors))
        self.errors = errors


class AccessDenied(DrimboxError):
    """The access rules refuse this caller for this patient or document."""


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value: ``code`` in ``scheme`` (an OID or a name such as ``URN``)."""

    code: str
    scheme: str
    display: str = ""

    def matches(self, wanted: Code) -> bool:
        # a query may give the code alone (``MR``) or with its scheme (``MR^^1.2...``)
        return self.code == wanted.code and (not wanted.scheme or self.scheme == wanted.scheme)

    @classmethod
    def parse(cls, text: str) -> Code:
        """``code^^scheme`` (ITI TF-3 4.1.12.1 query form) or a bare code."""
        code, _, rest = text.partition("^")
        return cls(code, rest.lstrip("^"))

    def __str__(self) -> str:
        return f"{self.code}^^{self.scheme}"


@dataclass(frozen=True, slots=True)
class Author:
    person: str = ""
    institutions: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    specialties: tuple[str, ...] = ()

    @property
    def person_id(self) -> str:
        """XCN.1, the RPPS of a professional (or the id of a system author)."""
        return self.person.split("^", 1)[0]

    @property
    def institution_ids(self) -> tuple[str, ...]:
        """XON.10 of each institution, the structure identifier."""
        return tuple(i.split("^")[9] if i.count("^") >= 9 else i for i in self.institutions)


@dataclass(slots=True)
class DocumentEntry:
    """An XDSDocumentEntry. ``ebrim`` is its ExtrinsicObject XML, returned as LeafClass."""

    entry_uuid: str
    unique_id: str
    patient_id: str
    mime_type: str
    status: str = APPROVED
    symbolic_id: str = ""
    class_code: Code | None = None
    type_code: Code | None = None
    format_code: Code | None = None
    practice_setting_code: Code | None = None
    healthcare_facility_type_code: Code | None = None
    confidentiality_codes: tuple[Code, ...] = ()
    event_codes: tuple[Code, ...] = ()
    reference_ids: tuple[str, ...] = ()
    authors: tuple[Author, ...] = ()
    creation_time: str = ""
    service_start_time: str = ""
    service_stop_time: str = ""
    source_patient_id: str = ""
    legal_authenticator: str = ""
    language_code: str = ""
    title: str = ""
    hash: str = ""
    size: int | None = None
    repository_unique_id: str = ""
    submission_set_uuid: str = ""
    hidden_by_patient: bool = False
    logical_id: str = ""
    version: int = 1
    ebrim: str = ""

    @property
    def confidentiality(self) -> frozenset[str]:
        return frozenset(c.code for c in self.confidentiality_codes)

    @property
    def author_ids(self) -> frozenset[str]:
        ids = {a.person_id for a in self.authors if a.person_id}
        if self.legal_authenticator:
            ids.add(self.legal_authenticator.split("^", 1)[0])
        return frozenset(ids)

    @property
    def institution_ids(self) -> frozenset[str]:
        return frozenset(i for a in self.authors for i in a.institution_ids if i)

    def reference(self, kind: str) -> str | None:
        """CXi.1 of the first reference id of ``kind`` (accession, study UID, order)."""
        for ref in self.reference_ids:
            if ref.endswith("^" + kind):
                return ref.split("^", 1)[0]
        return None


@dataclass(slots=True)
class SubmissionSet:
    entry_uuid: str
    unique_id: str
    patient_id: str
    source_id: str
    submission_time: str = ""
    content_type_code: Code | None = None
    authors: tuple[Author, ...] = ()
    symbolic_id: str = ""
    status: str = APPROVED
    ebrim: str = ""


@dataclass(slots=True)
class Association:
    entry_uuid: str
    association_type: str
    source: str
    target: str
    patient_id: str = ""
    slots: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ebrim: str = ""

    def slot(self, name: str) -> str:
        values = self.slots.get(name, ())
        return values[0] if values else ""


@dataclass(slots=True)
class Submission:
    """What one ITI-41 or ITI-57 request carries; ``documents`` maps symbolic id to bytes."""

    submission_set: SubmissionSet
    entries: list[DocumentEntry]
    associations: list[Association]
    documents: dict[str, bytes] = field(default_factory=dict)


_CX_RE = re.compile(r"([^\^&]+)\^\^\^&([0-9.]+)&ISO(?:\^([A-Z]+))?")


def parse_patient_id(cx: str) -> tuple[str, str]:
    """(id, assigning authority OID) of ``ID^^^&OID&ISO`` (ITI TF-3 4.2.3.1.7)."""
    match = _CX_RE.fullmatch(cx.strip())
    if match is None:
        raise XdsError(
            ErrorCode.UNKNOWN_PATIENT, f"patient id {cx[:80]!r} is not of the form ID^^^&OID&ISO"
        )
    return match.group(1), match.group(2)


def check_ins(cx: str) -> Ins:
    """The INS a patient id carries; a wrong key or a non-INS authority is an unknown patient.

    Without a link to the national register, a *known* patient is one whose INS is
    well-formed, issued by an INS authority and has the right NIR key.
    """
    value, oid = parse_patient_id(cx)
    try:
        return Ins.parse(value, oid)
    except ValueError as exc:
        raise XdsError(ErrorCode.UNKNOWN_PATIENT, f"{cx}: {exc}") from None


def normalize_patient_id(cx: str) -> str:
    """The registry's key: ``INS^^^&OID&ISO^NH`` whatever identifier type code was sent."""
    value, oid = parse_patient_id(cx)
    return f"{value}^^^&{oid}&ISO^NH"


_DTM_RE = re.compile(r"([0-9]{4}(?:[0-9]{2}){0,5})(?:([+-])([0-9]{2})([0-9]{2}))?")


def is_dtm(value: str) -> bool:
    """ITI TF-3 4.2.3.1.4 DTM; a trailing UTC offset (``+0100``) is tolerated, as the ANS
    cross-validation sample sends one."""
    return _DTM_RE.fullmatch(value.strip()) is not None


def dtm_bound(value: str) -> str:
    """A DTM in UTC, padded to 14 digits so that strings compare as times."""
    match = _DTM_RE.fullmatch(value.strip())
    if match is None:
        raise XdsError(ErrorCode.METADATA, f"time {value[:20]!r} is not a DTM (YYYY[MM[DD[hh...")
    digits, sign, hours, minutes = match.groups()
    padded = digits + "00000101000000"[len(digits) :]
    if not sign or len(digits) < 10:
        return padded  # an offset is meaningless below the hour
    local = datetime.strptime(padded, "%Y%m%d%H%M%S")
    offset = timedelta(hours=int(hours), minutes=int(minutes))
    utc = local - offset if sign == "+" else local + offset
    return utc.strftime("%Y%m%d%H%M%S")[: len(digits)] + padded[len(digits) :]
