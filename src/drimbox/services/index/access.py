"""Access rules of the national index, modelled on the DMP's; pluggable (``AccessRules``).

Rules, in the order they are applied:

- Break-glass ("bris de glace") is for professionals only and needs a stated reason.
- A patient reads only their own record, and not documents coded ``INVISIBLE_PATIENT``
  (e.g. a report held back until the announcement consultation).
- A professional is refused the whole record when the patient opposed access, unless in
  break-glass mode and the patient did not also oppose break-glass.
- Documents coded ``MASQUE_PS`` or with confidentiality ``V`` (very restricted) are visible
  to their author (author or legal authenticator RPPS) only, even in break-glass.
- Documents the patient hid are visible to their author, and to anyone in break-glass.
- System callers (a DRIMbox publishing for a professional, mode INDIRECTE) submit and
  update; professionals update only documents they authored or that their structure
  published; patients never write through XDS.
"""

from __future__ import annotations

from drimbox.domain.access import (
    ALLOW,
    AccessMode,
    ActorKind,
    CallerIdentity,
    Decision,
    PatientPolicy,
)
from drimbox.domain.xds import INVISIBLE_PATIENT, MASQUE_PS, DocumentEntry

AUTHOR_ONLY = frozenset({MASQUE_PS, "V"})


def _is_author(caller: CallerIdentity, entry: DocumentEntry) -> bool:
    return bool(caller.rpps) and caller.rpps in entry.author_ids


class DmpAccessRules:
    """The default ``AccessRules``."""

    def check_caller(self, caller: CallerIdentity) -> Decision:
        if caller.access_mode is AccessMode.BREAK_GLASS:
            if caller.kind is not ActorKind.PROFESSIONAL:
                return Decision(False, "break-glass access is for health professionals only")
            if not caller.reason.strip():
                return Decision(False, "break-glass access requires a reason")
        if caller.kind is ActorKind.PATIENT and not caller.patient_id:
            return Decision(False, "a patient caller must carry their own INS")
        return ALLOW

    def can_read_record(self, caller: CallerIdentity, policy: PatientPolicy) -> Decision:
        checked = self.check_caller(caller)
        if not checked:
            return checked
        if caller.kind is ActorKind.PATIENT:
            if caller.patient_id != policy.patient_id:
                return Decision(False, "a patient reads only their own record")
            return ALLOW
        if caller.kind is ActorKind.PROFESSIONAL and policy.opposed:
            if caller.access_mode is not AccessMode.BREAK_GLASS:
                return Decision(False, "the patient opposed access by professionals")
            if policy.opposes_break_glass:
                return Decision(False, "the patient opposed break-glass access")
        return ALLOW

    def can_read(
        self, caller: CallerIdentity, policy: PatientPolicy, entry: DocumentEntry
    ) -> Decision:
        record = self.can_read_record(caller, policy)
        if not record:
            return record
        codes = entry.confidentiality
        if caller.kind is ActorKind.PATIENT:
            if INVISIBLE_PATIENT in codes:
                return Decision(False, "document not visible to the patient")
            return ALLOW
        if caller.kind is ActorKind.SYSTEM:
            return ALLOW
        if codes & AUTHOR_ONLY and not _is_author(caller, entry):
            return Decision(False, "document restricted to its author")
        emergency = caller.access_mode is AccessMode.BREAK_GLASS
        if entry.hidden_by_patient and not emergency and not _is_author(caller, entry):
            return Decision(False, "document hidden by the patient")
        return ALLOW

    def can_submit(self, caller: CallerIdentity, patient_id: str) -> Decision:
        checked = self.check_caller(caller)
        if not checked:
            return checked
        if caller.kind is ActorKind.PATIENT:
            return Decision(False, "patients do not publish documents")
        return ALLOW

    def can_update(self, caller: CallerIdentity, entry: DocumentEntry) -> Decision:
        checked = self.can_submit(caller, entry.patient_id)
        if not checked or caller.kind is ActorKind.SYSTEM:
            return checked
        if _is_author(caller, entry):
            return ALLOW
        if caller.structure and caller.structure in entry.institution_ids:
            return ALLOW
        return Decision(False, "only the author or the publishing structure may update")
