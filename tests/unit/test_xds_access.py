"""The index access rules, directly."""

from __future__ import annotations

import pytest

from drimbox.domain.access import AccessMode, ActorKind, CallerIdentity, PatientPolicy
from drimbox.domain.xds import Author, Code, DocumentEntry
from drimbox.services.index.access import DmpAccessRules

PATIENT = "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
AUTHOR_RPPS = "899700367909"
rules = DmpAccessRules()

doctor = CallerIdentity("Dr House", ActorKind.PROFESSIONAL, rpps="810000000001", profession="10",
                        structure="499700000001")  # fmt: skip
author = CallerIdentity("Dr Kit", ActorKind.PROFESSIONAL, rpps=AUTHOR_RPPS, structure="4997")
patient = CallerIdentity("Dominique", ActorKind.PATIENT, patient_id=PATIENT)
emergency = CallerIdentity("Dr Urgence", ActorKind.PROFESSIONAL, rpps="810000000002",
                           access_mode=AccessMode.BREAK_GLASS, reason="unconscious patient")  # fmt: skip
system = CallerIdentity("DRIMbox CHU", ActorKind.SYSTEM)


def entry(*codes: str, hidden: bool = False) -> DocumentEntry:
    conf = tuple(
        Code(c, "2.16.840.1.113883.5.25" if len(c) == 1 else "1.2.250.1.213.1.1.4.13")
        for c in codes
    )
    return DocumentEntry(
        "urn:uuid:1", "1.2.3", PATIENT, "application/dicom", confidentiality_codes=conf or (Code("N", "x"),),
        authors=(Author(f"{AUTHOR_RPPS}^KIT^DOC^^^^^^&1.2.250.1.71.4.2.1&ISO", ("CAB^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^4997",)),),
        hidden_by_patient=hidden,
    )  # fmt: skip


OPEN = PatientPolicy(PATIENT)
OPPOSED = PatientPolicy(PATIENT, opposed=True)
OPPOSED_ALL = PatientPolicy(PATIENT, opposed=True, opposes_break_glass=True)


@pytest.mark.parametrize(
    ("caller", "policy", "doc", "allowed"),
    [
        (doctor, OPEN, entry("N"), True),
        (doctor, OPPOSED, entry("N"), False),
        (emergency, OPPOSED, entry("N"), True),
        (emergency, OPPOSED_ALL, entry("N"), False),
        (doctor, OPEN, entry("N", "MASQUE_PS"), False),
        (author, OPEN, entry("N", "MASQUE_PS"), True),
        (emergency, OPEN, entry("N", "MASQUE_PS"), False),
        (doctor, OPEN, entry("V"), False),
        (author, OPEN, entry("V"), True),
        (doctor, OPEN, entry("N", hidden=True), False),
        (author, OPEN, entry("N", hidden=True), True),
        (emergency, OPEN, entry("N", hidden=True), True),
        (patient, OPEN, entry("N", "MASQUE_PS", hidden=True), True),
        (patient, OPEN, entry("N", "INVISIBLE_PATIENT"), False),
        (patient, OPPOSED, entry("N"), True),
        (doctor, OPEN, entry("N", "INVISIBLE_PATIENT"), True),
        (system, OPPOSED, entry("N", "MASQUE_PS"), True),
    ],
)
def test_read_rules(
    caller: CallerIdentity, policy: PatientPolicy, doc: DocumentEntry, allowed: bool
) -> None:
    decision = rules.can_read(caller, policy, doc)
    assert decision.allowed is allowed, decision.reason
    assert allowed or decision.reason


def test_patient_reads_only_their_record() -> None:
    other = CallerIdentity(
        "Someone", ActorKind.PATIENT, patient_id="1^^^&1.2.250.1.213.1.4.10&ISO^NH"
    )
    assert not rules.can_read_record(other, OPEN)
    assert not rules.can_read_record(CallerIdentity("x", ActorKind.PATIENT), OPEN)


@pytest.mark.parametrize(
    "caller",
    [
        CallerIdentity("Dr", ActorKind.PROFESSIONAL, access_mode=AccessMode.BREAK_GLASS),
        CallerIdentity(
            "Dr", ActorKind.PROFESSIONAL, access_mode=AccessMode.BREAK_GLASS, reason="  "
        ),
        CallerIdentity(
            "P",
            ActorKind.PATIENT,
            patient_id=PATIENT,
            access_mode=AccessMode.BREAK_GLASS,
            reason="x",
        ),
    ],
)
def test_break_glass_needs_a_professional_and_a_reason(caller: CallerIdentity) -> None:
    decision = rules.can_read_record(caller, OPPOSED)
    assert not decision and "break-glass" in decision.reason


def test_write_rules() -> None:
    assert rules.can_submit(system, PATIENT)
    assert rules.can_submit(doctor, PATIENT)
    assert not rules.can_submit(patient, PATIENT)
    doc = entry("N")
    assert rules.can_update(system, doc)
    assert rules.can_update(author, doc)
    same_structure = CallerIdentity(
        "Dr Collègue", ActorKind.PROFESSIONAL, rpps="8", structure="4997"
    )
    assert rules.can_update(same_structure, doc)
    decision = rules.can_update(doctor, doc)
    assert not decision and "author" in decision.reason
