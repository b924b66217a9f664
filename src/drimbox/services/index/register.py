"""ITI-41 Provide and Register Document Set-b: all or nothing.

Checks metadata, documents (presence, hash, size), duplicates and replacements, then
stores the submission, its documents, the deprecation of replaced entries and the access-log
line in one transaction.
"""

from __future__ import annotations

import hashlib

from drimbox.domain import xds
from drimbox.domain.access import CallerIdentity
from drimbox.domain.xds import DocumentEntry, ErrorCode, Submission, XdsError, XdsErrors
from drimbox.services.index.journal import FAILED, GRANTED, IndexContext
from drimbox.services.index.metadata import check_provide_and_register

ACTION = "ITI-41 Provide and Register"


def _name(entry: DocumentEntry) -> str:
    return entry.symbolic_id or entry.entry_uuid


def check_documents(sub: Submission) -> list[XdsError]:
    """Every entry has its bytes, every part has an entry, hash and size agree (ITI-41 4.1)."""
    errors = []
    entry_ids = {e.entry_uuid for e in sub.entries}
    for extra in set(sub.documents) - entry_ids:
        errors.append(XdsError(ErrorCode.MISSING_METADATA, f"Document {extra} has no entry"))
    for entry in sub.entries:
        data = sub.documents.get(entry.entry_uuid)
        if data is None:
            errors.append(XdsError(ErrorCode.MISSING_DOCUMENT, f"{_name(entry)}: no Document"))
            continue
        digest = hashlib.sha1(data, usedforsecurity=False).hexdigest().upper()
        if entry.hash and entry.hash.upper() != digest:
            errors.append(
                XdsError(
                    ErrorCode.NON_IDENTICAL_HASH,
                    f"{_name(entry)}: hash {entry.hash} but the document's SHA-1 is {digest}",
                    _name(entry),
                )
            )
        if entry.size is not None and entry.size != len(data):
            errors.append(
                XdsError(
                    ErrorCode.NON_IDENTICAL_SIZE,
                    f"{_name(entry)}: size {entry.size} but the document has {len(data)} bytes",
                    _name(entry),
                )
            )
        entry.hash, entry.size = digest, len(data)
    return errors


def complete_submission(sub: Submission, repository_unique_id: str) -> None:
    """Registry-owned attributes: status, keys, repository, normalized patient id."""
    ss = sub.submission_set
    ss.patient_id = xds.normalize_patient_id(ss.patient_id)
    ss.status = xds.APPROVED
    for entry in sub.entries:
        entry.patient_id = ss.patient_id
        entry.status = xds.APPROVED
        entry.logical_id = entry.entry_uuid
        entry.version = 1
        entry.repository_unique_id = repository_unique_id
        entry.submission_set_uuid = ss.entry_uuid
    for assoc in sub.associations:
        assoc.patient_id = ss.patient_id


class RegisterService:
    def __init__(self, ctx: IndexContext) -> None:
        self.ctx = ctx

    def provide_and_register(self, sub: Submission, caller: CallerIdentity) -> None:
        errors = check_provide_and_register(sub)
        if errors:
            self._log_failure(sub, caller, errors)
            raise XdsErrors(errors)
        patient = xds.normalize_patient_id(sub.submission_set.patient_id)
        self.ctx.require(self.ctx.rules.can_submit(caller, patient), caller, patient, ACTION)
        errors = check_documents(sub)
        complete_submission(sub, self.ctx.repository_unique_id)
        errors += self._check_registry(sub, caller)
        if errors:
            self._log_failure(sub, caller, errors)
            raise XdsErrors(errors)
        self._inherit_hidden(sub)
        event = self.ctx.event(patient, caller, ACTION, GRANTED, [e.unique_id for e in sub.entries])
        self.ctx.store.register(sub, self._replaced(sub), event)

    def _inherit_hidden(self, sub: Submission) -> None:
        """A new version of a document the patient hid stays hidden: a corrected report must
        not bring an exam back to professionals the patient hid it from."""
        pairs = [(a.source, a.target) for a in sub.associations
                 if a.association_type in xds.REPLACING]  # fmt: skip
        if not pairs:
            return
        targets = [target for _, target in pairs]
        hidden = {
            e.entry_uuid for e in self.ctx.store.entries(uuids=targets) if e.hidden_by_patient
        }
        heirs = {source for source, target in pairs if target in hidden}
        for entry in sub.entries:
            if entry.entry_uuid in heirs:
                entry.hidden_by_patient = True

    def _replaced(self, sub: Submission) -> list[str]:
        return [a.target for a in sub.associations if a.association_type in xds.REPLACING]

    def _check_registry(self, sub: Submission, caller: CallerIdentity) -> list[XdsError]:
        errors = []
        known = self.ctx.store.existing_unique_ids(
            [e.unique_id for e in sub.entries] + [sub.submission_set.unique_id]
        )
        for entry in sub.entries:
            if entry.unique_id in known:
                errors.append(
                    XdsError(
                        ErrorCode.DUPLICATE_UNIQUE_ID,
                        f"{_name(entry)}: uniqueId {entry.unique_id} is already registered",
                        _name(entry),
                    )
                )
        if sub.submission_set.unique_id in known:
            errors.append(
                XdsError(
                    ErrorCode.DUPLICATE_UNIQUE_ID,
                    f"submission set uniqueId {sub.submission_set.unique_id} is already registered",
                )
            )
        return errors + self._check_replacements(sub, caller)

    def _check_replacements(self, sub: Submission, caller: CallerIdentity) -> list[XdsError]:
        targets = self._replaced(sub)
        found = {e.entry_uuid: e for e in self.ctx.store.entries(uuids=targets)}
        problems = [self._replacement_problem(t, found.get(t), sub, caller) for t in targets]
        return [p for p in problems if p is not None]

    def _replacement_problem(
        self, target: str, old: DocumentEntry | None, sub: Submission, caller: CallerIdentity
    ) -> XdsError | None:
        """ITI TF-3 4.2.2.2: the replaced entry exists, is Approved, of the same patient."""
        if old is None or old.status == xds.DELETED:
            return XdsError(ErrorCode.UNRESOLVED_REFERENCE, f"{target} is not registered")
        if old.patient_id != sub.submission_set.patient_id:
            return XdsError(ErrorCode.PATIENT_MISMATCH, f"{target} belongs to another patient")
        if old.status != xds.APPROVED:
            return XdsError(ErrorCode.REGISTRY, f"replaced document {target} is not Approved")
        decision = self.ctx.rules.can_update(caller, old)
        if not decision:
            return XdsError(ErrorCode.ACCESS_DENIED, f"{target}: {decision.reason}")
        return None

    def _log_failure(self, sub: Submission, caller: CallerIdentity, errors: list[XdsError]) -> None:
        try:
            patient = xds.normalize_patient_id(sub.submission_set.patient_id)
            xds.check_ins(patient)
        except XdsError:
            return  # nobody's record: nothing to log against
        detail = "; ".join(f"{e.code}: {e.context}" for e in errors)[:2000]
        self.ctx.log(patient, caller, ACTION, FAILED, [e.unique_id for e in sub.entries], detail)
