"""drimbox synth: determinism, identities, DICOM coherence, CDA, HL7 and pixel realism."""

from __future__ import annotations

import base64
import dataclasses
import json
import random
import re
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

import hl7
import numpy as np
import pydicom
import pytest
from lxml import etree

from drimbox.domain.identifiers import INS_OID_TEST, Ins, is_valid_uid
from drimbox.synth import generate_history
from drimbox.synth import hl7 as synth_hl7
from drimbox.synth.cda import ReportDocument, make_report, render_pdf
from drimbox.synth.images import ct_slices
from drimbox.synth.patients import make_patients
from drimbox.synth.sites import luhn_digit, make_physician, make_sites
from drimbox.synth.studies import EXAM_TYPES, SOP_CLASSES, Exam, iter_instances, plan_exam

NS = {"h": "urn:hl7-org:v3", "ps3": "urn:dicom-org:ps3-20"}
SEED = 5


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("history")
    generate_history(out, patients=3, sites=2, seed=SEED, size="small")
    return out, json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def _exam(key: str, *, size: str = "small", seed: int = 1) -> Exam:
    sites = make_sites(1, seed)
    patient = make_patients(1, sites, seed)[0]
    rng = random.Random(seed)
    return plan_exam(
        rng,
        EXAM_TYPES[key],
        patient,
        sites[0],
        datetime(2023, 7, 3, 10, 15),
        "small" if size == "small" else "realistic",
        accession="0123000042",
        order_number="DEM230000042",
        visit_number="0100000042",
        study_id="42",
        referring=make_physician(rng),
    )


def _report(exam: Exam, version: int = 1, replaces: str | None = None) -> ReportDocument:
    return make_report(
        exam,
        document_id=f"{exam.site.document_oid}.{version}",
        set_id=f"{exam.site.set_oid}.1",
        authored=datetime(2023, 7, 3, 12, 0),
        version=version,
        replaces=replaces,
    )


def _find(element: etree._Element, path: str) -> etree._Element:
    found = element.find(path, NS)
    assert found is not None, path
    return found


def _attr(element: etree._Element, path: str, name: str) -> str:
    value = _find(element, path).get(name)
    assert value is not None, f"{path}/@{name}"
    return value


def _cda_from(message: hl7.Message) -> etree._Element:
    obx = message.segment("OBX")
    assert str(obx[2]) == "ED"
    ed = obx[5][0]
    assert [str(ed[i]) for i in range(1, 4)] == ["TEXT", "XML", "Base64"]
    return etree.fromstring(base64.b64decode(str(ed[4])))


# --- determinism ----------------------------------------------------------------------------


