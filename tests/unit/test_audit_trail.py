"""The hash-chained JSONL access trail, its SQLite index and the Auditor service."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from drimbox.adapters.audit.jsonl_trail import (
    GENESIS,
    INDEX_FILE,
    TRAIL_FILE,
    JsonlTrail,
    canonical,
    chain_hash,
)
from drimbox.domain.access import AccessMode, CallerIdentity
from drimbox.domain.access import ActorKind as CallerKind
from drimbox.domain.audit import (
    AccessRecord,
    Action,
    Actor,
    ActorKind,
    Outcome,
    TrailCorrupted,
)
from drimbox.domain.errors import InvalidInput
from drimbox.domain.identifiers import INS_OID_REAL, INS_OID_TEST, Ins
from drimbox.services.audit import Auditor, emergency_of

T0 = datetime(2024, 5, 17, 8, 0, tzinfo=UTC)
PATIENT = Ins.parse("279035121518989", INS_OID_TEST)
OTHER = Ins.parse("274075176079430", INS_OID_TEST)
DOCTOR = Actor(
    "810101234567",
    ActorKind.PROFESSIONAL,
    name="Dr Anne Martin",
    role_code="10",
    structure_id="1750001234",
    structure_name="CHU de Test",
)


class Ticks:
    """A clock that advances one second per call."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def access(n: int = 0, patient: Ins | None = PATIENT, at: datetime | None = None) -> AccessRecord:
    return AccessRecord(
        actor=DOCTOR,
        action=Action.IMAGES_VIEW,
        outcome=Outcome.SUCCESS,
        at=at or T0 + timedelta(seconds=n),
        patient_ins=patient.value if patient else "",
        patient_oid=patient.oid if patient else "",
        study_uid=f"1.2.250.1.999.{n}",
    )


@pytest.fixture
def trail(tmp_path: Path) -> Iterator[JsonlTrail]:
    with JsonlTrail(tmp_path / "audit", fsync=False) as opened:
        yield opened


def lines_of(folder: Path) -> list[bytes]:
    return (folder / TRAIL_FILE).read_bytes().splitlines(keepends=True)


def write_lines(folder: Path, lines: list[bytes]) -> None:
    (folder / TRAIL_FILE).write_bytes(b"".join(lines))


def drop_index(folder: Path) -> None:
    for name in (INDEX_FILE, INDEX_FILE + "-wal", INDEX_FILE + "-shm"):
        (folder / name).unlink(missing_ok=True)


def filled(folder: Path, count: int) -> None:
    with JsonlTrail(folder, fsync=False) as trail:
        for n in range(count):
            trail.record(access(n))


def reopened_verify(folder: Path, *, keep_index: bool = False):  # type: ignore[no-untyped-def]
    """Verify a tampered trail with the chain alone (the forger also deleted the index)."""
    if not keep_index:
        drop_index(folder)
    with JsonlTrail(folder, fsync=False) as trail:
        return trail.verify()


# -- the chain ------------------------------------------------------------------------------


def test_lines_are_canonical_and_chained(trail: JsonlTrail) -> None:
    ids = [trail.record(access(n)) for n in range(3)]
    prev = GENESIS
    for seq, raw in enumerate(lines_of(trail.folder), start=1):
        assert raw.endswith(b"\n")
        line = json.loads(raw)
        assert canonical(line) + b"\n" == raw
        assert line["seq"] == seq
        assert line["prev"] == prev
        assert line["hash"] == chain_hash(prev, line["event"])
        assert line["event"]["id"] == ids[seq - 1]
        prev = line["hash"]
    assert trail.head() == (3, prev)
    report = trail.verify()
    assert report.ok
    assert (report.records, report.last_seq, report.last_hash) == (3, 3, prev)


def test_empty_trail_verifies(trail: JsonlTrail) -> None:
    report = trail.verify()
    assert report.ok
    assert (report.records, report.last_hash, report.torn_lines) == (0, GENESIS, ())
    assert trail.head() == (0, GENESIS)


def test_chain_continues_across_restarts(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 3)
    with JsonlTrail(folder, fsync=False) as trail:
        assert trail.head()[0] == 3
        trail.record(access(3))
    with JsonlTrail(folder) as trail:  # fsync on
        trail.record(access(4))
        report = trail.verify()
    assert report.ok
    assert report.records == 5
    assert [json.loads(raw)["seq"] for raw in lines_of(folder)] == [1, 2, 3, 4, 5]


