"""The header reader of the retrieval hot path agrees with pydicom, or steps aside."""

from __future__ import annotations

import io

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from drimbox.adapters.dicomweb.part10 import quick_uids, stored_syntax
from tests.dicom_factory import ct_instance, part10


def _uids(data: bytes) -> tuple[str, str, str]:
    ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def test_explicit_little_endian_is_read_without_pydicom() -> None:
    data = part10(ct_instance())
    assert quick_uids(data) == _uids(data)
    assert stored_syntax(data) == "1.2.840.10008.1.2.1"


def test_compressed_data_set_is_explicit_too() -> None:
    ds = ct_instance(size=64)
    ds.compress("1.2.840.10008.1.2.4.80")
    data = part10(ds)
    assert stored_syntax(data) == "1.2.840.10008.1.2.4.80"
    assert quick_uids(data) == _uids(data)


def test_a_sequence_before_the_uids_is_walked_over() -> None:
    ds = ct_instance()
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator = "X", "99"
    ds.ProcedureCodeSequence = Sequence([item])  # (0008,1032): between SOP and study UIDs
    data = part10(ds)
    assert quick_uids(data) == _uids(data)


@pytest.mark.parametrize("mutate", ["implicit", "undefined length", "no preamble", "truncated"])
def test_anything_unusual_is_left_to_pydicom(mutate: str) -> None:
    ds = ct_instance(implicit=mutate == "implicit")
    data = part10(ds)
    if mutate == "undefined length":
        item = Dataset()
        item.CodeValue = "X"
        ds.ProcedureCodeSequence = Sequence([item])
        ds.ProcedureCodeSequence.is_undefined_length = True
        data = part10(ds)
        # pydicom writes defined lengths for explicit VR unless told; either way no wrong answer
        assert quick_uids(data) in (None, _uids(data))
        return
    if mutate == "no preamble":
        data = data[132:]
    if mutate == "truncated":
        data = data[:200]
    assert quick_uids(data) is None
