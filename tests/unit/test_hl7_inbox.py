"""The durable inbox: stored once per control id, per-patient order, restart, rejected folder."""

from __future__ import annotations

import json
import random
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drimbox.adapters.hl7.parse import parse_message
from drimbox.domain.report import ReportEvent, ReportMessage
from drimbox.services.source.inbox import Inbox, InboxEntry
from drimbox.synth import hl7 as synth_hl7
from drimbox.synth.cda import make_report
from drimbox.synth.patients import make_patients
from drimbox.synth.sites import make_physician, make_sites
from drimbox.synth.studies import EXAM_TYPES, plan_exam

SENT = datetime(2023, 7, 4, 8, 0)


def _messages(patients: int = 2) -> list[list[bytes]]:
    """For each patient: new report, correction, cancellation (ORU), control ids unique."""
    sites = make_sites(1, 4)
    people = make_patients(patients, sites, 4)
    out: list[list[bytes]] = []
    for n, patient in enumerate(people):
        rng = random.Random(n)
        exam = plan_exam(rng, EXAM_TYPES["ct_head"], patient, sites[0], datetime(2023, 7, 3, 10),
                         "small", accession=f"01230000{n:02d}", order_number=f"DEM{n}",
                         visit_number=f"V{n}", study_id=str(n),
                         referring=make_physician(rng))  # fmt: skip
        doc = sites[0].document_oid
        v1 = make_report(exam, document_id=f"{doc}.{n}1", set_id=f"{doc}.{n}0",
                         authored=datetime(2023, 7, 3, 12))  # fmt: skip
        v2 = make_report(exam, document_id=f"{doc}.{n}2", set_id=f"{doc}.{n}0",
                         authored=datetime(2023, 7, 4, 12), version=2,
                         replaces=v1.document_id)  # fmt: skip
        out.append([
            synth_hl7.build_message(v1, "ORU", "new", control_id=f"P{n}-1", sent=SENT).encode(),
            synth_hl7.build_message(v2, "ORU", "correction", control_id=f"P{n}-2",
                                    sent=SENT).encode(),
            synth_hl7.build_message(v2, "ORU", "cancel", control_id=f"P{n}-3", sent=SENT).encode(),
        ])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def messages() -> list[list[bytes]]:
    return _messages()


def _inbox(folder: Path) -> Inbox:
    return Inbox(folder, parse_message)


def _accept(inbox: Inbox, raw: bytes) -> int:
    return inbox.accept(raw, parse_message(raw)).id


def test_duplicates_are_stored_once(tmp_path: Path, messages: list[list[bytes]]) -> None:
    with _inbox(tmp_path) as inbox:
        first = inbox.accept(messages[0][0], parse_message(messages[0][0]))
        again = inbox.accept(messages[0][0], parse_message(messages[0][0]))
        assert not first.duplicate and again.duplicate and again.id == first.id
        assert len(inbox.pending()) == 1


def test_per_patient_order_and_interleaving(tmp_path: Path, messages: list[list[bytes]]) -> None:
    a, b = messages
    with _inbox(tmp_path) as inbox:
        ids = [_accept(inbox, raw) for raw in (a[0], b[0], a[1], a[2], b[1])]
        heads = inbox.pending()
        assert [e.id for e in heads] == [ids[0], ids[1]]  # one head per patient
        inbox.done(ids[1])  # patient b progresses independently of a
        assert [e.id for e in inbox.pending()] == [ids[0], ids[4]]
        events: list[ReportEvent] = []

        def consume(entry: InboxEntry) -> None:
            if entry.patient == heads[0].patient:
                events.append(entry.report.event)

        while inbox.deliver(consume):
            pass
        assert events == [ReportEvent.NEW, ReportEvent.CORRECTION, ReportEvent.CANCELLATION]
        assert inbox.pending() == []


def test_failed_message_blocks_only_its_patient(
    tmp_path: Path, messages: list[list[bytes]]
) -> None:
    a, b = messages
    with _inbox(tmp_path) as inbox:
        for raw in (a[0], a[1], b[0]):
            _accept(inbox, raw)
        failing = parse_message(a[0]).patient.ins.value

        def consume(entry: InboxEntry) -> None:
            if entry.patient == failing:
                raise RuntimeError("PACS down")

        assert inbox.deliver(consume) == 1
        (head,) = inbox.pending()
        assert head.patient == failing and head.attempts == 1
        assert head.last_error == "RuntimeError: PACS down"
        assert head.report.event is ReportEvent.NEW


def test_survives_a_restart(tmp_path: Path, messages: list[list[bytes]]) -> None:
    with _inbox(tmp_path) as inbox:
        done = _accept(inbox, messages[0][0])
        kept = _accept(inbox, messages[0][1])
        inbox.done(done)
    with _inbox(tmp_path) as reopened:
        (entry,) = reopened.pending()
        assert entry.id == kept and entry.raw == messages[0][1]
        assert entry.report.event is ReportEvent.CORRECTION
        assert reopened.accept(messages[0][0], parse_message(messages[0][0])).duplicate


def test_wal_and_full_sync(tmp_path: Path) -> None:
    with _inbox(tmp_path) as inbox:
        assert inbox._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert inbox._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_concurrent_accepts(tmp_path: Path) -> None:
    raws = [m for patient in _messages(4) for m in patient]
    with _inbox(tmp_path) as inbox:
        threads = [threading.Thread(target=_accept, args=(inbox, raw)) for raw in raws * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert inbox._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == len(raws)


def test_purge_done(tmp_path: Path, messages: list[list[bytes]]) -> None:
    with _inbox(tmp_path) as inbox:
        inbox.done(_accept(inbox, messages[0][0]))
        _accept(inbox, messages[1][0])
        assert inbox.purge_done(datetime.now(UTC) + timedelta(seconds=1)) == 1
        assert len(inbox.pending()) == 1


def test_rejected_folder(tmp_path: Path) -> None:
    with _inbox(tmp_path) as inbox:
        path = inbox.reject(b"MSH|junk", "MISSING_INS: no INS", ack="AE", control_id="../../x y")
    assert path.parent == tmp_path / "rejected"
    assert path.read_bytes() == b"MSH|junk"
    assert ".." not in path.name and " " not in path.name
    note = json.loads(path.with_suffix(".json").read_text())
    assert note["ack"] == "AE" and note["reason"] == "MISSING_INS: no INS"
    assert note["control_id"] == "../../x y"
    assert not list((tmp_path / "rejected").glob("*.tmp"))


def test_undecodable_stored_message_fails_alone(
    tmp_path: Path, messages: list[list[bytes]]
) -> None:
    a, b = messages
    poisoned = parse_message(a[0]).patient.ins.value

    def strict_parser(raw: bytes) -> ReportMessage:
        report = parse_message(raw)
        if report.patient.ins.value == poisoned:
            raise ValueError("parser v2 refuses this one")
        return report

    with Inbox(tmp_path, parse_message) as inbox:
        _accept(inbox, a[0])
        _accept(inbox, b[0])
    with Inbox(tmp_path, strict_parser) as inbox:
        seen: list[str] = []
        assert inbox.deliver(lambda entry: seen.append(entry.report.study_uid)) == 1
        assert len(seen) == 1
        (left,) = inbox.pending()
        assert left.patient == poisoned and left.last_error is not None
        assert "parser v2" in left.last_error
