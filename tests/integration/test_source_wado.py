"""The Source's WADO-RS for other boxes, over real HTTP: exams published by the box from a real
PACS (ours, filled over its DICOMweb), tokens checked against a PSC introspection endpoint
(fake: the real one cannot exist here), requests from ``dicomweb-client`` and replays of the
ANS DRIM-M validator samples."""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.uid import CTImageStorage, generate_uid

from drimbox.adapters.dicomweb import multipart as mp
from drimbox.adapters.documents.manifest_codec import KosCodec
from drimbox.domain.manifest import (
    ImagingManifest,
    ManifestInstance,
    ManifestPatient,
    ManifestSeries,
    ManifestStudy,
)
from drimbox.entrypoints.box import SourceBox, create_app
from drimbox.services.source.outbox import Outbox, Publication, PublicationState
from drimbox.settings import BoxSettings
from tests.dicom_factory import ct_instance, part10
from tests.fake_psc import FakePsc, running_fake_psc
from tests.index_fixtures import IndexServer
from tests.integration.test_source_publication import (
    box_settings,
    running_box,
    send,
    store,
    wait_for,
)
from tests.peers import Pacs, free_port, running_pacs, serving
from tests.source_exams import Exam

DATA = Path(__file__).resolve().parents[3] / "shared" / "drim-m" / "data"
SAMPLES = sorted(
    [
        *(DATA / "Echantillons validateurs" / "Validateur WADO-RS").rglob("Requête*.txt"),
        *(DATA / "test a blanc").rglob("OK_*.txt"),
    ]
)
JPEG_LS = "1.2.840.10008.1.2.4.80"
EXPLICIT = "1.2.840.10008.1.2.1"


# --- the network: PACS, index, PSC, the box over HTTP ------------------------------------------


@pytest.fixture(scope="module")
def psc() -> Iterator[FakePsc]:
    with running_fake_psc() as p:
        yield p


@pytest.fixture(scope="module")
def sample_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """CT slices carrying the UIDs the ANS samples ask for."""
    folder = tmp_path_factory.mktemp("ans-uids")
    files = []
    for i, (study, series, sop) in enumerate(
        [
            (ANS_STUDY, ANS_SERIES, "1.2.3.4.5.6.7"),
            (ANS_STUDY, ANS_SERIES, "1.2.3.4.5.6.8"),
            ("1.2.3.4.5.6.7.8.9", "1.2.3.4.5.6.7.8.9", "1.2.3.4.5.6.7.8.9"),
        ]
    ):
        ds = ct_instance(patient_id="248000000000070", study=study, series=series, sop=sop,
                         number=i + 1, size=64)  # fmt: skip
        path = folder / f"{i}.dcm"
        path.write_bytes(part10(ds))
        files.append(path)
    return files


@pytest.fixture(scope="module")
def pacs(
    tmp_path_factory: pytest.TempPathFactory, exams: list[Exam], sample_files: list[Path]
) -> Iterator[Pacs]:
    with running_pacs(tmp_path_factory.mktemp("pacs") / "store") as p:
        store([*exams[0].files(), *sample_files], p.port, p.aet)
        yield p


@pytest.fixture(scope="module")
def box(
    tmp_path_factory: pytest.TempPathFactory, pacs: Pacs, index: IndexServer,
    signer_files: tuple[Path, Path], psc: FakePsc,
) -> Iterator[SourceBox]:  # fmt: skip
    settings = box_settings(
        tmp_path_factory.mktemp("box"), pacs.aet, pacs.port, index.url, signer_files,
        prefetch=False,  # the first request finds a cold cache
        psc={"introspection_url": psc.introspection_url, "client_id": "drimbox",
             "client_secret": "secret"},
    )  # fmt: skip
    settings = with_pacs(settings, dicomweb_url=pacs.dicomweb)
    with running_box(settings) as b:
        yield b


def with_pacs(settings: BoxSettings, **changes: object) -> BoxSettings:
    return settings.model_copy(update={"pacs": settings.pacs.model_copy(update=changes)})


