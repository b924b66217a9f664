"""Identity reconciliation on import: local IPP in, INS and source id kept in Other Patient IDs."""

from __future__ import annotations

import copy
import io

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import JPEGLSLossless

from drimbox.adapters.export.localize import (
    INS_NAMESPACE_NIA,
    INS_NAMESPACE_NIR,
    LocalIdentity,
    localize,
    localize_bytes,
    parse_issuer,
)
from drimbox.domain.errors import InvalidIdentifier, InvalidInput
from drimbox.domain.identifiers import INS_OID_NIA_REAL, INS_OID_REAL, INS_OID_TEST
from tests.dicom_factory import ct_instance, part10

INS = "279035121518989"  # ANS test patient
SITE_A_OID = "1.2.250.1.999.1.1.1"
SITE_B_OID = "1.2.250.1.999.2.1.1"
WHO = LocalIdentity(ipp="B000123", ipp_issuer=f"CHU-B&{SITE_B_OID}&ISO", ins=INS)
PATIENT_KEYWORDS = {
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence",
}


def _qualifiers(oid: str) -> DicomSequence:
    item = Dataset()
    item.UniversalEntityID = oid
    item.UniversalEntityIDType = "ISO"
    return DicomSequence([item])


def _from_site_a(with_ins: bool = True) -> Dataset:
    """A CT as the source PACS holds it: site A's IPP, the INS in Other Patient IDs."""
    ds = ct_instance(patient_id="A-42")
    ds.IssuerOfPatientID = "SITE-A"
    ds.IssuerOfPatientIDQualifiersSequence = _qualifiers(SITE_A_OID)
    if with_ins:
        other = Dataset()
        other.PatientID = INS
        other.IssuerOfPatientID = "ASIP-SANTE-INS-NIR"
        other.TypeOfPatientID = "TEXT"
        other.IssuerOfPatientIDQualifiersSequence = _qualifiers(INS_OID_TEST)
        ds.OtherPatientIDsSequence = DicomSequence([other])
    return ds


def _ids(ds: Dataset) -> list[tuple[str, str, str]]:
    return [
        (
            item.PatientID,
            item.get("IssuerOfPatientID", ""),
            item.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID
            if "IssuerOfPatientIDQualifiersSequence" in item
            else "",
        )
        for item in ds.OtherPatientIDsSequence
    ]


def test_local_ipp_replaces_the_source_id() -> None:
    ds = localize(_from_site_a(), WHO)
    assert ds.PatientID == "B000123"
    assert ds.IssuerOfPatientID == "CHU-B"
    (qualifier,) = ds.IssuerOfPatientIDQualifiersSequence
    assert qualifier.UniversalEntityID == SITE_B_OID
    assert qualifier.UniversalEntityIDType == "ISO"


def test_ins_item_is_added_with_its_register_qualifiers() -> None:
    ds = localize(_from_site_a(with_ins=False), WHO)
    (ins,) = [item for item in ds.OtherPatientIDsSequence if item.PatientID == INS]
    assert ins.IssuerOfPatientID == INS_NAMESPACE_NIR
    assert ins.TypeOfPatientID == "TEXT"
    (qualifier,) = ins.IssuerOfPatientIDQualifiersSequence
    assert (qualifier.UniversalEntityID, qualifier.UniversalEntityIDType) == (INS_OID_TEST, "ISO")


def test_source_id_is_kept_and_existing_ins_not_duplicated() -> None:
    ds = localize(_from_site_a(), WHO)
    assert _ids(ds) == [
        (INS, "ASIP-SANTE-INS-NIR", INS_OID_TEST),  # the source's own item, untouched
        ("A-42", "SITE-A", SITE_A_OID),
    ]
    assert all(item.TypeOfPatientID == "TEXT" for item in ds.OtherPatientIDsSequence)


def test_ins_item_without_the_register_oid_does_not_count() -> None:
    ds = _from_site_a(with_ins=False)
    bare = Dataset()
    bare.PatientID = INS
    bare.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = DicomSequence([bare])
    localize(ds, WHO)
    assert _ids(ds) == [
        (INS, "", ""),
        (INS, INS_NAMESPACE_NIR, INS_OID_TEST),
        ("A-42", "SITE-A", SITE_A_OID),
    ]


def test_source_identified_by_the_ins_adds_no_extra_item() -> None:
    """A KOS-like source: PatientID is already the INS, with the register as issuer."""
    ds = ct_instance(patient_id=INS)
    ds.IssuerOfPatientID = "ASIP-SANTE-INS-NIR"
    ds.IssuerOfPatientIDQualifiersSequence = _qualifiers(INS_OID_TEST)
    localize(ds, WHO)
    assert _ids(ds) == [(INS, INS_NAMESPACE_NIR, INS_OID_TEST)]


def test_source_without_issuer_is_kept_without_issuer() -> None:
    ds = localize(ct_instance(patient_id="P1"), WHO)
    assert _ids(ds) == [(INS, INS_NAMESPACE_NIR, INS_OID_TEST), ("P1", "", "")]
    assert "IssuerOfPatientIDQualifiersSequence" not in ds.OtherPatientIDsSequence[1]


