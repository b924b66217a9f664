"""Checks of submitted XDS metadata: IHE XDS.b required attributes (ITI TF-3 table
4.3.1-3, ITI-41 column) and the French imaging profile (CI-SIS / DRIM-M, digest B.5).

Every problem is collected, so that one Failure response lists them all, each with the
symbolic id of the object at fault as its context.
"""

from __future__ import annotations

import re

from drimbox.domain import xds
from drimbox.domain.identifiers import is_valid_uid
from drimbox.domain.xds import Code, DocumentEntry, ErrorCode, Submission, XdsError

_HASH_RE = re.compile(r"[0-9A-Fa-f]{40}")
_OID_RE = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+")
KOS_CLASS = Code("31", xds.CLASS_SCHEME)
KOS_TYPE = Code("IMG-KOS", xds.TYPE_SCHEME_FR)
KOS_FORMAT = Code(xds.KOS_SOP_CLASS, xds.KOS_FORMAT_SCHEME)
REPORT_TYPE = Code("18748-4", xds.LOINC)
REPORT_CLASS = Code("10", xds.CLASS_SCHEME)
CONFIDENTIALITY = {
    xds.CONFIDENTIALITY_HL7: {"N", "R", "V"},
    xds.CONFIDENTIALITY_FR: {xds.MASQUE_PS, xds.INVISIBLE_PATIENT},
}
_REQUIRED = (
    ("class_code", "classCode"),
    ("type_code", "typeCode"),
    ("format_code", "formatCode"),
    ("practice_setting_code", "practiceSettingCode"),
    ("healthcare_facility_type_code", "healthcareFacilityTypeCode"),
    ("creation_time", "creationTime"),
    ("language_code", "languageCode"),
    ("source_patient_id", "sourcePatientId"),
    ("mime_type", "mimeType"),
    ("unique_id", "uniqueId"),
)


def _err(code: ErrorCode, name: str, text: str) -> XdsError:
    return XdsError(code, f"{name}: {text}", name)


def _patient(name: str, patient_id: str, expected: str) -> list[XdsError]:
    if not patient_id:
        return [_err(ErrorCode.METADATA, name, "patientId is missing")]
    try:
        xds.check_ins(patient_id)
    except XdsError as exc:
        return [_err(exc.code, name, exc.context)]
    if expected and xds.normalize_patient_id(patient_id) != xds.normalize_patient_id(expected):
        return [
            _err(
                ErrorCode.PATIENT_MISMATCH,
                name,
                f"patientId {patient_id} differs from the submission set's {expected}",
            )
        ]
    return []


def check_submission_set(sub: Submission) -> list[XdsError]:
    ss = sub.submission_set
    name = ss.symbolic_id or ss.entry_uuid
    errors = []
    for value, label in ((ss.unique_id, "uniqueId"), (ss.source_id, "sourceId")):
        if not _OID_RE.fullmatch(value):
            errors.append(_err(ErrorCode.METADATA, name, f"{label} {value!r} is not an OID"))
    if not xds.is_dtm(ss.submission_time):
        errors.append(_err(ErrorCode.METADATA, name, "submissionTime is missing or not a DTM"))
    if ss.content_type_code is None:
        errors.append(_err(ErrorCode.METADATA, name, "contentTypeCode is missing"))
    return errors + _patient(name, ss.patient_id, "")


def _required(entry: DocumentEntry, name: str) -> list[XdsError]:
    errors = [
        _err(ErrorCode.METADATA, name, f"{label} is missing")
        for attr, label in _REQUIRED
        if not getattr(entry, attr)
    ]
    if not entry.confidentiality_codes:
        errors.append(_err(ErrorCode.METADATA, name, "confidentialityCode is missing"))
    if not entry.authors:
        errors.append(_err(ErrorCode.METADATA, name, "author is missing"))
    for label, value in (
        ("creationTime", entry.creation_time),
        ("serviceStartTime", entry.service_start_time),
        ("serviceStopTime", entry.service_stop_time),
    ):
        if value and not xds.is_dtm(value):
            errors.append(_err(ErrorCode.METADATA, name, f"{label} {value!r} is not a DTM"))
    if entry.hash and not _HASH_RE.fullmatch(entry.hash):
        errors.append(_err(ErrorCode.METADATA, name, "hash is not 40 hexadecimal digits (SHA-1)"))
    return errors


def _expect(name: str, label: str, got: Code | None, want: Code) -> list[XdsError]:
    if got is not None and (got.code, got.scheme) == (want.code, want.scheme):
        return []
    shown = f"{got.code}^^{got.scheme}" if got else "nothing"
    return [
        _err(ErrorCode.METADATA, name, f"{label} must be {want} for this document, got {shown}")
    ]


def _confidentiality(entry: DocumentEntry, name: str) -> list[XdsError]:
    return [
        _err(ErrorCode.METADATA, name, f"confidentialityCode {c} is not in the DMP value sets")
        for c in entry.confidentiality_codes
        if c.code not in CONFIDENTIALITY.get(c.scheme, set())
    ]


def _professional_author(entry: DocumentEntry, name: str) -> list[XdsError]:
    # author person identified in the RPPS/ADELI space and a structure (digest B.5)
    for author in entry.authors:
        if f"&{xds.RPPS_OID}&ISO" in author.person and any(
            f"&{xds.STRUCTURE_OID}&ISO" in i for i in author.institutions
        ):
            return []
    return [
        _err(
            ErrorCode.METADATA,
            name,
            f"author needs an authorPerson issued by {xds.RPPS_OID} (RPPS) and an "
            f"authorInstitution issued by {xds.STRUCTURE_OID}",
        )
    ]


