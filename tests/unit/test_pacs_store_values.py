"""Ingest reads attributes from the raw bytes when it can: the same values as pydicom's."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from drimbox.adapters.storage.pacs_store import _int, _text
from drimbox.synth import generate_history

KEYWORDS = ["PatientName", "PatientID", "StudyDate", "Modality", "SOPInstanceUID",
            "InstanceNumber", "SeriesDescription", "AccessionNumber", "Rows", "Columns"]  # fmt: skip


def _written(charset: str | None, name: str, syntax: str) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    ds.PatientID = "IPP-42 "
    ds.StudyDate = "20261208"
    ds.Modality = "CT"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.InstanceNumber = "0012"
    ds.SeriesDescription = "Thorax\\Abdomen"  # two values: pydicom's MultiValue, as before
    ds.AccessionNumber = ""
    ds.Rows, ds.Columns = 512, 256
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False, little_endian=syntax != ExplicitVRBigEndian,
               implicit_vr=syntax == ImplicitVRLittleEndian)  # fmt: skip
    return dcmread(io.BytesIO(out.getvalue()), force=True)


@pytest.mark.parametrize(
    ("charset", "name"),
    [(None, "DUPONT^Jean"), ("ISO_IR 100", "LEFÈVRE^Hélène"), ("ISO_IR 192", "ÉLODIE^Zoé"),
     ("\\ISO 2022 IR 87", "Yamada^Tarou"), ("ISO_IR 144", "Иванов^Иван")],
)  # fmt: skip
@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]
)
def test_raw_values_are_pydicoms(charset: str | None, name: str, syntax: str) -> None:
    fast = _written(charset, name, syntax)
    slow = _written(charset, name, syntax)
    for keyword in KEYWORDS:
        assert _text(fast, keyword) == _expected(slow, keyword), keyword
    assert _text(fast, "PatientName") == name
    assert _int(fast, "InstanceNumber") == 12
    assert (_int(fast, "Rows"), _int(fast, "Columns")) == (512, 256)


def _expected(ds: Dataset, keyword: str) -> str:
    value = ds[keyword].value if keyword in ds else None
    return "" if value is None else str(value).strip()


def test_synthetic_files_read_the_same(tmp_path: Path) -> None:
    generate_history(tmp_path, patients=1, sites=1, seed=3, size="small")
    for path in sorted(tmp_path.rglob("*.dcm"))[:40]:
        fast, slow = dcmread(path, stop_before_pixels=True), dcmread(path, stop_before_pixels=True)
        for keyword in KEYWORDS:
            assert _text(fast, keyword) == _expected(slow, keyword), (path.name, keyword)
