"""The patient's portal end to end: ``drimbox idp`` (patients and professionals), an index that
checks every token there (no default caller), box A publishing an exam of the patient from its
PACS, box B where the patient logs in. The patient lists their exams, reads the report, gets
the images through B's patients' DICOMweb root (fetched from A with the patient's own token),
downloads the ZIP, hides the exam from professionals and shows it again; another patient and a
professional get nothing of it."""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from pydicom import dcmread

from drimbox.adapters.dicomweb import multipart as mp
from drimbox.entrypoints.box import SourceBox, create_app
from drimbox.entrypoints.idp import create_idp_app
from drimbox.services.source.outbox import PublicationState
from drimbox.settings import IdpSettings
from tests.idp_people import people_with_exam_patient
from tests.index_fixtures import IndexServer, database_url, running_index
from tests.integration.test_conso_login import _log_in
from tests.integration.test_source_publication import box_settings, running_box, send, wait_for
from tests.integration.test_source_wado import with_pacs
from tests.peers import Pacs, free_port, running_pacs, serving
from tests.source_exams import Exam

ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
OTHER_PATIENT = "patiente"  # a built-in patient of the idp, with another INS
OHIF = Path(os.environ.get("DRIMBOX_OHIF_DIR", "/nonexistent"))


@pytest.fixture(scope="module")
def exam(exams: list[Exam]) -> Exam:
    return next(e for e in exams[:-1] if len(e.record["reports"]) == 1)


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"idp": free_port(), "a": free_port(), "b": free_port()}


@pytest.fixture(scope="module")
def issuer(
    tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int], exam: Exam
) -> Iterator[str]:
    """The idp knows the built-in people plus the exam's patient ("patient-examen")."""
    folder = tmp_path_factory.mktemp("idp")
    people_file = people_with_exam_patient(folder, exam)
    b = f"http://127.0.0.1:{ports['b']}"
    settings = IdpSettings.model_validate({
        "port": ports["idp"], "data_dir": folder, "people_file": people_file,
        "clients": [
            {"client_id": "box-b", "client_secret": "secret-b",
             "redirect_uris": [f"{b}/conso/callback"]},
            {"client_id": "box-a", "client_secret": "secret-a"},
            {"client_id": "index", "client_secret": "secret-i"},
            {"client_id": "portal-b", "client_secret": "secret-p",
             "redirect_uris": [f"{b}/patient/callback"]},
        ],
    })  # fmt: skip
    with serving(create_idp_app(settings), port=ports["idp"]):
        yield settings.issuer_url


def _introspection(issuer: str, client: str, secret: str) -> dict[str, str]:
    return {"introspection_url": f"{issuer}/protocol/openid-connect/token/introspect",
            "client_id": client, "client_secret": secret}  # fmt: skip


@pytest.fixture(scope="module")
def index(
    tmp_path_factory: pytest.TempPathFactory, issuer: str, signer_files: tuple[Path, Path]
) -> Iterator[IndexServer]:
    """Box A publishes with its signed VIHF assertion; users call with their own token."""
    folder = tmp_path_factory.mktemp("index-patient")
    root = x509.load_pem_x509_certificates(signer_files[1].read_bytes())[-1]
    anchors = folder / "vihf-roots.pem"
    anchors.write_bytes(root.public_bytes(Encoding.PEM))
    trust = {**_introspection(issuer, "index", "secret-i"), "vihf_trust_anchors": anchors}
    with database_url("sqlite", folder) as url, running_index(url, trust=trust) as server:
        yield server


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, exam: Exam) -> Iterator[Pacs]:
    from tests.integration.test_source_publication import store

    with running_pacs(tmp_path_factory.mktemp("pacs") / "store") as p:
        store(exam.files(), p.port, p.aet)
        yield p


