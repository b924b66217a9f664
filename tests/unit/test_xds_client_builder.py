"""The ITI-41 / ITI-57 requests of the XDS client, read back with plain lxml and the stdlib
MIME parser (never with the builder's own code)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time
from email import message_from_bytes
from email.message import Message
from pathlib import Path

import pytest
from lxml import etree

from drimbox.adapters.documents.kos import kos_bytes
from drimbox.adapters.hl7.parse import parse_message
from drimbox.adapters.xds import submission_builder as sb
from drimbox.domain.manifest import (
    ExamInventory,
    ImagingManifest,
    ManifestInstance,
    ManifestPatient,
    ManifestSeries,
    ManifestStudy,
    manifest_from_inventory,
    new_uid,
)
from drimbox.domain.report import ReportMessage
from drimbox.domain.xds import Author, Code
from drimbox.synth import generate_history
from drimbox.synth.generate import ExamRecord, SynthManifest

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://www.w3.org/2005/08/addressing",
    "rim": RIM,
    "lcm": "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0",
    "xdsb": "urn:ihe:iti:xds-b:2007",
    "xop": "http://www.w3.org/2004/08/xop/include",
}
CLASS = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
TYPE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
FORMAT = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
EVENT = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
HCFT = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
PRACTICE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SOURCE = sb.SubmissionSource(
    source_id="1.2.250.1.999.1.9",
    healthcare_facility_type=Code("SA07", "1.2.250.1.71.4.2.4", "Cabinet de radiologie"),
    practice_setting=Code("AMBULATOIRE", "1.2.250.1.213.1.1.4.9", "Ambulatoire"),
    author=Author(
        "899700367909^KIT^DOC^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS",
        ("CABINET^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1499700367909",),
    ),
)


# --- test data from drimbox.synth (also used by the integration tests) ----------------------


@dataclass(frozen=True)
class SynthExam:
    record: ExamRecord
    manifest: ImagingManifest
    kos: bytes
    report: ReportMessage


def manifest_of(synth: SynthManifest, exam: ExamRecord, **changes: object) -> ImagingManifest:
    patient = next(p for p in synth.patients if p.ins == exam.patient_ins)
    inventory = ExamInventory(
        study=ManifestStudy(
            exam.study_uid,
            date=date.fromisoformat(
                f"{exam.study_date[:4]}-{exam.study_date[4:6]}-{exam.study_date[6:]}"
            ),
            time=time(
                int(exam.study_time[:2]), int(exam.study_time[2:4]), int(exam.study_time[4:6])
            ),
            description=exam.description,
            accession=exam.accession,
        ),
        patient_id=exam.ipp,
        series=tuple(
            ManifestSeries(
                s.series_uid,
                modality=s.modality,
                number=s.series_number,
                instances=tuple(
                    ManifestInstance(s.sop_class_uid, uid) for uid in s.sop_instance_uids
                ),
            )
            for s in exam.series
        ),
    )
    mp = ManifestPatient(patient.ins, patient.ins_oid, patient.birth_family, patient.given_names[0],
                         date.fromisoformat(patient.birth_date), patient.sex)  # fmt: skip
    manifest = manifest_from_inventory(
        inventory, mp, wado_base="https://box.example/wado", description="Examen",
        accession_oid=exam.accession_oid,
        created=datetime(2024, 6, 1, 12, 0, tzinfo=UTC),
    )  # fmt: skip
    return replace(manifest, **changes)  # type: ignore[arg-type]


def synth_exams(folder: Path, patients: int = 2) -> list[SynthExam]:
    synth = generate_history(folder, patients=patients, sites=1, seed=11, size="small",
                             message_type="ORU")  # fmt: skip
    out = []
    for exam in synth.exams:
        manifest = manifest_of(synth, exam)
        hl7 = (folder / exam.hl7_messages[0].path).read_bytes()
        out.append(SynthExam(exam, manifest, kos_bytes(manifest), parse_message(hl7)))
    return out


@pytest.fixture(scope="module")
def exam(tmp_path_factory: pytest.TempPathFactory) -> SynthExam:
    return synth_exams(tmp_path_factory.mktemp("synth"), patients=1)[0]


# --- reading helpers -------------------------------------------------------------------------


def slot(el: etree._Element, name: str) -> list[str]:
    for s in el.findall("rim:Slot", NS):
        if s.get("name") == name:
            return [v.text or "" for v in s.findall("rim:ValueList/rim:Value", NS)]
    return []


def codes(el: etree._Element, scheme: str) -> list[tuple[str, str]]:
    return [
        (c.get("nodeRepresentation", ""), slot(c, "codingScheme")[0])
        for c in el.findall("rim:Classification", NS)
        if c.get("classificationScheme") == scheme
    ]


def external(el: etree._Element, scheme: str) -> str:
    found = [e.get("value", "") for e in el.findall("rim:ExternalIdentifier", NS)
             if e.get("identificationScheme") == scheme]  # fmt: skip
    assert len(found) == 1
    return found[0]


def entries(req: sb.ProvideAndRegisterRequest) -> dict[str, etree._Element]:
    return {
        eo.get("id", ""): eo
        for eo in req.body.findall(
            "lcm:SubmitObjectsRequest/rim:RegistryObjectList/rim:ExtrinsicObject", NS
        )
    }


def associations(req: sb.ProvideAndRegisterRequest) -> list[tuple[str, str, str]]:
    rol = req.body.find("lcm:SubmitObjectsRequest/rim:RegistryObjectList", NS)
    assert rol is not None
    return [(a.get("associationType", "").rsplit(":", 1)[-1], a.get("sourceObject", ""),
             a.get("targetObject", "")) for a in rol.findall("rim:Association", NS)]  # fmt: skip


# --- tests ------------------------------------------------------------------------------------


def test_kos_entry_has_the_dmp_imaging_metadata(exam: SynthExam) -> None:
    req = sb.build_provide_and_register(sb.ExamSubmission(exam.manifest, exam.kos), SOURCE)
    kos = entries(req)["DocumentKOS"]
    ins = f"{exam.record.patient_ins}^^^&1.2.250.1.213.1.4.10&ISO"
    assert kos.get("mimeType") == "application/dicom"
    assert kos.get("objectType") == "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
    assert codes(kos, CLASS) == [("31", "1.2.250.1.213.1.1.4.1")]
    assert codes(kos, TYPE) == [("IMG-KOS", "1.2.250.1.213.1.1.4.12")]
    assert codes(kos, FORMAT) == [("1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1")]
    assert codes(kos, CONFIDENTIALITY) == [("N", "2.16.840.1.113883.5.25")]
    assert codes(kos, HCFT) == [("SA07", "1.2.250.1.71.4.2.4")]
    assert codes(kos, PRACTICE) == [("AMBULATOIRE", "1.2.250.1.213.1.1.4.9")]
    modalities = {s.modality for s in exam.record.series}
    assert set(codes(kos, EVENT)) == {(m, "1.2.250.1.213.1.1.5.618") for m in modalities}
    assert external(kos, PATIENT_ID) == f"{ins}^NH"
    assert external(kos, UNIQUE_ID) == exam.manifest.sop_instance_uid == req.kos_unique_id
    assert slot(kos, "sourcePatientId") == [f"{ins}^PI"]
    assert slot(kos, "languageCode") == ["fr-FR"]
    assert slot(kos, "creationTime") == ["20240601120000"]
    assert slot(kos, "serviceStartTime")[0].startswith(exam.record.study_date)
    assert slot(kos, "hash") == [hashlib.sha1(exam.kos).hexdigest().upper()]
    assert slot(kos, "size") == [str(len(exam.kos))]
    assert set(slot(kos, "urn:ihe:iti:xds:2013:referenceIdList")) == {
        f"{exam.record.accession}^^^&{exam.record.accession_oid}&ISO^urn:ihe:iti:xds:2013:accession",
        f"{exam.record.study_uid}^^^^urn:ihe:iti:xds:2016:studyInstanceUID",
    }
    info = slot(kos, "sourcePatientInfo")
    assert info[0].startswith("PID-5|") and info[1].startswith("PID-7|")
    author = kos.find(f"rim:Classification[@classificationScheme='{AUTHOR}']", NS)
    assert author is not None and slot(author, "authorPerson") == [SOURCE.author.person]  # type: ignore[union-attr]


def test_submission_set_and_associations(exam: SynthExam) -> None:
    req = sb.build_provide_and_register(sb.ExamSubmission(exam.manifest, exam.kos), SOURCE)
    rol = req.body.find("lcm:SubmitObjectsRequest/rim:RegistryObjectList", NS)
    assert rol is not None
    pkg = rol.find("rim:RegistryPackage", NS)
    assert pkg is not None
    node = pkg.find(
        "rim:Classification[@classificationNode='urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd']",
        NS,
    )
    assert node is not None
    assert external(pkg, "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832") == SOURCE.source_id
    assert (
        external(pkg, "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8")
        == req.submission_set_unique_id
    )
    assert external(pkg, "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446").endswith("^NH")
    assert codes(pkg, "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500") == [
        ("04", "1.2.250.1.213.2.2")
    ]
    assert len(slot(pkg, "submissionTime")[0]) == 14
    assert associations(req) == [("HasMember", "SubmissionSet01", "DocumentKOS")]


def test_report_entry_from_the_cda(exam: SynthExam) -> None:
    req = sb.build_provide_and_register(
        sb.ExamSubmission(exam.manifest, exam.kos, report=exam.report), SOURCE
    )
    got = entries(req)
    assert set(got) == {"DocumentKOS", "DocumentReport"}
    report = got["DocumentReport"]
    assert report.get("mimeType") == "text/xml"
    assert codes(report, TYPE) == [("18748-4", "2.16.840.1.113883.6.1")]
    assert codes(report, CLASS) == [("10", "1.2.250.1.213.1.1.4.1")]
    assert external(report, UNIQUE_ID) == exam.report.document.document_id == req.report_unique_id
    assert slot(report, "hash") == [hashlib.sha1(exam.report.cda).hexdigest().upper()]
    radiologist = exam.report.radiologist
    assert radiologist is not None
    for eo in got.values():
        author = eo.find(f"rim:Classification[@classificationScheme='{AUTHOR}']", NS)
        assert author is not None
        assert slot(author, "authorPerson")[0].startswith(radiologist.national_id + "^")
        assert "&1.2.250.1.71.4.2.2&ISO^IDNST" in slot(author, "authorInstitution")[0]
        assert slot(eo, "legalAuthenticator")[0].startswith(radiologist.national_id + "^")
        # facility and setting come from the CDA, not from the source's defaults
        assert codes(eo, PRACTICE)[0][1] == "1.2.250.1.213.1.1.4.9"
        assert len(slot(eo, "serviceStopTime")[0]) == 14
    assert len(associations(req)) == 2


def test_replacement_and_signature_associations(exam: SynthExam) -> None:
    old = "urn:uuid:0b6cc6b6-7a4a-4bd6-a2a3-5a1fb0bd0001"
    manifest = replace(exam.manifest, sop_instance_uid=new_uid())
    sub = sb.ExamSubmission(
        manifest, kos_bytes(manifest), replaces=old, signature=b"<ds:Signature/>"
    )
    req = sb.build_provide_and_register(sub, SOURCE)
    assert ("RPLC", "DocumentKOS", old) in associations(req)
    assert ("signs", "Signature01", "SubmissionSet01") in associations(req)
    assert ("HasMember", "SubmissionSet01", "Signature01") in associations(req)
    signature = entries(req)["Signature01"]
    assert {c for c, _ in codes(signature, CONFIDENTIALITY)} == {
        "N",
        "MASQUE_PS",
        "INVISIBLE_PATIENT",
    }
    assert slot(signature, "languageCode") == ["art"]


def test_kos_bytes_must_match_the_manifest(exam: SynthExam) -> None:
    other = replace(exam.manifest, sop_instance_uid=new_uid())
    with pytest.raises(ValueError, match="SOP Instance UID"):
        sb.build_provide_and_register(sb.ExamSubmission(other, exam.kos), SOURCE)


def test_an_author_is_required(exam: SynthExam) -> None:
    with pytest.raises(ValueError, match="author"):
        sb.build_provide_and_register(
            sb.ExamSubmission(exam.manifest, exam.kos), replace(SOURCE, author=None)
        )


def test_mtom_framing(exam: SynthExam) -> None:
    req = sb.build_provide_and_register(
        sb.ExamSubmission(exam.manifest, exam.kos, report=exam.report), SOURCE
    )
    to = "http://index.example/repository"
    message_id, content_type, body = sb.mtom_request(sb.ITI41_ACTION, to, req.body, req.attachments)
    assert content_type.startswith("multipart/related;")
    assert 'type="application/xop+xml"' in content_type
    assert 'start-info="application/soap+xml"' in content_type
    msg = message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    payload = msg.get_payload()
    assert isinstance(payload, list) and len(payload) == 3
    parts: list[Message] = [p for p in payload if isinstance(p, Message)]
    assert parts[0].get_content_type() == "application/xop+xml"
    root_bytes = parts[0].get_payload(decode=True)
    assert isinstance(root_bytes, bytes)
    envelope = etree.fromstring(root_bytes)
    assert envelope.findtext("s:Header/a:Action", namespaces=NS) == sb.ITI41_ACTION
    assert envelope.findtext("s:Header/a:MessageID", namespaces=NS) == message_id
    assert envelope.findtext("s:Header/a:To", namespaces=NS) == to
    by_cid = {p.get("Content-ID", "").strip("<>"): p.get_payload(decode=True) for p in parts[1:]}
    docs = envelope.findall("s:Body/xdsb:ProvideAndRegisterDocumentSetRequest/xdsb:Document", NS)
    content = {}
    for d in docs:
        include = d.find("xop:Include", NS)
        assert include is not None
        content[d.get("id")] = by_cid[include.get("href", "")[4:]]
    assert content == {"DocumentKOS": exam.kos, "DocumentReport": exam.report.cda}


def test_status_update() -> None:
    body = sb.build_status_update(
        SOURCE, "x^^^&1.2.250.1.213.1.4.10&ISO^NH", "urn:uuid:1", "A", "B"
    )
    assoc = body.find("rim:RegistryObjectList/rim:Association", NS)
    assert assoc is not None
    assert (
        assoc.get("associationType") == "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
    )
    assert (assoc.get("sourceObject"), assoc.get("targetObject")) == (
        "SubmissionSet01",
        "urn:uuid:1",
    )
    assert slot(assoc, "OriginalStatus") == ["A"] and slot(assoc, "NewStatus") == ["B"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20240601120000+0200", "20240601100000"),
        ("20240601120000.123+0200", "20240601100000"),
        ("20240601", "20240601000000"),
        ("garbage", ""),
        ("", ""),
    ],
)
def test_utc_dtm(value: str, expected: str) -> None:
    assert sb.utc_dtm(value) == expected
