"""ORU^R01 and MDM^T02/T10/T04 (CI-SIS ``CISIS_CDA_HL7_V2`` profile) -> :class:`ReportMessage`.

Two steps so that a caller can always answer: :func:`decode` reads the segments (and fails
only when there is no usable MSH), :func:`read_report` checks the header and the content and
raises an :class:`~drimbox.adapters.hl7.errors.Hl7Error` naming the offending field.

The CDA is authoritative for the document's identity (id, setId, version, replaced version)
and the exam (Study Instance UID, accession number); PID is authoritative for the patient,
and the CDA must name the same INS.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection
from datetime import date

from drimbox.adapters.documents.cda import CdaHeader, read_cda
from drimbox.adapters.hl7.errors import (
    InconsistentContent,
    InvalidIns,
    InvalidValue,
    Location,
    MissingCda,
    MissingField,
    MissingIns,
    MissingSegment,
    PatientMismatch,
    UndecodableCda,
    UnknownCode,
    UnsupportedEvent,
    UnsupportedMessage,
    UnsupportedProcessingId,
    UnsupportedVersion,
)
from drimbox.adapters.hl7.message import Message, Segment
from drimbox.domain.errors import InvalidIdentifier
from drimbox.domain.identifiers import INS_OIDS, Ins
from drimbox.domain.report import (
    LocalIdentifier,
    MessageHeader,
    PatientIdentity,
    ReportEvent,
    ReportMessage,
    Structure,
)

SUPPORTED_VERSIONS = frozenset({"2.5", "2.5.1", "2.6"})
"""ORU messages are 2.5 in CI-SIS, MDM 2.6 (TXA and PRT as in the ANS samples)."""
DEFAULT_PROCESSING_IDS = frozenset({"P"})
"""MSH-11 values taken: production only, so that training traffic never reaches the DMP."""
REPORT_LOINC = "18748-4"
_TRIGGERS: dict[str, dict[str, ReportEvent | None]] = {
    "ORU": {"R01": None},
    "MDM": {"T02": ReportEvent.NEW, "T10": ReportEvent.CORRECTION,
            "T04": ReportEvent.CANCELLATION},
}  # fmt: skip
# ORC-1 (HL7 table 0119) values a report message may carry, and what they mean here.
_ORDER_CONTROL = {
    "NW": ReportEvent.NEW,
    "SC": ReportEvent.NEW,
    "RO": ReportEvent.CORRECTION,
    "XO": ReportEvent.CORRECTION,
    "CA": ReportEvent.CANCELLATION,
}
_SEXES = frozenset({"M", "F", "U", "O", "A", "N", ""})

decode = Message.decode


def parse_message(
    raw: bytes, *, processing_ids: Collection[str] = DEFAULT_PROCESSING_IDS
) -> ReportMessage:
    """Decode and check one message (both steps in one call)."""
    return read_report(decode(raw), processing_ids=processing_ids)


def read_header(message: Message) -> MessageHeader:
    msh = message.msh
    return MessageHeader(
        control_id=msh.value(10),
        sending_application=msh.value(3),
        sending_facility=msh.value(4),
        message_type=f"{msh.value(9, 1)}^{msh.value(9, 2)}",
        version=msh.value(12),
        sent=msh.value(7),
    )


def check_header(message: Message, processing_ids: Collection[str]) -> None:
    """MSH checks, in HL7's order: type, event, processing id, version, then charset."""
    msh = message.msh
    kind, trigger = msh.value(9, 1), msh.value(9, 2)
    if kind not in _TRIGGERS:
        raise UnsupportedMessage(
            f"message type {kind[:10]!r} is not taken (ORU^R01, MDM^T02/T10/T04 only)",
            msh.location(9, 1),
        )
    if trigger not in _TRIGGERS[kind]:
        raise UnsupportedEvent(
            f"{kind} trigger event {trigger[:10]!r} is not taken (expected "
            f"{'/'.join(_TRIGGERS[kind])})",
            msh.location(9, 2),
        )
    if msh.value(11) not in processing_ids:
        raise UnsupportedProcessingId(
            f"processing id {msh.value(11)[:5]!r} is not taken here (expected "
            f"{'/'.join(sorted(processing_ids))})",
            msh.location(11),
        )
    if msh.value(12) not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(
            f"HL7 version {msh.value(12)[:10]!r} is not supported "
            f"({', '.join(sorted(SUPPORTED_VERSIONS))})",
            msh.location(12),
        )
    if message.charset_error is not None:
        raise message.charset_error
    if not msh.value(10):
        raise MissingField("MSH-10 message control id is empty", msh.location(10))


