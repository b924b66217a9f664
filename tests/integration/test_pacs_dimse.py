"""The embedded PACS driven over DIMSE by dcmtk (storescu, findscu, getscu, movescu)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

from tests.peers import Pacs, run_dcmtk, running_pacs, running_storescp


def store_all(pacs: Pacs, files: list[Path], tuned: bool = True) -> None:
    result = run_dcmtk(
        "storescu",
        "-aec",
        pacs.aet,
        "127.0.0.1",
        str(pacs.port),
        *map(str, files),
        tuned=tuned,
        check=False,
    )
    assert result.returncode == 0, result.stderr + pacs.log.read_text(errors="replace")


def find(pacs: Pacs, *keys: str, model: str = "-S") -> list[dict[str, str]]:
    """findscu answers as a list of {keyword: value}."""
    args = [model, "-aec", pacs.aet, "127.0.0.1", str(pacs.port)]
    for key in keys:
        args += ["-k", key]
    out = run_dcmtk("findscu", *args).stderr
    answers: list[dict[str, str]] = []
    for block in out.split("Find Response:")[1:]:
        answer = {}
        for m in re.finditer(
            r"\(\w{4},\w{4}\) \w\w (?:\[(.*?)\]|\(no value available\))\s+#\s+\d+,\s*\d+\s+(\w+)",
            block,
        ):
            answer[m.group(2)] = (m.group(1) or "").strip("\x00 ")
        answers.append(answer)
    return answers


def pixel_bytes(path: Path) -> bytes:
    return bytes(dcmread(path).PixelData)


def test_store_then_find_every_level(
    pacs: Pacs, studies: dict[str, list[Path]], dicom_files: list[Path]
) -> None:
    store_all(pacs, dicom_files)

    found = find(
        pacs, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", "NumberOfStudyRelatedInstances"
    )
    assert {a["StudyInstanceUID"] for a in found} == set(studies)
    for a in found:
        assert int(a["NumberOfStudyRelatedInstances"]) == len(studies[a["StudyInstanceUID"]])

    study_uid, files = next(iter(studies.items()))
    series = find(
        pacs,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={study_uid}",
        "SeriesInstanceUID",
        "Modality",
    )
    expected_series = {str(dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in files}
    assert {a["SeriesInstanceUID"] for a in series} == expected_series

    images = find(
        pacs, "QueryRetrieveLevel=IMAGE", f"StudyInstanceUID={study_uid}", "SOPInstanceUID"
    )
    assert {a["SOPInstanceUID"] for a in images} == {
        str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
    }

    # Patient Root model at PATIENT level
    patients = find(
        pacs, "QueryRetrieveLevel=PATIENT", "PatientID", "NumberOfPatientRelatedStudies", model="-P"
    )
    assert sum(int(a["NumberOfPatientRelatedStudies"]) for a in patients) == len(studies)


def test_find_matching_rules(pacs: Pacs, dicom_files: list[Path]) -> None:
    store_all(pacs, dicom_files)
    sample = dcmread(dicom_files[0], stop_before_pixels=True)
    family = str(sample.PatientName).split("^")[0]
    every = find(pacs, "QueryRetrieveLevel=STUDY", "StudyInstanceUID", "PatientName", "StudyDate")

    # wildcard on a person name, case-insensitive
    by_name = find(
        pacs, "QueryRetrieveLevel=STUDY", f"PatientName={family[:3].lower()}*", "StudyInstanceUID"
    )
    expected = {
        a["StudyInstanceUID"]
        for a in every
        if a["PatientName"].upper().startswith(family[:3].upper())
    }
    assert {a["StudyInstanceUID"] for a in by_name} == expected and expected

    # date range
    dates = sorted(a["StudyDate"] for a in every)
    low, high = dates[0], dates[len(dates) // 2]
    in_range = find(pacs, "QueryRetrieveLevel=STUDY", f"StudyDate={low}-{high}", "StudyInstanceUID")
    assert {a["StudyInstanceUID"] for a in in_range} == {
        a["StudyInstanceUID"] for a in every if low <= a["StudyDate"] <= high
    }

    # list of UIDs
    two = [a["StudyInstanceUID"] for a in every[:2]]
    listed = find(pacs, "QueryRetrieveLevel=STUDY", "StudyInstanceUID=" + "\\".join(two))
    assert {a["StudyInstanceUID"] for a in listed} == set(two)

    # a level the Study Root model does not have is refused with a failure status
    bad = run_dcmtk(
        "findscu",
        "-v",
        "-S",
        "-aec",
        pacs.aet,
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        "PatientID",
        "127.0.0.1",
        str(pacs.port),
        check=False,
    )
    assert (
        "Error: DataSetDoesNotMatchSOPClass" in bad.stderr  # 0xA900
    )


def test_getscu_returns_byte_identical_pixels(
    pacs: Pacs, studies: dict[str, list[Path]], tmp_path: Path
) -> None:
    study_uid, files = max(studies.items(), key=lambda kv: len(kv[1]))
    store_all(pacs, files)
    out = tmp_path / "got"
    out.mkdir()
    run_dcmtk(
        "getscu",
        "-S",
        "-aec",
        pacs.aet,
        "-od",
        str(out),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        "127.0.0.1",
        str(pacs.port),
    )
    received = {str(dcmread(p).SOPInstanceUID): p for p in out.iterdir()}
    sent = {str(dcmread(p).SOPInstanceUID): p for p in files}
    assert received.keys() == sent.keys()
    for sop, path in sent.items():
        assert pixel_bytes(received[sop]) == pixel_bytes(path)


def test_movescu_to_second_scp(tmp_path: Path, studies: dict[str, list[Path]]) -> None:
    study_uid, files = max(studies.items(), key=lambda kv: len(kv[1]))
    with (
        running_storescp(tmp_path / "scp") as (aet, port),
        running_pacs(
            tmp_path / "pacs", extra=["--move-destination", f"{aet}=127.0.0.1:{port}"]
        ) as pacs,
    ):
        store_all(pacs, files)
        run_dcmtk(
            "movescu",
            "-S",
            "-aec",
            pacs.aet,
            "-aem",
            aet,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
            "127.0.0.1",
            str(pacs.port),
        )
        unknown = run_dcmtk(
            "movescu",
            "-S",
            "-aec",
            pacs.aet,
            "-aem",
            "NOWHERE",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
            "127.0.0.1",
            str(pacs.port),
            check=False,
        )
    received = {str(dcmread(p).SOPInstanceUID): p for p in (tmp_path / "scp").iterdir()}
    sent = {str(dcmread(p).SOPInstanceUID): p for p in files}
    assert received.keys() == sent.keys()
    for sop, path in sent.items():
        assert pixel_bytes(received[sop]) == pixel_bytes(path)
    assert "Refused: MoveDestinationUnknown" in unknown.stderr  # 0xA801


def test_stock_dcmtk_without_nodelay_is_served(pacs: Pacs, dicom_files: list[Path]) -> None:
    store_all(pacs, dicom_files[:10], tuned=False)
    assert len(find(pacs, "QueryRetrieveLevel=IMAGE", "SOPInstanceUID")) == 10


def _send_raw(pacs: Pacs, path: Path, calling: str = "TESTSCU") -> int:
    """Send a file's bytes without decoding them, as a broken modality would."""
    ae = AE(calling)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
    assert assoc.is_established
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old
        assoc.release()
    return int(status.Status)