def test_same_seed_same_bytes(history: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    first, manifest = history
    generate_history(tmp_path, patients=3, sites=2, seed=SEED, size="small")
    assert (tmp_path / "manifest.json").read_bytes() == (first / "manifest.json").read_bytes()
    exam = manifest["exams"][-1]
    some_dicom = exam["series"][0]["files"][0]
    some_hl7 = exam["hl7_messages"][0]["path"]
    for rel in (some_dicom, some_hl7, exam["reports"][0]["cda"]):
        assert (tmp_path / rel).read_bytes() == (first / rel).read_bytes()


def test_other_seed_differs(history: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    other = generate_history(tmp_path, patients=3, sites=2, seed=SEED + 1, size="small")
    _, manifest = history
    assert other.to_json() != json.dumps(manifest, ensure_ascii=False, indent=2) + "\n"
    assert {p.ins for p in other.patients}.isdisjoint(p["ins"] for p in manifest["patients"])


def test_returned_manifest_matches_file(history: tuple[Path, dict[str, Any]]) -> None:
    _, manifest = history
    assert len(manifest["patients"]) == 3
    assert len(manifest["sites"]) == 2
    assert all(m["path"].endswith((".hl7",)) for e in manifest["exams"] for m in e["hl7_messages"])


# --- identities -----------------------------------------------------------------------------


def test_every_ins_is_valid_and_matches_traits(history: tuple[Path, dict[str, Any]]) -> None:
    _, manifest = history
    for p in manifest["patients"]:
        ins = Ins.parse(p["ins"], p["ins_oid"])
        assert ins.oid == INS_OID_TEST
        birth = datetime.fromisoformat(p["birth_date"])
        assert ins.value[0] == {"M": "1", "F": "2"}[p["sex"]]
        assert ins.value[1:5] == f"{birth:%y%m}"
        assert ins.value[5:10] == p["birthplace_code"]
        assert p["birth_family"] == p["birth_family"].upper()
        assert set(p["ipps"]) == {s["id"] for s in manifest["sites"]}


def test_many_patients_have_unique_valid_ins() -> None:
    sites = make_sites(3, 9)
    patients = make_patients(300, sites, 9)
    assert len({p.ins.value for p in patients}) == 300
    for p in patients:
        Ins.parse(p.ins.value, p.ins.oid)
    for site in sites:
        assert len({p.ipp(site) for p in patients}) == 300


def test_sites_have_distinct_synthetic_oids_and_valid_rpps() -> None:
    sites = make_sites(14, 3)
    assert len({s.id for s in sites}) == 14
    assert len({s.oid_root for s in sites}) == 14
    for s in sites:
        assert s.oid_root.startswith("1.2.250.1.999.")
        assert is_valid_uid(s.accession_oid)
        assert 2 <= len(s.radiologists) <= 3
        assert len(s.finess) == 9
        assert luhn_digit(s.finess[:-1]) == s.finess[-1]
        assert len(s.ae_title) <= 16
        for doctor in s.radiologists:
            assert re.fullmatch(r"997\d{8}", doctor.rpps)
            assert luhn_digit(doctor.rpps[:-1]) == doctor.rpps[-1]
            assert doctor.idnat == "8" + doctor.rpps


def test_patients_exams_spread_over_sites(history: tuple[Path, dict[str, Any]]) -> None:
    _, manifest = history
    for p in manifest["patients"]:
        exams = [e for e in manifest["exams"] if e["patient_ins"] == p["ins"]]
        assert 3 <= len(exams) <= 8
        assert len({e["site"] for e in exams}) >= 2
        assert all(e["ipp"] == p["ipps"][e["site"]] for e in exams)


# --- DICOM ----------------------------------------------------------------------------------


def test_dicom_hierarchy_and_pixels(history: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = history
    for exam in manifest["exams"]:
        assert is_valid_uid(exam["study_uid"])
        for series in exam["series"]:
            assert len(series["files"]) == series["instance_count"] <= 5
            assert series["sop_class_uid"] == SOP_CLASSES[series["modality"]]
            for number, rel in enumerate(series["files"], start=1):
                ds = pydicom.dcmread(out / rel)
                assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
                assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
                assert (
                    ds.SOPInstanceUID == Path(rel).stem == series["sop_instance_uids"][number - 1]
                )
                assert ds.SOPClassUID == series["sop_class_uid"]
                assert ds.StudyInstanceUID == exam["study_uid"]
                assert ds.SeriesInstanceUID == series["series_uid"]
                assert Path(rel).parts[-3:-1] == (exam["study_uid"], series["series_uid"])
                assert ds.InstanceNumber == number
                assert ds.Modality == exam["modality"]
                assert ds.PatientID == exam["ipp"]
                assert (
                    ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == exam["ipp_oid"]
                )
                other = ds.OtherPatientIDsSequence[0]
                assert other.PatientID == exam["patient_ins"]
                qualifiers = other.IssuerOfPatientIDQualifiersSequence[0]
                assert qualifiers.UniversalEntityID == INS_OID_TEST
                assert qualifiers.UniversalEntityIDType == "ISO"
                assert ds.AccessionNumber == exam["accession"]
                issuer = ds.IssuerOfAccessionNumberSequence[0]
                assert issuer.UniversalEntityID == exam["accession_oid"]
                frames = int(ds.get("NumberOfFrames", 1))
                expected = ds.Rows * ds.Columns * frames * ds.BitsAllocated // 8
                assert len(ds.PixelData) == expected + expected % 2
                assert ds.pixel_array.shape[-2:] == (ds.Rows, ds.Columns)
                assert ds.HighBit == ds.BitsStored - 1


def test_ct_geometry_is_consistent() -> None:
    exam = _exam("ct_chest")
    positions: dict[str, list[float]] = {}
    for series, _, ds in iter_instances(exam):
        if series.kind == "ct":
            assert [float(v) for v in ds.PixelSpacing] == [series.pixel_spacing] * 2
            normal = np.cross(
                [float(v) for v in ds.ImageOrientationPatient[:3]],
                [float(v) for v in ds.ImageOrientationPatient[3:]],
            )
            ipp = np.array([float(v) for v in ds.ImagePositionPatient])
            assert float(ds.SliceLocation) == pytest.approx(float(ipp @ normal), abs=1e-3)
            positions.setdefault(series.uid, []).append(float(ds.SliceLocation))
    assert positions
    for series in exam.series:
        if series.uid in positions:
            steps = np.diff(positions[series.uid])
            assert np.allclose(steps, -series.spacing, atol=1e-3)


def test_realistic_ct_counts_and_matrix_without_writing() -> None:
    exam = _exam("ct_chest", size="realistic")
    thin = max(exam.series, key=lambda s: s.count)
    assert 2 <= len(exam.series) <= 4
    assert 250 <= thin.count <= 600
    assert (thin.rows, thin.cols) == (512, 512)
    first = next(ct_slices("trunk", 512, 512, thin.count, thin.z_range, 1))
    assert first.shape == (512, 512) and first.dtype == np.int16


def test_realistic_mr_has_3_to_6_series_of_20_to_40() -> None:
    exam = _exam("mr_brain", size="realistic")
    assert 3 <= len(exam.series) <= 6
    assert all(20 <= s.count <= 40 and s.rows == 256 for s in exam.series)


def test_ct_slice_compresses_like_an_image_not_noise() -> None:
    slice_ = next(ct_slices("trunk", 512, 512, 3, (0.75, 0.7), 4))
    raw = slice_.tobytes()
    assert len(zlib.compress(raw)) / len(raw) < 0.6
    noise = np.random.default_rng(0).integers(0, 4096, (512, 512), dtype=np.int16).tobytes()
    assert len(zlib.compress(noise)) / len(noise) > 0.8
    hu = slice_.astype(np.int32) - 1024
    assert hu.min() < -900 and hu.max() > 900  # air and bone present


# --- CDA ------------------------------------------------------------------------------------


def test_cda_header(history: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = history
    exam = manifest["exams"][0]
    report = exam["reports"][0]
    doc = etree.parse(out / report["cda"]).getroot()
    assert doc.tag == "{urn:hl7-org:v3}ClinicalDocument"
    assert _attr(doc, "h:code", "code") == "18748-4"
    assert [t.get("root") for t in doc.findall("h:templateId", NS)] == [
        "2.16.840.1.113883.2.8.2.1",
        "1.2.250.1.213.1.1.1.1",
        "1.3.6.1.4.1.19376.1.2.20",
    ]
    assert _attr(doc, "h:id", "root") == report["document_id"]
    assert _attr(doc, "h:confidentialityCode", "code") == "N"
    ids = doc.findall("h:recordTarget/h:patientRole/h:id", NS)
    assert (ids[0].get("root"), ids[0].get("extension")) == (INS_OID_TEST, exam["patient_ins"])
    assert (ids[1].get("root"), ids[1].get("extension")) == (exam["ipp_oid"], exam["ipp"])
    author_id = _find(doc, "h:author/h:assignedAuthor/h:id")
    assert author_id.get("root") == "1.2.250.1.71.4.2.1"
    assert author_id.get("extension") == "8" + exam["radiologist_rpps"]
    event = _find(doc, "h:documentationOf/h:serviceEvent")
    assert _attr(event, "h:id", "root") == exam["study_uid"]
    assert _attr(event, "h:effectiveTime/h:low", "value").startswith(exam["study_date"])
    accession = _find(doc, "h:inFulfillmentOf/h:order/ps3:accessionNumber")
    assert accession.get("extension") == exam["accession"]
    assert accession.get("root") == exam["accession_oid"]
    text = _find(doc, "h:component/h:nonXMLBody/h:text")
    assert text.get("mediaType") == "application/pdf"
    assert base64.b64decode(text.text or "").startswith(b"%PDF-1.4")


def _check_pdf(pdf: bytes) -> None:
    assert pdf.startswith(b"%PDF-1.4") and pdf.endswith(b"%%EOF\n")
    xref_at = int(pdf.rsplit(b"startxref\n", 1)[1].split(b"\n")[0])
    lines = pdf[xref_at:].split(b"\n")
    assert lines[0] == b"xref"
    count = int(lines[1].split()[1])
    for number in range(1, count):
        offset = int(lines[2 + number][:10])
        assert pdf[offset:].startswith(f"{number} 0 obj".encode())
    for match in re.finditer(rb"/Length (\d+) >>\nstream\n", pdf):
        end = match.end() + int(match.group(1))
        assert pdf[end : end + 9] == b"endstream"


def test_pdf_has_correct_xref_offsets_and_stream_lengths() -> None:
    text = "Résultats : « normal » (contrôle) \\ fin\n" * 120  # several pages, escapes
    pdf = render_pdf("Compte rendu", text, datetime(2024, 7, 1, 9, 0))
    _check_pdf(pdf)
    assert pdf.count(b"/Type /Page ") == 3
    assert pdf.split(b"\n", 2)[2].isascii()  # only the binary-marker comment is not ASCII


def test_corrected_report_replaces_previous_version() -> None:
    exam = _exam("mr_knee")
    first = _report(exam)
    second = _report(exam, version=2, replaces=first.document_id)
    doc = etree.fromstring(second.xml)
    assert _attr(doc, "h:setId", "root") == first.set_id
    assert _attr(doc, "h:versionNumber", "value") == "2"
    related = _find(doc, "h:relatedDocument")
    assert related.get("typeCode") == "RPLC"
    assert _attr(related, "h:parentDocument/h:id", "root") == first.document_id
    assert "rectifié" in second.text
    with pytest.raises(ValueError, match="replaces"):
        _report(exam, version=2)


# --- HL7 ------------------------------------------------------------------------------------


def test_oru_shape_and_cda(history: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = history
    exam = manifest["exams"][0]
    path = next(m["path"] for m in exam["hl7_messages"] if m["kind"] == "ORU")
    raw = (out / path).read_bytes().decode("utf-8")  # bytes: keep the \r separators
    assert "\n" not in raw and raw.count("\r") >= 6
    message = hl7.parse(raw)
    msh = message.segment("MSH")
    assert raw.startswith("MSH|^~\\&|")
    assert str(msh[9]) == "ORU^R01^ORU_R01"
    assert (str(msh[12]), str(msh[17]), str(msh[18])) == ("2.5", "FRA", "UNICODE UTF-8")
    assert str(msh[21]) == "2.1^CISIS_CDA_HL7_V2"
    pid = message.segment("PID")
    ins, ipp = pid[3][0], pid[3][1]
    assert str(ins[0]) == exam["patient_ins"]
    assert str(ins[3]) == f"ASIP-SANTE-INS-NIR&{INS_OID_TEST}&ISO"
    assert str(ins[4]) == "INS"
    assert (str(ipp[0]), str(ipp[3][1]), str(ipp[4])) == (exam["ipp"], exam["ipp_oid"], "PI")
    assert str(pid[5][0][6]) == "L"
    assert str(pid[32]) == "VALI"
    assert str(message.segment("ORC")[1]) == "NW"
    obr = message.segment("OBR")
    assert str(obr[4]) == "18748-4^CR d'imagerie médicale^LN"
    assert str(obr[18]) == exam["accession"]
    assert str(obr[3][0][2]) == exam["accession_oid"]
    assert str(obr[25]) == "F"
    assert str(obr[32][0][0][0]) == "8" + exam["radiologist_rpps"]
    cda = _cda_from(message)
    assert _attr(cda, "h:documentationOf/h:serviceEvent/h:id", "root") == exam["study_uid"]
    accession = _find(cda, "h:inFulfillmentOf/h:order/ps3:accessionNumber")
    assert accession.get("extension") == exam["accession"]
    assert str(message.segment("PRT")[4][0][0]) == "SB"


def test_mdm_has_txa_with_document_id(history: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = history
    exam = manifest["exams"][0]
    path = next(m["path"] for m in exam["hl7_messages"] if m["kind"] == "MDM")
    message = hl7.parse((out / path).read_bytes().decode("utf-8"))
    assert str(message.segment("MSH")[9]) == "MDM^T02^MDM_T02"
    txa = message.segment("TXA")
    assert str(txa[12]) == exam["reports"][0]["document_id"]
    assert _attr(_cda_from(message), "h:id", "root") == str(txa[12])


def test_message_type_selection(tmp_path: Path) -> None:
    manifest = generate_history(tmp_path, patients=1, sites=1, seed=2, size="small",
                                message_type="MDM")  # fmt: skip
    kinds = {m.kind for e in manifest.exams for m in e.hl7_messages}
    assert kinds == {"MDM"}
    assert not list(tmp_path.rglob("*-ORU*.hl7"))


def test_correction_and_cancellation_messages() -> None:
    exam = _exam("ct_head")
    first = _report(exam)
    second = _report(exam, version=2, replaces=first.document_id)
    sent = datetime(2023, 7, 4, 8, 0)
    cancel = hl7.parse(synth_hl7.cancellation_message(first, "ORU", control_id="9", sent=sent))
    assert str(cancel.segment("ORC")[1]) == "CA"
    cancel_mdm = hl7.parse(synth_hl7.cancellation_message(first, "MDM", control_id="9", sent=sent))
    assert str(cancel_mdm.segment("ORC")[1]) == "CA"
    assert str(cancel_mdm.segment("MSH")[9]) == "MDM^T04^MDM_T02"
    corrected = synth_hl7.corrected_report_message(second, "MDM", control_id="10", sent=sent)
    parsed = hl7.parse(corrected)
    assert str(parsed.segment("ORC")[1]) == "RO"
    assert str(parsed.segment("TXA")[12]) == second.document_id
    assert str(parsed.segment("TXA")[13]) == first.document_id
    with pytest.raises(ValueError, match="replaces"):
        synth_hl7.corrected_report_message(first, "ORU", control_id="11", sent=sent)


def test_special_characters_are_escaped() -> None:
    exam = _exam("us_abdomen")
    odd = dataclasses.replace(exam.patient, birth_family="O|BRIEN^&~\\X")
    report = _report(dataclasses.replace(exam, patient=odd))
    raw = synth_hl7.new_report_message(report, "ORU", control_id="1", sent=datetime(2023, 1, 1))
    message = hl7.parse(raw)
    pid = message.segment("PID")
    assert len(pid) == 33
    assert message.unescape(str(pid[5][0][0])) == "O|BRIEN^&~\\X"
    assert synth_hl7.escape("a\\b|c") == "a\\E\\b\\F\\c"