def _required(message: Message, name: str) -> Segment:
    segment = message.first(name)
    if segment is None:
        raise MissingSegment(f"the message has no {name} segment", Location(name))
    return segment


# --- patient --------------------------------------------------------------------------------


def _ins(pid: Segment) -> Ins:
    reps = pid.repetitions(3)
    for rep in reps:
        if pid.component(rep, 5) == "INS" or pid.component(rep, 4, 2) in INS_OIDS:
            value, oid = pid.component(rep, 1), pid.component(rep, 4, 2)
            try:
                return Ins.parse(value, oid)
            except InvalidIdentifier as exc:
                raise InvalidIns(str(exc), pid.location(3)) from None
    raise MissingIns("PID-3 has no INS repetition (identifier type 'INS')", pid.location(3))


def _ipp(pid: Segment) -> LocalIdentifier | None:
    for rep in pid.repetitions(3):
        if pid.component(rep, 5) == "PI" and pid.component(rep, 1):
            return LocalIdentifier(pid.component(rep, 1), pid.component(rep, 4, 2),
                                   pid.component(rep, 4, 1))  # fmt: skip
    return None


def _birth_date(pid: Segment) -> date | None:
    text = pid.value(7)
    if not text:
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        raise InvalidValue(f"PID-7 birth date {text[:20]!r} is not YYYYMMDD",
                           pid.location(7)) from None  # fmt: skip


def read_patient(pid: Segment) -> PatientIdentity:
    names = pid.repetitions(5)
    legal = next((n for n in names if pid.component(n, 7) == "L"), names[0] if names else "")
    used = next((n for n in names if pid.component(n, 7) == "D"), "")
    sex = pid.value(8)
    if sex not in _SEXES:
        raise UnknownCode(f"PID-8 sex {sex[:5]!r} is not in HL7 table 0001", pid.location(8))
    first_given = pid.component(legal, 2)
    given = tuple(g for g in pid.component(legal, 3).split(" ") if g) or (
        (first_given,) if first_given else ()
    )
    return PatientIdentity(
        ins=_ins(pid),
        ipp=_ipp(pid),
        birth_family=pid.component(legal, 1),
        first_given=first_given,
        given_names=given,
        used_family=pid.component(used, 1) or None,
        birth_date=_birth_date(pid),
        sex=sex,
        identity_reliability=pid.value(32),
    )


# --- CDA ------------------------------------------------------------------------------------


def _report_obx(message: Message) -> Segment:
    candidates = [s for s in message.all("OBX") if s.value(2) == "ED"]
    if not candidates:
        raise MissingCda("no OBX segment of value type ED carries the CDA", Location("OBX", 2))
    return next((s for s in candidates if s.value(3) == REPORT_LOINC), candidates[0])


def read_cda_bytes(message: Message) -> bytes:
    """The CDA of OBX-5 (ED: ``source^TEXT^XML^Base64^data``)."""
    obx = _report_obx(message)
    reps = obx.repetitions(5)
    data = "".join(obx.component(reps[0], 5).split()) if reps else ""
    if not data:
        raise MissingCda("OBX-5 carries no document (ED data component is empty)",
                         obx.location(5, 5))  # fmt: skip
    encoding = obx.component(reps[0], 4)
    if encoding.upper() != "BASE64":
        raise UndecodableCda(f"OBX-5 encoding {encoding[:10]!r} is not Base64",
                             obx.location(5, 4))  # fmt: skip
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise UndecodableCda("OBX-5 data is not valid base64", obx.location(5, 5)) from None