@pytest.fixture(scope="module")
def box_a(
    tmp_path_factory: pytest.TempPathFactory, issuer: str, pacs: Pacs, index: IndexServer,
    signer_files: tuple[Path, Path], ports: dict[str, int],
) -> Iterator[tuple[SourceBox, str]]:  # fmt: skip
    settings = box_settings(tmp_path_factory.mktemp("a"), pacs.aet, pacs.port, index.url,
                            signer_files, prefetch=False, conso={"enabled": False},
                            public_url=f"http://127.0.0.1:{ports['a']}",
                            psc=_introspection(issuer, "box-a", "secret-a"))  # fmt: skip
    with running_box(with_pacs(settings, dicomweb_url=pacs.dicomweb)) as box, \
            serving(create_app(box), port=ports["a"]) as url:  # fmt: skip
        yield box, url


@pytest.fixture(scope="module")
def box_b(
    tmp_path_factory: pytest.TempPathFactory, issuer: str, pacs: Pacs, index: IndexServer,
    signer_files: tuple[Path, Path], ports: dict[str, int], box_a: tuple[SourceBox, str],
) -> Iterator[tuple[SourceBox, str]]:  # fmt: skip
    b = f"http://127.0.0.1:{ports['b']}"
    settings = box_settings(
        tmp_path_factory.mktemp("b"), pacs.aet, pacs.port, index.url, signer_files,
        public_url=b, psc=_introspection(issuer, "box-b", "secret-b"),
        conso={"secure_cookie": False, "allowed_sources": [f"{box_a[1]}/dicomweb"],
               "ohif_dir": OHIF if (OHIF / "index.html").is_file() else None,
               "oidc": {"issuer": issuer, "client_id": "box-b", "client_secret": "secret-b",
                        "redirect_uri": f"{b}/conso/callback"},
               "patient_oidc": {"issuer": issuer, "client_id": "portal-b",
                                "client_secret": "secret-p",
                                "redirect_uri": f"{b}/patient/callback"}},
    )  # fmt: skip
    with running_box(settings) as box, serving(create_app(box), port=ports["b"]) as url:
        yield box, url


@pytest.fixture(scope="module")
def published(box_a: tuple[SourceBox, str], exam: Exam) -> str:
    box = box_a[0]
    assert send(box.mllp.port, exam.message("ORU"))[0] == "AA"

    def done() -> str:
        pub = box.outbox.publication(exam.study_uid)
        return pub.indexed_kos_uid if pub and pub.state is PublicationState.PUBLISHED else ""

    return str(wait_for(done, timeout=60, what="publication at A", box=box))


@pytest.fixture(scope="module")
def patient(box_b: tuple[SourceBox, str], published: str) -> Iterator[httpx.Client]:
    """The exam's patient, logged in at B's portal."""
    with httpx.Client(base_url=box_b[1], timeout=60) as browser:
        landed = _log_in(browser, box_b[1], "patient-examen", "/patient/", area="patient")
        assert landed.status_code == 303 and landed.headers["location"] == "/patient/"
        yield browser


@pytest.fixture(scope="module")
def professional(box_b: tuple[SourceBox, str], published: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=box_b[1], timeout=60) as browser:
        _log_in(browser, box_b[1], "radiologue", "/conso/")
        yield browser


def _my_exam(client: httpx.Client, exam: Exam) -> dict[str, object] | None:
    r = client.get("/patient/api/exams")
    assert r.status_code == 200, r.text
    return next((e for e in r.json()["exams"] if e["study_uid"] == exam.study_uid), None)


def _pro_lists(client: httpx.Client, exam: Exam) -> bool:
    r = client.get("/conso/api/history", params={"ins": exam.record["patient_ins"],
                                                 "oid": exam.record["ins_oid"]})  # fmt: skip
    assert r.status_code == 200, r.text
    return exam.study_uid in {e["study_uid"] for e in r.json()["exams"]}