@pytest.fixture(scope="module")
def url(box: SourceBox) -> Iterator[str]:
    with serving(create_app(box)) as base:
        yield base + "/dicomweb"


@pytest.fixture(scope="module")
def kos_uid(box: SourceBox, exams: list[Exam]) -> str:
    exam = exams[0]
    assert send(box.mllp.port, exam.message("ORU"))[0] == "AA"

    def published() -> str:
        pub = box.outbox.publication(exam.study_uid)
        return pub.indexed_kos_uid if pub and pub.state is PublicationState.PUBLISHED else ""

    return str(wait_for(published, what="publication", box=box))


ANS_STUDY = "1.2.840.113745.101000.108000.38425.5599.7073835"
ANS_SERIES = "1.3.12.2.1107.5.1.4.54023.30000005041115305593700013463"


def publish_directly(
    box: SourceBox, kos_uid: str, study: str, series: str, sops: list[str]
) -> None:
    """A publication as the archive keeps it (what an XDM import pre-loads, spec B.13)."""
    manifest = ImagingManifest(
        sop_instance_uid=kos_uid, series_instance_uid=generate_uid(),
        patient=ManifestPatient("248000000000070", "1.2.250.1.213.1.4.10", "DUPONT", "JEANNE"),
        study=ManifestStudy(study, date=date(2024, 1, 15)),
        series=(ManifestSeries(series, "CT", 1, retrieve_url=f"https://a/dicomweb/studies/{study}/series/{series}",
                               instances=tuple(ManifestInstance(CTImageStorage, s) for s in sops)),),
    )  # fmt: skip
    pub = Publication(
        study_uid=study, patient="248000000000070", patient_id="248000000000070^^^&1.2.250.1.213.1.4.10&ISO^NH",
        kos_uid=kos_uid, kos=KosCodec().encode(manifest), report_uid="", report_raw=b"",
        indexed_kos_uid=kos_uid, indexed_report_uid="", state=PublicationState.PUBLISHED,
        updated_at="2024-01-15T10:00:00",
    )  # fmt: skip
    with box.inbox.transaction() as db:
        Outbox.record(db, pub)


@pytest.fixture(scope="module")
def ans_publications(box: SourceBox) -> None:
    # the samples name the series UID as KOS-SOPInstanceUID: a KOS with that UID grants them
    publish_directly(box, ANS_SERIES, ANS_STUDY, ANS_SERIES, ["1.2.3.4.5.6.7", "1.2.3.4.5.6.8"])
    publish_directly(box, "1.2.3.4.5.6.7.8.9", "1.2.3.4.5.6.7.8.9", "1.2.3.4.5.6.7.8.9",
                     ["1.2.3.4.5.6.7.8.9"])  # fmt: skip


def headers(psc: FakePsc, kos: str, accept: str | None = None) -> dict[str, str]:
    out = {"Authorization": f"Bearer {psc.issue()}", "KOS-SOPInstanceUID": kos}
    if accept:
        out["Accept"] = accept
    return out


def parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    _, _, boundary = mp.parse_content_type(response.headers["content-type"])
    return [(h, bytes(b)) for h, b in mp.split_parts(response.content, boundary)]


def pacs_bytes(pacs: Pacs, study: str, series: str) -> dict[str, bytes]:
    """What the PACS itself serves (as stored): the reference for byte identity."""
    r = httpx.get(f"{pacs.dicomweb}/studies/{study}/series/{series}", timeout=30,
                  headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})  # fmt: skip
    r.raise_for_status()
    return {
        str(dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID): b for _, b in parts(r)
    }


# --- retrieval ---------------------------------------------------------------------------------


