"""The KOS imaging manifest: build from the model, check the IOD tag by tag, parse back."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta, timezone
from pathlib import Path

import pytest
from pydicom import config, dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from drimbox.adapters.documents.kos import (
    INS_ISSUER,
    KOS_SOP_CLASS,
    build_kos,
    content_value_type,
    default_description,
    kos_bytes,
    parse_kos,
)
from drimbox.domain.errors import InvalidIdentifier, InvalidInput
from drimbox.domain.identifiers import INS_OID_TEST
from drimbox.domain.manifest import (
    Code,
    ImagingManifest,
    ManifestInstance,
    ManifestPatient,
    ManifestSeries,
    ManifestStudy,
    RequestedProcedure,
    series_url,
)

INS = "279035121518989"
CT = "1.2.840.10008.5.1.4.1.1.2"
BASE = "https://box.example.fr/dicom-web"
PARIS = timezone(timedelta(hours=1))


def sample_manifest(series_count: int = 2, per_series: int = 3) -> ImagingManifest:
    study_uid = generate_uid()
    series = []
    for s in range(series_count):
        uid = generate_uid()
        instances = tuple(
            ManifestInstance(CT, generate_uid(), i + 1, None if i else 1) for i in range(per_series)
        )
        series.append(
            ManifestSeries(
                uid, "CT", s + 1, f"Série {s + 1} œdème", "CHEST",
                series_url(BASE, study_uid, uid), "1.2.250.1.999.1.2", "", instances,
            )
        )  # fmt: skip
    return ImagingManifest(
        sop_instance_uid=generate_uid(),
        series_instance_uid=generate_uid(),
        patient=ManifestPatient(
            INS, INS_OID_TEST, "PAT-TROIS", "Dominique", date(1979, 3, 12), "F"
        ),
        study=ManifestStudy(
            study_uid,
            date=date(2024, 1, 15),
            time=time(10, 15, 0),
            description="Scanner thoracique",
            accession="0124000042",
            accession_oid="1.2.250.1.999.1.1.3",
            referring_physician="MARTIN^Hélène^^Dr",
            study_id="42",
        ),
        series=tuple(series),
        description="Scanner thoracique du 15/01/2024 : 2 séries.",
        request=RequestedProcedure(
            placer_order_number="DEM240000042",
            placer_order_oid="1.2.250.1.999.1.1.4",
            filler_order_number="F-42",
            filler_order_oid="1.2.250.1.999.1.1.5",
            procedure_id="RP42",
            procedure_description="Scanner thoracique",
            procedure_code=Code("24627-2", "LN", "CT Chest"),
        ),
        series_number=1,
        instance_number=1,
        created=datetime(2024, 1, 16, 9, 30, 5, tzinfo=PARIS),
        manufacturer="drimbox",
        institution_name="Centre d'imagerie",
    )


@pytest.fixture
def manifest() -> ImagingManifest:
    return sample_manifest()


def test_round_trip_is_equal(manifest: ImagingManifest) -> None:
    assert parse_kos(kos_bytes(manifest)) == manifest
    assert parse_kos(build_kos(manifest)) == manifest


def test_round_trip_keeps_microseconds_and_utc(manifest: ImagingManifest) -> None:
    m = replace(manifest, created=datetime(2024, 1, 16, 9, 30, 5, 120, tzinfo=UTC))
    assert parse_kos(kos_bytes(m)).created == m.created


def test_file_is_strict_part10(
    tmp_path: Path, manifest: ImagingManifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every value checked against its VR when written, and read back in strict mode
    monkeypatch.setattr(config.settings, "writing_validation_mode", config.RAISE)
    path = tmp_path / "kos.dcm"
    path.write_bytes(kos_bytes(manifest))
    with config.strict_reading():
        ds = dcmread(path)
        assert [e.keyword for e in ds.iterall() if not e.keyword] == []
    assert path.read_bytes()[128:132] == b"DICM"
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.file_meta.MediaStorageSOPClassUID == KOS_SOP_CLASS
    assert ds.file_meta.MediaStorageSOPInstanceUID == manifest.sop_instance_uid
    assert ds.file_meta.ImplementationClassUID


# Type 1 and 2 attributes of the KO IOD modules (PS3.3 A.35.4): Patient, General Study,
# Key Object Document Series, General Equipment, Key Object Document, SR Document Content,
# SOP Common
REQUIRED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "Modality", "SeriesInstanceUID", "SeriesNumber", "ReferencedPerformedProcedureStepSequence",
    "Manufacturer", "InstanceNumber", "ContentDate", "ContentTime",
    "CurrentRequestedProcedureEvidenceSequence", "ValueType", "ConceptNameCodeSequence",
    "ContinuityOfContent", "ContentSequence", "SOPClassUID", "SOPInstanceUID",
)  # fmt: skip
TYPE_1 = {"StudyInstanceUID", "Modality", "SeriesInstanceUID", "SeriesNumber", "InstanceNumber",
          "ContentDate", "ContentTime", "CurrentRequestedProcedureEvidenceSequence", "ValueType",
          "ConceptNameCodeSequence", "ContinuityOfContent", "SOPClassUID", "SOPInstanceUID"}  # fmt: skip


def test_required_attributes_present(manifest: ImagingManifest) -> None:
    ds = build_kos(manifest)
    assert [k for k in REQUIRED if k not in ds] == []
    assert [k for k in TYPE_1 if ds[k].is_empty] == []


def test_sop_common_and_series_modules(manifest: ImagingManifest) -> None:
    ds = build_kos(manifest)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.SOPClassUID == KOS_SOP_CLASS
    assert ds.SOPInstanceUID == manifest.sop_instance_uid
    assert (ds.InstanceCreationDate, ds.InstanceCreationTime) == ("20240116", "093005")
    assert ds.TimezoneOffsetFromUTC == "+0100"
    assert ds.Modality == "KO"
    assert ds.SeriesInstanceUID == manifest.series_instance_uid
    assert ds.SeriesNumber == 1 and ds.InstanceNumber == 1
    assert ds.ReferencedPerformedProcedureStepSequence == []
    assert (ds.ContentDate, ds.ContentTime) == ("20240116", "093005")
    assert ds.Manufacturer == "drimbox"


def test_patient_is_identified_by_ins(manifest: ImagingManifest) -> None:
    ds = build_kos(manifest)
    assert ds.PatientID == INS
    assert ds.IssuerOfPatientID == INS_ISSUER == "ASIP-SANTE-INS-NIR"
    (q,) = ds.IssuerOfPatientIDQualifiersSequence
    assert (q.UniversalEntityID, q.UniversalEntityIDType) == (INS_OID_TEST, "ISO")
    (other,) = ds.OtherPatientIDsSequence
    assert other.PatientID == INS and other.TypeOfPatientID == "TEXT"
    assert other.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == INS_OID_TEST
    assert str(ds.PatientName) == "PAT-TROIS^Dominique"
    assert (ds.PatientBirthDate, ds.PatientSex) == ("19790312", "F")


def test_study_and_request(manifest: ImagingManifest) -> None:
    ds = build_kos(manifest)
    assert ds.StudyInstanceUID == manifest.study.study_uid
    assert (ds.StudyDate, ds.StudyTime, ds.StudyID) == ("20240115", "101500", "42")
    assert ds.AccessionNumber == "0124000042"
    assert ds.ReferringPhysicianName == "MARTIN^Hélène^^Dr"
    (req,) = ds.ReferencedRequestSequence
    assert req.StudyInstanceUID == manifest.study.study_uid
    assert req.AccessionNumber == "0124000042"
    issuer = req.IssuerOfAccessionNumberSequence[0]
    assert (issuer.UniversalEntityID, issuer.UniversalEntityIDType) == (
        "1.2.250.1.999.1.1.3",
        "ISO",
    )
    assert req.PlacerOrderNumberImagingServiceRequest == "DEM240000042"
    assert req.OrderPlacerIdentifierSequence[0].UniversalEntityID == "1.2.250.1.999.1.1.4"
    assert req.FillerOrderNumberImagingServiceRequest == "F-42"
    assert (req.RequestedProcedureID, req.RequestedProcedureDescription) == (
        "RP42",
        "Scanner thoracique",
    )
    assert req.RequestedProcedureCodeSequence[0].CodeValue == "24627-2"


def test_content_tree(manifest: ImagingManifest) -> None:
    ds = build_kos(manifest)
    assert ds.ValueType == "CONTAINER"
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113030",
        "DCM",
        "Manifest",
    )
    assert ds.ContinuityOfContent == "SEPARATE"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "2010"
    text, *images = ds.ContentSequence
    assert (text.RelationshipType, text.ValueType) == ("CONTAINS", "TEXT")
    assert text.ConceptNameCodeSequence[0].CodeValue == "113012"
    assert text.TextValue == manifest.description
    assert all((i.RelationshipType, i.ValueType) == ("CONTAINS", "IMAGE") for i in images)
    referenced = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images]
    assert referenced == [i.sop_instance_uid for _, i in manifest.instances()]


def test_evidence_has_retrieve_url_per_series(manifest: ImagingManifest) -> None:
    ds = build_kos(manifest)
    (study,) = ds.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == manifest.study.study_uid
    assert len(study.ReferencedSeriesSequence) == len(manifest.series)
    for item, series in zip(study.ReferencedSeriesSequence, manifest.series, strict=True):
        assert item.SeriesInstanceUID == series.series_uid
        assert item[0x00081190].VR == "UR"
        assert (
            item.RetrieveURL == f"{BASE}/studies/{ds.StudyInstanceUID}/series/{series.series_uid}"
        )
        assert item.RetrieveLocationUID == "1.2.250.1.999.1.2"
        refs = [
            (r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID)
            for r in item.ReferencedSOPSequence
        ]
        assert refs == [(i.sop_class_uid, i.sop_instance_uid) for i in series.instances]


def test_highdicom_reads_it_as_a_valid_kos(manifest: ImagingManifest) -> None:
    """An independent reader: highdicom checks the TID 2010 root and resolves the evidence."""
    ko = pytest.importorskip("highdicom.ko")  # a test-only dependency
    ds = dcmread(io.BytesIO(kos_bytes(manifest)))
    kos = ko.KeyObjectSelectionDocument.from_dataset(ds)
    for series, instance in manifest.instances():
        assert kos.resolve_reference(instance.sop_instance_uid) == (
            manifest.study.study_uid,
            series.series_uid,
            instance.sop_instance_uid,
        )


def test_every_manifest_gets_its_own_uid(manifest: ImagingManifest) -> None:
    other = sample_manifest()
    assert build_kos(manifest).SOPInstanceUID != build_kos(other).SOPInstanceUID


def test_refuses_bad_ins_missing_url_and_empty(manifest: ImagingManifest) -> None:
    with pytest.raises(InvalidIdentifier):
        build_kos(replace(manifest, patient=replace(manifest.patient, ins="279035121518988")))
    no_url = replace(manifest.series[0], retrieve_url="")
    with pytest.raises(InvalidInput, match="Retrieve URL"):
        build_kos(replace(manifest, series=(no_url,)))
    with pytest.raises(InvalidInput, match="at least one"):
        build_kos(replace(manifest, series=()))
    bad_uid = replace(manifest.series[0], series_uid="1.2.03")
    with pytest.raises(InvalidIdentifier):
        build_kos(replace(manifest, series=(bad_uid,)))


def test_default_description_is_french(manifest: ImagingManifest) -> None:
    text = default_description(manifest)
    assert text == "Examen Scanner thoracique du 15/01/2024 : 2 séries, 6 objets (CT)."
    ds = build_kos(replace(manifest, description=""))
    assert ds.ContentSequence[0].TextValue == text


def test_value_types_for_non_images() -> None:
    assert content_value_type(CT) == "IMAGE"
    assert content_value_type("1.2.840.10008.5.1.4.1.1.104.1") == "COMPOSITE"
    assert content_value_type("1.2.840.10008.5.1.4.1.1.88.22") == "COMPOSITE"
    assert content_value_type("1.2.840.10008.5.1.4.1.1.9.1.1") == "WAVEFORM"


# --- parsing foreign KOS ------------------------------------------------------------------


def minimal_kos(**series_attrs: str) -> Dataset:
    """What a sparse third-party KOS may look like: no request, no descriptions."""
    ds = Dataset()
    ds.SOPClassUID = KOS_SOP_CLASS
    ds.SOPInstanceUID = "1.2.3.4"
    ds.StudyInstanceUID = "1.2.3"
    ds.SeriesInstanceUID = "1.2.3.5"
    ds.PatientID = "IPP77"
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT
    ref.ReferencedSOPInstanceUID = "1.2.3.6.1"
    series = Dataset()
    series.SeriesInstanceUID = "1.2.3.6"
    for k, v in series_attrs.items():
        setattr(series, k, v)
    series.ReferencedSOPSequence = [ref]
    study = Dataset()
    study.StudyInstanceUID = "1.2.3"
    study.ReferencedSeriesSequence = [series]
    ds.CurrentRequestedProcedureEvidenceSequence = [study]
    return ds


def test_parse_sparse_kos_with_ae_title() -> None:
    m = parse_kos(minimal_kos(RetrieveAETitle="PACS1"))
    assert m.patient.ins == "IPP77" and m.patient.ins_oid == ""
    assert m.request is None and m.created is None and m.description == ""
    (series,) = m.series
    assert (series.retrieve_url, series.retrieve_ae_title) == ("", "PACS1")
    assert series.instances == (ManifestInstance(CT, "1.2.3.6.1"),)


def test_parse_study_url_and_ins_from_other_ids() -> None:
    ds = minimal_kos(RetrieveURL="https://pacs.example.fr/rs/studies/1.2.3")
    other = Dataset()
    other.PatientID = INS
    q = Dataset()
    q.UniversalEntityID, q.UniversalEntityIDType = INS_OID_TEST, "ISO"
    other.IssuerOfPatientIDQualifiersSequence = [q]
    ds.OtherPatientIDsSequence = [other]
    m = parse_kos(ds)
    assert (m.patient.ins, m.patient.ins_oid) == (INS, INS_OID_TEST)
    assert m.series[0].retrieve_url.endswith("/studies/1.2.3")


def test_parse_accession_from_request_like_the_demonstrator() -> None:
    ds = minimal_kos()
    ds.AccessionNumber = ""
    req = Dataset()
    req.StudyInstanceUID, req.AccessionNumber = "1.2.3", "ACC9"
    ds.ReferencedRequestSequence = [req]
    assert parse_kos(ds).study.accession == "ACC9"


def test_parse_refuses_non_kos_and_garbage() -> None:
    ds = minimal_kos()
    ds.SOPClassUID = CT
    with pytest.raises(InvalidInput, match="not a KOS"):
        parse_kos(ds)
    with pytest.raises(InvalidInput):
        parse_kos(b"not dicom at all")
    del ds.CurrentRequestedProcedureEvidenceSequence
    ds.SOPClassUID = KOS_SOP_CLASS
    with pytest.raises(InvalidInput, match="Evidence"):
        parse_kos(ds)


def test_parse_refuses_multi_study_evidence() -> None:
    ds = minimal_kos()
    extra = Dataset()
    extra.StudyInstanceUID = "1.2.9"
    extra.ReferencedSeriesSequence = []
    ds.CurrentRequestedProcedureEvidenceSequence.append(extra)
    with pytest.raises(InvalidInput, match="2 studies"):
        parse_kos(ds)
