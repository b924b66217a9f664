"""The embedded PACS's DICOMweb, driven by dicomweb-client (an independent client)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from requests.exceptions import HTTPError

from tests.peers import Pacs


def client(pacs: Pacs) -> DICOMwebClient:
    c = DICOMwebClient(url=pacs.dicomweb)
    # design.md 7: never let a client ask for gzip'd DICOM
    c._session.headers["Accept-Encoding"] = "identity"
    return c


def test_stow_qido_wado_roundtrip(pacs: Pacs, studies: dict[str, list[Path]]) -> None:
    web = client(pacs)
    study_uid, files = max(studies.items(), key=lambda kv: len(kv[1]))
    sent = [dcmread(f) for f in files]

    response = web.store_instances(sent)
    assert len(response.ReferencedSOPSequence) == len(sent)

    found = web.search_for_studies(search_filters={"StudyInstanceUID": study_uid})
    assert len(found) == 1
    assert int(found[0]["00201208"]["Value"][0]) == len(sent)  # NumberOfStudyRelatedInstances

    series = web.search_for_series(study_uid)
    assert {s["0020000E"]["Value"][0] for s in series} == {str(d.SeriesInstanceUID) for d in sent}
    instances = web.search_for_instances(study_uid, fields=["Rows"])
    assert len(instances) == len(sent)

    # whole study, then each instance and its first frame: pixel data byte-identical
    retrieved = {str(d.SOPInstanceUID): d for d in web.retrieve_study(study_uid)}
    for original in sent:
        got = retrieved[str(original.SOPInstanceUID)]
        assert bytes(got.PixelData) == bytes(original.PixelData)
    one = sent[0]
    inst = web.retrieve_instance(study_uid, str(one.SeriesInstanceUID), str(one.SOPInstanceUID))
    assert bytes(inst.PixelData) == bytes(one.PixelData)
    frames = web.retrieve_instance_frames(
        study_uid, str(one.SeriesInstanceUID), str(one.SOPInstanceUID), frame_numbers=[1]
    )
    frame_size = one.Rows * one.Columns * one.get("SamplesPerPixel", 1) * one.BitsAllocated // 8
    assert frames[0] == bytes(one.PixelData)[:frame_size]

    metadata = web.retrieve_series_metadata(study_uid, str(one.SeriesInstanceUID))
    in_series = [d for d in sent if d.SeriesInstanceUID == one.SeriesInstanceUID]
    assert len(metadata) == len(in_series)
    assert all("7FE00010" in m and "BulkDataURI" in m["7FE00010"] for m in metadata)
    # dicomweb-client sends "Host: 127.0.0.1" without the port, so compare paths only
    uri = httpx.URL(metadata[0]["7FE00010"]["BulkDataURI"])
    assert uri.path.startswith(f"/studies/{study_uid}/series/")
    bulk = httpx.get(f"{pacs.dicomweb}{uri.path}", headers={"Accept-Encoding": "identity"})
    assert bulk.status_code == 200
    assert bulk.headers["content-type"].startswith("multipart/related")


def test_qido_filters(pacs: Pacs, dicom_files: list[Path]) -> None:
    web = client(pacs)
    web.store_instances([dcmread(f) for f in dicom_files])
    every = web.search_for_studies()
    sample = dcmread(dicom_files[0], stop_before_pixels=True)
    by_patient = web.search_for_studies(search_filters={"PatientID": str(sample.PatientID)})
    assert by_patient and all(s["00100020"]["Value"][0] == sample.PatientID for s in by_patient)
    family = str(sample.PatientName).split("^")[0]
    fuzzy = web.search_for_studies(
        search_filters={"PatientName": family[:2].lower()}, fuzzymatching=True
    )
    assert any(s["00100020"]["Value"][0] == sample.PatientID for s in fuzzy)
    assert len(web.search_for_studies(limit=2)) == min(2, len(every))
    page = web.search_for_studies(limit=1, offset=1)
    assert page and page[0] == every[1]
    modality = str(sample.Modality)
    by_modality = web.search_for_studies(search_filters={"ModalitiesInStudy": modality})
    assert by_modality and all(modality in s["00080061"]["Value"] for s in by_modality)


def test_errors_are_problem_documents(pacs: Pacs) -> None:
    base = pacs.dicomweb
    unknown = httpx.get(f"{base}/studies/1.2.3.4.5")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"] == "application/problem+json"
    assert unknown.json()["status"] == 404

    traversal = httpx.get(f"{base}/studies/..%2F..%2Fetc%2Fpasswd")
    assert traversal.status_code in (400, 404)
    not_uid = httpx.get(f"{base}/studies/1.2.abc/metadata")
    assert not_uid.status_code == 400 and "not a valid DICOM UID" in not_uid.json()["detail"]

    assert httpx.get(f"{base}/studies", params={"NoSuchKey": "x"}).status_code == 400
    assert httpx.get(f"{base}/studies", params={"limit": "-1"}).status_code == 400

    not_multipart = httpx.post(
        f"{base}/studies", content=b"xx", headers={"Content-Type": "application/dicom"}
    )
    assert not_multipart.status_code == 400
    garbage = httpx.post(
        f"{base}/studies",
        content=b"--b\r\nContent-Type: application/dicom\r\n\r\nnot dicom\r\n--b--\r\n",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
    )
    assert garbage.status_code == 409
    assert garbage.json()["00081198"]["Value"][0]["00081197"]["Value"][0] == 0xC000


def test_accept_negotiation(pacs: Pacs, studies: dict[str, list[Path]]) -> None:
    web = client(pacs)
    study_uid, files = next(iter(studies.items()))
    web.store_instances([dcmread(f) for f in files])
    url = f"{pacs.dicomweb}/studies/{study_uid}"
    refused = httpx.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; q=0'})
    assert refused.status_code == 406
    jpeg = httpx.get(
        url,
        headers={
            "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
        },
    )
    assert jpeg.status_code == 406
    # several Accept values, DRIM-M style: the best acceptable one wins
    ok = httpx.get(
        url,
        headers=[
            (
                "Accept",
                'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.80; q=0',
            ),
            (
                "Accept",
                'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1; q=0.9',
            ),
        ],
    )
    assert (
        ok.status_code == 200
        and "transfer-syntax=1.2.840.10008.1.2.1" in ok.headers["content-type"]
    )
    with pytest.raises(HTTPError):
        web.retrieve_study("1.2.3.999")
