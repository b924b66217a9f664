"""Interoperability with Orthanc: Orthanc C-MOVEs from our PACS, our PACS C-STOREs into Orthanc."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
from pydicom import dcmread

from tests.peers import free_port, run_dcmtk, running_orthanc, running_pacs


def orthanc_pixels(base: str, sop_uid: str) -> bytes:
    ids = httpx.post(f"{base}/tools/lookup", content=sop_uid).json()
    assert len(ids) == 1, f"Orthanc has {len(ids)} copies of {sop_uid}"
    data = httpx.get(f"{base}/instances/{ids[0]['ID']}/file").content
    return bytes(dcmread(io.BytesIO(data)).PixelData)


def test_orthanc_moves_from_our_pacs(tmp_path: Path, studies: dict[str, list[Path]]) -> None:
    study_uid, files = max(studies.items(), key=lambda kv: len(kv[1]))
    pacs_port = free_port()
    with running_orthanc(tmp_path / "orthanc", modalities={"DRIM": ("DRIMPACS", "127.0.0.1", pacs_port)}) as orthanc, \
         running_pacs(tmp_path / "pacs", port=pacs_port,
                      extra=["--move-destination", f"{orthanc.aet}=127.0.0.1:{orthanc.port}"]) as pacs:  # fmt: skip
        run_dcmtk("storescu", "-aec", pacs.aet, "127.0.0.1", str(pacs.port), *map(str, files))
        # Orthanc, as a query/retrieve SCU, asks our PACS to move the study to itself
        found = httpx.post(
            f"{orthanc.url}/modalities/DRIM/query",
            json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}},
        ).json()
        answers = httpx.get(f"{orthanc.url}/queries/{found['ID']}/answers?expand").json()
        assert [a["0020,000d"]["Value"] for a in answers] == [study_uid]
        move = httpx.post(
            f"{orthanc.url}/modalities/DRIM/move",
            timeout=120,
            json={
                "Level": "Study",
                "Resources": [{"StudyInstanceUID": study_uid}],
                "TargetAet": orthanc.aet,
            },
        )
        assert move.is_success, move.text
        for f in files:
            sent = dcmread(f)
            assert orthanc_pixels(orthanc.url, str(sent.SOPInstanceUID)) == bytes(sent.PixelData)


def test_our_pacs_stores_into_orthanc(tmp_path: Path, studies: dict[str, list[Path]]) -> None:
    study_uid, files = max(studies.items(), key=lambda kv: len(kv[1]))
    with running_orthanc(tmp_path / "orthanc") as orthanc, \
         running_pacs(tmp_path / "pacs",
                      extra=["--move-destination", f"{orthanc.aet}=127.0.0.1:{orthanc.port}"]) as pacs:  # fmt: skip
        run_dcmtk("storescu", "-aec", pacs.aet, "127.0.0.1", str(pacs.port), *map(str, files))
        run_dcmtk(
            "movescu",
            "-S",
            "-aec",
            pacs.aet,
            "-aem",
            orthanc.aet,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
            "127.0.0.1",
            str(pacs.port),
        )
        stats = httpx.get(f"{orthanc.url}/statistics").json()
        assert stats["CountInstances"] == len(files)
        for f in files:
            sent = dcmread(f)
            assert orthanc_pixels(orthanc.url, str(sent.SOPInstanceUID)) == bytes(sent.PixelData)
