"""The Source end to end: synthetic exams in a real PACS, their ORU/MDM sent over MLLP by an
independent client (the ``hl7`` package), report + KOS found in a real index with ITI-18.

Peers: our embedded PACS (and Orthanc), ``drimbox index`` (SQLite), dcmtk ``storescu`` for
the images and the IOCM note. The box runs in-process so that a test can stop it and start
another one on the same data folder (a restart mid-queue). The box publishes with its signed
VIHF assertions, which the index verifies; the tests read the index as a professional, with
their token.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hl7.client import MLLPClient
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from drimbox.adapters.documents.iocm import REJECTED_FOR_QUALITY
from drimbox.adapters.documents.kos import parse_kos
from drimbox.adapters.trust import dsg
from drimbox.adapters.xds.client import DocumentSummary, XdsClient
from drimbox.domain import xds
from drimbox.entrypoints.box import SourceBox, start_source
from drimbox.services.source.outbox import PublicationState
from drimbox.settings import BoxSettings
from tests.dicom_factory import part10
from tests.index_fixtures import IndexServer, database_url, running_index, vihf_roots
from tests.peers import Pacs, free_port, run_dcmtk, running_orthanc, running_pacs
from tests.source_exams import Exam
from tests.unit.test_kos_iocm import rejection_note

ALL = (xds.APPROVED, xds.DEPRECATED)
SIGNATURE_CLASS = "urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1"


def store(files: list[Path], port: int, aet: str) -> None:
    run_dcmtk("storescu", "-aet", "RIS", "-aec", aet, "127.0.0.1", str(port),
              *map(str, files))  # fmt: skip


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, exams: list[Exam]) -> Iterator[Pacs]:
    with running_pacs(tmp_path_factory.mktemp("pacs") / "store") as p:
        # all but the last exam: that one arrives after its report (see the late-images test)
        store([f for e in exams[:-1] for f in e.files()], p.port, p.aet)
        yield p


def box_settings(folder: Path, pacs_aet: str, pacs_port: int, index_url: str,
                 signer: tuple[Path, Path], **extra: Any) -> BoxSettings:  # fmt: skip
    return BoxSettings.model_validate({
        "data_dir": folder, "http_port": 0, "public_url": "https://box-a.example:8443",
        "mllp_port": 0, "dicom_port": free_port(), "index_url": index_url,
        "pacs": {"aet": pacs_aet, "host": "127.0.0.1", "port": pacs_port, "timeout": 10},
        "images_retry": 0.3, "backoff_initial": 0.2, "backoff_max": 1.0,
        "signing_key": signer[0], "signing_chain": signer[1], **extra,
    })  # fmt: skip


@contextlib.contextmanager
def running_box(settings: BoxSettings) -> Iterator[SourceBox]:
    box = start_source(settings)
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(scope="module")
def box(
    tmp_path_factory: pytest.TempPathFactory, pacs: Pacs, index: IndexServer,
    signer_files: tuple[Path, Path],
) -> Iterator[SourceBox]:  # fmt: skip
    folder = tmp_path_factory.mktemp("box")
    with running_box(box_settings(folder, pacs.aet, pacs.port, index.url, signer_files)) as b:
        yield b


@pytest.fixture(scope="module")
def xds_client(index: IndexServer) -> Iterator[XdsClient]:
    with XdsClient(index.url, timeout=30) as c, c.on_behalf_of(index.token):
        yield c


@contextlib.contextmanager
def index_for(
    folder: Path, signer: tuple[Path, Path], port: int | None = None
) -> Iterator[tuple[IndexServer, XdsClient]]:
    """A fresh index trusting the box's VIHF, and a professional's client of it."""
    anchors = vihf_roots(signer[1], folder / "vihf-roots.pem")
    with database_url("sqlite", folder) as url, \
            running_index(url, port=port, vihf_trust_anchors=anchors) as index, \
            XdsClient(index.url) as client, client.on_behalf_of(index.token):  # fmt: skip
        yield index, client


def send(port: int, raw: bytes) -> tuple[str, str]:
    """(MSA-1 code, MSA-2 control id) of the ACK to one message sent by the ``hl7`` package's client."""
    with MLLPClient("127.0.0.1", port) as client:
        reply = client.send_message(raw)
    text = reply.decode() if isinstance(reply, bytes) else str(reply)
    msa = next(s for s in text.replace("\n", "\r").split("\r") if s.startswith("MSA"))
    fields = msa.split("|")
    return fields[1], fields[2] if len(fields) > 2 else ""


