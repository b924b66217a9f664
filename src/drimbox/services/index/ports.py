"""Ports of the index services: the store (registry + repository + access log) and the
access rules. Adapters: ``adapters.storage.index_db.IndexDb`` (SQLAlchemy) and
``services.index.access.DmpAccessRules``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from drimbox.domain.access import AccessEvent, CallerIdentity, Decision, PatientPolicy
from drimbox.domain.xds import Association, Code, DocumentEntry, Submission, SubmissionSet


@dataclass(slots=True)
class FindDocumentsQuery:
    """ITI-18 FindDocuments / FindDocumentsByReferenceId. Lists are ORs; ``event_codes``
    and ``confidentiality_codes`` are ANDs of ORs (ITI TF-2a 3.18.4.1.2.3.5)."""

    patient_id: str
    statuses: list[str]
    class_codes: list[Code] = field(default_factory=list)
    type_codes: list[Code] = field(default_factory=list)
    practice_setting_codes: list[Code] = field(default_factory=list)
    hcft_codes: list[Code] = field(default_factory=list)
    format_codes: list[Code] = field(default_factory=list)
    event_codes: list[list[Code]] = field(default_factory=list)
    confidentiality_codes: list[list[Code]] = field(default_factory=list)
    creation_from: str = ""
    creation_to: str = ""
    service_start_from: str = ""
    service_start_to: str = ""
    service_stop_from: str = ""
    service_stop_to: str = ""
    reference_ids: list[str] = field(default_factory=list)
    limit: int = 1000


@dataclass(slots=True)
class FindSubmissionSetsQuery:
    patient_id: str
    statuses: list[str]
    source_ids: list[str] = field(default_factory=list)
    submission_from: str = ""
    submission_to: str = ""
    content_types: list[Code] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class StatusChange:
    entry_uuid: str
    patient_id: str
    original: str
    new: str


class IndexStore(Protocol):
    """Registry, repository and access log; every write is one durable transaction."""

    def register(
        self, submission: Submission, deprecate: Sequence[str], event: AccessEvent
    ) -> None: ...

    def update(
        self,
        submission: Submission,
        changes: Sequence[StatusChange],
        versions: Sequence[tuple[DocumentEntry, DocumentEntry]],
        event: AccessEvent,
    ) -> None: ...

    def find_documents(self, query: FindDocumentsQuery) -> list[DocumentEntry]: ...

    def find_submission_sets(self, query: FindSubmissionSetsQuery) -> list[SubmissionSet]: ...

    def entries(
        self, uuids: Sequence[str] = (), unique_ids: Sequence[str] = (), logical: bool = False
    ) -> list[DocumentEntry]: ...

    def submission_sets(self, uuids: Sequence[str]) -> list[SubmissionSet]: ...

    def associations(self, uuids: Sequence[str]) -> list[Association]: ...

    def existing_unique_ids(self, unique_ids: Sequence[str]) -> set[str]: ...

    def content(self, unique_id: str) -> bytes | None: ...

    def patient_policy(self, patient_id: str) -> PatientPolicy: ...

    def set_patient_policy(self, policy: PatientPolicy, event: AccessEvent) -> None: ...

    def set_hidden(self, entry_uuid: str, hidden: bool, event: AccessEvent) -> None: ...

    def append_access(self, event: AccessEvent) -> None: ...

    def access_log(self, patient_id: str, limit: int = 500) -> list[AccessEvent]: ...


class AccessRules(Protocol):
    """The access decisions; one implementation follows the DMP rules (``access.py``)."""

    def check_caller(self, caller: CallerIdentity) -> Decision: ...

    def can_read_record(self, caller: CallerIdentity, policy: PatientPolicy) -> Decision: ...

    def can_read(
        self, caller: CallerIdentity, policy: PatientPolicy, entry: DocumentEntry
    ) -> Decision: ...

    def can_submit(self, caller: CallerIdentity, patient_id: str) -> Decision: ...

    def can_update(self, caller: CallerIdentity, entry: DocumentEntry) -> Decision: ...


class Clock(Protocol):
    def __call__(self) -> datetime: ...
