"""Two sites on one machine: site A (Orthanc, its box publishing), site B (our PACS, its box
consulting), one index, one (fake) Pro Santé Connect. From B, a professional lists the
patient's history, reads the report, retrieves every image through B's proxy (which fetches
from A's Source), imports the exam into B's PACS and downloads it as a ZIP."""

from __future__ import annotations

import io
import os
import re
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import CTImageStorage, generate_uid

from drimbox.adapters.dicomweb import multipart as mp
from drimbox.domain.manifest import ImagingManifest, ManifestInstance, ManifestSeries
from drimbox.entrypoints.box import SourceBox, create_app
from drimbox.services.source.outbox import PublicationState
from tests.box_pki import Pki
from tests.fake_psc import FakePsc, running_fake_psc
from tests.index_fixtures import IndexServer, database_url, running_index
from tests.integration.test_source_publication import (
    box_settings,
    running_box,
    send,
    store,
    wait_for,
)
from tests.peers import (
    Orthanc,
    Pacs,
    free_port,
    run_dcmtk,
    running_orthanc,
    running_pacs,
    serving,
    wait_port,
)
from tests.source_exams import Exam

pytestmark = pytest.mark.orthanc
ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass
class Site:
    box: SourceBox
    url: str
    """The users' port (plain HTTP here: a reverse proxy's job in a hospital)."""
    source: str = ""
    """The Source port other boxes reach, mutual TLS."""


@pytest.fixture(scope="module")
def psc() -> Iterator[FakePsc]:
    with running_fake_psc() as p:
        yield p


@pytest.fixture(scope="module")
def index(
    tmp_path_factory: pytest.TempPathFactory,
    psc: FakePsc,
    signer_files: tuple[Path, Path],
    pki: Pki,
) -> Iterator[IndexServer]:
    """An index that trusts no default caller and demands the boxes' certificates (mutual
    TLS): box A publishes with its signed VIHF assertion, box B asks with the professional's
    token."""
    folder = tmp_path_factory.mktemp("index-two-sites")
    root = x509.load_pem_x509_certificates(signer_files[1].read_bytes())[-1]
    anchors = folder / "vihf-roots.pem"
    anchors.write_bytes(root.public_bytes(Encoding.PEM))
    trust = {"introspection_url": psc.introspection_url, "client_id": "drimbox",
             "client_secret": "secret", "vihf_trust_anchors": anchors}  # fmt: skip
    tls = {"cert": pki.folder / "box-a-fullchain.pem", "key": pki.folder / "box-a.key",
           "client_trust_anchors": pki.folder / "root.crt"}  # fmt: skip
    with database_url("sqlite", folder) as url, \
            running_index(url, trust=trust, tls=tls) as server:  # fmt: skip
        yield server


@pytest.fixture(scope="module")
def exam(exams: list[Exam]) -> Exam:
    return next(e for e in exams[:-1] if len(e.record["reports"]) == 1)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, exam: Exam) -> Iterator[Orthanc]:
    known = {"DRIMBOX": ("DRIMBOX", "127.0.0.1", free_port())}  # C-FIND answered to known AEs
    with running_orthanc(tmp_path_factory.mktemp("orthanc-a"), modalities=known) as o:
        store(exam.files(), o.port, o.aet)
        yield o


@pytest.fixture(scope="module")
def pacs_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    with running_pacs(tmp_path_factory.mktemp("pacs-b") / "store") as p:
        yield p


def _tls(pki: Pki, name: str, allowed: list[str]) -> dict[str, object]:
    return {"cert": pki.folder / f"{name}-fullchain.pem", "key": pki.folder / f"{name}.key",
            "trust_anchors": pki.folder / "root.crt", "allowed_boxes": allowed}  # fmt: skip


def _psc(psc: FakePsc) -> dict[str, str]:
    return {"introspection_url": psc.introspection_url, "client_id": "drimbox",
            "client_secret": "secret"}  # fmt: skip


