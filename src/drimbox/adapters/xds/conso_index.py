"""``services.conso.history.IndexReader`` over the XDS client (ITI-18, ITI-43)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager

from drimbox.adapters.xds.client import DocumentSummary, XdsClient
from drimbox.domain import xds
from drimbox.services.conso.history import IndexedDocument

REPORT_TYPES = frozenset({"18748-4"})  # LOINC "Diagnostic imaging study" (CI-SIS CR-IMG)


def indexed(doc: DocumentSummary) -> IndexedDocument:
    fmt = doc.format_code.code if doc.format_code is not None else ""
    manifest = doc.mime_type == "application/dicom" or fmt == xds.KOS_SOP_CLASS
    report = not manifest and doc.type_code is not None and doc.type_code.code in REPORT_TYPES
    return IndexedDocument(
        unique_id=doc.unique_id, repository=doc.repository_unique_id, is_manifest=manifest,
        is_report=report, study_uid=doc.reference(xds.STUDY_UID_REF) or "",
        accession=doc.reference(xds.ACCESSION_REF) or "", creation_time=doc.creation_time,
        title=doc.title, event_codes=doc.event_codes,
    )  # fmt: skip


class XdsIndexReader:
    def __init__(self, client: XdsClient) -> None:
        self.client = client

    def on_behalf_of(
        self, access_token: str, emergency_reason: str = ""
    ) -> AbstractContextManager[None]:
        """The index calls of this thread run with the professional's own token (and, for a
        declared emergency, its reason)."""
        return self.client.on_behalf_of(access_token, emergency_reason)

    def find(self, patient_id: str) -> list[IndexedDocument]:
        return [indexed(d) for d in self.client.find_documents(patient_id, status=(xds.APPROVED,))]

    def retrieve(self, repository: str, unique_ids: Sequence[str]) -> dict[str, bytes]:
        return self.client.retrieve(repository, list(unique_ids))
