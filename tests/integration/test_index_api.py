"""``drimbox index`` as a process: CLI, startup migration, JSON API, restart durability, and
who it lets in (a professional's token; no caller without credentials unless the development
switch is on)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
from lxml import etree

from tests import xds_messages as m
from tests.fake_psc import FakePsc, running_fake_psc
from tests.index_fixtures import PROFESSIONAL
from tests.peers import free_port, stop, wait_port

SWITCH = "DRIMBOX_INDEX__TRUST__ALLOW_DEFAULT_CALLER"
WARNING = "calls without credentials run as 'drimbox index default caller' (development setting)"


@contextlib.contextmanager
def index_process(data_dir: Path, env: dict[str, str], token: str = "") -> Iterator[httpx.Client]:
    """The index on ``data_dir`` configured by ``env`` only (its log in ``index.log`` beside
    it); the client calls with ``token`` when given."""
    port = free_port()
    log = (data_dir.parent / "index.log").open("ab")
    cmd = [sys.executable, "-m", "drimbox", "index", "--port", str(port), "--data-dir", str(data_dir),
           "--repository-unique-id", "1.2.250.1.999.1.1.7.1"]  # fmt: skip
    # no inherited index setting (the benchmarks set the switch in their environment)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("DRIMBOX_INDEX__")}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**inherited, **env})
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        wait_port(port, proc=proc)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, headers=headers) as c:
            yield c
    finally:
        stop(proc)
        log.close()


def introspection(psc: FakePsc) -> dict[str, str]:
    return {"DRIMBOX_INDEX__TRUST__INTROSPECTION_URL": psc.introspection_url,
            "DRIMBOX_INDEX__TRUST__CLIENT_ID": psc.client_id,
            "DRIMBOX_INDEX__TRUST__CLIENT_SECRET": psc.client_secret}  # fmt: skip


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
    with running_fake_psc() as psc:
        env, token = introspection(psc), psc.issue(PROFESSIONAL)
        with index_process(data, env, token) as client:
            assert client.get("/health").json() == {"status": "ok"}
            answer = m.post(client, "/repository", m.provide_and_register(patient, [kos, report]))
            assert answer.status() == "Success", answer.error_contexts()
            spec = client.get("/api/openapi.json").json()
            assert (
                spec["openapi"].startswith("3.") and "/api/patients/{ins}/history" in spec["paths"]
            )
        assert (data / "index.db").exists()
        # restarted: migrations are idempotent, data kept
        with index_process(data, env, token) as client:
            history = client.get(f"/api/patients/{ins}/history").json()
            assert history["patientId"] == patient
            [exam] = history["exams"]
            assert (
                exam["studyInstanceUid"] == kos.study_uid
                and exam["accessionNumber"] == kos.accession
            )
            assert exam["modalities"] == ["MR"]
            assert [d["uniqueId"] for d in exam["manifests"]] == [kos.unique_id]
            assert [d["uniqueId"] for d in exam["reports"]] == [report.unique_id]
            events = client.get(f"/api/patients/{ins}/access-log").json()["events"]
            assert [e["action"] for e in reversed(events)] == [
                "ITI-41 Provide and Register",
                "API history",
            ]
            # who: the token's professional, as the identity provider vouched for them
            assert {(e["actor"]["kind"], e["actor"]["id"]) for e in events} == {
                ("professional", PROFESSIONAL)
            }
            bad = client.get("/api/patients/123456789012345/history")
            assert bad.status_code == 400 and "key" in bad.json()["detail"]
    assert WARNING not in (tmp_path / "index.log").read_text()


# --- the development switch ``[index.trust] allow_default_caller`` -----------------------------


def _anonymous_submission(client: httpx.Client) -> tuple[str, m.Answer]:
    patient = m.new_ins()
    return patient, m.post(client, "/repository", m.provide_and_register(patient, [m.Doc(patient)]))


def test_no_default_caller_unless_switched_on(tmp_path: Path) -> None:
    """The default configuration answers nobody without credentials, and writes nothing."""
    with index_process(tmp_path / "index", {}) as client:
        patient, answer = _anonymous_submission(client)
        assert answer.status_code == 401
        assert b"FailedAuthentication" in etree.tostring(answer.root)
        r = client.get(f"/api/patients/{patient.split('^', 1)[0]}/history")
        assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"
    assert WARNING not in (tmp_path / "index.log").read_text()


def test_the_default_caller_switch_for_development(tmp_path: Path) -> None:
    """Switched on (as the benchmarks do), calls without credentials run as the configured
    default caller, and the index says so in its log."""
    with index_process(tmp_path / "index", {SWITCH: "true"}) as client:
        patient, answer = _anonymous_submission(client)
        assert answer.status() == "Success", answer.error_contexts()
        events = client.get(f"/api/patients/{patient.split('^', 1)[0]}/access-log").json()
        actors = {(e["actor"]["kind"], e["actor"]["name"]) for e in events["events"]}
        assert actors == {("system", "drimbox index default caller")}
    assert WARNING in (tmp_path / "index.log").read_text()