def test_truncated_object_is_refused_and_quarantined(
    pacs: Pacs, dicom_files: list[Path], tmp_path: Path
) -> None:
    ct = next(p for p in dicom_files if dcmread(p, stop_before_pixels=True).Modality == "CT")
    data = ct.read_bytes()
    broken = tmp_path / "truncated.dcm"
    broken.write_bytes(data[: len(data) - 3000])

    status = _send_raw(pacs, broken)

    assert 0xC000 <= status <= 0xCFFF
    quarantined = list((pacs.storage / "quarantine").glob("*.txt"))
    assert len(quarantined) == 1 and "truncated" in quarantined[0].read_text()
    assert not list((pacs.storage / "dicom").rglob("*.dcm"))
    # the server still works and stores the whole object
    assert _send_raw(pacs, ct) == 0x0000
    assert len(list((pacs.storage / "dicom").rglob("*.dcm"))) == 1


def test_duplicate_keeps_one_copy(pacs: Pacs, dicom_files: list[Path]) -> None:
    store_all(pacs, dicom_files[:3])
    store_all(pacs, dicom_files[:3])
    assert len(list((pacs.storage / "dicom").rglob("*.dcm"))) == 3
    with sqlite3.connect(pacs.storage / "index.sqlite") as db:
        assert db.execute("SELECT count(*) FROM instances").fetchone()[0] == 3


def test_calling_aet_allow_list(tmp_path: Path) -> None:
    with running_pacs(tmp_path / "pacs", extra=["--allowed-aet", "GOODSCU"]) as pacs:
        for calling, expected in (("GOODSCU", True), ("EVILSCU", False)):
            ae = AE(calling)
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
            assert assoc.is_established is expected
            if expected:
                assert assoc.send_c_echo().Status == 0
                assoc.release()
            else:
                assert assoc.is_rejected
        wrong_called = AE("GOODSCU")
        wrong_called.add_requested_context(Verification)
        assert wrong_called.associate("127.0.0.1", pacs.port, ae_title="OTHERPACS").is_rejected


@pytest.mark.parametrize("workers", ["1"])
def test_acknowledged_instances_survive_kill(
    tmp_path: Path, dicom_files: list[Path], workers: str
) -> None:
    """SIGKILL the PACS while a modality sends: every acknowledged instance is there after restart."""
    import threading

    storage = tmp_path / "pacs"
    acked: list[str] = []
    with running_pacs(storage, extra=["--workers", workers]) as pacs:
        ae = AE("MODALITY")
        ae.dimse_timeout = ae.network_timeout = 5  # the server is about to vanish
        for f in dicom_files:
            ae.add_requested_context(str(dcmread(f, stop_before_pixels=True).SOPClassUID))
            if len(ae.requested_contexts) >= 100:
                break
        assoc = ae.associate("127.0.0.1", pacs.port, ae_title=pacs.aet)
        killer = threading.Timer(0.4, _kill_tree, args=(pacs.proc.pid,))
        killer.start()
        for f in dicom_files * 20:
            ds = dcmread(f)
            try:
                status = assoc.send_c_store(ds)
            except (RuntimeError, OSError):
                break  # the association died with the server
            if status and int(status.Status) == 0:
                acked.append(str(ds.SOPInstanceUID))
        killer.join()
    assert acked, "nothing was acknowledged before the kill; the test proves nothing"
    with running_pacs(storage) as pacs:
        with sqlite3.connect(storage / "index.sqlite") as db:
            stored = {r[0] for r in db.execute("SELECT sop_uid FROM instances")}
        assert set(acked) <= stored
        assert not list((storage / "tmp").iterdir())
        assert not list((storage / "dicom").rglob(".*.part"))


def _kill_tree(pid: int) -> None:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    kids = children.read_text().split() if children.exists() else []
    for p in [pid, *map(int, kids)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
