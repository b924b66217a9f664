"""Publication of validated exams: inbox message -> PACS lookup -> KOS -> outbox -> index.

Two stages, each a per-patient FIFO, each restartable at any point:

* :class:`Preparer` takes the next report message (or IOCM note) of each patient, asks the
  PACS what the exam holds, checks it against the report, builds the new manifest and, in one
  transaction, queues the index operation, records the manifest in the archive and closes the
  message. Images not there yet -> the message waits and is retried; the PACS contradicting the
  report -> the message is held for a human, never published.
* :class:`Sender` sends each patient's next operation to the index. Index down or slow ->
  exponential backoff; permanent refusal -> parked with the registry's error.

Life cycle (DRIM-M, digest A.3.6): a corrected report replaces the manifest (RPLC, new KOS
UID) and the report; a cancellation depublishes both (ITI-57 Deleted); an IOCM rejection note
replaces the manifest without the rejected instances, or depublishes it when none remain.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from drimbox.domain.errors import DrimboxError, NotFound, PeerUnavailable
from drimbox.domain.manifest import (
    ExamInventory,
    ImagingManifest,
    ManifestPatient,
    RequestedProcedure,
    inventory_mismatches,
    manifest_from_inventory,
    new_uid,
    without_instances,
)
from drimbox.domain.report import ReportEvent, ReportMessage
from drimbox.services.source.inbox import IOCM_EVENT, Inbox, InboxEntry
from drimbox.services.source.outbox import (
    Action,
    Operation,
    Outbox,
    Publication,
    PublicationState,
)
from drimbox.services.source.ports import ExamFinder, IndexGateway, ManifestCodec, Submission

log = logging.getLogger(__name__)

_LIVE = (PublicationState.QUEUED, PublicationState.PUBLISHED, PublicationState.FAILED)


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    wado_base: str
    """This box's WADO-RS root as other boxes reach it: the KOS Retrieve URLs start with it."""
    retrieve_location_uid: str
    """OID of this box (Retrieve Location UID of every series)."""
    publish_reports: bool = True
    """Publish the CDA report with the KOS (off when the site's RIS publishes it itself)."""
    images_retry: float = 5.0
    """Seconds between two PACS lookups while the exam's images have not arrived."""
    images_deadline: float = 3600.0
    """After this many seconds without images, the message is held: the images never came."""
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    institution_name: str = ""
    """The site's name, put in every KOS: the other sites' histories show where an exam was done."""
    concurrency: int = 4
    """Patients handled at once per stage (each patient's messages stay in order): the work
    is mostly waiting for the PACS and the index."""


def backoff(policy: SourcePolicy, attempts: int) -> float:
    return float(min(policy.backoff_max, policy.backoff_initial * 2 ** min(attempts, 30)))


def patient_xds_id(ins: str, oid: str) -> str:
    return f"{ins}^^^&{oid}&ISO^NH"


def _manifest_patient(report: ReportMessage) -> ManifestPatient:
    p = report.patient
    sex = p.sex if p.sex in ("M", "F", "O") else ""
    return ManifestPatient(p.ins.value, p.ins.oid, p.birth_family, p.first_given,
                           p.birth_date, sex)  # fmt: skip


def _request(report: ReportMessage) -> RequestedProcedure:
    placer, filler = report.placer_order, report.filler_order
    return RequestedProcedure(
        placer_order_number=placer.value if placer else "",
        placer_order_oid=placer.issuer_oid if placer else "",
        filler_order_number=filler.value if filler else "",
        filler_order_oid=filler.issuer_oid if filler else "",
    )