@pytest.fixture(scope="module")
def site_a(
    tmp_path_factory: pytest.TempPathFactory, orthanc: Orthanc, index: IndexServer,
    signer_files: tuple[Path, Path], psc: FakePsc, pki: Pki,
) -> Iterator[Site]:  # fmt: skip
    port, source_port = free_port(), free_port()
    settings = box_settings(
        tmp_path_factory.mktemp("box-a"), orthanc.aet, orthanc.port, index.url, signer_files,
        public_url=f"https://localhost:{source_port}", prefetch=False, psc=_psc(psc),
        conso={"enabled": False}, source_port=source_port, source_workers=1,
        tls=_tls(pki, "box-a", ["box-b.example"]),
    )  # fmt: skip
    settings = settings.model_copy(update={"pacs": settings.pacs.model_copy(
        update={"dicomweb_url": f"{orthanc.url}/dicom-web"})})  # fmt: skip
    with running_box(settings) as box, serving(create_app(box), port=port) as url:
        wait_port(source_port)
        yield Site(box, url, f"https://localhost:{source_port}")


@pytest.fixture(scope="module")
def site_b(
    tmp_path_factory: pytest.TempPathFactory, pacs_b: Pacs, index: IndexServer,
    signer_files: tuple[Path, Path], psc: FakePsc, site_a: Site, pki: Pki,
) -> Iterator[Site]:  # fmt: skip
    port, source_port = free_port(), free_port()
    settings = box_settings(
        tmp_path_factory.mktemp("box-b"), pacs_b.aet, pacs_b.port, index.url, signer_files,
        public_url=f"https://box-b.example:{source_port}", psc=_psc(psc),
        source_port=source_port, source_workers=1, tls=_tls(pki, "box-b", ["localhost"]),
        conso={"allowed_sources": [site_a.source + "/dicomweb"], "secure_cookie": False,
               "ohif_dir": _ohif_folder(), "users_url": f"http://127.0.0.1:{port}"},
    )  # fmt: skip
    with running_box(settings) as box, serving(create_app(box), port=port) as url:
        yield Site(box, url)


def _ohif_folder() -> Path | None:
    from tests.browser import ohif_version

    folder = Path(os.environ.get("DRIMBOX_OHIF_DIR") or
                  Path.home() / ".cache" / "drimbox" / f"ohif-{ohif_version()}")  # fmt: skip
    return folder if (folder / "index.html").is_file() else None


@pytest.fixture(scope="module")
def published(site_a: Site, exam: Exam) -> str:
    assert send(site_a.box.mllp.port, exam.message("ORU"))[0] == "AA"

    def done() -> str:
        pub = site_a.box.outbox.publication(exam.study_uid)
        return pub.indexed_kos_uid if pub and pub.state is PublicationState.PUBLISHED else ""

    return str(wait_for(done, what="publication at A", box=site_a.box))


@pytest.fixture(scope="module")
def token(psc: FakePsc) -> str:
    return psc.issue("899700218896")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def history(site_b: Site, published: str, token: str, exam: Exam) -> list[dict[str, object]]:
    r = httpx.get(f"{site_b.url}/conso/api/history", headers=bearer(token), timeout=60,
                  params={"ins": exam.record["patient_ins"], "oid": exam.record["ins_oid"]})  # fmt: skip
    assert r.status_code == 200, r.text
    return list(r.json()["exams"])


def orthanc_files(orthanc: Orthanc) -> dict[str, bytes]:
    out = {}
    for oid in httpx.get(f"{orthanc.url}/instances").json():
        data = httpx.get(f"{orthanc.url}/instances/{oid}/file").content
        out[str(dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)] = data
    return out


def test_history_lists_the_exam_with_its_report(
    history: list[dict[str, object]], exam: Exam, published: str, site_b: Site, token: str
) -> None:
    [entry] = [e for e in history if e["study_uid"] == exam.study_uid]
    assert entry["kos_uid"] == published
    assert entry["instances"] == len(exam.sops)
    assert set(entry["modalities"]) == {s["modality"] for s in exam.record["series"]}  # type: ignore[arg-type]
    assert entry["date"] and entry["report_uid"]
    r = httpx.get(f"{site_b.url}/conso/reports/{entry['report_uid']}", headers=bearer(token))
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert exam.record["accession"] in r.text
    page = httpx.get(f"{site_b.url}/conso/patients/{exam.record['patient_ins']}",
                     params={"oid": exam.record["ins_oid"]}, headers=bearer(token))  # fmt: skip
    assert page.status_code == 200 and "Historique d'imagerie" in page.text
    assert f"StudyInstanceUIDs={exam.study_uid}" in page.text