def test_concurrent_threads_keep_one_chain(trail: JsonlTrail) -> None:
    ids: list[str] = []

    def work(k: int) -> None:
        for n in range(25):
            ids.append(trail.record(access(k * 100 + n)))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report = trail.verify()
    assert report.ok, report.problem
    assert report.records == 200
    seqs = [json.loads(raw)["seq"] for raw in lines_of(trail.folder)]
    assert seqs == list(range(1, 201))
    assert len(set(ids)) == 200
    assert len(trail.for_patient(PATIENT, limit=1000)) == 200


def _append_from_process(folder: str, count: int, start: int, ready: Barrier) -> None:
    with JsonlTrail(Path(folder), fsync=False) as trail:
        ready.wait(timeout=60)
        for n in range(start, start + count):
            trail.record(access(n))


def test_concurrent_processes_keep_one_chain(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 1)
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(3)
    workers = [
        context.Process(target=_append_from_process, args=(str(folder), 60, start, ready))
        for start in (1000, 2000)
    ]
    for worker in workers:
        worker.start()
    with JsonlTrail(folder, fsync=False) as trail:  # this process appends meanwhile
        ready.wait(timeout=60)
        for n in range(3000, 3030):
            trail.record(access(n))
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    with JsonlTrail(folder, fsync=False) as trail:
        report = trail.verify()
        events = trail.for_patient(PATIENT, limit=1000)
    assert report.ok, report.problem
    assert report.records == 151
    lines = [json.loads(raw) for raw in lines_of(folder)]
    assert [line["seq"] for line in lines] == list(range(1, 152))
    studies = sorted(line["event"]["entity"][1]["what"]["identifier"]["value"] for line in lines)
    expected = [0, *range(1000, 1060), *range(2000, 2060), *range(3000, 3030)]
    assert studies == sorted(f"urn:oid:1.2.250.1.999.{n}" for n in expected)
    assert len(events) == 151  # every process indexed its own records


# -- tampering ------------------------------------------------------------------------------


def test_altered_byte_in_an_event(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 5)
    lines = lines_of(folder)
    lines[2] = lines[2].replace(b"Dr Anne Martin", b"Dr Anne Martim", 1)
    write_lines(folder, lines)
    report = reopened_verify(folder)
    assert not report.ok
    assert (report.broken_seq, report.broken_line) == (3, 3)
    assert "altered" in report.problem
    assert report.records == 2


def test_altered_byte_that_breaks_the_json(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 5)
    lines = lines_of(folder)
    lines[1] = lines[1].replace(b'"seq":2', b'"seq":2,', 1)
    write_lines(folder, lines)
    report = reopened_verify(folder)
    assert (report.broken_seq, report.broken_line) == (2, 2)
    assert "unreadable" in report.problem
    assert report.torn_lines == ()


def test_deleted_line(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 5)
    lines = lines_of(folder)
    del lines[2]
    write_lines(folder, lines)
    report = reopened_verify(folder)
    assert (report.broken_seq, report.broken_line) == (3, 3)
    assert "does not link" in report.problem


def test_swapped_lines(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 5)
    lines = lines_of(folder)
    lines[1], lines[2] = lines[2], lines[1]
    write_lines(folder, lines)
    report = reopened_verify(folder)
    assert (report.broken_seq, report.broken_line) == (2, 2)


def test_forged_line_breaks_the_next_link(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 5)
    lines = lines_of(folder)
    previous = json.loads(lines[1])
    event = dict(json.loads(lines[2])["event"], id="forged")
    forged = {
        "seq": 3,
        "prev": previous["hash"],
        "hash": chain_hash(previous["hash"], event),
        "event": event,
    }
    lines.insert(2, canonical(forged) + b"\n")
    write_lines(folder, lines)
    report = reopened_verify(folder)
    # The forged line is consistent on its own; the original seq 3 after it no longer links.
    assert (report.broken_seq, report.broken_line) == (4, 4)
    assert "does not link" in report.problem
    assert report.records == 3


def test_seq_field_altered(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 3)
    lines = lines_of(folder)
    lines[2] = lines[2].replace(b'"seq":3', b'"seq":7', 1)
    write_lines(folder, lines)
    report = reopened_verify(folder)
    assert (report.broken_seq, report.broken_line) == (3, 3)


def test_rewrite_refused_while_the_index_remembers(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 5)
    lines = lines_of(folder)
    del lines[1]
    write_lines(folder, lines)
    with pytest.raises(TrailCorrupted, match="no longer holds"):
        JsonlTrail(folder, fsync=False)


def test_truncation_refused_while_the_index_remembers(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 5)
    write_lines(folder, lines_of(folder)[:3])
    with pytest.raises(TrailCorrupted):
        JsonlTrail(folder, fsync=False)


