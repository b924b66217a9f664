"""find_exam against real PACSs (ours and Orthanc), and the KOS built from what they list."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom import dcmread

from drimbox.adapters.dimse.pacs_query import find_exam
from drimbox.adapters.dimse.scu import send_files
from drimbox.adapters.documents.kos import build_kos, kos_bytes, parse_kos
from drimbox.adapters.documents.retrieve_url import split_retrieve_url
from drimbox.domain.errors import InvalidInput, NotFound, PeerUnavailable
from drimbox.domain.manifest import (
    ExamInventory,
    ManifestPatient,
    inventory_mismatches,
    manifest_from_inventory,
)
from drimbox.synth.studies import INS_ISSUER_NAME
from tests.peers import ORTHANC, free_port, run_dcmtk, running_orthanc, running_pacs

BOX = "https://box.example.fr/dicom-web"


@dataclass(frozen=True)
class StoredStudy:
    study_uid: str
    accession: str
    patient_id: str
    patient: ManifestPatient
    instances: frozenset[tuple[str, str, str, int]]
    """(series UID, SOP class, SOP instance, instance number) of every stored file."""
    files: tuple[Path, ...]


@pytest.fixture(scope="module")
def stored(studies: dict[str, list[Path]]) -> StoredStudy:
    """The synthetic study with the most series (several series exercise the walk)."""

    def series_count(files: list[Path]) -> int:
        return len({f.parent for f in files})

    study_uid, files = max(studies.items(), key=lambda kv: (series_count(kv[1]), kv[0]))
    headers = [dcmread(f, stop_before_pixels=True) for f in files]
    first = headers[0]
    ins = next(o for o in first.OtherPatientIDsSequence if o.IssuerOfPatientID == INS_ISSUER_NAME)
    patient = ManifestPatient(
        ins=ins.PatientID,
        ins_oid=ins.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID,
        family_name=str(first.PatientName).split("^")[0],
    )
    return StoredStudy(
        study_uid=study_uid,
        accession=first.AccessionNumber,
        patient_id=first.PatientID,
        patient=patient,
        instances=frozenset(
            (h.SeriesInstanceUID, h.SOPClassUID, h.SOPInstanceUID, int(h.InstanceNumber))
            for h in headers
        ),
        files=tuple(files),
    )


def listed(inventory: ExamInventory) -> frozenset[tuple[str, str, str, int]]:
    return frozenset(
        (s.series_uid, i.sop_class_uid, i.sop_instance_uid, i.instance_number or 0)
        for s in inventory.series
        for i in s.instances
    )


def check_inventory(inventory: ExamInventory, stored: StoredStudy) -> None:
    assert listed(inventory) == stored.instances
    assert inventory.study.study_uid == stored.study_uid
    assert inventory.study.accession == stored.accession
    assert inventory.study.date is not None and inventory.study.description
    assert all(s.modality and s.number is not None for s in inventory.series)
    numbers = [s.number for s in inventory.series]
    assert numbers == sorted(numbers)  # type: ignore[type-var]
    assert (
        inventory_mismatches(inventory, patient_id=stored.patient_id, accession=stored.accession)
        == []
    )


def check_manifest(inventory: ExamInventory, stored: StoredStudy) -> None:
    manifest = manifest_from_inventory(
        inventory, stored.patient, wado_base=BOX, description="Examen publié"
    )
    parsed = parse_kos(kos_bytes(manifest))
    assert parsed.sop_instance_uids == {sop for _, _, sop, _ in stored.instances}
    kos = build_kos(manifest)
    evidence = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
    for item in evidence:
        target = split_retrieve_url(item.RetrieveURL)
        assert (target.base, target.study_uid, target.series_uid) == (
            BOX,
            stored.study_uid,
            item.SeriesInstanceUID,
        )
    referenced = {
        i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in kos.ContentSequence[1:]
    }
    assert referenced == parsed.sop_instance_uids


@pytest.fixture(scope="module")
def our_pacs(
    tmp_path_factory: pytest.TempPathFactory, stored: StoredStudy
) -> Iterator[tuple[str, int, str]]:
    folder = tmp_path_factory.mktemp("query-pacs")
    with running_pacs(folder / "pacs") as pacs:
        report = send_files(stored.files, "127.0.0.1", pacs.port, pacs.aet)
        assert report.sent == len(stored.files) and not report.failed
        yield "127.0.0.1", pacs.port, pacs.aet


def test_our_pacs_lists_exactly_the_stored_instances(
    our_pacs: tuple[str, int, str], stored: StoredStudy
) -> None:
    host, port, aet = our_pacs
    inventory = find_exam(host, port, aet, study_uid=stored.study_uid)
    check_inventory(inventory, stored)
    assert inventory.patient_id == stored.patient_id
    check_manifest(inventory, stored)


def test_lookup_by_accession(our_pacs: tuple[str, int, str], stored: StoredStudy) -> None:
    host, port, aet = our_pacs
    by_uid = find_exam(host, port, aet, study_uid=stored.study_uid)
    assert find_exam(host, port, aet, accession=stored.accession) == by_uid


def test_report_disagreeing_with_pacs_is_held(
    our_pacs: tuple[str, int, str], stored: StoredStudy
) -> None:
    host, port, aet = our_pacs
    inventory = find_exam(host, port, aet, study_uid=stored.study_uid)
    found = inventory_mismatches(inventory, patient_id="OTHER", accession=stored.accession)
    assert [m.field for m in found] == ["PatientID"]


def test_unknown_study_and_accession(our_pacs: tuple[str, int, str]) -> None:
    host, port, aet = our_pacs
    with pytest.raises(NotFound):
        find_exam(host, port, aet, study_uid="1.2.3.4.5.6.7.8.9")
    with pytest.raises(NotFound):
        find_exam(host, port, aet, accession="NO-SUCH-ACC")
    with pytest.raises(InvalidInput):
        find_exam(host, port, aet, accession="01*")
    with pytest.raises(InvalidInput):
        find_exam(host, port, aet)


def test_stopped_pacs_is_unavailable(tmp_path: Path) -> None:
    with running_pacs(tmp_path / "pacs") as pacs:
        port, aet = pacs.port, pacs.aet
    with pytest.raises(PeerUnavailable):
        find_exam("127.0.0.1", port, aet, study_uid="1.2.3", timeout=5)
    with pytest.raises(PeerUnavailable):
        find_exam("127.0.0.1", free_port(), aet, study_uid="1.2.3", timeout=5)


@pytest.mark.orthanc
@pytest.mark.dcmtk
@pytest.mark.skipif(ORTHANC is None, reason="Orthanc is not installed")
def test_orthanc_lists_exactly_the_stored_instances(tmp_path: Path, stored: StoredStudy) -> None:
    # Orthanc answers C-FIND only to known modalities: declare our calling AE
    known = {"DRIMBOX": ("DRIMBOX", "127.0.0.1", free_port())}
    with running_orthanc(tmp_path / "orthanc", modalities=known) as orthanc:
        run_dcmtk(
            "storescu", "-aec", orthanc.aet, "127.0.0.1", str(orthanc.port), *map(str, stored.files)
        )
        inventory = find_exam("127.0.0.1", orthanc.port, orthanc.aet, "DRIMBOX", stored.study_uid)
        check_inventory(inventory, stored)
        check_manifest(inventory, stored)
        by_accession = find_exam(
            "127.0.0.1", orthanc.port, orthanc.aet, "DRIMBOX", accession=stored.accession
        )
        assert listed(by_accession) == stored.instances
        with pytest.raises(NotFound):
            find_exam("127.0.0.1", orthanc.port, orthanc.aet, "DRIMBOX", "1.2.3.4.5.6.7.8.9")
