"""A professional logs in to box B with OpenID Connect (``drimbox idp`` playing Pro Santé
Connect): code + PKCE in a browser-like client, session cookie; the access token kept in the
session is then accepted by another box's Source (introspection at the same provider)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from pydicom.uid import generate_uid

from drimbox.entrypoints.box import SourceBox, create_app
from drimbox.entrypoints.idp import create_idp_app
from drimbox.settings import IdpSettings
from tests.index_fixtures import IndexServer, database_url, running_index
from tests.integration.test_source_publication import box_settings, running_box, store
from tests.integration.test_source_wado import publish_directly, with_pacs
from tests.peers import Pacs, free_port, running_pacs, serving
from tests.source_exams import Exam

RADIOLOGIST = "899700218896"  # "radiologue" among drimbox idp's test people


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    port, box_port = free_port(), free_port()
    settings = IdpSettings.model_validate({
        "port": port, "data_dir": tmp_path_factory.mktemp("idp"),
        "clients": [
            {"client_id": "box-b", "client_secret": "secret-b",
             "redirect_uris": [f"http://127.0.0.1:{box_port}/conso/callback"]},
            {"client_id": "box-a", "client_secret": "secret-a"},
            {"client_id": "index", "client_secret": "secret-i"},
            {"client_id": "portal-b", "client_secret": "secret-p",
             "redirect_uris": [f"http://127.0.0.1:{box_port}/patient/callback"]},
        ],
    })  # fmt: skip
    with serving(create_idp_app(settings), port=port):
        yield settings.issuer_url, box_port


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, idp: tuple[str, int]) -> Iterator[IndexServer]:
    """The index checks the professional's token at the same provider (no default caller)."""
    folder = tmp_path_factory.mktemp("index-login")
    trust = _introspection(idp[0], "index", "secret-i")
    with database_url("sqlite", folder) as url, running_index(url, trust=trust) as server:
        yield server


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, exams: list[Exam]) -> Iterator[Pacs]:
    with running_pacs(tmp_path_factory.mktemp("pacs") / "store") as p:
        store(exams[0].files(), p.port, p.aet)
        yield p


def _introspection(issuer: str, client: str, secret: str) -> dict[str, str]:
    return {"introspection_url": f"{issuer}/protocol/openid-connect/token/introspect",
            "client_id": client, "client_secret": secret}  # fmt: skip


@pytest.fixture(scope="module")
def box_a(
    tmp_path_factory: pytest.TempPathFactory, idp: tuple[str, int], pacs: Pacs,
    index: IndexServer, signer_files: tuple[Path, Path],
) -> Iterator[tuple[SourceBox, str]]:  # fmt: skip
    issuer, _ = idp
    settings = box_settings(tmp_path_factory.mktemp("a"), pacs.aet, pacs.port, index.url,
                            signer_files, prefetch=False, conso={"enabled": False},
                            psc=_introspection(issuer, "box-a", "secret-a"))  # fmt: skip
    with running_box(with_pacs(settings, dicomweb_url=pacs.dicomweb)) as box, \
            serving(create_app(box)) as url:  # fmt: skip
        yield box, url


@pytest.fixture(scope="module")
def box_b(
    tmp_path_factory: pytest.TempPathFactory, idp: tuple[str, int], pacs: Pacs,
    index: IndexServer, signer_files: tuple[Path, Path],
) -> Iterator[tuple[SourceBox, str]]:  # fmt: skip
    issuer, port = idp
    settings = box_settings(
        tmp_path_factory.mktemp("b"), pacs.aet, pacs.port, index.url, signer_files,
        public_url=f"http://127.0.0.1:{port}", psc=_introspection(issuer, "box-b", "secret-b"),
        conso={"secure_cookie": False, "oidc": {
            "issuer": issuer, "client_id": "box-b", "client_secret": "secret-b",
            "redirect_uri": f"http://127.0.0.1:{port}/conso/callback"},
            "patient_oidc": {
            "issuer": issuer, "client_id": "portal-b", "client_secret": "secret-p",
            "redirect_uri": f"http://127.0.0.1:{port}/patient/callback"}},
    )  # fmt: skip
    with running_box(settings) as box, serving(create_app(box), port=port) as url:
        yield box, url


def _log_in(
    http: httpx.Client, box: str, person: str, next_path: str, area: str = "conso"
) -> httpx.Response:
    """The browser's way: the box sends it to the provider, the person picks themselves on
    the login page, the provider sends it back to the box's callback."""
    to_provider = http.get(f"{box}/{area}/login", params={"next": next_path})
    assert to_provider.status_code == 302, to_provider.text
    page = http.get(to_provider.headers["location"])
    assert page.status_code == 200, page.text
    action = unescape(re.search(r'<form method="post" action="([^"]+)"', page.text)[1])  # type: ignore[index]
    ticket = unescape(re.search(r'name="ticket" value="([^"]+)"', page.text)[1])  # type: ignore[index]
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(str(page.url)))
    back = http.post(origin + action, data={"ticket": ticket, "person": person})
    assert back.status_code == 302, back.text
    return http.get(back.headers["location"])


