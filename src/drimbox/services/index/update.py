"""ITI-57 Update Document Set: availability status changes (Approved <-> Deprecated, and the
DMP's depublication to Deleted) and metadata updates (a new version of a DocumentEntry).

A Deleted entry never comes back: no transition leaves Deleted, and no query returns it.
"""

from __future__ import annotations

from dataclasses import replace

from drimbox.domain import xds
from drimbox.domain.access import CallerIdentity
from drimbox.domain.xds import (
    Association,
    DocumentEntry,
    ErrorCode,
    Submission,
    XdsError,
    XdsErrors,
)
from drimbox.services.index.journal import FAILED, GRANTED, IndexContext
from drimbox.services.index.metadata import check_entry, check_submission_set
from drimbox.services.index.ports import StatusChange

ACTION = "ITI-57 Update Document Set"
TRANSITIONS = {
    (xds.APPROVED, xds.DEPRECATED),
    (xds.DEPRECATED, xds.APPROVED),
    (xds.APPROVED, xds.DELETED),
    (xds.DEPRECATED, xds.DELETED),
}


def _status_change(a: Association, entry: DocumentEntry | None, patient: str) -> StatusChange:
    original, new = a.slot("OriginalStatus"), a.slot("NewStatus")
    if entry is None or entry.status == xds.DELETED:
        raise XdsError(ErrorCode.UNRESOLVED_REFERENCE, f"{a.target} is not registered")
    if entry.patient_id != patient:
        raise XdsError(ErrorCode.PATIENT_MISMATCH, f"{a.target} belongs to another patient")
    if original != entry.status:
        raise XdsError(ErrorCode.BAD_STATUS, f"{a.target} is {entry.status}, not {original}")
    if (original, new) not in TRANSITIONS:
        raise XdsError(ErrorCode.BAD_STATUS, f"{a.target}: no transition {original} -> {new}")
    return StatusChange(entry.entry_uuid, patient, original, new)


class UpdateService:
    def __init__(self, ctx: IndexContext) -> None:
        self.ctx = ctx

    def update(self, sub: Submission, caller: CallerIdentity) -> None:
        errors = check_submission_set(sub)
        if errors:
            raise XdsErrors(errors)
        ss = sub.submission_set
        ss.patient_id = xds.normalize_patient_id(ss.patient_id)
        self.ctx.require(
            self.ctx.rules.can_submit(caller, ss.patient_id), caller, ss.patient_id, ACTION
        )
        for a in sub.associations:
            a.patient_id = ss.patient_id
        try:
            changes = self._status_changes(sub, caller)
            versions = self._new_versions(sub, caller)
        except (XdsError, XdsErrors) as exc:
            self.ctx.log(ss.patient_id, caller, ACTION, FAILED, detail=str(exc)[:2000])
            raise
        touched = [c.entry_uuid for c in changes] + [new.unique_id for _, new in versions]
        event = self.ctx.event(
            ss.patient_id,
            caller,
            ACTION,
            GRANTED,
            touched,
            "; ".join(f"{c.entry_uuid} -> {c.new}" for c in changes),
        )
        self.ctx.store.update(sub, changes, versions, event)

    def _status_changes(self, sub: Submission, caller: CallerIdentity) -> list[StatusChange]:
        wanted = [
            a for a in sub.associations if a.association_type == xds.UPDATE_AVAILABILITY_STATUS
        ]
        found = {e.entry_uuid: e for e in self.ctx.store.entries([a.target for a in wanted])}
        changes = []
        for a in wanted:
            if a.source != sub.submission_set.entry_uuid:
                raise XdsError(
                    ErrorCode.METADATA, f"{a.entry_uuid}: source must be the submission set"
                )
            entry = found.get(a.target)
            change = _status_change(a, entry, sub.submission_set.patient_id)
            assert entry is not None  # _status_change raised otherwise
            self.ctx.require(
                self.ctx.rules.can_update(caller, entry), caller, entry.patient_id, ACTION
            )
            changes.append(change)
        return changes

    def _new_versions(
        self, sub: Submission, caller: CallerIdentity
    ) -> list[tuple[DocumentEntry, DocumentEntry]]:
        versions = []
        previous = {
            a.target: a.slot("PreviousVersion")
            for a in sub.associations
            if a.association_type == xds.HAS_MEMBER
        }
        for new in sub.entries:
            errors = check_entry(new, sub.submission_set.patient_id)
            if errors:
                raise XdsErrors(errors)
            old = self._current(new, previous.get(new.entry_uuid, ""))
            self.ctx.require(self.ctx.rules.can_update(caller, old), caller, old.patient_id, ACTION)
            versions.append((old, self._next_version(old, new)))
        return versions

    def _current(self, new: DocumentEntry, previous_version: str) -> DocumentEntry:
        name = new.symbolic_id or new.entry_uuid
        found = self.ctx.store.entries(uuids=[new.logical_id], logical=True)
        old = found[0] if found else None
        if old is None or old.status == xds.DELETED:
            raise XdsError(ErrorCode.UNRESOLVED_REFERENCE, f"{name}: lid {new.logical_id} unknown")
        if previous_version != str(old.version):
            raise XdsError(
                ErrorCode.BAD_STATUS,
                f"{name}: PreviousVersion {previous_version!r} "
                f"but the current version is {old.version}",
            )
        if new.unique_id != old.unique_id:
            raise XdsError(ErrorCode.BAD_STATUS, f"{name}: a new version keeps the uniqueId")
        if old.status != xds.APPROVED:
            raise XdsError(ErrorCode.BAD_STATUS, f"{name}: only an Approved entry is updated")
        return old

    def _next_version(self, old: DocumentEntry, new: DocumentEntry) -> DocumentEntry:
        # the document itself does not change: repository attributes carry over
        return replace(
            new,
            patient_id=old.patient_id,
            status=old.status,
            logical_id=old.logical_id,
            version=old.version + 1,
            hash=old.hash,
            size=old.size,
            repository_unique_id=old.repository_unique_id,
            submission_set_uuid=old.submission_set_uuid,
            hidden_by_patient=old.hidden_by_patient,
        )