class _Hold(Exception):
    """The message needs a human: never published as is."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Later(Exception):
    """The message cannot be handled yet: retry after ``delay`` seconds."""

    def __init__(self, reason: str, delay: float) -> None:
        super().__init__(reason)
        self.reason, self.delay = reason, delay


_T = TypeVar("_T")


def _run_all(work: Callable[[_T], bool], items: list[_T], concurrency: int) -> int:
    """Run ``work`` on items of different patients, a few at once; count the successes."""
    if concurrency <= 1 or len(items) <= 1:
        return sum(map(work, items))
    with ThreadPoolExecutor(min(concurrency, len(items)), thread_name_prefix="source") as pool:
        return sum(pool.map(work, items))


class Preparer:
    """Stage 1: messages to queued index operations."""

    def __init__(
        self,
        inbox: Inbox,
        outbox: Outbox,
        find_exam: ExamFinder,
        codec: ManifestCodec,
        policy: SourcePolicy,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.inbox, self.outbox, self.find_exam = inbox, outbox, find_exam
        self.codec, self.policy, self.clock = codec, policy, clock

    def run_once(self) -> int:
        """Handle every patient's next due message; returns how many were closed."""
        return _run_all(self._one, self.inbox.pending(), self.policy.concurrency)

    def _one(self, entry: InboxEntry) -> bool:
        try:
            self.handle(entry)
            return True
        except _Later as later:
            log.info("message %s (%s) postponed %.0fs: %s", entry.id, entry.control_id,
                     later.delay, later.reason)  # fmt: skip
            self.inbox.retry_later(entry.id, later.reason, later.delay)
        except _Hold as hold:
            log.error("message %s (%s) held for a human: %s", entry.id, entry.control_id,
                      hold.reason)  # fmt: skip
            self.inbox.hold(entry.id, hold.reason)
        except Exception as exc:  # a bug or an unreadable stored object: a human looks
            log.exception("message %s (%s) failed", entry.id, entry.control_id)
            self.inbox.hold(entry.id, f"{type(exc).__name__}: {exc}")
        return False

    def handle(self, entry: InboxEntry) -> None:
        if entry.event == IOCM_EVENT:
            self._iocm(entry)
            return
        report = entry.report
        if report.event is ReportEvent.CANCELLATION:
            self._cancel(entry, report)
        else:
            self._publish(entry, report)

    # -- new report or correction

    def _inventory(self, entry: InboxEntry, report: ReportMessage) -> ExamInventory:
        try:
            return self.find_exam(report.study_uid, report.accession.value)
        except NotFound as exc:
            received = datetime.fromisoformat(entry.received_at)
            waited = (self.clock() - received).total_seconds()
            if waited >= self.policy.images_deadline:
                raise _Hold(f"the images never arrived in the PACS ({exc}; waited "
                            f"{timedelta(seconds=int(waited))})") from None  # fmt: skip
            raise _Later(f"images not in the PACS yet: {exc}", self.policy.images_retry) from None
        except PeerUnavailable as exc:
            raise _Later(f"PACS unavailable: {exc}", backoff(self.policy, entry.attempts)) from None
        except DrimboxError as exc:
            raise _Hold(f"PACS lookup failed: {exc}") from None

    def _publish(self, entry: InboxEntry, report: ReportMessage) -> None:
        inventory = self._inventory(entry, report)
        if report.patient.ipp is None:
            raise _Hold("the message has no local patient id (IPP) to check the PACS against")
        mismatches = inventory_mismatches(
            inventory, patient_id=report.patient.ipp.value, accession=report.accession.value,
            study_uid=report.study_uid,
        )  # fmt: skip
        if mismatches:
            raise _Hold("the PACS contradicts the report: " + "; ".join(map(str, mismatches)))
        manifest = manifest_from_inventory(
            inventory, _manifest_patient(report), wado_base=self.policy.wado_base,
            description="", retrieve_location_uid=self.policy.retrieve_location_uid,
            request=_request(report), accession_oid=report.accession.issuer_oid,
            created=self.clock(),
        )  # fmt: skip
        manifest = replace(manifest, institution_name=self.policy.institution_name)
        manifest = replace(manifest, description=self.codec.describe(manifest))
        prev = self.outbox.publication(report.study_uid)
        self._queue_publication(entry, report, manifest, prev, entry.raw)

    def _queue_publication(
        self,
        entry: InboxEntry,
        report: ReportMessage,
        manifest: ImagingManifest,
        prev: Publication | None,
        report_raw: bytes,
        *,
        new_report: bool = True,
    ) -> None:
        kos = self.codec.encode(manifest)
        replaces: list[str] = []
        report_replaces: list[str] = []
        if prev is not None:
            if prev.state in (PublicationState.QUEUED, PublicationState.PUBLISHED):
                replaces.append(prev.kos_uid)
            replaces.append(prev.indexed_kos_uid)
            report_replaces.append(prev.indexed_report_uid)
        publish_report = self.policy.publish_reports and new_report
        patient_id = patient_xds_id(manifest.patient.ins, manifest.patient.ins_oid)
        op = Operation(
            id=0, patient=entry.patient, patient_id=patient_id, study_uid=report.study_uid,
            action=Action.PUBLISH, kos_uid=manifest.sop_instance_uid, kos=kos,
            report_raw=report_raw, report_uid=report.document.document_id,
            publish_report=publish_report,
            replaces_kos_uid=",".join(u for u in dict.fromkeys(replaces) if u),
            replaces_report_uid=",".join(
                u for u in dict.fromkeys(report_replaces)
                if u and u != report.document.document_id
            ),
            message_id=entry.id,
        )  # fmt: skip
        pub = Publication(
            study_uid=report.study_uid, patient=entry.patient, patient_id=patient_id,
            kos_uid=manifest.sop_instance_uid, kos=kos, report_uid=report.document.document_id,
            report_raw=report_raw, indexed_kos_uid=prev.indexed_kos_uid if prev else "",
            indexed_report_uid=prev.indexed_report_uid if prev else "",
            state=PublicationState.QUEUED,
        )  # fmt: skip
        with self.inbox.transaction() as db:
            self.outbox.enqueue(db, op)
            self.outbox.record(db, pub)
            self.inbox.done(entry.id, db)
        log.info("queued %s of study %s: KOS %s, %d instances%s", "replacement" if replaces
                 else "publication", report.study_uid, manifest.sop_instance_uid,
                 manifest.instance_count, " + report" if publish_report else "")  # fmt: skip

    # -- cancellation and IOCM

    def _depublish(
        self, entry: InboxEntry, prev: Publication, *, with_report: bool, why: str
    ) -> None:
        op = Operation(
            id=0, patient=entry.patient, patient_id=prev.patient_id, study_uid=prev.study_uid,
            action=Action.DEPUBLISH, kos_uid=prev.kos_uid, report_raw=prev.report_raw,
            report_uid=prev.indexed_report_uid if with_report else "", message_id=entry.id,
        )  # fmt: skip
        with self.inbox.transaction() as db:
            self.outbox.enqueue(db, op)
            self.outbox.record(db, replace(prev, state=PublicationState.DEPUBLISHING))
            self.inbox.done(entry.id, db)
        log.info("queued depublication of study %s (%s)", prev.study_uid, why)

    def _cancel(self, entry: InboxEntry, report: ReportMessage) -> None:
        prev = self.outbox.publication(report.study_uid)
        if prev is None or prev.state not in _LIVE:
            log.warning("cancellation of study %s: nothing published, nothing to do",
                        report.study_uid)  # fmt: skip
            self.inbox.done(entry.id)
            return
        self._depublish(entry, prev, with_report=True, why="report cancelled")

    def _iocm(self, entry: InboxEntry) -> None:
        prev = self.outbox.publication(entry.study_uid)
        if prev is None or prev.state not in _LIVE:
            self.inbox.done(entry.id)
            return
        try:
            rejected = self.codec.rejected(entry.raw)
        except DrimboxError as exc:
            raise _Hold(f"unreadable IOCM note: {exc}") from None
        current = self.codec.decode(prev.kos)
        if not rejected & current.sop_instance_uids:
            log.info("IOCM note %s rejects nothing of study %s", entry.control_id,
                     entry.study_uid)  # fmt: skip
            self.inbox.done(entry.id)
            return
        remaining = without_instances(current, rejected, new_sop_uid=new_uid())
        if remaining.is_empty:
            self._depublish(entry, prev, with_report=False, why="every instance rejected")
            return
        remaining = replace(remaining, description=self.codec.describe(remaining),
                            created=self.clock())  # fmt: skip
        report = entry.decode(prev.report_raw)
        self._queue_publication(entry, report, remaining, prev, prev.report_raw,
                                new_report=False)  # fmt: skip