def test_a_professional_logs_in_and_the_token_opens_another_box(
    box_a: tuple[SourceBox, str], box_b: tuple[SourceBox, str], exams: list[Exam]
) -> None:
    exam = exams[0]
    b_box, b_url = box_b
    with httpx.Client(timeout=30) as browser:
        # a history page without a session goes to the login first
        first = browser.get(f"{b_url}/conso/patients/{exam.record['patient_ins']}")
        assert first.status_code == 303 and "/conso/login?next=" in first.headers["location"]
        landed = _log_in(browser, b_url, "radiologue", "/conso/")
        assert landed.status_code == 303 and landed.headers["location"] == "/conso/"
        cookie = browser.cookies.get("drimbox_session")
        assert cookie
        r = browser.get(f"{b_url}/conso/api/history", params={"ins": exam.record["patient_ins"],
                                                               "oid": exam.record["ins_oid"]})  # fmt: skip
        assert r.status_code == 200, r.text
    conso = b_box.conso
    assert conso is not None
    session = conso.proxy.sessions.store.get(cookie)
    assert session is not None and session.subject == RADIOLOGIST
    # the token B holds for the professional is accepted by A (introspection at the provider)
    a_box, a_url = box_a
    kos = generate_uid()
    series = exam.record["series"][0]
    publish_directly(a_box, kos, exam.study_uid, series["series_uid"], series["sop_instance_uids"])
    r = httpx.get(f"{a_url}/dicomweb/studies/{exam.study_uid}/series/{series['series_uid']}/metadata",
                  headers={"Authorization": f"Bearer {session.access_token}",
                           "KOS-SOPInstanceUID": kos}, timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    r = httpx.get(f"{a_url}/dicomweb/studies/{exam.study_uid}/series/{series['series_uid']}/metadata",
                  headers={"Authorization": f"Bearer {session.access_token}x",
                           "KOS-SOPInstanceUID": kos}, timeout=60)  # fmt: skip
    assert r.status_code == 401


def test_a_forged_or_replayed_callback_opens_no_session(box_b: tuple[SourceBox, str]) -> None:
    _, b_url = box_b
    with httpx.Client(timeout=30) as browser:
        assert (
            browser.get(f"{b_url}/conso/callback", params={"code": "x", "state": "y"}).status_code
            == 400
        )
        to_provider = browser.get(f"{b_url}/conso/login")
        assert to_provider.status_code == 302
        # a callback with the right login cookie but another state: refused, and used up
        r = browser.get(f"{b_url}/conso/callback", params={"code": "x", "state": "forged"})
        assert r.status_code == 401 and "drimbox_session" not in browser.cookies
        r = browser.get(f"{b_url}/conso/callback", params={"code": "x", "state": "forged"})
        assert r.status_code == 400


def test_next_is_never_an_open_redirect(box_b: tuple[SourceBox, str]) -> None:
    _, b_url = box_b
    with httpx.Client(timeout=30) as browser:
        landed = _log_in(browser, b_url, "generaliste", "//evil.example/steal")
        assert landed.status_code == 303 and landed.headers["location"] == "/conso/"


PATIENT_INS, PATIENT_OID = "285067511602105", "1.2.250.1.213.1.4.10"  # "patiente" at the idp


def test_the_patient_reads_who_accessed_their_record(box_b: tuple[SourceBox, str]) -> None:
    _, b_url = box_b
    with httpx.Client(timeout=30) as pro:  # a radiologist lists the patient's history
        _log_in(pro, b_url, "radiologue", "/conso/")
        r = pro.get(f"{b_url}/conso/api/history", params={"ins": PATIENT_INS, "oid": PATIENT_OID})
        assert r.status_code == 200, r.text
        # a professional's session opens nothing on the patients' side
        assert pro.get(f"{b_url}/patient/api/trail").status_code == 401
    with httpx.Client(timeout=30) as patient:
        assert patient.get(f"{b_url}/patient/api/trail").status_code == 401
        landed = _log_in(patient, b_url, "patiente", "/patient/", area="patient")
        assert landed.status_code == 303
        events = patient.get(f"{b_url}/patient/api/trail").json()["events"]
        codes = [e["subtype"][0]["code"] for e in events]
        assert "history.list" in codes and codes[0] == "trail.read"
        listed = next(e for e in events if e["subtype"][0]["code"] == "history.list")
        assert RADIOLOGIST in str(listed["agent"])
        page = patient.get(f"{b_url}/patient/")
        assert page.status_code == 200 and "a consulté la liste de vos examens" in page.text
    with httpx.Client(timeout=30) as impostor:  # a professional's identity is not a patient's
        refused = _log_in(impostor, b_url, "radiologue", "/patient/", area="patient")
        assert refused.status_code == 403


def test_the_contextual_call_opens_the_patient_with_the_callers_context(
    box_b: tuple[SourceBox, str],
) -> None:
    from tests.unit.test_contextual_call import CALL

    _, b_url = box_b
    with httpx.Client(timeout=30) as browser:
        _log_in(browser, b_url, "radiologue", "/conso/")
        r = browser.post(f"{b_url}/conso/appel-contextuel", data=CALL)
        assert r.status_code == 303
        page = browser.get(b_url + r.headers["location"])
        assert page.status_code == 200, page.text
        assert "MARTIN Marie" in page.text and "IPP-0042" in page.text
        for bad in (
            {**CALL, "Intrus": "1"},
            {**CALL, "InformationEtOppositionConsultation": "non"},
        ):
            refused = browser.post(f"{b_url}/conso/appel-contextuel", data=bad)
            assert refused.status_code == 400 and "Appel contextuel refusé" in refused.text
        refused = browser.post(f"{b_url}/conso/appel-contextuel", json=CALL)
        assert refused.status_code == 400
        stats = browser.get(f"{b_url}/conso/api/stats/appels").json()
        assert stats["succes"] >= 1 and stats["erreur"] >= 3
