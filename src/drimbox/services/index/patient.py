"""The patient's own controls over their record: opposition and hiding documents."""

from __future__ import annotations

from drimbox.domain import xds
from drimbox.domain.access import ActorKind, CallerIdentity, Decision, PatientPolicy
from drimbox.domain.xds import AccessDenied, ErrorCode, XdsError
from drimbox.services.index.journal import GRANTED, IndexContext


def _own_record(caller: CallerIdentity, patient_id: str) -> Decision:
    if caller.kind is ActorKind.PATIENT and caller.patient_id == patient_id:
        return Decision(True)
    return Decision(False, "only the patient changes these settings")


class PatientControls:
    def __init__(self, ctx: IndexContext) -> None:
        self.ctx = ctx

    def set_opposition(
        self, caller: CallerIdentity, opposed: bool, opposes_break_glass: bool = False
    ) -> None:
        patient = caller.patient_id
        action = "opposition"
        if not patient:
            raise AccessDenied("only the patient changes these settings")
        self.ctx.require(_own_record(caller, patient), caller, patient, action)
        detail = f"opposed={opposed} opposes_break_glass={opposes_break_glass}"
        event = self.ctx.event(patient, caller, action, GRANTED, detail=detail)
        self.ctx.store.set_patient_policy(
            PatientPolicy(patient, opposed, opposes_break_glass), event
        )

    def hide_document(self, caller: CallerIdentity, unique_id: str, hidden: bool) -> None:
        found = [
            e for e in self.ctx.store.entries(unique_ids=[unique_id]) if e.status != xds.DELETED
        ]
        if not found or found[0].patient_id != caller.patient_id:
            raise XdsError(ErrorCode.DOCUMENT_UNIQUE_ID, f"document {unique_id} not found")
        action = "hide document" if hidden else "show document"
        self.ctx.require(
            _own_record(caller, found[0].patient_id), caller, found[0].patient_id, action
        )
        event = self.ctx.event(found[0].patient_id, caller, action, GRANTED, [unique_id])
        self.ctx.store.set_hidden(found[0].entry_uuid, hidden, event)
