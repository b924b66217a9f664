"""Small, valid DICOM objects for unit tests (no PHI: made-up names and UIDs)."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid


def ct_instance(
    patient_id: str = "P1",
    name: str = "DUPONT^JEANNE",
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    number: int = 1,
    study_date: str = "20240115",
    implicit: bool = False,
    size: int = 16,
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop or generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = (
        patient_id,
        name,
        "F",
        "19700101",
    )
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = study_date, "101500", "ACC1"
    ds.StudyDescription, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = (
        "TDM THORAX",
        "CT",
        1,
        number,
    )
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = (np.arange(size * size, dtype=np.uint16) + number).tobytes()
    return ds


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