def test_every_instance_through_b_is_byte_identical_to_a(
    site_b: Site, history: list[dict[str, object]], exam: Exam, orthanc: Orthanc, token: str
) -> None:
    reference = orthanc_files(orthanc)
    root = f"{site_b.url}/conso/dicomweb"
    for series in exam.record["series"]:
        r = httpx.get(f"{root}/studies/{exam.study_uid}/series/{series['series_uid']}",
                      headers={**bearer(token), "Accept": ANY}, timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
        _, _, boundary = mp.parse_content_type(r.headers["content-type"])
        got = {str(dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID): bytes(b)
               for _, b in mp.split_parts(r.content, boundary)}  # fmt: skip
        assert got == {sop: reference[sop] for sop in series["sop_instance_uids"]}
    # an independent DICOMweb client sees the same exam: search, metadata, instances, frames
    client = DICOMwebClient(root, headers=bearer(token))
    assert [s["0020000D"]["Value"][0] for s in client.search_for_studies(
        search_filters={"StudyInstanceUID": exam.study_uid})] == [exam.study_uid]  # fmt: skip
    first = exam.record["series"][0]
    meta = client.retrieve_series_metadata(exam.study_uid, first["series_uid"])
    assert {m["00080018"]["Value"][0] for m in meta} == set(first["sop_instance_uids"])
    uris = [m["7FE00010"]["BulkDataURI"] for m in meta if "7FE00010" in m]
    assert uris and all(u.startswith(root) for u in uris), uris[:2]
    datasets = client.retrieve_study(exam.study_uid)
    assert {str(d.SOPInstanceUID) for d in datasets} == exam.sops
    frames = client.retrieve_instance_frames(exam.study_uid, first["series_uid"],
                                             first["sop_instance_uids"][0], [1])  # fmt: skip
    assert len(frames) == 1 and len(frames[0]) > 0


def test_unknown_unlisted_or_unallowed_exams_are_refused(
    site_b: Site, history: list[dict[str, object]], exam: Exam, token: str, published: str,
    psc: FakePsc,
) -> None:  # fmt: skip
    root = f"{site_b.url}/conso/dicomweb"
    assert (
        httpx.get(f"{root}/studies/{generate_uid()}/series", headers=bearer(token)).status_code
        == 404
    )
    series = exam.record["series"][0]["series_uid"]
    r = httpx.get(
        f"{root}/studies/{exam.study_uid}/series/{generate_uid()}/metadata", headers=bearer(token)
    )
    assert r.status_code == 404
    # another professional (another token) has not listed this patient: nothing
    r = httpx.get(f"{root}/studies/{exam.study_uid}/series/{series}/metadata",
                  headers=bearer(psc.issue("899700000000")))  # fmt: skip
    assert r.status_code == 404
    assert httpx.get(f"{root}/studies/{exam.study_uid}").status_code == 401  # no credentials
    # a manifest whose Retrieve URL points outside the allowed boxes: never fetched
    conso = site_b.box.conso
    assert conso is not None
    evil_kos, evil_study = generate_uid(), generate_uid()
    good = conso.proxy.book.get(published)
    evil: ImagingManifest = replace(
        good, sop_instance_uid=evil_kos, study=replace(good.study, study_uid=evil_study),
        series=(ManifestSeries(generate_uid(), "CT",
                               retrieve_url=f"http://169.254.169.254/dicomweb/studies/{evil_study}/series/1.2",
                               instances=(ManifestInstance(CTImageStorage, generate_uid()),)),),
    )  # fmt: skip
    conso.proxy.book.put(evil_kos, evil)
    session = conso.proxy.sessions.session_of(token)
    assert session is not None
    conso.proxy.sessions.store.grant(session, "x", {evil_study: evil_kos}, {})
    r = httpx.get(f"{root}/studies/{evil_study}/series/{evil.series[0].series_uid}/metadata",
                  headers=bearer(token))  # fmt: skip
    assert r.status_code == 403 and "not in the list of allowed boxes" in r.json()["detail"]


def test_import_lands_every_instance_in_b_pacs_under_the_local_id(
    site_b: Site, history: list[dict[str, object]], exam: Exam, pacs_b: Pacs, token: str
) -> None:
    url = f"{site_b.url}/conso/api/exams/{exam.study_uid}/import"
    body = {"ipp": "IPP-B-0042", "ipp_issuer": "HOPITAL-B&1.2.250.1.999.42&ISO"}
    r = httpx.post(url, json=body, headers=bearer(token), timeout=30)
    assert r.status_code == 202, r.text
    job = r.json()
    deadline = time.monotonic() + 120
    while job["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.3)
        job = httpx.get(f"{site_b.url}/conso/api/imports/{job['id']}", headers=bearer(token)).json()
    assert job["state"] == "done", job
    assert job["stored"] == len(exam.sops)
    # asking again is idempotent: the same finished job
    again = httpx.post(url, json=body, headers=bearer(token), timeout=30).json()
    assert again["id"] == job["id"] and again["state"] == "done"
    out = run_dcmtk("findscu", "-S", "-aec", pacs_b.aet, "127.0.0.1", str(pacs_b.port),
                    "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={exam.study_uid}",
                    "-k", "PatientID", "-k", "SOPInstanceUID").stderr  # fmt: skip
    assert out.count("Find Response:") == len(exam.sops)
    assert out.count("IPP-B-0042") == len(exam.sops)
    # the INS is kept among the other patient ids
    stored = next((pacs_b.storage / "dicom").rglob("*.dcm"))
    ds = dcmread(stored)
    assert ds.PatientID == "IPP-B-0042"
    assert exam.record["patient_ins"] in [i.PatientID for i in ds.OtherPatientIDsSequence]


def test_download_as_zip_with_dicomdir(
    site_b: Site, history: list[dict[str, object]], exam: Exam, token: str
) -> None:
    r = httpx.get(f"{site_b.url}/conso/api/exams/{exam.study_uid}/zip", headers=bearer(token),
                  timeout=60)  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = z.namelist()
        assert "DICOMDIR" in names
        dicomdir = dcmread(io.BytesIO(z.read("DICOMDIR")))
        listed = {str(rec.ReferencedSOPInstanceUIDInFile) for rec in dicomdir.DirectoryRecordSequence
                  if "ReferencedSOPInstanceUIDInFile" in rec}  # fmt: skip
    assert listed == exam.sops


@pytest.mark.timeout(240)
def test_ohif_on_b_renders_the_exam_of_a(
    tmp_path: Path, site_b: Site, history: list[dict[str, object]], exam: Exam, token: str
) -> None:
    from tests.browser import chromium_page, ohif_dist, save_artifact
    from tests.integration.test_ohif_viewer import dismiss_overlays, drawn

    ohif_dist()  # skips (fails under CI) without the OHIF build
    site_b_viewer = site_b

    problems: list[str] = []
    with chromium_page() as page:
        page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url}")
                if r.status >= 400 else None)  # fmt: skip
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        # the session cookie the OIDC login will set; here from the professional's token
        opened = page.request.post(f"{site_b_viewer.url}/conso/api/session", headers=bearer(token))
        assert opened.ok, opened.text()
        page.goto(f"{site_b_viewer.url}/viewer/viewer?StudyInstanceUIDs={exam.study_uid}",
                  wait_until="domcontentloaded")  # fmt: skip
        stats = drawn(page, 1, timeout=120)
        dismiss_overlays(page)
        save_artifact(tmp_path, "ohif-conso.png", page.screenshot())
    assert any(s["colours"] > 16 for s in stats), f"{stats}\n" + "\n".join(problems)


