"""``drimbox demo`` as a newcomer runs it: the whole network on free ports, driven only
through what ``demo.json`` describes, with independent clients: raw ITI-18 SOAP over mutual
TLS, ``dicomweb-client`` through a Conso proxy, a headless browser logging in at the
identity provider as a radiologist and then as the patient."""

from __future__ import annotations

import collections
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dicomweb_client.api import DICOMwebClient
from lxml import etree

import tests.xds_messages as m

pytestmark = pytest.mark.timeout(600)


class Demo:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = folder.parent / "demo-output.log"

    def start(self, *extra: str, timeout: float = 400) -> dict[str, Any]:
        args = ["--data-dir", str(self.folder), "--size", "small", "--patients", "20", *extra]
        with self.output.open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "drimbox", "demo", *args],
                                         stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
        path = self.folder / "demo.json"
        deadline = time.monotonic() + timeout
        while not path.is_file():
            code = self.proc.poll()
            assert code is None, f"demo exited with {code}:\n{self.output.read_text()}"
            assert time.monotonic() < deadline, f"no demo.json:\n{self.output.read_text()}"
            time.sleep(0.5)
        return dict(json.loads(path.read_text()))

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)  # Ctrl-C
        return self.proc.wait(60)

    def token(self, user: str) -> str:
        out = subprocess.run([sys.executable, "-m", "drimbox", "dev-token", "--demo",
                              str(self.folder), "--user", user],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    d = Demo(tmp_path_factory.mktemp("demo") / "network")
    d.start("--base-port", "0")
    try:
        yield d
    finally:
        if d.proc is not None and d.proc.poll() is None:
            d.stop()


@pytest.fixture(scope="module")
def doc(demo: Demo) -> dict[str, Any]:
    return dict(json.loads((demo.folder / "demo.json").read_text()))


@pytest.fixture(scope="module")
def patient(demo: Demo, doc: dict[str, Any]) -> dict[str, Any]:
    """A demo patient with exams at sites A and C (the synthetic manifest says where)."""
    manifest = json.loads((demo.folder / "synth" / "manifest.json").read_text())
    names = [s["id"] for s in manifest["sites"]]
    for p in doc["patients"]:
        where = collections.Counter(
            e["site"] for e in manifest["exams"] if e["patient_ins"] == p["ins"]
        )
        if where[names[0]] and where[names[2]]:
            login = next(u["login"] for u in doc["users"] if u.get("ins") == p["ins"])
            return {**p, "login": login, "exams": sum(where.values())}
    raise AssertionError("no demo patient has exams at both A and C")


def _client(doc: dict[str, Any], token: str) -> httpx.Client:
    """A script's client: the demo's CA, its client certificate (mutual TLS), a bearer token."""
    tls = doc["tls"]
    context = ssl.create_default_context(cafile=tls["ca_bundle"])
    context.load_cert_chain(tls["client_cert"], tls["client_key"])
    return httpx.Client(verify=context, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def test_demo_json_describes_the_network(doc: dict[str, Any]) -> None:
    assert {"base_url", "iti18_url", "iti41_url", "iti43_url", "iti57_url", "api_url"} <= set(
        doc["index"]
    )
    assert doc["idp"]["issuer"].startswith("http")
    assert all(Path(doc["tls"][k]).is_file() for k in ("ca_bundle", "client_cert", "client_key"))
    assert len(doc["sites"]) == 3
    for site in doc["sites"]:
        assert {"name", "box_url", "conso_url", "dicomweb_url", "proxy_dicomweb_url"} <= set(site)
        assert site["box_url"].startswith("https://")  # other boxes reach it over mutual TLS
        with socket.create_connection((site["mllp"]["host"], site["mllp"]["port"]), timeout=5):
            pass
        assert {"aet", "host", "port", "dicomweb_url"} <= set(site["pacs"])
    roles = collections.Counter(u["role"] for u in doc["users"])
    assert roles["radiologist"] == 3 and roles["patient"] >= 20 and len(doc["patients"]) >= 20
    assert all(u["password"] for u in doc["users"])
    assert doc["startup_seconds"] > 0 and doc["memory_bytes"] > 0


def test_the_index_refuses_a_script_without_certificate(doc: dict[str, Any]) -> None:
    context = ssl.create_default_context(cafile=doc["tls"]["ca_bundle"])
    with pytest.raises(httpx.HTTPError):  # mutual TLS: no client certificate, no handshake
        httpx.get(doc["index"]["base_url"] + "/health", verify=context, timeout=10)


def test_iti18_lists_the_patient_kos_and_reports(
    demo: Demo, doc: dict[str, Any], patient: dict[str, Any]
) -> None:
    token = demo.token("radiologue-b")
    query = {"$XDSDocumentEntryPatientId": [f"'{patient['ins']}^^^&{patient['oid']}&ISO'"],
             "$XDSDocumentEntryStatus": [f"('{m.APPROVED}')"]}  # fmt: skip
    with _client(doc, token) as http:
        answer = m.post(http, doc["index"]["iti18_url"], m.stored_query(m.FIND_DOCUMENTS, query))
        assert answer.status_code == 200 and answer.status() == "Success", answer.error_codes()
        mimes = collections.Counter(eo.get("mimeType") for eo in answer.extrinsic())
        # a KOS per exam, a report per exam (cancelled exams are gone from the index)
        assert mimes["application/dicom"] >= 2 and mimes["text/xml"] >= 2, mimes
        # without the professional's token the index does not answer for the patient
        del http.headers["Authorization"]
        refused = m.post(http, doc["index"]["iti18_url"], m.stored_query(m.FIND_DOCUMENTS, query))
        assert not refused.extrinsic()
        assert b"FailedAuthentication" in etree.tostring(refused.root)


def test_dicomweb_client_retrieves_a_series_through_a_conso_proxy(
    demo: Demo, doc: dict[str, Any], patient: dict[str, Any]
) -> None:
    token = demo.token("radiologue-b")
    site_b = doc["sites"][1]
    auth = {"Authorization": f"Bearer {token}"}
    r = httpx.get(site_b["conso_url"] + "api/history", headers=auth, timeout=120,
                  params={"ins": patient["ins"], "oid": patient["oid"]})  # fmt: skip
    assert r.status_code == 200, r.text
    exams = [e for e in r.json()["exams"] if e["instances"]]
    assert exams, r.json()
    sites = {e["site"] for e in exams}
    assert {doc["sites"][0]["name"], doc["sites"][2]["name"]} <= sites, sites
    client = DICOMwebClient(site_b["proxy_dicomweb_url"], headers=auth)
    exam = exams[0]
    series = client.search_for_series(exam["study_uid"])
    assert series
    series_uid = series[0]["0020000E"]["Value"][0]
    listed = {i["00080018"]["Value"][0] for i in client.search_for_instances(
        exam["study_uid"], series_uid)}  # fmt: skip
    datasets = client.retrieve_series(exam["study_uid"], series_uid)
    assert {str(d.SOPInstanceUID) for d in datasets} == listed and listed
    assert {str(d.StudyInstanceUID) for d in datasets} == {exam["study_uid"]}
    assert all(len(d.PixelData) > 0 for d in datasets)


def _log_in(page: Any, user: str, password: str) -> None:
    """At the identity provider's page: the password, then the person's button."""
    page.wait_for_selector('input[name="password"]', timeout=30_000)
    page.fill('input[name="password"]', password)
    page.click(f'button[name="person"][value="{user}"]')


@pytest.mark.timeout(600)
def test_a_radiologist_then_the_patient_in_a_browser(
    tmp_path: Path, doc: dict[str, Any], patient: dict[str, Any]
) -> None:
    from tests.browser import chromium_page, ohif_dist, save_artifact
    from tests.integration.test_ohif_viewer import dismiss_overlays, drawn

    ohif_dist()  # skips (fails under CI) without the OHIF build
    assert doc["viewer"], "the demo found no OHIF build"
    site_b = doc["sites"][1]
    users = {u["login"]: u for u in doc["users"]}
    with chromium_page() as page:
        # the radiologist at site B: login at the provider, then the patient's timeline
        page.goto(site_b["conso_url"])
        page.get_by_text("Se connecter avec Pro Santé Connect").click()
        _log_in(page, "radiologue-b", users["radiologue-b"]["password"])
        page.wait_for_url(re.compile(re.escape(site_b["conso_url"])), timeout=30_000)
        base = site_b["conso_url"].rstrip("/")
        page.goto(f"{base}/patients/{patient['ins']}?oid={patient['oid']}")
        timeline = page.content()
        assert "Historique d'imagerie" in timeline
        assert doc["sites"][0]["name"] in timeline and doc["sites"][2]["name"] in timeline
        save_artifact(tmp_path, "demo-timeline.png", page.screenshot(full_page=True))
        viewer = page.locator('a[href*="StudyInstanceUIDs="]').first.get_attribute("href")
        assert viewer
        page.goto(viewer if viewer.startswith("http") else base.rsplit("/conso", 1)[0] + viewer)
        stats = drawn(page, 1, timeout=120)
        dismiss_overlays(page)
        save_artifact(tmp_path, "demo-ohif.png", page.screenshot())
        assert any(s["colours"] > 16 for s in stats), stats
        # the patient, in another browser session, sees who accessed their exams
        context = page.context.browser.new_context(viewport={"width": 1280, "height": 800})  # type: ignore[union-attr]
        mine = context.new_page()
        portal = site_b["patient_url"]
        mine.goto(portal)
        _log_in(mine, patient["login"], users[patient["login"]]["password"])
        mine.wait_for_url(re.compile(re.escape(portal)), timeout=30_000)
        mine.goto(portal)
        text = mine.content()
        radiologist = next(u for u in doc["users"] if u["login"] == "radiologue-b")
        family = radiologist["name"].split()[-1]
        assert family in text or "GUERIN" in text.upper(), text[:3000]
        save_artifact(tmp_path, "demo-patient-trail.png", mine.screenshot(full_page=True))


def test_ctrl_c_stops_everything_and_a_second_start_reuses_the_data(
    demo: Demo, doc: dict[str, Any], patient: dict[str, Any]
) -> None:
    """Last: it restarts the network."""
    ports = [s["pacs"]["port"] for s in doc["sites"]] + [s["mllp"]["port"] for s in doc["sites"]]
    first = doc["startup_seconds"]
    assert demo.stop() == 0
    assert not (demo.folder / "demo.json").exists()
    for port in ports:  # nothing left listening
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    again = demo.start()  # no --base-port: the same ports as before, the same history
    assert [s["box_url"] for s in again["sites"]] == [s["box_url"] for s in doc["sites"]]
    assert again["startup_seconds"] < first
    token = demo.token("radiologue-b")
    r = httpx.get(again["sites"][1]["conso_url"] + "api/history", timeout=120,
                  headers={"Authorization": f"Bearer {token}"},
                  params={"ins": patient["ins"], "oid": patient["oid"]})  # fmt: skip
    assert r.status_code == 200 and r.json()["exams"], r.text