def _references(entry: DocumentEntry, name: str, kinds: tuple[str, ...]) -> list[XdsError]:
    errors = [
        _err(ErrorCode.METADATA, name, f"referenceIdList has no {kind} reference")
        for kind in kinds
        if entry.reference(kind) is None
    ]
    study = entry.reference(xds.STUDY_UID_REF)
    if study is not None and not is_valid_uid(study):
        errors.append(_err(ErrorCode.METADATA, name, f"Study Instance UID {study!r} is invalid"))
    return errors


def check_kos(entry: DocumentEntry, name: str) -> list[XdsError]:
    """XDS-I.b imaging manifest as the DMP wants it (digest B.5, ANS XDS.xml sample)."""
    errors = _expect(name, "classCode", entry.class_code, KOS_CLASS)
    errors += _expect(name, "typeCode", entry.type_code, KOS_TYPE)
    errors += _expect(name, "formatCode", entry.format_code, KOS_FORMAT)
    if entry.mime_type != "application/dicom":
        errors.append(_err(ErrorCode.METADATA, name, "a KOS has mimeType application/dicom"))
    if not any(c.scheme == xds.MODALITY_SCHEME for c in entry.event_codes):
        errors.append(
            _err(
                ErrorCode.METADATA, name, f"eventCodeList needs a modality ({xds.MODALITY_SCHEME})"
            )
        )
    if not is_valid_uid(entry.unique_id):
        errors.append(_err(ErrorCode.METADATA, name, "uniqueId must be the KOS SOP Instance UID"))
    errors += _references(entry, name, (xds.ACCESSION_REF, xds.STUDY_UID_REF))
    return errors + _professional_author(entry, name)


def check_report(entry: DocumentEntry, name: str) -> list[XdsError]:
    """Imaging report (CR d'imagerie, CDA R2 IMG-CR-IMG)."""
    errors = _expect(name, "classCode", entry.class_code, REPORT_CLASS)
    errors += _references(entry, name, (xds.STUDY_UID_REF,))
    return errors + _professional_author(entry, name)


def is_kos(entry: DocumentEntry) -> bool:
    fmt = entry.format_code
    typ = entry.type_code
    return (fmt is not None and fmt.code == xds.KOS_SOP_CLASS) or (
        typ is not None and typ.code == KOS_TYPE.code
    )


def is_report(entry: DocumentEntry) -> bool:
    return entry.type_code is not None and entry.type_code.code == REPORT_TYPE.code


def check_entry(entry: DocumentEntry, expected_patient: str) -> list[XdsError]:
    name = entry.symbolic_id or entry.entry_uuid
    errors = _required(entry, name) + _confidentiality(entry, name)
    errors += _patient(name, entry.patient_id, expected_patient)
    if is_kos(entry):
        errors += check_kos(entry, name)
    elif is_report(entry):
        errors += check_report(entry, name)
    return errors


def _association_problem(a: xds.Association, ss_uuid: str, new: set[str]) -> str:
    """What is wrong with one association of an ITI-41 submission ("" when nothing)."""
    kind = a.association_type
    if kind not in xds.ASSOCIATION_TYPES:
        return f"unknown type {kind}"
    if kind == xds.HAS_MEMBER:
        ok = a.source == ss_uuid and a.target in new
        return "" if ok else "HasMember must link the submission set to a document of it"
    if kind == xds.SIGNS:
        ok = a.source in new and a.target == ss_uuid
        return "" if ok else "signs must go from a document to its submission set"
    ok = a.source in new and a.target not in new
    return "" if ok else f"{kind} must go from a new document to a registered one"


def check_associations(sub: Submission) -> list[XdsError]:
    ss_uuid = sub.submission_set.entry_uuid
    new = {e.entry_uuid for e in sub.entries}
    errors = []
    for a in sub.associations:
        problem = _association_problem(a, ss_uuid, new)
        if problem:
            errors.append(_err(ErrorCode.METADATA, a.entry_uuid, problem))
    members = {a.target for a in sub.associations if a.association_type == xds.HAS_MEMBER}
    for entry in sub.entries:
        if entry.entry_uuid not in members:
            name = entry.symbolic_id or entry.entry_uuid
            errors.append(_err(ErrorCode.METADATA, name, "not a member of the submission set"))
    return errors


def check_provide_and_register(sub: Submission) -> list[XdsError]:
    """All metadata problems of an ITI-41 submission (empty when it may be registered)."""
    errors = check_submission_set(sub)
    if not sub.entries:
        errors.append(_err(ErrorCode.METADATA, "SubmitObjectsRequest", "no DocumentEntry"))
    seen: set[str] = set()
    for entry in sub.entries:
        errors += check_entry(entry, sub.submission_set.patient_id)
        if entry.unique_id in seen:
            name = entry.symbolic_id or entry.entry_uuid
            errors.append(
                _err(
                    ErrorCode.DUPLICATE_UNIQUE_ID, name, f"uniqueId {entry.unique_id} appears twice"
                )
            )
        seen.add(entry.unique_id)
    return errors + check_associations(sub)