def test_rewrite_while_open_is_caught_by_the_index(trail: JsonlTrail) -> None:
    for n in range(4):
        trail.record(access(n))
    lines = lines_of(trail.folder)
    lines[1], lines[2] = lines[2], lines[1]  # same sizes: the lines simply move
    write_lines(trail.folder, lines)
    report = trail.verify()
    assert report.broken_seq == 2
    with pytest.raises(TrailCorrupted, match="altered"):
        trail.for_patient(PATIENT)


def test_truncation_while_open_is_reported(trail: JsonlTrail) -> None:
    for n in range(4):
        trail.record(access(n))
    write_lines(trail.folder, lines_of(trail.folder)[:2])
    report = trail.verify()
    assert not report.ok
    assert report.broken_seq == 3
    assert "truncated" in report.problem
    with pytest.raises(TrailCorrupted, match="truncated"):
        trail.record(access(9))


# -- torn lines -----------------------------------------------------------------------------


def test_torn_last_line_after_a_crash(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 3)
    lost = canonical({"event": {"id": "lost"}, "hash": "ab" * 32, "prev": "cd" * 32, "seq": 4})
    with (folder / TRAIL_FILE).open("ab") as file:
        file.write(lost[:50])  # the crash cut the write of seq 4 short
    with JsonlTrail(folder, fsync=False) as trail:
        report = trail.verify()
        assert report.ok
        assert (report.records, report.torn_lines) == (3, (4,))
        assert trail.head()[0] == 3
        trail.record(access(3))
        trail.record(access(4))
        report = trail.verify()
    assert report.ok, report.problem
    assert (report.records, report.torn_lines) == (5, (4,))
    lines = lines_of(folder)
    assert lines[3] == lost[:50] + b"\n"  # kept, ended, never rewritten
    assert [json.loads(raw)["seq"] for raw in lines[4:]] == [4, 5]
    assert json.loads(lines[4])["prev"] == json.loads(lines[2])["hash"]


def test_torn_line_left_by_another_process(trail: JsonlTrail) -> None:
    trail.record(access(0))
    with trail.path.open("ab") as file:  # another writer died mid-line
        file.write(b'{"event":{"acti')
    trail.record(access(1))
    report = trail.verify()
    assert report.ok
    assert (report.records, report.torn_lines) == (2, (2,))
    assert len(trail.for_patient(PATIENT)) == 2


def test_damaged_acknowledged_last_line_is_not_a_torn_line(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 3)
    data = (folder / TRAIL_FILE).read_bytes()
    (folder / TRAIL_FILE).write_bytes(data[:-40])
    with pytest.raises(TrailCorrupted):
        JsonlTrail(folder, fsync=False)


def test_complete_last_line_without_newline_is_kept(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 2)
    data = (folder / TRAIL_FILE).read_bytes()
    (folder / TRAIL_FILE).write_bytes(data[:-1])  # only the newline was lost
    with JsonlTrail(folder, fsync=False) as trail:
        trail.record(access(2))
        report = trail.verify()
    assert report.ok
    assert (report.records, report.torn_lines) == (3, ())


# -- reading --------------------------------------------------------------------------------


def test_for_patient_filters_orders_and_limits(trail: JsonlTrail) -> None:
    for n in range(6):
        trail.record(access(n, PATIENT if n % 2 == 0 else OTHER))
    trail.record(access(9, None))
    mine = trail.for_patient(PATIENT)
    assert [e["recorded"][11:19] for e in mine] == ["08:00:04", "08:00:02", "08:00:00"]
    assert {e["entity"][0]["what"]["identifier"]["value"] for e in mine} == {PATIENT.value}
    assert len(trail.for_patient(OTHER)) == 3
    assert len(trail.for_patient(PATIENT, limit=2)) == 2
    assert trail.for_patient(PATIENT, limit=2) == mine[:2]
    since = trail.for_patient(PATIENT, since=T0 + timedelta(seconds=2))
    assert since == mine[:2]
    assert trail.for_patient(PATIENT.value) == mine  # an INS value matches any OID
    assert trail.for_patient(Ins.parse(PATIENT.value, INS_OID_REAL)) == []


def test_for_patient_rejects_bad_arguments(trail: JsonlTrail) -> None:
    with pytest.raises(InvalidInput):
        trail.for_patient(PATIENT, limit=0)
    with pytest.raises(InvalidInput, match="time zone"):
        trail.for_patient(PATIENT, since=datetime(2024, 1, 1))


def test_for_patient_detects_an_altered_line(trail: JsonlTrail) -> None:
    trail.record(access(0))
    data = trail.path.read_bytes().replace(b"Dr Anne Martin", b"Dr Anne Martim")
    trail.path.write_bytes(data)
    with pytest.raises(TrailCorrupted):
        trail.for_patient(PATIENT)