def wait_for(
    check: Callable[[], Any], timeout: float = 30.0, what: str = "",
    box: SourceBox | None = None,
) -> Any:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            state = ""
            if box is not None:  # what the box was doing: the reason is in there
                state = (f": held {[(e.control_id, e.last_error) for e in box.inbox.held()]}, "
                         f"waiting {[(e.control_id, e.last_error) for e in box.inbox.pending(now=time.time() + 1e6)]}, "
                         f"operations {[(o.action, o.last_error) for o in box.outbox.operations('pending') + box.outbox.operations('failed')]}")  # fmt: skip
            raise AssertionError(f"timed out waiting for {what or check}{state}")
        time.sleep(0.1)


def study_documents(
    client: XdsClient, exam: Exam, status: tuple[str, ...] = (xds.APPROVED,)
) -> list[DocumentSummary]:
    return [d for d in client.find_documents(exam.patient_id, status=status)
            if d.reference(xds.STUDY_UID_REF) == exam.study_uid]  # fmt: skip


def kos_of(docs: list[DocumentSummary]) -> list[DocumentSummary]:
    return [d for d in docs if d.class_code is not None and d.class_code.code == "31"]


def reports_of(docs: list[DocumentSummary]) -> list[DocumentSummary]:
    return [d for d in docs if d.type_code is not None and d.type_code.code == "18748-4"]


def published(client: XdsClient, exam: Exam) -> tuple[DocumentSummary, DocumentSummary] | None:
    docs = study_documents(client, exam)
    kos, reports = kos_of(docs), reports_of(docs)
    if len(kos) == 1 and len(reports) == 1:
        return kos[0], reports[0]
    return None


def retrieve(client: XdsClient, index: IndexServer, unique_id: str) -> bytes:
    return client.retrieve(index.repository, [unique_id])[unique_id]


# --- the nominal path --------------------------------------------------------------------------


def test_oru_and_mdm_publish_report_and_kos_pointing_at_the_box(
    box: SourceBox, exams: list[Exam], xds_client: XdsClient, index: IndexServer
) -> None:
    # patient by patient: ORU for the first, MDM for the others (both flavours of B.1)
    patients = sorted({e.record["patient_ins"] for e in exams[:-1]})
    nominal = [e for e in exams[:-1] if len(e.record["reports"]) == 1][:4]
    for exam in nominal:
        kind = "ORU" if exam.record["patient_ins"] == patients[0] else "MDM"
        assert send(box.mllp.port, exam.message(kind)) == (
            "AA",
            exam.message(kind).split(b"|")[9].decode(),
        )
    for exam in nominal:
        kos_entry, report_entry = wait_for(
            lambda e=exam: published(xds_client, e), what="publication"
        )
        kos = parse_kos(retrieve(xds_client, index, kos_entry.unique_id))
        assert kos.sop_instance_uids == exam.sops  # exactly what the PACS holds
        assert kos.patient.ins == exam.record["patient_ins"]
        assert kos.study.accession == exam.record["accession"]
        assert kos.study.accession_oid == exam.record["accession_oid"]
        for series in kos.series:
            assert series.retrieve_url == (
                f"https://box-a.example:8443/dicomweb/studies/{exam.study_uid}"
                f"/series/{series.series_uid}"
            )
            assert series.retrieve_location_uid == box.settings.site.source_id
        assert report_entry.reference(xds.ACCESSION_REF) == exam.record["accession"]
        pub = box.outbox.publication(exam.study_uid)
        assert pub is not None and pub.state is PublicationState.PUBLISHED
        assert pub.indexed_kos_uid == kos_entry.unique_id
    # prefetch: every published instance lands in the box's image cache, values unchanged (the
    # PACS may send it in another uncompressed transfer syntax than it was stored in)
    for exam in nominal:
        for series in exam.record["series"]:
            wait_for(lambda e=exam, s=series: not box.cache.missing(
                e.study_uid, s["series_uid"], s["sop_instance_uids"]), what="prefetch")  # fmt: skip
            for sop, name in zip(series["sop_instance_uids"], series["files"], strict=True):
                cached = box.cache.path(exam.study_uid, series["series_uid"], sop)
                assert cached is not None
                got, sent = dcmread(cached), dcmread(exam.folder / name)
                assert [(e.tag, e.value) for e in got] == [(e.tag, e.value) for e in sent]


