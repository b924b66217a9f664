"""Domain objects <-> rows of the index tables."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from drimbox.domain.access import AccessEvent, AccessMode, ActorKind, CallerIdentity
from drimbox.domain.xds import Association, Author, Code, DocumentEntry, SubmissionSet, dtm_bound


def _time(value: str) -> str:
    return dtm_bound(value) if value else ""


def _code(code: Code | None) -> tuple[str, str]:
    return (code.code, code.scheme) if code else ("", "")


def document_row(e: DocumentEntry) -> dict[str, Any]:
    author = e.authors[0] if e.authors else Author()
    row: dict[str, Any] = {
        "patient_id": e.patient_id, "entry_uuid": e.entry_uuid,
        "logical_id": e.logical_id or e.entry_uuid, "version": e.version,
        "unique_id": e.unique_id, "status": e.status, "mime_type": e.mime_type,
        "creation_time": _time(e.creation_time),
        "service_start_time": _time(e.service_start_time),
        "service_stop_time": _time(e.service_stop_time),
        "author_person": author.person[:256],
        "author_institution": (author.institutions[0] if author.institutions else "")[:256],
        "legal_authenticator": e.legal_authenticator[:256],
        "source_patient_id": e.source_patient_id[:80], "title": e.title[:512],
        "hash": e.hash, "size": e.size or 0, "repository_unique_id": e.repository_unique_id,
        "submission_set_uuid": e.submission_set_uuid,
        "hidden_by_patient": e.hidden_by_patient, "ebrim": e.ebrim,
    }  # fmt: skip
    for name, code in (
        ("class", e.class_code), ("type", e.type_code), ("format", e.format_code),
        ("practice_setting", e.practice_setting_code),
        ("hcft", e.healthcare_facility_type_code),
    ):  # fmt: skip
        row[f"{name}_code"], row[f"{name}_scheme"] = _code(code)
    return row


def entry_from_row(r: Any, children: dict[str, list[Any]]) -> DocumentEntry:
    institutions = (r["author_institution"],) if r["author_institution"] else ()
    return DocumentEntry(
        entry_uuid=r["entry_uuid"], unique_id=r["unique_id"], patient_id=r["patient_id"],
        mime_type=r["mime_type"], status=r["status"],
        class_code=Code(r["class_code"], r["class_scheme"]),
        type_code=Code(r["type_code"], r["type_scheme"]),
        format_code=Code(r["format_code"], r["format_scheme"]),
        practice_setting_code=Code(r["practice_setting_code"], r["practice_setting_scheme"]),
        healthcare_facility_type_code=Code(r["hcft_code"], r["hcft_scheme"]),
        confidentiality_codes=tuple(children["conf"]), event_codes=tuple(children["ev"]),
        reference_ids=tuple(children["ref"]),
        authors=(Author(r["author_person"], institutions),),
        creation_time=r["creation_time"], service_start_time=r["service_start_time"],
        service_stop_time=r["service_stop_time"], source_patient_id=r["source_patient_id"],
        legal_authenticator=r["legal_authenticator"], title=r["title"], hash=r["hash"],
        size=r["size"], repository_unique_id=r["repository_unique_id"],
        submission_set_uuid=r["submission_set_uuid"],
        hidden_by_patient=bool(r["hidden_by_patient"]), logical_id=r["logical_id"],
        version=r["version"], ebrim=r["ebrim"],
    )  # fmt: skip


def submission_set_row(s: SubmissionSet, at: datetime) -> dict[str, Any]:
    code, scheme = _code(s.content_type_code)
    return {
        "patient_id": s.patient_id, "entry_uuid": s.entry_uuid, "unique_id": s.unique_id,
        "source_id": s.source_id, "submission_time": _time(s.submission_time),
        "content_type_code": code, "content_type_scheme": scheme,
        "author_person": (s.authors[0].person if s.authors else "")[:256],
        "status": s.status, "received_at": at, "ebrim": s.ebrim,
    }  # fmt: skip


def set_from_row(r: Any) -> SubmissionSet:
    return SubmissionSet(
        entry_uuid=r["entry_uuid"], unique_id=r["unique_id"], patient_id=r["patient_id"],
        source_id=r["source_id"], submission_time=r["submission_time"],
        content_type_code=Code(r["content_type_code"], r["content_type_scheme"]),
        authors=(Author(r["author_person"]),), status=r["status"], ebrim=r["ebrim"],
    )  # fmt: skip


def association_row(a: Association, submission_set_uuid: str) -> dict[str, Any]:
    return {
        "patient_id": a.patient_id, "entry_uuid": a.entry_uuid,
        "association_type": a.association_type, "source_uuid": a.source,
        "target_uuid": a.target, "submission_set_uuid": submission_set_uuid, "ebrim": a.ebrim,
    }  # fmt: skip


def access_row(ev: AccessEvent) -> dict[str, Any]:
    c = ev.caller
    return {
        "patient_id": ev.patient_id, "event_id": ev.event_id or str(uuid.uuid4()),
        "at": ev.at, "action": ev.action, "outcome": ev.outcome, "actor_kind": str(c.kind),
        "actor_name": c.who[:256], "actor_id": (c.rpps or c.patient_id)[:128],
        "profession": c.profession[:128], "structure": c.structure[:128], "role": c.role[:128],
        "access_mode": str(c.access_mode), "reason": c.reason,
        "documents": " ".join(ev.documents), "detail": ev.detail,
    }  # fmt: skip


def event_from_row(r: Any) -> AccessEvent:
    kind = ActorKind(r["actor_kind"])
    caller = CallerIdentity(
        who=r["actor_name"], kind=kind,
        rpps=r["actor_id"] if kind is not ActorKind.PATIENT else "",
        patient_id=r["actor_id"] if kind is ActorKind.PATIENT else "",
        profession=r["profession"], structure=r["structure"], role=r["role"],
        access_mode=AccessMode(r["access_mode"]), reason=r["reason"],
    )  # fmt: skip
    at: datetime = r["at"]
    return AccessEvent(
        patient_id=r["patient_id"], at=at if at.tzinfo else at.replace(tzinfo=UTC),
        action=r["action"], outcome=r["outcome"], caller=caller,
        documents=tuple(r["documents"].split()), detail=r["detail"], event_id=r["event_id"],
    )  # fmt: skip