def test_index_rebuilt_when_deleted(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 4)
    with JsonlTrail(folder, fsync=False) as trail:
        before = trail.for_patient(PATIENT)
    drop_index(folder)
    with JsonlTrail(folder, fsync=False) as trail:
        assert trail.for_patient(PATIENT) == before
        trail.record(access(4))
        assert len(trail.for_patient(PATIENT)) == 5
        assert trail.verify().ok


def test_index_behind_catches_up(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    filled(folder, 4)
    db = sqlite3.connect(folder / INDEX_FILE)
    with db:
        db.execute("DELETE FROM records WHERE seq > 2")  # died between fsync and index
    db.close()
    with JsonlTrail(folder, fsync=False) as trail:
        assert len(trail.for_patient(PATIENT)) == 4
        trail.record(access(4))
        assert len(trail.for_patient(PATIENT)) == 5


# -- the service ----------------------------------------------------------------------------


def test_auditor_records_the_common_cases(trail: JsonlTrail) -> None:
    auditor = Auditor(trail, clock=Ticks())
    auditor.history_listed(DOCTOR, PATIENT)
    auditor.images_viewed(DOCTOR, PATIENT, "1.2.3", source="https://box-b", client_ip="10.0.0.9")
    auditor.report_read(DOCTOR, PATIENT, "1.2.3.9", outcome=Outcome.REFUSED, detail="opposition")
    auditor.images_downloaded(DOCTOR, PATIENT, "1.2.3")
    auditor.images_imported(DOCTOR, PATIENT, "1.2.3", outcome=Outcome.FAILED)
    auditor.images_retrieved(Actor("drimbox-b", ActorKind.BOX), PATIENT, "1.2.3")
    auditor.index_queried(DOCTOR, PATIENT)
    auditor.index_published(Actor("publisher", ActorKind.SYSTEM), PATIENT, "1.2.3")
    auditor.emergency_access(DOCTOR, PATIENT, "patient inconscient")
    auditor.images_viewed(DOCTOR, PATIENT, "1.2.4", emergency_reason="patient inconscient")
    auditor.record(DOCTOR, Action.USER_LOGIN)
    events = trail.for_patient(PATIENT)
    assert [e["subtype"][0]["code"] for e in reversed(events)] == [
        "history.list",
        "images.view",
        "report.read",
        "images.download",
        "images.import",
        "images.retrieve",
        "index.query",
        "index.publish",
        "emergency.access",
        "images.view",
    ]
    assert [e["outcome"] for e in reversed(events)][2:5] == ["4", "0", "8"]
    assert "purposeOfEvent" in events[0]
    assert "purposeOfEvent" in events[1]
    assert trail.verify().records == 11


def test_emergency_without_reason_is_refused(trail: JsonlTrail) -> None:
    auditor = Auditor(trail)
    with pytest.raises(InvalidInput, match="reason"):
        auditor.emergency_access(DOCTOR, PATIENT, "  ")
    with pytest.raises(InvalidInput, match="reason"):
        auditor.images_viewed(DOCTOR, PATIENT, "1.2.3", emergency=True)
    assert trail.verify().records == 0


def test_break_glass_caller() -> None:
    caller = CallerIdentity(
        "810101234567",
        CallerKind.PROFESSIONAL,
        profession="10",
        structure="1750001234",
        access_mode=AccessMode.BREAK_GLASS,
        reason="urgence vitale",
    )
    actor = Actor.from_caller(caller, client_id="conso")
    assert (actor.kind, actor.role_code, actor.client_id) == (ActorKind.PROFESSIONAL, "10", "conso")
    assert emergency_of(caller) == {"emergency": True, "emergency_reason": "urgence vitale"}
    normal = CallerIdentity("x", CallerKind.PATIENT)
    assert emergency_of(normal) == {}


def test_patient_reads_their_own_trail(trail: JsonlTrail) -> None:
    auditor = Auditor(trail, clock=Ticks())
    auditor.images_viewed(DOCTOR, PATIENT, "1.2.3")
    auditor.images_viewed(DOCTOR, OTHER, "1.2.4")
    me = Actor("patient-sub-42", ActorKind.PATIENT)
    events = auditor.patient_trail(me, PATIENT)
    assert [e["subtype"][0]["code"] for e in events] == ["trail.read", "images.view"]
    assert events[0]["agent"][0]["who"]["identifier"]["value"] == "patient-sub-42"
    with pytest.raises(InvalidInput):
        auditor.patient_trail(DOCTOR, PATIENT)


def test_file_permissions_and_fsync(tmp_path: Path) -> None:
    with JsonlTrail(tmp_path / "audit") as trail:
        trail.record(access(0))
    assert os.stat(tmp_path / "audit" / TRAIL_FILE).st_mode & 0o007 == 0