class Sender:
    """Stage 2: queued operations to the index."""

    def __init__(
        self,
        outbox: Outbox,
        index: IndexGateway,
        decode_report: Callable[[bytes], ReportMessage],
        policy: SourcePolicy,
        on_published: Callable[[Operation], None] | None = None,
    ) -> None:
        self.outbox, self.index, self.decode_report = outbox, index, decode_report
        self.policy, self.on_published = policy, on_published

    def run_once(self) -> int:
        return _run_all(self._one, self.outbox.pending(), self.policy.concurrency)

    def _one(self, op: Operation) -> bool:
        try:
            self.handle(op)
            return True
        except PeerUnavailable as exc:
            delay = backoff(self.policy, op.attempts)
            log.warning("index unavailable for operation %s (%s of study %s), retry in "
                        "%.0fs: %s", op.id, op.action, op.study_uid, delay, exc)  # fmt: skip
            self.outbox.retry_later(op, str(exc), delay)
        except Exception as exc:
            log.error("index refused operation %s (%s of study %s): %s", op.id, op.action,
                      op.study_uid, exc)  # fmt: skip
            self.outbox.failed(op, f"{type(exc).__name__}: {exc}")
        return False

    def handle(self, op: Operation) -> None:
        report = self.decode_report(op.report_raw) if op.report_raw else None
        if op.action is Action.DEPUBLISH:
            uids = [u for u in (op.kos_uid, op.report_uid) if u]
            self.index.depublish(op.patient_id, uids, report)
            self.outbox.depublished(op)
            log.info("depublished study %s (KOS %s)", op.study_uid, op.kos_uid)
            return
        submission = Submission(
            patient_id=op.patient_id, kos_uid=op.kos_uid, kos=op.kos, report=report,
            publish_report=op.publish_report,
            replaces_kos_uids=tuple(u for u in op.replaces_kos_uid.split(",") if u),
            replaces_report_uids=tuple(u for u in op.replaces_report_uid.split(",") if u),
        )  # fmt: skip
        registered = self.index.publish(submission)
        self.outbox.published(op, report_indexed=op.publish_report and registered.report)
        log.info("published study %s: KOS %s", op.study_uid, op.kos_uid)
        if self.on_published is not None:
            self.on_published(op)


