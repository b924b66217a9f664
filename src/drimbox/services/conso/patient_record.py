"""A patient's own imaging record, as their portal shows it: their exams as the national index
lists them for the patient (the documents they hid from professionals included, and said so),
with the manifests and reports read with the patient's own token; the patient's choices
(hiding an exam, opposition) and the index's log of who accessed the record.

Every call carries the patient's access token: the index decides with their identity and
logs it; nothing here trusts an INS that did not come from the patient's login.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from drimbox.domain.errors import DrimboxError
from drimbox.domain.identifiers import Ins
from drimbox.services.conso.history import (
    Exam,
    HistoryService,
    IndexedDocument,
    IndexReader,
    ManifestBook,
)
from drimbox.services.source.ports import ManifestCodec


class IndexRefused(DrimboxError):
    """The index refused the call (HTTP 400/401/403): bad request, token or right."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ListedDocuments:
    documents: list[IndexedDocument]
    hidden: frozenset[str]
    """uniqueIds of the documents the patient hid from professionals."""


@dataclass(frozen=True, slots=True)
class IndexAccess:
    """One line of the index's access log of the patient's record."""

    at: str
    """ISO 8601."""
    action: str
    outcome: str
    actor_kind: str
    actor_id: str
    actor_name: str
    profession: str = ""
    structure: str = ""
    emergency: bool = False
    reason: str = ""
    documents: tuple[str, ...] = ()


class PatientIndex(Protocol):
    """The index as the patient's portal uses it, always with the patient's own token."""

    def documents(self, token: str, patient: Ins) -> ListedDocuments: ...

    def access_log(self, token: str, patient: Ins) -> list[IndexAccess]: ...

    def opposition(self, token: str, patient: Ins) -> tuple[bool, bool]: ...

    def set_opposition(
        self, token: str, patient: Ins, opposed: bool, opposes_break_glass: bool
    ) -> None: ...

    def set_exam_hidden(
        self, token: str, patient: Ins, study_uid: str, hidden: bool
    ) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class PatientExam:
    exam: Exam
    hidden: bool
    """The patient hid (some of) its documents from professionals."""


class _Listed:
    """``IndexReader`` answering the search with a listing already made (the patient's, from
    the index API) and reading documents (ITI-43) with the patient's token."""

    def __init__(self, documents: list[IndexedDocument], reader: IndexReader) -> None:
        self.documents = documents
        self.reader = reader

    def on_behalf_of(
        self, access_token: str, emergency_reason: str = ""
    ) -> AbstractContextManager[None]:
        return self.reader.on_behalf_of(access_token, emergency_reason)

    def find(self, patient_id: str) -> list[IndexedDocument]:
        return self.documents

    def retrieve(self, repository: str, unique_ids: Sequence[str]) -> dict[str, bytes]:
        return self.reader.retrieve(repository, unique_ids)


def registry_id(patient: Ins) -> str:
    return f"{patient.value}^^^&{patient.oid}&ISO^NH"


class PatientRecord:
    def __init__(
        self, index: PatientIndex, reader: IndexReader, codec: ManifestCodec, book: ManifestBook
    ) -> None:
        self.index, self.reader, self.codec, self.book = index, reader, codec, book

    def exams(self, patient: Ins, token: str) -> list[PatientExam]:
        """The patient's exams, newest first; the manifests land in the book for the proxy."""
        listed = self.index.documents(token, patient)
        history = HistoryService(_Listed(listed.documents, self.reader), self.codec, self.book)
        exams = history.history(registry_id(patient), token)
        return [
            PatientExam(e, any(d.unique_id in listed.hidden for d in (e.kos, e.report) if d))
            for e in exams
        ]

    def document(self, token: str, repository: str, unique_id: str) -> bytes | None:
        """One document of the record (ITI-43), as the patient may read it."""
        with self.reader.on_behalf_of(token):
            return self.reader.retrieve(repository, [unique_id]).get(unique_id)

    def hide_exam(self, token: str, patient: Ins, study_uid: str, hidden: bool) -> list[str]:
        return self.index.set_exam_hidden(token, patient, study_uid, hidden)

    def opposition(self, token: str, patient: Ins) -> tuple[bool, bool]:
        return self.index.opposition(token, patient)

    def set_opposition(
        self, token: str, patient: Ins, opposed: bool, opposes_break_glass: bool
    ) -> None:
        self.index.set_opposition(token, patient, opposed, opposes_break_glass)

    def access_log(self, token: str, patient: Ins) -> list[IndexAccess]:
        return self.index.access_log(token, patient)
