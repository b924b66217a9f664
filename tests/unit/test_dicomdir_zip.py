"""The exam as a ZIP of a DICOM File-set: DICOMDIR at the root, source files byte for byte."""

from __future__ import annotations

import io
import logging
import subprocess
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.fileset import FileSet
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from drimbox.adapters.export.dicomdir_zip import _member_name, discard_staging, write_exam_zip
from drimbox.domain.errors import InvalidInput
from tests.dicom_factory import ct_instance, part10

DCMDUMP = Path("/usr/bin/dcmdump")
README = "Examen TDM THORAX du 15/01/2024\nTransmis par DRIMbox."


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _sr(study: str) -> Dataset:
    """A Basic Text SR report in the CT's study: no pixel data."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = BasicTextSRStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName = "P1", "DUPONT^JEANNE"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240115", "101500", "ACC1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 99, 1
    ds.ContentDate, ds.ContentTime = "20240115", "113000"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = DicomSequence(
        [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    )
    finding = Dataset()
    finding.RelationshipType, finding.ValueType = "CONTAINS", "TEXT"
    finding.ConceptNameCodeSequence = DicomSequence([_code("121071", "DCM", "Finding")])
    finding.TextValue = "Pas d'anomalie."
    ds.ContentSequence = DicomSequence([finding])
    return ds


def _exam(folder: Path) -> list[Path]:
    """5 instances, 2 series: 4 CT slices (the last JPEG-LS compressed) and 1 SR report."""
    study, series = generate_uid(), generate_uid()
    datasets = [ct_instance(study=study, series=series, number=n) for n in range(1, 5)]
    datasets[-1].compress(JPEGLSLossless)
    datasets.append(_sr(study))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, ds in enumerate(datasets):
        path = folder / f"{n}.dcm"  # cache-like names, nothing like a File ID
        path.write_bytes(part10(ds))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _exam(tmp_path_factory.mktemp("cache"))


def _zip(files: list[Path], tmp: Path, **kwargs: str) -> tuple[int, zipfile.ZipFile]:
    out = io.BytesIO()
    count = write_exam_zip(files, out, tmp_dir=tmp, **kwargs)
    return count, zipfile.ZipFile(io.BytesIO(out.getvalue()))


def _extract(zf: zipfile.ZipFile, folder: Path) -> Path:
    zf.extractall(folder)
    return folder / "DICOMDIR"


def test_zip_holds_a_dicomdir_indexing_every_instance(exam: list[Path], tmp_path: Path) -> None:
    count, zf = _zip(exam, tmp_path, readme=README)
    assert count == 5
    assert zf.testzip() is None
    dicomdir = _extract(zf, tmp_path / "media")
    ds = dcmread(dicomdir)
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    fileset = FileSet(dicomdir)
    try:
        sources = {str(dcmread(p).SOPInstanceUID): p for p in exam}
        assert {str(i.SOPInstanceUID) for i in fileset} == set(sources)
        for instance in fileset:
            source = sources[str(instance.SOPInstanceUID)]
            shipped = Path(instance.path)
            assert shipped.read_bytes() == source.read_bytes()  # the very file, not a copy
            assert instance.load() == dcmread(source)
            assert instance.TransferSyntaxUID == dcmread(source).file_meta.TransferSyntaxUID
    finally:
        discard_staging(fileset)
    record_types = [r.DirectoryRecordType for r in ds.DirectoryRecordSequence]
    assert record_types.count("PATIENT") == 1
    assert record_types.count("STUDY") == 1
    assert record_types.count("SERIES") == 2
    assert record_types.count("IMAGE") == 4
    assert record_types.count("SR DOCUMENT") == 1


def test_readme_and_member_names(exam: list[Path], tmp_path: Path) -> None:
    _, zf = _zip(exam, tmp_path, readme=README)
    names = zf.namelist()
    assert names[:2] == ["DICOMDIR", "README.TXT"]
    assert zf.read("README.TXT").decode() == README.replace("\n", "\r\n") + "\r\n"
    for name in names[2:]:
        parts = name.split("/")
        assert len(parts) == 4, name  # PATIENT/STUDY/SERIES/instance
        assert all(p.isupper() and p.isalnum() and len(p) <= 8 for p in parts), name
    assert len(names) == 2 + 5


def test_compression_per_transfer_syntax(exam: list[Path], tmp_path: Path) -> None:
    _, zf = _zip(exam, tmp_path)
    syntax_by_size = {p.stat().st_size: dcmread(p).file_meta.TransferSyntaxUID for p in exam}
    assert zf.getinfo("DICOMDIR").compress_type == zipfile.ZIP_DEFLATED
    for info in zf.infolist()[1:]:
        syntax = syntax_by_size[info.file_size]
        expected = zipfile.ZIP_STORED if syntax == JPEGLSLossless else zipfile.ZIP_DEFLATED
        assert info.compress_type == expected, (info.filename, syntax)
    assert "README.TXT" not in zf.namelist()


def test_missing_study_id_is_invented_in_the_record_only(exam: list[Path], tmp_path: Path) -> None:
    assert "StudyID" not in dcmread(exam[0])
    _, zf = _zip(exam, tmp_path)
    ds = dcmread(io.BytesIO(zf.read("DICOMDIR")))
    (study,) = [r for r in ds.DirectoryRecordSequence if r.DirectoryRecordType == "STUDY"]
    assert study.StudyID == "ACC1"  # the accession number stands in


def test_non_dicom_and_duplicates_are_skipped(
    exam: list[Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(exam[0].read_bytes()[:200])
    with caplog.at_level(logging.WARNING, logger="drimbox.adapters.export.dicomdir_zip"):
        count, zf = _zip([text, *exam, truncated, exam[0], tmp_path / "gone.dcm"], tmp_path)
    assert count == 5
    assert len(zf.namelist()) == 1 + 5
    logged = caplog.text
    assert "notes.txt" in logged and "truncated.dcm" in logged and "gone.dcm" in logged
    assert "already in" in logged


def test_nothing_to_write_is_invalid(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    out = io.BytesIO()
    with pytest.raises(InvalidInput):
        write_exam_zip([], out, tmp_dir=tmp_path)
    with pytest.raises(InvalidInput):
        write_exam_zip([text], out, tmp_dir=tmp_path)
    assert list(tmp_path.iterdir()) == [text]  # no temporary File-set left behind


class _WriteOnly(io.RawIOBase):
    """A socket-like sink: write only, no tell or seek."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += b
        return len(b)


