"""Document entries grouped into exams, and access-log events, as JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drimbox.domain import xds
from drimbox.domain.access import AccessEvent
from drimbox.domain.xds import DocumentEntry


def _kind(entry: DocumentEntry) -> str:
    if entry.format_code is not None and entry.format_code.code == xds.KOS_SOP_CLASS:
        return "manifest"
    if entry.type_code is not None and entry.type_code.code == "18748-4":
        return "report"
    return "other"


def entry_json(entry: DocumentEntry, with_hidden: bool = False) -> dict[str, Any]:
    out = {
        "uniqueId": entry.unique_id,
        "entryUUID": entry.entry_uuid,
        "kind": _kind(entry),
        "title": entry.title,
        "mimeType": entry.mime_type,
        "creationTime": entry.creation_time,
        "repositoryUniqueId": entry.repository_unique_id,
        "confidentiality": sorted(entry.confidentiality),
        "size": entry.size,
        "eventCodes": [
            {"code": c.code, "scheme": c.scheme, "display": c.display} for c in entry.event_codes
        ],
    }
    if with_hidden:
        out["hiddenByPatient"] = entry.hidden_by_patient
    return out


def exams_json(entries: Sequence[DocumentEntry], with_hidden: bool = False) -> list[dict[str, Any]]:
    """One exam per Study Instance UID (documents without one stand alone).

    ``with_hidden`` (the patient reading their own record) says which documents they hid
    from professionals, per document and per exam (any of its documents)."""
    exams: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if _kind(entry) == "other":
            continue  # signatures and the like are not shown
        study = entry.reference(xds.STUDY_UID_REF) or entry.unique_id
        exam = exams.setdefault(study, {
            "studyInstanceUid": entry.reference(xds.STUDY_UID_REF),
            "accessionNumber": entry.reference(xds.ACCESSION_REF),
            "serviceStartTime": entry.service_start_time, "modalities": [],
            "reports": [], "manifests": [],
        })  # fmt: skip
        for code in entry.event_codes:
            if code.scheme == xds.MODALITY_SCHEME and code.code not in exam["modalities"]:
                exam["modalities"].append(code.code)
        exam["reports" if _kind(entry) == "report" else "manifests"].append(
            entry_json(entry, with_hidden)
        )
        if with_hidden:
            exam["hiddenByPatient"] = exam.get("hiddenByPatient", False) or entry.hidden_by_patient
    return sorted(exams.values(), key=lambda e: e["serviceStartTime"], reverse=True)


def log_json(events: Sequence[AccessEvent]) -> list[dict[str, Any]]:
    return [
        {
            "at": ev.at.isoformat(),
            "action": ev.action,
            "outcome": ev.outcome,
            "actor": {
                "name": ev.caller.who,
                "kind": str(ev.caller.kind),
                "id": ev.caller.rpps,
                "profession": ev.caller.profession,
                "structure": ev.caller.structure,
            },
            "accessMode": str(ev.caller.access_mode),
            "reason": ev.caller.reason,
            "documents": list(ev.documents),
            "detail": ev.detail,
        }
        for ev in events
    ]
