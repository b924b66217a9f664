"""Access records as FHIR R4 ``AuditEvent`` JSON (DICOM audit codes where they fit).

Shape, per record:

* ``type``: the DICOM audit event (110103 instances accessed, 110106 export, 110107 import,
  110110 patient record, 110112 query, 110101 audit log used, 110114 user authentication);
  ``subtype``: the trail's own action code (``urn:drimbox:audit-action``).
* ``action`` C/R/U/D/E, ``recorded`` (UTC instant), ``outcome`` ``0`` success, ``4`` refused
  (minor failure), ``8`` failed (serious failure), ``outcomeDesc`` the detail.
* ``purposeOfEvent``: for an emergency access, HL7 v3 ActReason ``ETREAT`` and ``BTG``
  (break the glass), the stated reason as text.
* ``agent``: the requestor (who, role and specialty codings, client IP), then, when known,
  their structure, the client application or box they used, and the box/endpoint involved.
* ``source.observer``: the box that recorded the event.
* ``entity``: the patient (``Patient`` identified by the INS, system ``urn:oid:<INS OID>``),
  the study (``urn:dicom:uid`` identifier) and the document.
"""

from __future__ import annotations

from typing import Any

from drimbox.domain.audit import (
    SPECIALTY_SYSTEM,
    AccessRecord,
    Action,
    Actor,
    ActorKind,
    Outcome,
)

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACTION_SYSTEM = "urn:drimbox:audit-action"
"""The trail's own action vocabulary (:class:`~drimbox.domain.audit.Action` values)."""
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SECURITY_ROLE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
DICOM_UID_SYSTEM = "urn:dicom:uid"

_TYPES: dict[Action, tuple[str, str, str]] = {
    # action -> (DCM code, display, AuditEvent.action)
    Action.HISTORY_LIST: ("110112", "Query", "E"),
    Action.REPORT_READ: ("110110", "Patient Record", "R"),
    Action.IMAGES_VIEW: ("110103", "DICOM Instances Accessed", "R"),
    Action.IMAGES_RETRIEVE: ("110106", "Export", "R"),
    Action.IMAGES_DOWNLOAD: ("110106", "Export", "R"),
    Action.IMAGES_IMPORT: ("110107", "Import", "C"),
    Action.INDEX_QUERY: ("110112", "Query", "E"),
    Action.INDEX_PUBLISH: ("110106", "Export", "R"),
    Action.EMERGENCY_ACCESS: ("110110", "Patient Record", "R"),
    Action.TRAIL_READ: ("110101", "Audit Log Used", "R"),
    Action.USER_LOGIN: ("110114", "User Authentication", "E"),
}
_ACTION_DISPLAY: dict[Action, str] = {
    Action.HISTORY_LIST: "Consultation de l'historique d'examens",
    Action.REPORT_READ: "Lecture d'un compte rendu",
    Action.IMAGES_VIEW: "Visualisation d'images",
    Action.IMAGES_RETRIEVE: "Récupération d'images par une autre DRIMbox",
    Action.IMAGES_DOWNLOAD: "Téléchargement d'images",
    Action.IMAGES_IMPORT: "Import d'images",
    Action.INDEX_QUERY: "Interrogation de l'index",
    Action.INDEX_PUBLISH: "Publication dans l'index",
    Action.EMERGENCY_ACCESS: "Accès en urgence (bris de glace)",
    Action.TRAIL_READ: "Consultation de la traçabilité des accès",
    Action.USER_LOGIN: "Connexion",
}
OUTCOME_CODES: dict[Outcome, str] = {
    Outcome.SUCCESS: "0",
    Outcome.REFUSED: "4",
    Outcome.FAILED: "8",
}


def _coding(system: str, code: str, display: str = "") -> dict[str, str]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _identifier(value: str, system: str = "") -> dict[str, str]:
    return {"system": system, "value": value} if system else {"value": value}


def instant(record: AccessRecord) -> str:
    """FHIR ``instant`` in UTC with microseconds (fixed width: sorts as text)."""
    return record.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _requestor(actor: Actor, client_ip: str) -> dict[str, Any]:
    human = actor.kind in (ActorKind.PROFESSIONAL, ActorKind.PATIENT)
    agent: dict[str, Any] = {
        "type": {
            "coding": [
                _coding(SECURITY_ROLE, "humanuser", "human user")
                if human
                else _coding(SECURITY_ROLE, "dataprocessor", "data processor")
            ]
        },
        "who": {"identifier": _identifier(actor.id, actor.id_system)},
        "requestor": True,
        "extension": [{"url": "urn:drimbox:audit-actor-kind", "valueCode": actor.kind.value}],
    }
    if actor.name:
        agent["who"]["display"] = actor.name
        agent["name"] = actor.name
    roles: list[dict[str, Any]] = []
    if actor.role_code:
        roles.append({"coding": [_coding(actor.role_system, actor.role_code, actor.role_display)]})
    elif actor.role_display:
        roles.append({"text": actor.role_display})
    if actor.specialty:
        roles.append(
            {"coding": [_coding(SPECIALTY_SYSTEM, actor.specialty, actor.specialty_display)]}
        )
    if roles:
        agent["role"] = roles
    if client_ip:
        agent["network"] = {"address": client_ip, "type": "2"}
    return agent