def _csrf(client: httpx.Client) -> str:
    page = client.get("/patient/")
    assert page.status_code == 200, page.text
    return unescape(re.search(r'name="csrf" value="([^"]+)"', page.text)[1])  # type: ignore[index]


def _token(box: SourceBox, client: httpx.Client) -> str:
    """The access token B's portal holds for the patient of ``client``'s session."""
    conso = box.conso
    assert conso is not None and conso.patients is not None
    session = conso.patients.store.get(client.cookies.get("drimbox_patient"))
    assert session is not None
    return str(session.access_token)


def _trail(box: SourceBox) -> list[dict[str, object]]:
    lines = (box.settings.data_dir / "trail" / "trail.jsonl").read_text().splitlines()
    return [json.loads(line)["event"] for line in lines if line.strip()]


def test_the_patient_lists_their_exams_and_reads_the_report(
    patient: httpx.Client, exam: Exam, published: str
) -> None:
    mine = _my_exam(patient, exam)
    assert mine is not None, "the published exam is listed for its patient"
    assert mine["kos_uid"] == published and mine["hidden"] is False
    assert mine["instances"] == len(exam.sops) and mine["report_uid"]
    report = patient.get(str(mine["report_url"]))
    assert report.status_code == 200 and "text/html" in report.headers["content-type"]
    assert exam.record["accession"] in report.text and 'class="cda-report"' in report.text
    page = patient.get("/patient/")
    assert "Masquer cet examen aux professionnels" in page.text and "Télécharger" in page.text
    if (OHIF / "index.html").is_file():
        link = f"/patient/viewer/viewer?StudyInstanceUIDs={exam.study_uid}"
        assert mine["viewer_url"] == link and "Voir les images" in page.text
        viewer = patient.get(link)
        assert viewer.status_code == 200 and "<html" in viewer.text.lower()
        config = patient.get("/patient/viewer/app-config.js")
        assert "/patient/dicomweb" in config.text
    # a report that was not listed for this patient is not fetched
    assert patient.get("/patient/reports/1.2.3.4").status_code == 404


def test_the_patient_gets_their_images_from_the_source_box(
    patient: httpx.Client, exam: Exam, pacs: Pacs, box_a: tuple[SourceBox, str]
) -> None:
    _my_exam(patient, exam)
    series = exam.record["series"][0]
    sops = list(series["sop_instance_uids"])[:3]
    for sop in sops:
        path = f"/studies/{exam.study_uid}/series/{series['series_uid']}/instances/{sop}"
        got = patient.get("/patient/dicomweb" + path, headers={"Accept": ANY})
        assert got.status_code == 200, got.text
        want = httpx.get(pacs.dicomweb + path, headers={"Accept": ANY}, timeout=60)
        assert want.status_code == 200
        [(_, mine)] = mp.split_parts(
            got.content, mp.parse_content_type(got.headers["content-type"])[2]
        )
        [(_, theirs)] = mp.split_parts(
            want.content, mp.parse_content_type(want.headers["content-type"])[2]
        )
        assert bytes(mine) == bytes(theirs)  # as the PACS stores it, byte for byte
        assert str(dcmread(io.BytesIO(bytes(mine)), stop_before_pixels=True).SOPInstanceUID) == sop
    meta = patient.get(f"/patient/dicomweb/studies/{exam.study_uid}/series/{series['series_uid']}"
                       "/metadata", headers={"Accept": "application/dicom+json"})  # fmt: skip
    assert meta.status_code == 200, meta.text
    uris = [m["7FE00010"]["BulkDataURI"] for m in meta.json() if "7FE00010" in m]
    assert uris and all("/patient/dicomweb/" in u for u in uris)
    # box A served them to the patient's own token, and its trail says so
    retrieved = [e for e in _trail(box_a[0]) if "images.retrieve" in json.dumps(e.get("subtype"))]
    assert any('"patient"' in json.dumps(e.get("agent")) and e.get("outcome") == "0"
               for e in retrieved), retrieved[-3:]  # fmt: skip