def test_streams_to_an_unseekable_sink(exam: list[Path], tmp_path: Path) -> None:
    sink = _WriteOnly()
    assert write_exam_zip(exam, sink, readme="x", tmp_dir=tmp_path) == 5  # type: ignore[arg-type]
    zf = zipfile.ZipFile(io.BytesIO(bytes(sink.data)))
    assert zf.testzip() is None
    assert len(zf.namelist()) == 2 + 5


@pytest.mark.parametrize(
    "components",
    [[], ["..", "IM000000"], ["/ETC", "X"], ["pt000000"], ["TOOLONGNAME"], ["A/B"], ["A"] * 9],
)
def test_unsafe_file_ids_are_refused(components: list[str]) -> None:
    with pytest.raises(ValueError, match="unsafe"):
        _member_name(components)


@pytest.mark.dcmtk
@pytest.mark.skipif(not DCMDUMP.exists(), reason="dcmtk's dcmdump is not installed")
def test_dcmdump_reads_the_dicomdir(exam: list[Path], tmp_path: Path) -> None:
    _, zf = _zip(exam, tmp_path, readme=README)
    dicomdir = _extract(zf, tmp_path / "media")
    result = subprocess.run(
        [str(DCMDUMP), "-q", str(dicomdir)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "DirectoryRecordSequence" in result.stdout
    assert result.stdout.count("ReferencedFileID") == 5