def _agents(record: AccessRecord) -> list[dict[str, Any]]:
    actor = record.actor
    agents = [_requestor(actor, record.client_ip)]
    if actor.structure_id or actor.structure_name:
        structure: dict[str, Any] = {
            "type": {"coding": [_coding(ROLE_CLASS, "PROV", "healthcare provider")]},
            "who": {},
            "requestor": False,
        }
        if actor.structure_id:
            structure["who"]["identifier"] = _identifier(actor.structure_id)
        if actor.structure_name:
            structure["who"]["display"] = actor.structure_name
        agents.append(structure)
    if actor.client_id:
        agents.append(
            {
                "type": {"coding": [_coding(DCM, "110150", "Application")]},
                "who": {"identifier": _identifier(actor.client_id)},
                "requestor": False,
            }
        )
    if record.source:
        agents.append(
            {
                "type": {"coding": [_coding(DCM, "110153", "Source Role ID")]},
                "who": {"identifier": _identifier(record.source), "display": record.source},
                "requestor": False,
            }
        )
    return agents


def _entities(record: AccessRecord) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    if record.patient_ins:
        entities.append(
            {
                "what": {
                    "type": "Patient",
                    "identifier": _identifier(record.patient_ins, f"urn:oid:{record.patient_oid}"),
                },
                "type": _coding(ENTITY_TYPE, "1", "Person"),
                "role": _coding(OBJECT_ROLE, "1", "Patient"),
            }
        )
    if record.study_uid:
        entities.append(
            {
                "what": {
                    "type": "ImagingStudy",
                    "identifier": {
                        "type": {"coding": [_coding(DCM, "110180", "Study Instance UID")]},
                        "system": DICOM_UID_SYSTEM,
                        "value": f"urn:oid:{record.study_uid}",
                    },
                },
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "3", "Report"),
            }
        )
    if record.document_id:
        entities.append(
            {
                "what": {
                    "type": "DocumentReference",
                    "identifier": _identifier(record.document_id),
                },
                "type": _coding(ENTITY_TYPE, "2", "System Object"),
                "role": _coding(OBJECT_ROLE, "3", "Report"),
            }
        )
    return entities


def to_audit_event(
    record: AccessRecord, record_id: str, *, observer: str = "drimbox"
) -> dict[str, Any]:
    """The FHIR R4 AuditEvent of ``record``; ``observer`` names the box that records it."""
    code, display, crude = _TYPES[record.action]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": record_id,
        "type": _coding(DCM, code, display),
        "subtype": [
            _coding(ACTION_SYSTEM, record.action.value, _ACTION_DISPLAY[record.action]),
        ],
        "action": crude,
        "recorded": instant(record),
        "outcome": OUTCOME_CODES[record.outcome],
    }
    if record.action is Action.USER_LOGIN:
        event["subtype"].append(_coding(DCM, "110122", "Login"))
    if record.outcome_detail:
        event["outcomeDesc"] = record.outcome_detail
    if record.emergency:
        event["purposeOfEvent"] = [
            {"coding": [_coding(ACT_REASON, "ETREAT", "Emergency Treatment")]},
            {
                "coding": [_coding(ACT_REASON, "BTG", "break the glass")],
                "text": record.emergency_reason,
            },
        ]
    event["agent"] = _agents(record)
    event["source"] = {
        "observer": {"identifier": _identifier(observer), "display": observer},
        "type": [_coding(SOURCE_TYPE, "4", "Application Server")],
    }
    entities = _entities(record)
    if entities:
        event["entity"] = entities
    return event


def patient_of(event: dict[str, Any]) -> tuple[str, str] | None:
    """(INS, OID) of the patient an AuditEvent is about, if any."""
    for entity in event.get("entity", ()):
        what = entity.get("what", {})
        identifier = what.get("identifier", {})
        system = identifier.get("system", "")
        if what.get("type") == "Patient" and system.startswith("urn:oid:"):
            return str(identifier.get("value", "")), system.removeprefix("urn:oid:")
    return None
