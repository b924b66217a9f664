"""ITI-18 stored queries and ITI-43 retrieval, through the access rules.

Deleted entries (DMP depublication) are invisible to every query and retrieval. Each call
writes one access-log line per patient whose record it read.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from drimbox.domain import xds
from drimbox.domain.access import AccessEvent, CallerIdentity
from drimbox.domain.xds import Association, DocumentEntry, ErrorCode, SubmissionSet, XdsError
from drimbox.services.index.journal import GRANTED, IndexContext
from drimbox.services.index.ports import FindDocumentsQuery, FindSubmissionSetsQuery


@dataclass
class QueryResult:
    entries: list[DocumentEntry] = field(default_factory=list)
    submission_sets: list[SubmissionSet] = field(default_factory=list)
    associations: list[Association] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Retrieved:
    entry: DocumentEntry
    content: bytes


class QueryService:
    def __init__(self, ctx: IndexContext) -> None:
        self.ctx = ctx

    def find_documents(
        self, query: FindDocumentsQuery, caller: CallerIdentity, action: str = "ITI-18"
    ) -> list[DocumentEntry]:
        policy = self.ctx.require_record(caller, query.patient_id, action)
        entries = self.ctx.store.find_documents(query)
        if len(entries) > query.limit:
            raise XdsError(ErrorCode.TOO_MANY_RESULTS, f"more than {query.limit} entries match")
        visible = [e for e in entries if self.ctx.rules.can_read(caller, policy, e)]
        self.ctx.log(query.patient_id, caller, action, GRANTED, [e.unique_id for e in visible])
        return visible

    def find_submission_sets(
        self, query: FindSubmissionSetsQuery, caller: CallerIdentity
    ) -> list[SubmissionSet]:
        action = "ITI-18 FindSubmissionSets"
        self.ctx.require_record(caller, query.patient_id, action)
        sets = self.ctx.store.find_submission_sets(query)
        self.ctx.log(query.patient_id, caller, action, GRANTED, [s.unique_id for s in sets])
        return sets

    def _visible(
        self, entries: Sequence[DocumentEntry], caller: CallerIdentity, action: str
    ) -> list[DocumentEntry]:
        """Entries the caller may see, patient by patient; one log line per patient."""
        by_patient: dict[str, list[DocumentEntry]] = defaultdict(list)
        for entry in entries:
            if entry.status != xds.DELETED:
                by_patient[entry.patient_id].append(entry)
        out: list[DocumentEntry] = []
        for patient_id, group in by_patient.items():
            policy = self.ctx.require_record(caller, patient_id, action)
            shown = [e for e in group if self.ctx.rules.can_read(caller, policy, e)]
            self.ctx.log(patient_id, caller, action, GRANTED, [e.unique_id for e in shown])
            out += shown
        return out

    def get_documents(
        self, uuids: Sequence[str], unique_ids: Sequence[str], caller: CallerIdentity
    ) -> list[DocumentEntry]:
        found = self.ctx.store.entries(uuids=uuids, unique_ids=unique_ids)
        return self._visible(found, caller, "ITI-18 GetDocuments")

    def get_associations(self, uuids: Sequence[str], caller: CallerIdentity) -> list[Association]:
        entries = self._visible(
            self.ctx.store.entries(uuids=uuids), caller, "ITI-18 GetAssociations"
        )
        sets = self.ctx.store.submission_sets(uuids)
        for ss in sets:
            self.ctx.require_record(caller, ss.patient_id, "ITI-18 GetAssociations")
        allowed = {e.entry_uuid for e in entries} | {s.entry_uuid for s in sets}
        assocs = self.ctx.store.associations(list(allowed))
        # a submission set's HasMember must not reveal a depublished document
        ends = list({a.source for a in assocs} | {a.target for a in assocs})
        gone = {e.entry_uuid for e in self.ctx.store.entries(ends) if e.status == xds.DELETED}
        return [a for a in assocs if a.source not in gone and a.target not in gone]

    def get_related_documents(
        self,
        uuids: Sequence[str],
        unique_ids: Sequence[str],
        types: Sequence[str],
        caller: CallerIdentity,
    ) -> QueryResult:
        action = "ITI-18 GetRelatedDocuments"
        origin = self._visible(self.ctx.store.entries(uuids, unique_ids), caller, action)
        if not origin:
            return QueryResult()
        ids = [e.entry_uuid for e in origin]
        assocs = [a for a in self.ctx.store.associations(ids) if a.association_type in types]
        others = {a.target if a.source in ids else a.source for a in assocs} - set(ids)
        related = self._visible(self.ctx.store.entries(uuids=list(others)), caller, action)
        if not related:
            return QueryResult()
        keep = set(ids) | {e.entry_uuid for e in related}
        assocs = [a for a in assocs if a.source in keep and a.target in keep]
        return QueryResult(entries=origin + related, associations=assocs)

    def retrieve(self, repository_id: str, unique_id: str, caller: CallerIdentity) -> Retrieved:
        """ITI-43 for one document; errors are per document (PartialSuccess upstream)."""
        if repository_id != self.ctx.repository_unique_id:
            raise XdsError(ErrorCode.UNKNOWN_REPOSITORY, f"repository {repository_id} unknown")
        entries = self.ctx.store.entries(unique_ids=[unique_id])
        visible = self._visible(entries, caller, "ITI-43 Retrieve")
        content = self.ctx.store.content(unique_id) if visible else None
        if not visible or content is None:
            raise XdsError(ErrorCode.DOCUMENT_UNIQUE_ID, f"document {unique_id} not available")
        return Retrieved(visible[0], content)

    def access_log(
        self, patient_id: str, caller: CallerIdentity, limit: int = 500
    ) -> list[AccessEvent]:
        """The patient's access log: for the patient, or a professional who may open the record."""
        action = "API access log"
        self.ctx.require_record(caller, patient_id, action)
        events = self.ctx.store.access_log(patient_id, limit)
        self.ctx.log(patient_id, caller, action, GRANTED)
        return events