def test_every_access_is_in_the_trails_of_both_boxes(
    site_a: Site, site_b: Site, history: list[dict[str, object]], exam: Exam
) -> None:
    """After the tests above (history, report, images, import, download) the patient's
    trail at B says who did what; A's says which box fetched the images for whom."""
    from drimbox.adapters.audit.jsonl_trail import JsonlTrail

    ins = exam.record["patient_ins"]
    with JsonlTrail(site_b.box.settings.data_dir / "trail") as trail_b:
        assert trail_b.verify().ok
        events = trail_b.for_patient(ins, limit=1000)
    actions = {e["subtype"][0]["code"] for e in events}
    assert {"history.list", "report.read", "images.view", "images.import",
            "images.download"} <= actions, actions  # fmt: skip
    who = {
        a["who"]["identifier"]["value"] for e in events for a in e["agent"] if a.get("requestor")
    }
    assert who == {"899700218896"}
    with JsonlTrail(site_a.box.settings.data_dir / "trail") as trail_a:
        assert trail_a.verify().ok
        retrieved = trail_a.for_patient(ins, limit=1000)
    assert retrieved and all(e["subtype"][0]["code"] == "images.retrieve" for e in retrieved)
    assert "box-b.example" in str(retrieved[0]["agent"])


def test_emergency_access_when_the_patient_opposed(
    site_b: Site, index: IndexServer, history: list[dict[str, object]], exam: Exam, token: str
) -> None:
    """The patient opposed access by professionals: the history is refused, except in a
    declared emergency with a reason ("bris de glace"), unless they opposed that too; every
    attempt is in the trail, the emergency flagged with its reason. (Last: it changes the
    patient's choices.)"""
    from drimbox.adapters.audit.jsonl_trail import JsonlTrail
    from drimbox.domain.access import ActorKind, CallerIdentity
    from drimbox.services.index.access import DmpAccessRules
    from drimbox.services.index.journal import IndexContext
    from drimbox.services.index.patient import PatientControls

    ins, oid = exam.record["patient_ins"], exam.record["ins_oid"]
    patient = CallerIdentity(who=ins, kind=ActorKind.PATIENT, patient_id=exam.patient_id)
    controls = PatientControls(IndexContext(index.db, DmpAccessRules(), index.repository))
    controls.set_opposition(patient, opposed=True)
    normal = httpx.get(f"{site_b.url}/conso/api/history", headers=bearer(token),
                       params={"ins": ins, "oid": oid}, timeout=60)  # fmt: skip
    assert normal.status_code == 403 and "opposed" in normal.json()["detail"]
    url = f"{site_b.url}/conso/api/history/emergency"
    r = httpx.post(url, json={"ins": ins, "oid": oid}, headers=bearer(token), timeout=60)
    assert r.status_code == 400  # no reason, no emergency access
    reason = "patient inconscient aux urgences, AVC suspecté"
    r = httpx.post(url, json={"ins": ins, "oid": oid, "reason": reason}, headers=bearer(token),
                   timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    assert exam.study_uid in [e["study_uid"] for e in r.json()["exams"]]
    # the same from the history page, in a browser's session: the refusal offers the form
    with httpx.Client(base_url=site_b.url, timeout=60) as browser:
        assert browser.post("/conso/api/session", headers=bearer(token)).status_code in (200, 204)
        page = browser.get(f"/conso/patients/{ins}", params={"oid": oid})
        assert page.status_code == 403 and "bris de glace" in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf is not None
        action = f"/conso/patients/{ins}/urgence"
        forged = browser.post(action, data={"oid": oid, "reason": reason, "csrf": "x"})
        assert forged.status_code == 403  # not this session's form
        elsewhere = browser.post(action, data={"oid": oid, "reason": reason, "csrf": csrf[1]},
                                 headers={"Origin": "https://evil.example"})  # fmt: skip
        assert elsewhere.status_code == 403
        blank = browser.post(action, data={"oid": oid, "reason": "  ", "csrf": csrf[1]})
        assert blank.status_code == 400 and "motif" in blank.text
        declared = browser.post(action, data={"oid": oid, "reason": reason, "csrf": csrf[1]})
        assert declared.status_code == 200, declared.text
        assert "Accès en urgence déclaré" in declared.text and exam.study_uid in declared.text
    controls.set_opposition(patient, opposed=True, opposes_break_glass=True)
    r = httpx.post(url, json={"ins": ins, "oid": oid, "reason": reason}, headers=bearer(token),
                   timeout=60)  # fmt: skip
    assert r.status_code == 403 and "break-glass" in r.json()["detail"]
    controls.set_opposition(patient, opposed=False)
    with JsonlTrail(site_b.box.settings.data_dir / "trail") as trail:
        events = trail.for_patient(ins, limit=1000)
    emergencies = [e for e in events if e["subtype"][0]["code"] == "emergency.access"]
    assert emergencies and reason in str(emergencies[0]["purposeOfEvent"])
    refused = [e for e in events if e["outcome"] != "0"]
    assert len(refused) >= 2  # the opposed normal listing and the opposed emergency