def test_dicomweb_client_retrieves_every_published_instance_byte_identical(
    url: str, kos_uid: str, psc: FakePsc, exams: list[Exam], pacs: Pacs, box: SourceBox
) -> None:
    exam = exams[0]
    client = DICOMwebClient(url, headers=headers(psc, kos_uid))
    for series in exam.record["series"]:
        # cold: the box pulls the series from the PACS while streaming it out
        datasets = client.retrieve_series(exam.study_uid, series["series_uid"])
        assert {str(d.SOPInstanceUID) for d in datasets} == set(series["sop_instance_uids"])
        reference = pacs_bytes(pacs, exam.study_uid, series["series_uid"])
        r = httpx.get(f"{url}/studies/{exam.study_uid}/series/{series['series_uid']}", timeout=30,
                      headers=headers(psc, kos_uid, 'multipart/related; type="application/dicom"; transfer-syntax=*'))  # fmt: skip
        assert r.status_code == 200
        got = {
            str(dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID): b
            for _, b in parts(r)
        }
        assert got == reference
    # the whole study, and a single instance, through the same manifest
    assert len(client.retrieve_study(exam.study_uid)) == len(exam.sops)
    one = exam.record["series"][0]
    inst = client.retrieve_instance(exam.study_uid, one["series_uid"], one["sop_instance_uids"][0])
    assert str(inst.SOPInstanceUID) == one["sop_instance_uids"][0]


def test_lossless_compression_on_request(
    url: str, kos_uid: str, psc: FakePsc, exams: list[Exam]
) -> None:
    exam = exams[0]
    series = next(s for s in exam.record["series"] if s["modality"] == "CT") if any(
        s["modality"] == "CT" for s in exam.record["series"]) else exam.record["series"][0]  # fmt: skip
    accept = (f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_LS}; q=0.9, '
              f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}; q=0.4')  # fmt: skip
    r = httpx.get(f"{url}/studies/{exam.study_uid}/series/{series['series_uid']}",
                  headers=headers(psc, kos_uid, accept), timeout=60)  # fmt: skip
    assert r.status_code == 200
    plain = httpx.get(f"{url}/studies/{exam.study_uid}/series/{series['series_uid']}",
                      headers=headers(psc, kos_uid), timeout=60)  # fmt: skip
    originals = {
        str(d.SOPInstanceUID): d for d in (dcmread(io.BytesIO(b)) for _, b in parts(plain))
    }
    for head, body in parts(r):
        ds = dcmread(io.BytesIO(body))
        if "PixelData" not in ds:
            continue
        assert f"transfer-syntax={JPEG_LS}" in head["content-type"]
        assert str(ds.file_meta.TransferSyntaxUID) == JPEG_LS
        assert np.array_equal(ds.pixel_array, originals[str(ds.SOPInstanceUID)].pixel_array)
    assert len(r.content) < len(plain.content)


def test_metadata_and_search_show_only_the_manifest(
    url: str, kos_uid: str, psc: FakePsc, exams: list[Exam]
) -> None:
    exam = exams[0]
    series = exam.record["series"][0]
    client = DICOMwebClient(url, headers=headers(psc, kos_uid))
    meta = client.retrieve_series_metadata(exam.study_uid, series["series_uid"])
    assert {m["00080018"]["Value"][0] for m in meta} == set(series["sop_instance_uids"])
    assert all(m["7FE00010"]["BulkDataURI"].startswith("https://box-a.example:8443/dicomweb/")
               for m in meta if "7FE00010" in m)  # fmt: skip
    studies = client.search_for_studies()
    assert [s["0020000D"]["Value"][0] for s in studies] == [exam.study_uid]
    found = client.search_for_series(exam.study_uid)
    assert {s["0020000E"]["Value"][0] for s in found} == {
        s["series_uid"] for s in exam.record["series"]
    }
    inst = client.search_for_instances(exam.study_uid, series["series_uid"])
    assert {i["00080018"]["Value"][0] for i in inst} == set(series["sop_instance_uids"])