class SourcePipeline:
    """Runs both stages in background threads; :meth:`wake` after a message is accepted."""

    def __init__(self, preparer: Preparer, sender: Sender, idle: float = 1.0) -> None:
        self.preparer, self.sender, self.idle = preparer, sender, idle
        self._prepare_event = threading.Event()
        self._send_event = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> SourcePipeline:
        for name, step, event, due in (
            ("prepare", self._prepare, self._prepare_event, self.preparer.inbox.next_due),
            ("send", self.sender.run_once, self._send_event, self.sender.outbox.next_due),
        ):
            thread = threading.Thread(target=self._loop, args=(step, event, due),
                                      name=f"source-{name}", daemon=True)  # fmt: skip
            thread.start()
            self._threads.append(thread)
        return self

    def wake(self) -> None:
        self._prepare_event.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._prepare_event.set()
        self._send_event.set()
        for thread in self._threads:
            thread.join(timeout)

    def _prepare(self) -> int:
        closed = self.preparer.run_once()
        if closed:
            self._send_event.set()
        return closed

    def _loop(
        self, step: Callable[[], int], event: threading.Event, due: Callable[[], float | None]
    ) -> None:
        while not self._stop.is_set():
            event.clear()
            try:
                busy = step()
            except Exception:  # the database is gone or a bug: keep the thread, log it
                log.exception("source pipeline step failed")
                busy = 0
            if busy:
                continue
            next_due = due()
            wait = (
                self.idle if next_due is None else max(0.0, min(self.idle, next_due - time.time()))
            )
            event.wait(wait if wait > 0 else 0.05)