def _check_patient(patient: PatientIdentity, cda: CdaHeader) -> None:
    expected = (patient.ins.value, patient.ins.oid)
    if not cda.patient_ins:
        raise PatientMismatch("the CDA recordTarget has no INS", Location("OBX", 5, 5))
    for found in cda.patient_ins:
        if found != expected:
            raise PatientMismatch(
                f"the CDA patient INS {found[0][:20]}^{found[1][:40]} differs from PID-3 "
                f"{expected[0]}^{expected[1]}",
                Location("PID", 3),
            )


def _check_document_id(message: Message, cda: CdaHeader) -> None:
    txa = message.first("TXA")
    txa_id = txa.value(12) if txa is not None else ""
    if txa is not None and txa_id and txa_id not in cda.document.document_id.split("^"):
        raise InconsistentContent(
            f"TXA-12 {txa_id[:70]!r} is not the CDA id {cda.document.document_id[:70]!r}",
            txa.location(12),
        )


# --- order, event, structure ----------------------------------------------------------------


def _order_id(segment: Segment | None, field: int) -> LocalIdentifier | None:
    if segment is None or not segment.value(field):
        return None
    return LocalIdentifier(segment.value(field), segment.value(field, 3),
                           segment.value(field, 2))  # fmt: skip


def read_event(message: Message, cda: CdaHeader) -> ReportEvent:
    """MDM: the trigger event; ORU: ORC-1. A CDA that replaces a version makes it a correction."""
    msh, orc = message.msh, message.first("ORC")
    control = orc.value(1) if orc is not None else ""
    if control and control not in _ORDER_CONTROL:
        raise UnknownCode(
            f"ORC-1 order control {control[:5]!r} is not one of {', '.join(_ORDER_CONTROL)}",
            Location("ORC", 1),
        )
    by_trigger = _TRIGGERS[msh.value(9, 1)][msh.value(9, 2)]
    event = by_trigger or _ORDER_CONTROL.get(control, ReportEvent.NEW)
    if (control == "CA") != (event is ReportEvent.CANCELLATION) and control:
        raise InconsistentContent(
            f"ORC-1 {control!r} contradicts the trigger event {msh.value(9, 2)!r}",
            Location("ORC", 1),
        )
    # The ANS correction samples keep NW/T02: the CDA version is what tells a replacement.
    if event is ReportEvent.NEW and (cda.document.version > 1 or cda.document.replaces):
        return ReportEvent.CORRECTION
    return event


def _prt_structure(message: Message) -> Structure | None:
    for prt in message.all("PRT"):
        if prt.value(4) == "SB" and prt.value(8, 10):
            return Structure(prt.value(8, 10), prt.value(8, 1))
    return None


def read_report(
    message: Message, *, processing_ids: Collection[str] = DEFAULT_PROCESSING_IDS
) -> ReportMessage:
    """Check a decoded message and extract the report it carries."""
    check_header(message, processing_ids)
    pid = _required(message, "PID")
    obr = _required(message, "OBR")
    if message.msh.value(9, 1) == "MDM":
        _required(message, "TXA")
    patient = read_patient(pid)
    cda_bytes = read_cda_bytes(message)
    cda = read_cda(cda_bytes)
    _check_patient(patient, cda)
    _check_document_id(message, cda)
    orc = message.first("ORC")
    return ReportMessage(
        header=read_header(message),
        event=read_event(message, cda),
        patient=patient,
        placer_order=_order_id(orc, 2) or _order_id(obr, 2) or cda.order,
        filler_order=_order_id(orc, 3) or _order_id(obr, 3),
        accession=cda.accession,
        study_uid=cda.study_uid,
        radiologist=cda.author,
        structure=cda.structure or _prt_structure(message),
        document=cda.document,
        cda=cda_bytes,
    )
