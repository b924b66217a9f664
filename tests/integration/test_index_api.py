"""``drimbox index`` as a process: CLI, startup migration, JSON API, restart durability."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests import xds_messages as m
from tests.peers import free_port, stop, wait_port


@contextlib.contextmanager
def index_process(data_dir: Path) -> Iterator[httpx.Client]:
    port = free_port()
    log = (data_dir.parent / "index.log").open("ab")
    cmd = [sys.executable, "-m", "drimbox", "index", "--port", str(port), "--data-dir", str(data_dir),
           "--repository-unique-id", "1.2.250.1.999.1.1.7.1"]  # fmt: skip
    env = {**os.environ, "DRIMBOX_INDEX__TRUST__ALLOW_DEFAULT_CALLER": "true"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port(port, proc=proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        stop(proc)
        log.close()


def test_cli_json_api_and_restart(tmp_path: Path) -> None:
    data = tmp_path / "index"
    patient = m.new_ins()
    ins = patient.split("^", 1)[0]
    kos = m.Doc(patient, "KOS", modality="MR")
    report = m.Doc(
        patient,
        "CR",
        kind="report",
        modality="MR",
        study_uid=kos.study_uid,
        accession=kos.accession,
    )
    with index_process(data) as client:
        assert client.get("/health").json() == {"status": "ok"}
        answer = m.post(client, "/repository", m.provide_and_register(patient, [kos, report]))
        assert answer.status() == "Success", answer.error_contexts()
        spec = client.get("/api/openapi.json").json()
        assert spec["openapi"].startswith("3.") and "/api/patients/{ins}/history" in spec["paths"]
    assert (data / "index.db").exists()
    with index_process(data) as client:  # restarted: migrations are idempotent, data kept
        history = client.get(f"/api/patients/{ins}/history").json()
        assert history["patientId"] == patient
        [exam] = history["exams"]
        assert (
            exam["studyInstanceUid"] == kos.study_uid and exam["accessionNumber"] == kos.accession
        )
        assert exam["modalities"] == ["MR"]
        assert [d["uniqueId"] for d in exam["manifests"]] == [kos.unique_id]
        assert [d["uniqueId"] for d in exam["reports"]] == [report.unique_id]
        events = client.get(f"/api/patients/{ins}/access-log").json()["events"]
        assert [e["action"] for e in reversed(events)] == [
            "ITI-41 Provide and Register",
            "API history",
        ]
        assert events[-1]["actor"]["kind"] == "system"
        bad = client.get("/api/patients/123456789012345/history")
        assert bad.status_code == 400 and "key" in bad.json()["detail"]