def test_idempotent() -> None:
    once = localize(_from_site_a(), WHO)
    twice = localize(copy.deepcopy(once), WHO)
    assert twice == once
    assert len(twice.OtherPatientIDsSequence) == 2


def test_nothing_else_changes() -> None:
    source = _from_site_a()
    ds = localize(copy.deepcopy(source), WHO)
    assert {e.keyword for e in ds} == {e.keyword for e in source}
    for element in source:
        if element.keyword not in PATIENT_KEYWORDS:
            assert ds[element.tag] == element, element.keyword
    assert ds.file_meta == source.file_meta


def test_bare_oid_issuer_and_nia() -> None:
    who = LocalIdentity("B1", SITE_B_OID, INS, INS_OID_NIA_REAL)
    ds = localize(ct_instance(), who)
    assert ds.IssuerOfPatientID == SITE_B_OID
    assert ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == SITE_B_OID
    assert (INS, INS_NAMESPACE_NIA, INS_OID_NIA_REAL) in _ids(ds)


def test_namespace_only_issuer_drops_the_source_qualifiers() -> None:
    ds = localize(_from_site_a(), LocalIdentity("B1", "CHU-B", INS, INS_OID_REAL))
    assert ds.IssuerOfPatientID == "CHU-B"
    assert "IssuerOfPatientIDQualifiersSequence" not in ds
    assert ("A-42", "SITE-A", SITE_A_OID) in _ids(ds)  # they live on in the source's item


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"CHU-B&{SITE_B_OID}&ISO", ("CHU-B", SITE_B_OID)),
        (f"&{SITE_B_OID}&ISO", ("", SITE_B_OID)),
        (f"CHU-B&{SITE_B_OID}", ("CHU-B", SITE_B_OID)),
        (SITE_B_OID, ("", SITE_B_OID)),
        ("CHU-B", ("CHU-B", "")),
        ("CHU-B&&", ("CHU-B", "")),
    ],
)
def test_parse_issuer(text: str, expected: tuple[str, str]) -> None:
    assert parse_issuer(text) == expected


@pytest.mark.parametrize(
    "ipp",
    ["", "X" * 65, "A\\B", "A\nB", "A\x00", " A1", "A1 ", "ÉLÈVE"],
)
def test_bad_ipp_is_refused(ipp: str) -> None:
    with pytest.raises(InvalidInput):
        LocalIdentity(ipp, SITE_B_OID, INS)


def test_longest_ipp_is_accepted() -> None:
    assert LocalIdentity("X" * 64, SITE_B_OID, INS).ipp == "X" * 64


@pytest.mark.parametrize(
    "issuer",
    ["", "&&", "&&ISO", "CHU-B&1.2.x&ISO", "CHU-B&1.2.3&DNS", "a&b&c&d", "CHU\\B", "X" * 65],
)
def test_bad_issuer_is_refused(issuer: str) -> None:
    with pytest.raises(InvalidInput):
        LocalIdentity("B1", issuer, INS)


@pytest.mark.parametrize(
    ("ins", "oid"),
    [("279035121518988", INS_OID_TEST), ("27903512151898", INS_OID_TEST), (INS, "1.2.3.4")],
)
def test_bad_ins_is_refused(ins: str, oid: str) -> None:
    with pytest.raises(InvalidIdentifier):
        LocalIdentity("B1", SITE_B_OID, ins, oid)


def _round_trip(source: Dataset) -> tuple[bytes, Dataset]:
    before = part10(source)
    after = localize_bytes(before, WHO)
    return before, dcmread(io.BytesIO(after))


def test_bytes_round_trip_explicit_vr() -> None:
    before, out = _round_trip(_from_site_a())
    original = dcmread(io.BytesIO(before))
    assert out.file_meta == original.file_meta
    assert out.PatientID == "B000123"
    assert out.SOPInstanceUID == original.SOPInstanceUID
    assert out.PixelData == original.PixelData
    assert localize(copy.deepcopy(original), WHO) == out


def test_bytes_round_trip_implicit_vr() -> None:
    before, out = _round_trip(ct_instance(implicit=True))
    assert out.file_meta == dcmread(io.BytesIO(before)).file_meta
    assert out.PatientID == "B000123"


def test_bytes_round_trip_keeps_jpeg_ls_fragments() -> None:
    source = _from_site_a()
    source.compress(JPEGLSLossless)
    before, out = _round_trip(source)
    original = dcmread(io.BytesIO(before))
    assert out.file_meta.TransferSyntaxUID == JPEGLSLossless
    assert out.file_meta == original.file_meta
    assert out.PixelData == original.PixelData  # encapsulated, never decoded
    assert out["PixelData"].is_undefined_length
    assert out.PatientID == "B000123"
    assert (out.pixel_array == _from_site_a().pixel_array).all()


def test_localize_bytes_refuses_what_is_not_part10() -> None:
    with pytest.raises(InvalidInput):
        localize_bytes(b"not dicom at all", WHO)
    ds = ct_instance()
    del ds.file_meta
    raw = io.BytesIO()
    ds.save_as(raw, implicit_vr=True, little_endian=True)
    with pytest.raises(InvalidInput):
        localize_bytes(raw.getvalue(), WHO)  # no preamble, no File Meta