def test_submission_set_is_signed_over_its_documents(
    box: SourceBox, exams: list[Exam], xds_client: XdsClient, index: IndexServer
) -> None:
    exam = next(e for e in exams[:-1] if len(e.record["reports"]) == 1)
    assert send(box.mllp.port, exam.message("ORU"))[0] == "AA"  # a resend is stored once
    kos_entry, report_entry = wait_for(lambda: published(xds_client, exam), what="publication")

    def signatures() -> list[DocumentSummary]:
        return [d for d in xds_client.find_documents(exam.patient_id)
                if d.class_code is not None and d.class_code.code == SIGNATURE_CLASS]  # fmt: skip

    # signatures are MASQUE_PS: only their author, the report's radiologist, sees them
    assert signatures() == []
    verified = []
    with xds_client.on_behalf_of(index.issue("8" + exam.record["radiologist_rpps"])):
        for sig in signatures():
            data = retrieve(xds_client, index, sig.unique_id)
            result = dsg.verify_submission_signature(data)
            if kos_entry.unique_id in result.document_unique_ids:
                documents = {u: retrieve(xds_client, index, u)
                             for u in result.document_unique_ids}  # fmt: skip
                verified.append(dsg.verify_submission_signature(data, documents))
    assert len(verified) == 1
    assert set(verified[0].document_unique_ids) == {kos_entry.unique_id, report_entry.unique_id}
    assert "CABINET DRIMBOX" in verified[0].signer.subject.rfc4514_string()


def test_corrected_report_replaces_report_and_kos(
    box: SourceBox, exams: list[Exam], xds_client: XdsClient
) -> None:
    exam = next(e for e in exams[:-1] if len(e.record["reports"]) == 2)
    assert send(box.mllp.port, exam.message("ORU"))[0] == "AA"
    first_kos, first_report = wait_for(lambda: published(xds_client, exam), what="first version")
    assert send(box.mllp.port, exam.message("ORU", "correction"))[0] == "AA"

    def replaced() -> Any:
        now = published(xds_client, exam)
        return now if now and now[0].unique_id != first_kos.unique_id else None

    _, report = wait_for(replaced, what="replacement")
    assert report.unique_id == exam.record["reports"][1]["document_id"]
    everything = study_documents(xds_client, exam, ALL)
    by_uid = {d.unique_id: d.status for d in everything}
    assert by_uid[first_kos.unique_id] == xds.DEPRECATED
    assert by_uid[first_report.unique_id] == xds.DEPRECATED
    assert len(kos_of(everything)) == 2 and len(reports_of(everything)) == 2


def cancellation_of(raw: bytes, control_id: str) -> bytes:
    """The RIS's cancellation of a report: same message, ORC-1 ``CA`` and a new control id."""
    segments = raw.split(b"\r")
    out = []
    for seg in segments:
        fields = seg.split(b"|")
        if fields[0] == b"MSH":
            fields[9] = control_id.encode()
        if fields[0] == b"ORC":
            fields[1] = b"CA"
        out.append(b"|".join(fields))
    return b"\r".join(out)


def test_cancellation_depublishes_report_and_kos(
    box: SourceBox, exams: list[Exam], xds_client: XdsClient
) -> None:
    exam = [e for e in exams[:-1] if len(e.record["reports"]) == 1][5]
    assert send(box.mllp.port, exam.message("ORU"))[0] == "AA"
    kos, report = wait_for(lambda: published(xds_client, exam), what="publication")
    assert send(box.mllp.port, cancellation_of(exam.message("ORU"), "CANCEL-1"))[0] == "AA"
    # the signature document stays, as in the DMP's own depublication (ANS DeleteRequest)
    wait_for(lambda: not kos_of(study_documents(xds_client, exam, ALL))
             and not reports_of(study_documents(xds_client, exam, ALL)), what="depublication")  # fmt: skip
    assert xds_client.get_documents([kos.unique_id, report.unique_id]) == []
    pub = box.outbox.publication(exam.study_uid)
    assert pub is not None and pub.state is PublicationState.DELETED


