"""Access records shaped as FHIR R4 AuditEvent JSON."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from drimbox.adapters.audit.fhir import (
    ACT_REASON,
    DCM,
    DICOM_UID_SYSTEM,
    patient_of,
    to_audit_event,
)
from drimbox.domain.audit import AccessRecord, Action, Actor, ActorKind, Outcome
from drimbox.domain.errors import InvalidIdentifier, InvalidInput
from drimbox.domain.identifiers import INS_OID_TEST

INS = "279035121518989"
AT = datetime(2024, 5, 17, 9, 30, 12, 345678, tzinfo=UTC)
FHIR_INSTANT = re.compile(
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:"
    r"([0-5][0-9]|60)(\.[0-9]{1,9})?(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
)

DOCTOR = Actor(
    "810101234567",
    ActorKind.PROFESSIONAL,
    name="Dr Anne Martin",
    id_system="urn:oid:1.2.250.1.71.4.2.1",
    role_code="10",
    role_display="Médecin",
    specialty="SM44",
    specialty_display="Radio-diagnostic",
    structure_id="1750001234",
    structure_name="CHU de Test",
    client_id="drimbox-chu-test",
)


def record(**overrides: object) -> AccessRecord:
    fields: dict[str, object] = {
        "actor": DOCTOR,
        "action": Action.IMAGES_VIEW,
        "outcome": Outcome.SUCCESS,
        "at": AT,
        "patient_ins": INS,
        "patient_oid": INS_OID_TEST,
        "study_uid": "1.2.250.1.999.1.2.3",
    }
    fields.update(overrides)
    return AccessRecord(**fields)  # type: ignore[arg-type]


def test_required_fields_and_json() -> None:
    event = to_audit_event(record(), "ev-1", observer="box-chu")
    assert event["resourceType"] == "AuditEvent"
    assert event["id"] == "ev-1"
    assert event["type"] == {"system": DCM, "code": "110103", "display": "DICOM Instances Accessed"}
    assert event["action"] == "R"
    assert event["recorded"] == "2024-05-17T09:30:12.345678Z"
    assert FHIR_INSTANT.fullmatch(event["recorded"])
    assert event["outcome"] == "0"
    assert "outcomeDesc" not in event
    assert "purposeOfEvent" not in event
    assert event["source"]["observer"]["display"] == "box-chu"
    assert event["source"]["observer"]["identifier"] == {"value": "box-chu"}
    assert {"urn:drimbox:audit-action"} == {c["system"] for c in event["subtype"]}
    assert event["subtype"][0]["code"] == "images.view"
    assert json.loads(json.dumps(event)) == event


def test_requestor_agent_and_structure() -> None:
    event = to_audit_event(record(client_ip="10.1.2.3", source="https://source.example/wado"), "x")
    requestors = [agent for agent in event["agent"] if agent["requestor"]]
    assert len(requestors) == 1
    who = requestors[0]
    assert who["who"]["identifier"] == {
        "system": "urn:oid:1.2.250.1.71.4.2.1",
        "value": "810101234567",
    }
    assert who["who"]["display"] == "Dr Anne Martin"
    assert who["network"] == {"address": "10.1.2.3", "type": "2"}
    role_codes = [role["coding"][0]["code"] for role in who["role"]]
    assert role_codes == ["10", "SM44"]
    assert "TRE_G15" in who["role"][0]["coding"][0]["system"]
    assert who["type"]["coding"][0]["code"] == "humanuser"
    others = {agent["type"]["coding"][0]["code"]: agent for agent in event["agent"][1:]}
    assert others["PROV"]["who"] == {
        "identifier": {"value": "1750001234"},
        "display": "CHU de Test",
    }
    assert others["110150"]["who"]["identifier"] == {"value": "drimbox-chu-test"}
    assert others["110153"]["who"]["display"] == "https://source.example/wado"
    assert all(agent["requestor"] is False for agent in others.values())


def test_box_actor_is_a_machine() -> None:
    box = Actor("drimbox-b", ActorKind.BOX)
    event = to_audit_event(record(actor=box, action=Action.IMAGES_RETRIEVE), "x")
    assert event["agent"][0]["type"]["coding"][0]["code"] == "dataprocessor"
    assert len(event["agent"]) == 1
    assert "role" not in event["agent"][0]


def test_patient_entity_uses_the_ins_oid() -> None:
    event = to_audit_event(record(), "x")
    patient = event["entity"][0]
    assert patient["what"] == {
        "type": "Patient",
        "identifier": {"system": "urn:oid:1.2.250.1.213.1.4.10", "value": INS},
    }
    assert patient["role"]["code"] == "1"
    assert patient["type"]["code"] == "1"
    assert patient_of(event) == (INS, INS_OID_TEST)


def test_study_and_document_entities() -> None:
    event = to_audit_event(record(document_id="1.2.250.1.999.7"), "x")
    study, document = event["entity"][1], event["entity"][2]
    assert study["what"]["identifier"]["system"] == DICOM_UID_SYSTEM
    assert study["what"]["identifier"]["value"] == "urn:oid:1.2.250.1.999.1.2.3"
    assert study["what"]["identifier"]["type"]["coding"][0]["code"] == "110180"
    assert document["what"]["identifier"] == {"value": "1.2.250.1.999.7"}


def test_no_patient_no_entity() -> None:
    event = to_audit_event(
        record(action=Action.USER_LOGIN, patient_ins="", patient_oid="", study_uid=""), "x"
    )
    assert "entity" not in event
    assert patient_of(event) is None
    assert event["type"]["code"] == "110114"
    assert [c["code"] for c in event["subtype"]] == ["user.login", "110122"]


@pytest.mark.parametrize(
    ("outcome", "code"),
    [(Outcome.SUCCESS, "0"), (Outcome.REFUSED, "4"), (Outcome.FAILED, "8")],
)
def test_outcome_codes(outcome: Outcome, code: str) -> None:
    event = to_audit_event(record(outcome=outcome, outcome_detail="why"), "x")
    assert event["outcome"] == code
    assert event["outcomeDesc"] == "why"


@pytest.mark.parametrize("action", list(Action))
def test_every_action_has_a_dicom_type(action: Action) -> None:
    reason = "urgence" if action is Action.EMERGENCY_ACCESS else ""
    event = to_audit_event(record(action=action, emergency_reason=reason), "x")
    assert event["type"]["system"] == DCM
    assert re.fullmatch(r"1101[0-9]{2}", event["type"]["code"])
    assert event["action"] in {"C", "R", "U", "D", "E"}
    assert event["subtype"][0]["code"] == action.value


def test_dicom_codes_of_the_main_actions() -> None:
    def shape(action: Action) -> tuple[str, str]:
        event = to_audit_event(record(action=action), "x")
        return event["type"]["code"], event["action"]

    assert shape(Action.HISTORY_LIST) == ("110112", "E")
    assert shape(Action.INDEX_QUERY) == ("110112", "E")
    assert shape(Action.REPORT_READ) == ("110110", "R")
    assert shape(Action.IMAGES_DOWNLOAD) == ("110106", "R")
    assert shape(Action.IMAGES_IMPORT) == ("110107", "C")
    assert shape(Action.TRAIL_READ) == ("110101", "R")


def test_emergency_access_is_flagged_break_the_glass() -> None:
    event = to_audit_event(
        record(action=Action.EMERGENCY_ACCESS, emergency_reason="patient inconscient"), "x"
    )
    codes = {(c["system"], c["code"]) for p in event["purposeOfEvent"] for c in p["coding"]}
    assert codes == {(ACT_REASON, "ETREAT"), (ACT_REASON, "BTG")}
    assert [p.get("text") for p in event["purposeOfEvent"]] == [None, "patient inconscient"]


def test_emergency_images_view_is_flagged_too() -> None:
    event = to_audit_event(record(emergency=True, emergency_reason="urgence vitale"), "x")
    assert event["type"]["code"] == "110103"
    assert event["purposeOfEvent"][1]["text"] == "urgence vitale"


def test_recorded_is_utc() -> None:
    paris = timezone(timedelta(hours=2))
    event = to_audit_event(record(at=datetime(2024, 5, 17, 11, 30, tzinfo=paris)), "x")
    assert event["recorded"] == "2024-05-17T09:30:00.000000Z"


def test_record_validation() -> None:
    with pytest.raises(InvalidInput, match="reason"):
        record(action=Action.EMERGENCY_ACCESS)
    with pytest.raises(InvalidInput, match="reason"):
        record(emergency=True, emergency_reason="   ")
    with pytest.raises(InvalidInput, match="only for an emergency"):
        record(emergency_reason="why not")
    with pytest.raises(InvalidIdentifier):
        record(patient_ins="279035121518988")
    with pytest.raises(InvalidIdentifier):
        record(patient_oid="")
    with pytest.raises(InvalidInput, match="time zone"):
        record(at=datetime(2024, 5, 17, 9, 30))
    with pytest.raises(InvalidInput):
        Actor(" ", ActorKind.PATIENT)
    assert record(action=Action.EMERGENCY_ACCESS, emergency_reason="x").emergency