def test_the_patient_downloads_the_exam(patient: httpx.Client, exam: Exam) -> None:
    _my_exam(patient, exam)
    r = patient.get(f"/patient/api/exams/{exam.study_uid}/zip")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = z.namelist()
        assert "DICOMDIR" in names
        dicomdir = dcmread(io.BytesIO(z.read("DICOMDIR")))
        listed = {str(rec.ReferencedSOPInstanceUIDInFile) for rec in dicomdir.DirectoryRecordSequence
                  if "ReferencedSOPInstanceUIDInFile" in rec}  # fmt: skip
        files = [n for n in names if n != "DICOMDIR" and not n.upper().endswith(".TXT")]
    assert listed == exam.sops and len(files) == len(exam.sops)


def test_hiding_the_exam_from_professionals_and_undoing_it(
    patient: httpx.Client, professional: httpx.Client, exam: Exam, box_b: tuple[SourceBox, str]
) -> None:
    assert _pro_lists(professional, exam)
    token = _csrf(patient)
    hide = f"/patient/exams/{exam.study_uid}/masquer"
    # forged requests: no token, a wrong one, another site's page
    assert patient.post(hide, data={}).status_code == 403
    assert patient.post(hide, data={"csrf": "x" + token}).status_code == 403
    evil = patient.post(hide, data={"csrf": token}, headers={"Origin": "https://evil.example"})
    assert evil.status_code == 403
    assert _pro_lists(professional, exam)
    done = patient.post(hide, data={"csrf": token}, headers={"Origin": box_b[1]})
    assert done.status_code == 303 and done.headers["location"] == "/patient/?fait=masque"
    mine = _my_exam(patient, exam)  # the patient still sees it, marked
    assert mine is not None and mine["hidden"] is True
    page = patient.get("/patient/")
    assert "masqué aux professionnels" in page.text and "Ne plus masquer" in page.text
    # the professional's history at B (asked of the index) no longer shows it, nor its images
    assert not _pro_lists(professional, exam)
    series = exam.record["series"][0]["series_uid"]
    gone = professional.get(f"/conso/dicomweb/studies/{exam.study_uid}/series/{series}/metadata",
                            headers={"Accept": "application/dicom+json"})  # fmt: skip
    assert gone.status_code == 404
    # the index's access log of the patient says who hid what
    log = patient.get("/patient/api/index-log").json()["events"]
    hid = [e for e in log if e["action"] == "hide document"]
    assert {e["actor"]["kind"] for e in hid} == {"patient"}
    # the manifest, the report, and what the patient does not see (the submission's signature)
    assert {mine["kos_uid"], mine["report_uid"]} <= {d for e in hid for d in e["documents"]}
    assert "a masqué un document aux professionnels" in patient.get("/patient/").text
    # and undone
    shown = patient.post(f"/patient/exams/{exam.study_uid}/afficher", data={"csrf": _csrf(patient)})
    assert shown.status_code == 303
    assert _pro_lists(professional, exam)
    again = _my_exam(patient, exam)
    assert again is not None and again["hidden"] is False


def test_the_patient_opposes_access_by_professionals(
    patient: httpx.Client, professional: httpx.Client, exam: Exam
) -> None:
    r = patient.post("/patient/opposition", data={"csrf": _csrf(patient), "opposed": "oui"})
    assert r.status_code == 303
    assert "Vous vous opposez" in patient.get("/patient/").text
    refused = professional.get("/conso/api/history", params={
        "ins": exam.record["patient_ins"], "oid": exam.record["ins_oid"]})  # fmt: skip
    assert refused.status_code == 403
    r = patient.post("/patient/opposition", data={"csrf": _csrf(patient), "opposed": "non"})
    assert r.status_code == 303
    assert _pro_lists(professional, exam)