def test_frames_rendered_and_thumbnail(
    url: str, kos_uid: str, psc: FakePsc, exams: list[Exam]
) -> None:
    exam = exams[0]
    series = exam.record["series"][0]
    sop = series["sop_instance_uids"][0]
    base = f"{url}/studies/{exam.study_uid}/series/{series['series_uid']}/instances/{sop}"
    r = httpx.get(f"{base}/frames/1", headers=headers(psc, kos_uid,
                  'multipart/related; type="application/octet-stream"'))  # fmt: skip
    assert r.status_code == 200
    [(_, frame)] = parts(r)
    ds = dcmread(exam.folder / series["files"][0])
    assert (
        frame == ds.PixelData[: len(frame)]
        and len(frame) == ds.Rows * ds.Columns * ds.BitsAllocated // 8
    )
    r = httpx.get(f"{base}/rendered", headers=headers(psc, kos_uid, "image/png"))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size == (ds.Columns, ds.Rows)
    r = httpx.get(
        f"{url}/studies/{exam.study_uid}/thumbnail", headers=headers(psc, kos_uid, "image/jpeg")
    )
    assert r.status_code == 200
    assert max(Image.open(io.BytesIO(r.content)).size) <= 128


# --- what is refused -----------------------------------------------------------------------------


def test_access_is_refused_without_token_manifest_or_outside_it(
    url: str, kos_uid: str, psc: FakePsc, exams: list[Exam], box: SourceBox
) -> None:
    exam, other = exams[0], exams[1]
    series = exam.record["series"][0]
    path = f"{url}/studies/{exam.study_uid}/series/{series['series_uid']}"
    r = httpx.get(path, headers={"KOS-SOPInstanceUID": kos_uid})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/problem+json"
    revoked = psc.issue()
    psc.revoke(revoked)
    r = httpx.get(
        path, headers={"Authorization": f"Bearer {revoked}", "KOS-SOPInstanceUID": kos_uid}
    )
    assert r.status_code == 401
    token = {"Authorization": f"Bearer {psc.issue()}"}
    assert httpx.get(path, headers=token).status_code == 400  # no KOS-SOPInstanceUID
    assert httpx.get(path, headers={**token, "KOS-SOPInstanceUID": "1.2.abc"}).status_code == 400
    # unknown manifest; a study the manifest does not cover (held by the same PACS!); an
    # instance that is not in the manifest; a malformed UID in the path
    assert httpx.get(path, headers=headers(psc, "1.2.3.999")).status_code == 404
    other_series = other.record["series"][0]["series_uid"]
    r = httpx.get(
        f"{url}/studies/{other.study_uid}/series/{other_series}", headers=headers(psc, kos_uid)
    )
    assert r.status_code == 404
    assert (
        httpx.get(f"{path}/instances/1.2.3.4.5", headers=headers(psc, kos_uid)).status_code == 404
    )
    assert (
        httpx.get(f"{url}/studies/1.2.x/series/1.2", headers=headers(psc, kos_uid)).status_code
        == 400
    )
    # nothing acceptable: 406 before anything is sent
    r = httpx.get(
        path,
        headers=headers(
            psc,
            kos_uid,
            'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.100',
        ),
    )
    assert r.status_code == 406


def test_a_depublished_study_is_no_longer_served(url: str, psc: FakePsc, box: SourceBox) -> None:
    kos, study, series = generate_uid(), generate_uid(), generate_uid()
    publish_directly(box, kos, study, series, [generate_uid()])
    path = f"{url}/studies/{study}/series"
    assert httpx.get(path, headers=headers(psc, kos)).status_code == 200
    with box.inbox.transaction() as db:
        db.execute("UPDATE publications SET state = 'deleted' WHERE kos_uid = ?", (kos,))
    assert httpx.get(path, headers=headers(psc, kos)).status_code == 404


def test_pacs_down_gives_503_not_a_cut_stream(
    tmp_path: Path, index: IndexServer, signer_files: tuple[Path, Path], psc: FakePsc
) -> None:
    settings = box_settings(tmp_path / "box", "NOPACS", free_port(), index.url, signer_files,
                            prefetch=False, psc={"introspection_url": psc.introspection_url,
                                                 "client_id": "drimbox", "client_secret": "secret"})  # fmt: skip
    settings = with_pacs(settings, timeout=2)
    with running_box(settings) as b, serving(create_app(b)) as base:
        kos, study, series = generate_uid(), generate_uid(), generate_uid()
        publish_directly(b, kos, study, series, [generate_uid()])
        r = httpx.get(f"{base}/dicomweb/studies/{study}", headers=headers(psc, kos), timeout=30)
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"


