"""The pure manifest model: from PACS inventory to manifest, and report/PACS mismatches."""

from __future__ import annotations

from datetime import date

from drimbox.domain.identifiers import INS_OID_TEST, is_valid_uid
from drimbox.domain.manifest import (
    ExamInventory,
    ManifestInstance,
    ManifestPatient,
    ManifestSeries,
    ManifestStudy,
    Mismatch,
    inventory_mismatches,
    manifest_from_inventory,
    new_uid,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


def inventory() -> ExamInventory:
    study = ManifestStudy("1.2.3", date(2024, 1, 15), accession="ACC1")
    series = (
        ManifestSeries("1.2.3.1", "CT", 1, instances=(ManifestInstance(CT, "1.2.3.1.1", 1),)),
        ManifestSeries("1.2.3.2", "CT", 2),  # an empty series is not published
    )
    return ExamInventory(study, "IPP1", "SITE", "DOE^JANE", series)


def test_new_uids_are_valid_and_distinct() -> None:
    uids = {new_uid() for _ in range(100)}
    assert len(uids) == 100 and all(map(is_valid_uid, uids))


def test_manifest_from_inventory_sets_urls() -> None:
    patient = ManifestPatient("279035121518989", INS_OID_TEST)
    m = manifest_from_inventory(
        inventory(), patient, wado_base="https://box.fr/rs/", description="Examen",
        retrieve_location_uid="1.2.250.9", accession_oid="1.2.250.8",
    )  # fmt: skip
    (series,) = m.series
    assert series.retrieve_url == "https://box.fr/rs/studies/1.2.3/series/1.2.3.1"
    assert series.retrieve_location_uid == "1.2.250.9"
    assert m.study.accession_oid == "1.2.250.8"
    assert m.patient is patient and is_valid_uid(m.sop_instance_uid)
    assert m.modalities == ("CT",) and m.instance_count == 1


def test_no_mismatch_when_report_agrees() -> None:
    assert (
        inventory_mismatches(inventory(), patient_id="IPP1", accession="ACC1", study_uid="1.2.3")
        == []
    )


def test_mismatches_are_listed() -> None:
    found = inventory_mismatches(inventory(), patient_id="IPP2", accession="acc1")
    assert found == [
        Mismatch("PatientID", "IPP2", "IPP1"),
        Mismatch("AccessionNumber", "acc1", "ACC1"),
    ]
    assert "PatientID" in str(found[0])
    empty = ExamInventory(ManifestStudy("1.2.3", accession="ACC1"), "IPP1")
    assert inventory_mismatches(empty, patient_id="IPP1", accession="ACC1") == [
        Mismatch("instances", "at least one", "none")
    ]