def test_another_patient_cannot_open_this_study(
    patient: httpx.Client, box_b: tuple[SourceBox, str], box_a: tuple[SourceBox, str],
    exam: Exam, published: str, index: IndexServer,
) -> None:  # fmt: skip
    b_box, b_url = box_b
    series = exam.record["series"][0]
    sop = series["sop_instance_uids"][0]
    path = f"/studies/{exam.study_uid}/series/{series['series_uid']}/instances/{sop}"
    with httpx.Client(base_url=b_url, timeout=60) as other:
        _log_in(other, b_url, OTHER_PATIENT, "/patient/", area="patient")
        assert _my_exam(other, exam) is None
        assert other.get("/patient/dicomweb" + path, headers={"Accept": ANY}).status_code == 404
        assert other.get(f"/patient/api/exams/{exam.study_uid}/zip").status_code == 404
        assert other.get("/patient/dicomweb/studies").json() == []
        other_token = _token(b_box, other)
    # straight at the Source with the manifest's UID: another patient's token finds nothing
    headers = {"Accept": ANY, "KOS-SOPInstanceUID": published}
    a_url = box_a[1]
    refused = httpx.get(f"{a_url}/dicomweb{path}", timeout=60,
                        headers={**headers, "Authorization": f"Bearer {other_token}"})  # fmt: skip
    assert refused.status_code == 404
    own = httpx.get(f"{a_url}/dicomweb{path}", timeout=60,
                    headers={**headers, "Authorization": f"Bearer {_token(b_box, patient)}"})  # fmt: skip
    assert own.status_code == 200
    assert any(e.get("outcome") == "4" and "images.retrieve" in json.dumps(e.get("subtype"))
               for e in _trail(box_a[0]))  # the attempt is in the exam patient's trail  # fmt: skip
    # nor at the index: another patient's record, or a change of it
    ins, oid = exam.record["patient_ins"], exam.record["ins_oid"]
    bearer = {"Authorization": f"Bearer {other_token}"}
    assert index.client.get(f"/api/patients/{ins}/history", params={"oid": oid},
                            headers=bearer).status_code == 403  # fmt: skip
    assert index.client.put(f"/api/patients/{ins}/exams/{exam.study_uid}/hidden",
                            params={"oid": oid}, headers=bearer,
                            json={"hidden": True}).status_code == 403  # fmt: skip


def test_a_professional_cannot_use_the_patient_side(
    professional: httpx.Client, patient: httpx.Client, exam: Exam, box_b: tuple[SourceBox, str],
    index: IndexServer,
) -> None:  # fmt: skip
    assert professional.cookies.get("drimbox_session")
    for path in ("/patient/api/exams", "/patient/api/trail", "/patient/api/index-log",
                 "/patient/dicomweb/studies", f"/patient/api/exams/{exam.study_uid}/zip"):  # fmt: skip
        assert professional.get(path).status_code == 401, path
    assert professional.post(f"/patient/exams/{exam.study_uid}/masquer",
                             data={"csrf": "x"}).status_code == 401  # fmt: skip
    assert professional.get("/patient/").headers.get("location") == "/patient/login"
    # a professional's token at the index: the patient's controls are the patient's only
    session = box_b[0].conso.proxy.sessions.store.get(professional.cookies["drimbox_session"])  # type: ignore[union-attr]
    ins, oid = exam.record["patient_ins"], exam.record["ins_oid"]
    r = index.client.put(f"/api/patients/{ins}/opposition", params={"oid": oid},
                         headers={"Authorization": f"Bearer {session.access_token}"},
                         json={"opposed": True, "opposesBreakGlass": True})  # fmt: skip
    assert r.status_code == 403
    # and the patient's session opens nothing on the professionals' side
    pro_only = httpx.get(f"{box_b[1]}/conso/api/history", cookies=dict(patient.cookies),
                         params={"ins": ins, "oid": oid})  # fmt: skip
    assert pro_only.status_code == 401