def test_iocm_rejection_replaces_then_depublishes_the_kos(
    box: SourceBox, exams: list[Exam], xds_client: XdsClient, index: IndexServer, tmp_path: Path
) -> None:
    exam = [e for e in exams[:-1] if len(e.record["reports"]) == 1][6]
    assert send(box.mllp.port, exam.message("ORU"))[0] == "AA"
    first, report = wait_for(lambda: published(xds_client, exam), what="publication")
    series = exam.record["series"][0]
    rejected = series["sop_instance_uids"][:1]

    def note(sops: list[str], name: str) -> Path:
        ds = rejection_note(REJECTED_FOR_QUALITY, sops)
        ds.CurrentRequestedProcedureEvidenceSequence[0].StudyInstanceUID = exam.study_uid
        ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[
            0
        ].SeriesInstanceUID = series["series_uid"]
        ds.SOPInstanceUID = f"2.25.{int(time.time() * 1e6)}{len(sops)}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = exam.study_uid, "2.25.99"
        ds.Modality, ds.PatientID = "KO", exam.record["ipp"]
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = tmp_path / name
        path.write_bytes(part10(ds))
        return path

    port = box.iocm.port if box.iocm else 0
    run_dcmtk("storescu", "-aet", box.settings.pacs.aet, "-aec", "DRIMBOX", "127.0.0.1", str(port),
              str(note(rejected, "note1.dcm")))  # fmt: skip

    def replaced() -> Any:
        now = published(xds_client, exam)
        return now if now and now[0].unique_id != first.unique_id else None

    kos, same_report = wait_for(replaced, what="IOCM replacement")
    assert same_report.unique_id == report.unique_id  # the report is not touched
    manifest = parse_kos(retrieve(xds_client, index, kos.unique_id))
    assert manifest.sop_instance_uids == exam.sops - set(rejected)

    run_dcmtk("storescu", "-aet", box.settings.pacs.aet, "-aec", "DRIMBOX", "127.0.0.1", str(port),
              str(note(sorted(exam.sops), "note2.dcm")))  # fmt: skip
    wait_for(lambda: not kos_of(study_documents(xds_client, exam)), what="KOS depublication")
    assert reports_of(study_documents(xds_client, exam))  # the report stays published


def test_images_arriving_after_the_report_are_waited_for(
    box: SourceBox, exams: list[Exam], xds_client: XdsClient, pacs: Pacs
) -> None:
    exam = exams[-1]
    assert send(box.mllp.port, exam.message("ORU"))[0] == "AA"
    time.sleep(1.0)
    assert published(xds_client, exam) is None
    entries = [e for e in box.inbox.pending(now=time.time() + 60) if e.study_uid == exam.study_uid]
    assert entries and "not in the PACS yet" in (entries[0].last_error or "")
    store(exam.files(), pacs.port, pacs.aet)
    kos, _ = wait_for(lambda: published(xds_client, exam), what="late publication")
    assert kos is not None


def test_pacs_contradicting_the_report_is_held_not_published(
    box: SourceBox, exams: list[Exam], xds_client: XdsClient
) -> None:
    exam = [e for e in exams[:-1] if len(e.record["reports"]) == 1][7]
    raw = exam.message("ORU").replace(exam.record["ipp"].encode(), b"999999999")
    raw = raw.replace(raw.split(b"|")[9], b"WRONG-IPP-1")
    assert send(box.mllp.port, raw)[0] == "AA"
    held = wait_for(lambda: [e for e in box.inbox.held() if e.study_uid == exam.study_uid],
                    what="held message")  # fmt: skip
    assert "PatientID" in (held[0].last_error or "") and "999999999" in (held[0].last_error or "")
    assert published(xds_client, exam) is None


# --- failures: index down, restart mid-queue ---------------------------------------------------


