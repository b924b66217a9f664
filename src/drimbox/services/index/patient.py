"""The patient's own controls over their record: opposition and hiding documents.

Only the patient changes (or reads) these settings, and only for their own record; every
change and every refusal lands in the patient's access log. Hiding an exam hides each of its
documents (manifest, reports, older versions): professionals then no longer see them, except
their author and anyone in break-glass (``services.index.access``); the patient still does.
"""

from __future__ import annotations

from drimbox.domain import xds
from drimbox.domain.access import ActorKind, CallerIdentity, Decision, PatientPolicy
from drimbox.domain.xds import AccessDenied, ErrorCode, XdsError
from drimbox.services.index.journal import GRANTED, IndexContext
from drimbox.services.index.ports import FindDocumentsQuery

_WHOLE_RECORD = 100_000  # a lifetime of documents, read to find one exam's


def _own_record(caller: CallerIdentity, patient_id: str) -> Decision:
    if caller.kind is ActorKind.PATIENT and caller.patient_id == patient_id:
        return Decision(True)
    return Decision(False, "only the patient changes these settings")


class PatientControls:
    def __init__(self, ctx: IndexContext) -> None:
        self.ctx = ctx

    def _require_own(self, caller: CallerIdentity, patient_id: str | None, action: str) -> str:
        """The record the caller acts on: their own, checked against ``patient_id`` (the one
        the request names) when given; refusals are logged in that record."""
        patient = patient_id or caller.patient_id
        if not patient:
            raise AccessDenied("only the patient changes these settings")
        self.ctx.require(_own_record(caller, patient), caller, patient, action)
        return patient

    def opposition(self, caller: CallerIdentity, patient_id: str | None = None) -> PatientPolicy:
        """The patient's current choices (read by the patient only)."""
        action = "read opposition"
        patient = self._require_own(caller, patient_id, action)
        policy = self.ctx.store.patient_policy(patient)
        self.ctx.log(patient, caller, action, GRANTED)
        return policy

    def set_opposition(
        self,
        caller: CallerIdentity,
        opposed: bool,
        opposes_break_glass: bool = False,
        patient_id: str | None = None,
    ) -> None:
        action = "opposition"
        patient = self._require_own(caller, patient_id, action)
        detail = f"opposed={opposed} opposes_break_glass={opposes_break_glass}"
        event = self.ctx.event(patient, caller, action, GRANTED, detail=detail)
        self.ctx.store.set_patient_policy(
            PatientPolicy(patient, opposed, opposes_break_glass), event
        )

    def hide_document(
        self, caller: CallerIdentity, unique_id: str, hidden: bool, patient_id: str | None = None
    ) -> None:
        """``patient_id``: the record the request names, which must be the caller's own."""
        action = "hide document" if hidden else "show document"
        if patient_id is not None:
            self._require_own(caller, patient_id, action)
        found = [
            e for e in self.ctx.store.entries(unique_ids=[unique_id]) if e.status != xds.DELETED
        ]
        if not found or found[0].patient_id != caller.patient_id:
            raise XdsError(ErrorCode.DOCUMENT_UNIQUE_ID, f"document {unique_id} not found")
        self.ctx.require(
            _own_record(caller, found[0].patient_id), caller, found[0].patient_id, action
        )
        for entry in found:  # every version of the document
            event = self.ctx.event(entry.patient_id, caller, action, GRANTED, [unique_id])
            self.ctx.store.set_hidden(entry.entry_uuid, hidden, event)

    def hide_exam(
        self, caller: CallerIdentity, patient_id: str, study_uid: str, hidden: bool
    ) -> list[str]:
        """Hide (or show again) every document of one exam of the caller's own record: its
        manifest and its reports, current and replaced. Returns their uniqueIds."""
        action = "hide document" if hidden else "show document"
        patient = self._require_own(caller, patient_id, action)
        query = FindDocumentsQuery(patient, [xds.APPROVED, xds.DEPRECATED], limit=_WHOLE_RECORD)
        entries = [
            e for e in self.ctx.store.find_documents(query)
            if e.reference(xds.STUDY_UID_REF) == study_uid
        ]  # fmt: skip
        if not entries:
            raise XdsError(ErrorCode.DOCUMENT_UNIQUE_ID, f"exam {study_uid} not found")
        for entry in entries:
            event = self.ctx.event(patient, caller, action, GRANTED, [entry.unique_id],
                                   detail=f"exam {study_uid}")  # fmt: skip
            self.ctx.store.set_hidden(entry.entry_uuid, hidden, event)
        return list(dict.fromkeys(e.unique_id for e in entries))
