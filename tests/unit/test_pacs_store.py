from pathlib import Path

import pytest

from drimbox.adapters.storage.dicom_index import Level, QueryError
from drimbox.adapters.storage.pacs_store import InvalidObject, PacsStore, StoreResult
from tests.dicom_factory import ct_instance, part10


@pytest.fixture
def store(tmp_path: Path) -> PacsStore:
    return PacsStore(tmp_path / "store", fsync=False)


def test_ingest_writes_file_and_indexes(store: PacsStore) -> None:
    ds = ct_instance()
    stored = store.ingest(part10(ds), "test")
    assert stored.result is StoreResult.STORED
    path = store.path_of(stored.instance)
    assert path.read_bytes() == part10(ds)
    assert path.relative_to(store.files.dicom_dir).parts == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        f"{ds.SOPInstanceUID}.dcm",
    )
    assert not list(store.files.tmp_dir.iterdir())


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda b: b[:-100], "truncated"),
        (lambda b: b"not dicom at all" * 10, "not a DICOM"),
        (lambda b: b[:200], None),
    ],
)
def test_bad_objects_are_quarantined(store: PacsStore, mangle: object, reason: str | None) -> None:
    data = mangle(part10(ct_instance()))  # type: ignore[operator]
    with pytest.raises(InvalidObject, match=reason):
        store.ingest(data, "test")
    assert not list(store.files.dicom_dir.rglob("*.dcm"))
    notes = list(store.files.quarantine_dir.glob("*.txt"))
    assert len(notes) == 1 and "origin: test" in notes[0].read_text()


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the point of the test
def test_uid_used_as_path_is_validated(store: PacsStore) -> None:
    ds = ct_instance()
    ds.SeriesInstanceUID = "../../etc"
    with pytest.raises(InvalidObject, match="SeriesInstanceUID"):
        store.ingest(part10(ds), "test")
    assert not list(store.files.root.parent.glob("etc*"))


def test_sop_instance_must_match_the_command(store: PacsStore) -> None:
    with pytest.raises(InvalidObject, match="differs"):
        store.ingest(part10(ct_instance()), "test", expected_sop="1.2.3")


def test_duplicates_keep_first_or_replace(tmp_path: Path) -> None:
    first = ct_instance(sop="1.2.3.4", name="FIRST^A")
    second = ct_instance(sop="1.2.3.4", name="SECOND^B")
    keep = PacsStore(tmp_path / "keep", fsync=False)
    keep.ingest(part10(first), "t")
    assert keep.ingest(part10(second), "t").result is StoreResult.DUPLICATE_KEPT
    assert [r["PatientName"] for r in keep.find(Level.STUDY, {})] == ["FIRST^A"]

    repl = PacsStore(tmp_path / "replace", duplicates="replace", fsync=False)
    repl.ingest(part10(first), "t")
    assert repl.ingest(part10(second), "t").result is StoreResult.REPLACED
    files = list(repl.files.dicom_dir.rglob("*.dcm"))
    assert len(files) == 1, "never two copies of one SOP Instance UID"
    assert repl.index.get_instance("1.2.3.4") is not None


def test_recover_after_crash(store: PacsStore) -> None:
    ds = ct_instance()
    stored = store.ingest(part10(ds), "t")
    # crash between publish and index commit: the file is there, its row is not
    store.index.delete_instance(stored.instance.sop_uid)
    (store.files.tmp_dir / "leftover.part").write_bytes(b"half written")
    store.path_of(stored.instance).parent.mkdir(parents=True, exist_ok=True)
    store.path_of(stored.instance).write_bytes(part10(ds))
    dropped, added = store.recover()
    assert (dropped, added) == (1, 1)
    assert store.index.get_instance(ds.SOPInstanceUID) is not None


def test_query_levels_and_matching(store: PacsStore) -> None:
    study = "1.2.826.0.1.1"
    for i, (pid, name, date) in enumerate(
        [
            ("P1", "MARTIN^LEA", "20200101"),
            ("P2", "MARTINEZ^JO", "20230601"),
            ("P3", "DURAND^AL", "20240101"),
        ]
    ):
        store.ingest(
            part10(ct_instance(patient_id=pid, name=name, study_date=date, study=f"{study}.{i}")),
            "t",
        )
    assert len(store.find(Level.STUDY, {"PatientName": "martin*"})) == 2
    assert len(store.find(Level.STUDY, {"PatientName": "MARTIN^LEA"})) == 1
    assert [r["PatientID"] for r in store.find(Level.STUDY, {"StudyDate": "20210101-"})] == [
        "P3",
        "P2",
    ]
    assert len(store.find(Level.STUDY, {"StudyInstanceUID": f"{study}.0\\{study}.2"})) == 2
    assert len(store.find(Level.PATIENT, {"PatientID": "P?"})) == 3
    assert store.find(Level.STUDY, {"ModalitiesInStudy": "MR"}) == []
    assert len(store.find(Level.IMAGE, {"StudyInstanceUID": f"{study}.1"})) == 1
    with pytest.raises(QueryError):
        store.find(Level.STUDY, {"SOPInstanceUID": "1.2"})
    with pytest.raises(QueryError):
        store.find(Level.STUDY, {"StudyDate": "-"})


def test_metadata_is_cached_and_references_bulk_data(store: PacsStore) -> None:
    ds = ct_instance(implicit=True)
    store.ingest(part10(ds), "t")
    first = store.metadata(ds.StudyInstanceUID)
    assert '"7FE00010":{"vr":"OW","BulkDataURI":"@@BASE@@/studies/' in first[0]
    assert store.index.metadata(ds.StudyInstanceUID)[0][1] == first[0]


def test_part10_without_preamble_is_stored_with_one(store: PacsStore) -> None:
    data = part10(ct_instance())
    stored = store.ingest(data[132:], "stow")
    assert store.path_of(stored.instance).read_bytes() == data


def test_recover_quarantines_a_write_cut_short(store: PacsStore) -> None:
    ds = ct_instance()
    rel = store.files.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    final = store.files.absolute(rel)
    final.parent.mkdir(parents=True)
    final.write_bytes(part10(ds)[:-500])  # renamed into place, crash before fsync and index
    (final.parent / ".0123.part").write_bytes(b"partial")
    dropped, added = store.recover()
    assert (dropped, added) == (1, 0)
    assert not final.exists()
    assert store.index.get_instance(ds.SOPInstanceUID) is None
    assert "found after a crash" in next(store.files.quarantine_dir.glob("*.txt")).read_text()


def test_elements_after_pixel_data_take_the_full_parse(store: PacsStore) -> None:
    ds = ct_instance()
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 8)  # Data Set Trailing Padding
    stored = store.ingest(part10(ds), "t")
    assert stored.result is StoreResult.STORED
    short = ct_instance()
    short.PixelData = short.PixelData[:100]  # declared size inconsistent with Rows x Columns
    with pytest.raises(InvalidObject, match="truncated"):
        store.ingest(part10(short), "t")
