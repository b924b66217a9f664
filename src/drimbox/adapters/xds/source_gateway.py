"""The Source's view of the index (``services.source.ports.IndexGateway``) over the XDS client.

Idempotence is built from the index's own answers: before a submission, one ITI-18
GetDocuments on every uniqueId involved tells what the index already holds, so a retry after a
lost answer sends nothing twice, a report the RIS (or an earlier attempt) already published is
left out, and the RPLC association targets the entryUUID the registry holds now.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

from lxml import etree

from drimbox.adapters.documents.kos import parse_kos
from drimbox.adapters.xds import submission_builder as sb
from drimbox.adapters.xds.client import DocumentSummary, RegistryRejected, XdsClient
from drimbox.domain import xds
from drimbox.domain.errors import Conflict
from drimbox.domain.report import ReportMessage
from drimbox.services.source.ports import Registered, Submission

Assertions = Callable[[str, ReportMessage | None], etree._Element]
"""(patient id, report) -> ``wsse:Security`` header with the VIHF assertion."""

log = logging.getLogger(__name__)

_DUPLICATE = "XDSDuplicateUniqueIdInRegistry"
_LIVE = (xds.APPROVED, xds.DEPRECATED)


class IndexRefused(Conflict):
    """The index refused the submission (its RegistryErrors in the message)."""

    def __init__(self, rejected: RegistryRejected) -> None:
        super().__init__(str(rejected))
        self.codes = rejected.codes


class XdsSourceGateway:
    def __init__(
        self,
        client: XdsClient,
        source: sb.SubmissionSource,
        signer: sb.SubmissionSigner | None = None,
        assertions: Assertions | None = None,
    ) -> None:
        self.client, self.source, self.signer = client, source, signer
        self.assertions = assertions

    def _acting_for(
        self, patient_id: str, report: ReportMessage | None
    ) -> AbstractContextManager[None]:
        if self.assertions is None:
            return nullcontext()
        make = self.assertions
        return self.client.acting_as(lambda: make(patient_id, report))

    def _held(self, unique_ids: Sequence[str]) -> dict[str, DocumentSummary]:
        wanted = [u for u in dict.fromkeys(unique_ids) if u]
        if not wanted:
            return {}
        found = self.client.get_documents(wanted, object_ref=False)
        return {d.unique_id: d for d in found if d.status in _LIVE}

    def publish(self, submission: Submission) -> Registered:
        with self._acting_for(submission.patient_id, submission.report):
            return self._publish(submission)

    def _publish(self, submission: Submission) -> Registered:
        report_uid = submission.report.document.document_id if submission.report else ""
        held = self._held(
            [submission.kos_uid, report_uid, *submission.replaces_kos_uids,
             *submission.replaces_report_uids]
        )  # fmt: skip
        if submission.kos_uid in held:
            log.info("KOS %s already in the index (an earlier attempt went through)",
                     submission.kos_uid)  # fmt: skip
            return Registered(kos=True, report=bool(report_uid) and report_uid in held)
        with_report = submission.publish_report and bool(report_uid) and report_uid not in held
        request = sb.build_provide_and_register(
            sb.ExamSubmission(
                manifest=parse_kos(submission.kos),
                kos=submission.kos,
                report=submission.report,
                replaces=_approved(held, submission.replaces_kos_uids),
                report_replaces=_approved(held, submission.replaces_report_uids)
                if with_report
                else "",
                publish_report=with_report,
            ),
            self.source,
            self.signer,
        )
        try:
            self.client.provide_and_register(request)
        except RegistryRejected as exc:
            # the answer to an earlier attempt may have been lost after the index committed
            if _DUPLICATE in exc.codes and submission.kos_uid in self._held([submission.kos_uid]):
                return Registered(kos=True, report=with_report)
            raise IndexRefused(exc) from None
        return Registered(kos=True, report=with_report or report_uid in held)

    def depublish(
        self, patient_id: str, unique_ids: Sequence[str], report: ReportMessage | None = None
    ) -> None:
        with self._acting_for(patient_id, report):
            for entry in self._held(unique_ids).values():
                self.client.delete(patient_id, entry.entry_uuid, original_status=entry.status)


def _approved(held: dict[str, DocumentSummary], candidates: Sequence[str]) -> str:
    for uid in candidates:
        entry = held.get(uid)
        if entry is not None and entry.status == xds.APPROVED:
            return entry.entry_uuid
    return ""