# --- the ANS validator samples, replayed --------------------------------------------------------


def _sample_request(path: Path) -> tuple[str, list[tuple[str, str]]]:
    lines = path.read_text(encoding="utf-8-sig").replace("\r\n", "\n").split("\n")
    method, target, _ = lines[0].split(" ", 2)
    assert method == "GET"
    headers = []
    for line in lines[1:]:
        if not line.strip():
            break
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return target, headers


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_ans_sample_request_is_answered(
    sample: Path, url: str, psc: FakePsc, ans_publications: None, sample_files: list[Path]
) -> None:
    target, sample_headers = _sample_request(sample)
    m = re.search(r"/studies/.*$", target)
    send_headers = [(n, v) for n, v in sample_headers if n.lower() not in ("host", "connection")]
    # the samples carry truncated tokens: a live one from the (fake) PSC takes their place
    send_headers = [(n, f"Bearer {psc.issue()}" if n.lower() == "authorization" else v)
                    for n, v in send_headers]  # fmt: skip
    r = httpx.get(url + (m.group(0) if m else ""), headers=send_headers, timeout=30)
    assert r.status_code == 200, r.text
    if m is None:  # the health check
        assert r.json()["status"] == "UP"
        return
    accepts = [v for n, v in sample_headers if n.lower() == "accept"]
    received = parts(r)
    assert received
    for head, body in received:
        if "/frames/" in target:
            assert head["content-type"].startswith(("application/octet-stream", "image/"))
            continue
        ds = dcmread(io.BytesIO(body))
        syntax = str(ds.file_meta.TransferSyntaxUID)
        assert f"transfer-syntax={syntax}" in head["content-type"]
        found = re.findall(
            r"transfer-syntax=([\d.]+);q=([\d.]+)", ",".join(accepts).replace(" ", "")
        )
        q = {ts: float(value) for ts, value in found}
        assert q[syntax] > 0  # never a refused syntax
        # the best we can produce: JPEG-LS lossless from these uncompressed CTs, unless the
        # consumer ranks explicit VR little endian higher
        assert syntax == (
            EXPLICIT if float(q.get(EXPLICIT, 0)) >= float(q.get(JPEG_LS, 0)) else JPEG_LS
        )
        original = next(
            dcmread(f) for f in sample_files if dcmread(f).SOPInstanceUID == ds.SOPInstanceUID
        )
        assert np.array_equal(ds.pixel_array, original.pixel_array)


def test_source_port_served_by_worker_processes(
    tmp_path: Path, pacs: Pacs, index: IndexServer, signer_files: tuple[Path, Path],
    psc: FakePsc, exams: list[Exam],
) -> None:  # fmt: skip
    """``source_port``: other boxes' requests spread over worker processes, which share the
    archive and the cache with the main process."""
    port = free_port()
    settings = box_settings(
        tmp_path / "box", pacs.aet, pacs.port, index.url, signer_files, prefetch=False,
        source_port=port, source_workers=2, conso={"enabled": False},
        psc={"introspection_url": psc.introspection_url, "client_id": "drimbox",
             "client_secret": "secret"},
    )  # fmt: skip
    exam = exams[0]
    series = exam.record["series"][0]
    with running_box(with_pacs(settings, dicomweb_url=pacs.dicomweb)) as b:
        kos = generate_uid()
        publish_directly(b, kos, exam.study_uid, series["series_uid"], series["sop_instance_uids"])
        deadline = time.monotonic() + 30
        pids: set[int] = set()
        while len(pids) < 2 and time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                pids.add(httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json()["pid"])
            time.sleep(0.05)
        assert len(pids) == 2
        r = httpx.get(f"http://127.0.0.1:{port}/dicomweb/studies/{exam.study_uid}/series/"
                      f"{series['series_uid']}", headers=headers(psc, kos), timeout=60)  # fmt: skip
        assert r.status_code == 200, r.text
        assert {str(dcmread(io.BytesIO(b), stop_before_pixels=True).SOPInstanceUID)
                for _, b in parts(r)} == set(series["sop_instance_uids"])  # fmt: skip