def test_index_down_then_up_across_a_restart_loses_and_duplicates_nothing(
    tmp_path: Path, pacs: Pacs, exams: list[Exam], signer_files: tuple[Path, Path]
) -> None:
    index_port = free_port()
    settings = box_settings(tmp_path / "box", pacs.aet, pacs.port,
                            f"http://127.0.0.1:{index_port}", signer_files)  # fmt: skip
    chosen = [e for e in exams[:-1] if len(e.record["reports"]) == 1][:3]
    with running_box(settings) as first:
        for exam in chosen:
            assert send(first.mllp.port, exam.message("MDM"))[0] == "AA"

        # the index is down: every submission waits in the outbox, each patient's head retried
        def waiting() -> bool:
            ops = first.outbox.operations("pending")
            heads = {o.patient: o for o in sorted(ops, key=lambda o: -o.id)}
            return len(ops) == len(chosen) and all(h.attempts > 0 for h in heads.values())

        wait_for(waiting, what="failed attempts")
        ops = first.outbox.operations("pending")
        reasons = {o.last_error or "" for o in ops if o.attempts}
        assert all("unreachable" in r for r in reasons)
    # restarted while the queue is full, then the index comes up
    with index_for(tmp_path, signer_files, index_port) as (_, client), \
            running_box(settings) as second:  # fmt: skip
        for exam in chosen:
            wait_for(lambda e=exam: published(client, e), what="publication after restart")
        wait_for(lambda: second.outbox.counts().get("pending", 0) == 0, what="empty outbox")
        for exam in chosen:
            kos = kos_of(study_documents(client, exam, ALL))
            assert len(kos) == 1  # no duplicate submission
        assert second.outbox.counts().get("failed", 0) == 0


def test_lost_answer_is_not_a_duplicate(
    tmp_path: Path, pacs: Pacs, exams: list[Exam], signer_files: tuple[Path, Path]
) -> None:
    """The index commits but the box never hears back (crash right after ITI-41): the retry
    finds the manifest registered and sends nothing twice."""
    exam = [e for e in exams[:-1] if len(e.record["reports"]) == 1][8]
    with index_for(tmp_path, signer_files) as (index, client):
        settings = box_settings(tmp_path / "box", pacs.aet, pacs.port, index.url, signer_files)
        with running_box(settings) as box:
            box.pipeline.stop()  # hold the queue: we play the sender by hand
            assert send(box.mllp.port, exam.message("ORU"))[0] == "AA"
            box.pipeline.preparer.run_once()
            op = box.outbox.pending()[0]
            box.pipeline.sender.index.publish(_submission(box, op))  # reaches the index...
            # ...and the answer is lost: the operation is still pending and is sent again
            assert box.pipeline.sender.run_once() == 1
        assert len(kos_of(study_documents(client, exam, ALL))) == 1
        assert len(reports_of(study_documents(client, exam, ALL))) == 1


def _submission(box: SourceBox, op: Any) -> Any:
    from drimbox.adapters.hl7.parse import parse_message
    from drimbox.services.source.ports import Submission

    return Submission(op.patient_id, op.kos_uid, op.kos, parse_message(op.report_raw),
                      op.publish_report)  # fmt: skip


# --- Orthanc as the site's PACS -----------------------------------------------------------------


@pytest.mark.orthanc
def test_publication_from_orthanc(
    tmp_path: Path, exams: list[Exam], index: IndexServer, xds_client: XdsClient,
    signer_files: tuple[Path, Path],
) -> None:  # fmt: skip
    # an exam no other test of the module publishes (they share the index)
    other = [e for e in exams[:-1] if len(e.record["reports"]) == 1][4]
    # Orthanc answers C-FIND only to known modalities: declare the box
    known = {"DRIMBOX": ("DRIMBOX", "127.0.0.1", free_port())}
    with running_orthanc(tmp_path / "orthanc", modalities=known) as orthanc:
        store(other.files(), orthanc.port, orthanc.aet)
        settings = box_settings(tmp_path / "box", orthanc.aet, orthanc.port, index.url,
                                signer_files)  # fmt: skip
        with running_box(settings) as box:
            assert send(box.mllp.port, other.message("MDM"))[0] == "AA"
            entry, _ = wait_for(lambda: published(xds_client, other), what="publication", box=box)
            manifest = parse_kos(
                xds_client.retrieve(index.repository, [entry.unique_id])[entry.unique_id]
            )
            assert manifest.sop_instance_uids == other.sops
            assert all(s.retrieve_url.startswith("https://box-a.example:8443/dicomweb/studies/")
                       for s in manifest.series)  # fmt: skip
