import io

from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID

from drimbox.adapters.dimse.upper_layer import IMPLEMENTATION_VERSION, file_meta
from tests.dicom_factory import ct_instance


def test_file_meta_matches_pydicom_byte_for_byte() -> None:
    ours = file_meta("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2.1", "CT01")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    meta.MediaStorageSOPInstanceUID = UID("1.2.3.45")
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1")
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    meta.SourceApplicationEntityTitle = "CT01"
    buf = io.BytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)  # type: ignore[arg-type]
    assert ours == buf.getvalue()


def test_file_meta_reads_back_with_a_dataset() -> None:
    ds = ct_instance()
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_dataset(out, ds)
    dataset_bytes = out.getvalue()
    meta = file_meta(ds.SOPClassUID, ds.SOPInstanceUID, "1.2.840.10008.1.2.1", "ODD")
    read = dcmread(io.BytesIO(b"\x00" * 128 + b"DICM" + meta + dataset_bytes))
    assert read.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert read.file_meta.SourceApplicationEntityTitle == "ODD"
    assert read.SOPInstanceUID == ds.SOPInstanceUID
