"""The professional's imaging timeline on the real path: one patient's exams (one restamped to
three weeks ago) stored in our PACS, their reports sent by the RIS over MLLP, published by the
box into the index (with its signed VIHF); the same box's Conso lists them with the
professional's token (checked at a fake Pro Santé Connect by the box and by the index),
filtered, with the warning that a similar exam was done recently."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from drimbox.entrypoints.box import SourceBox, create_app
from drimbox.services.source.outbox import PublicationState
from tests.fake_psc import FakePsc, running_fake_psc
from tests.index_fixtures import IndexServer, database_url, running_index, vihf_roots
from tests.integration.test_source_publication import (
    box_settings,
    running_box,
    send,
    store,
    wait_for,
)
from tests.peers import Pacs, running_pacs, serving
from tests.source_exams import Exam

PATIENT = "160098002169571"  # seed 2: CT head twice (2015), US abdomen, DX chest, CT abdomen
RECENT_DAYS = 20


@pytest.fixture(scope="module")
def psc() -> Iterator[FakePsc]:
    with running_fake_psc() as p:
        yield p


@pytest.fixture(scope="module")
def index(
    tmp_path_factory: pytest.TempPathFactory, psc: FakePsc, signer_files: tuple[Path, Path]
) -> Iterator[IndexServer]:
    """Professionals' tokens introspected at the same PSC as the box's; the box publishes
    with its signed VIHF assertions."""
    folder = tmp_path_factory.mktemp("index-timeline")
    anchors = vihf_roots(signer_files[1], folder / "vihf-roots.pem")
    with database_url("sqlite", folder) as url, \
            running_index(url, psc=psc, vihf_trust_anchors=anchors) as server:  # fmt: skip
        yield server


@pytest.fixture(scope="module")
def history_exams(exams: list[Exam]) -> list[Exam]:
    mine = [e for e in exams if e.record["patient_ins"] == PATIENT]
    assert len(mine) == 5
    return mine


@pytest.fixture(scope="module")
def recent(history_exams: list[Exam]) -> Exam:
    """The CT abdomen, done three weeks ago as far as the PACS knows."""
    return next(e for e in history_exams if e.record["modality"] == "CT"
                and e.record["body_part"] == "ABDOMEN")  # fmt: skip


@pytest.fixture(scope="module")
def pacs(
    tmp_path_factory: pytest.TempPathFactory, history_exams: list[Exam], recent: Exam
) -> Iterator[Pacs]:
    restamped = tmp_path_factory.mktemp("restamped")
    files = [f for e in history_exams if e is not recent for f in e.files()]
    for i, path in enumerate(recent.files()):
        ds = dcmread(path)
        ds.StudyDate = (date.today() - timedelta(days=RECENT_DAYS)).strftime("%Y%m%d")
        out = restamped / f"{i}.dcm"
        ds.save_as(out)
        files.append(out)
    with running_pacs(tmp_path_factory.mktemp("pacs") / "store") as p:
        store(files, p.port, p.aet)
        yield p


@pytest.fixture(scope="module")
def box(
    tmp_path_factory: pytest.TempPathFactory, pacs: Pacs, index: IndexServer,
    signer_files: tuple[Path, Path], psc: FakePsc, history_exams: list[Exam],
) -> Iterator[tuple[SourceBox, str]]:  # fmt: skip
    settings = box_settings(
        tmp_path_factory.mktemp("box"), pacs.aet, pacs.port, index.url, signer_files,
        prefetch=False, conso={"secure_cookie": False},
        psc={"introspection_url": psc.introspection_url, "client_id": "drimbox",
             "client_secret": "secret"},
    )  # fmt: skip
    with running_box(settings) as b, serving(create_app(b)) as url:
        for exam in history_exams:
            assert send(b.mllp.port, exam.message("ORU"))[0] == "AA"
        for exam in history_exams:

            def published(exam: Exam = exam) -> bool:
                pub = b.outbox.publication(exam.study_uid)
                return pub is not None and pub.state is PublicationState.PUBLISHED

            wait_for(published, timeout=60, what=f"publication of {exam.study_uid}", box=b)
        yield b, url


@pytest.fixture(scope="module")
def auth(psc: FakePsc) -> dict[str, str]:
    return {"Authorization": f"Bearer {psc.issue('899700218896')}"}


def api(box: tuple[SourceBox, str], auth: dict[str, str], **filters: str) -> httpx.Response:
    return httpx.get(f"{box[1]}/conso/api/history", headers=auth, timeout=60,
                     params={"ins": PATIENT, "oid": "1.2.250.1.213.1.4.10", **filters})  # fmt: skip


def page(box: tuple[SourceBox, str], auth: dict[str, str], **query: str) -> httpx.Response:
    return httpx.get(f"{box[1]}/conso/patients/{PATIENT}", headers=auth, timeout=60,
                     params={"oid": "1.2.250.1.213.1.4.10", **query})  # fmt: skip


def studies(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [e["study_uid"] for e in response.json()["exams"]]


def test_the_history_is_newest_first_with_the_recent_similar_exam_named(
    box: tuple[SourceBox, str], auth: dict[str, str], history_exams: list[Exam], recent: Exam
) -> None:
    r = api(box, auth)
    body: dict[str, Any] = r.json()
    dates = [e["date"] for e in body["exams"]]
    assert dates == sorted(dates, reverse=True) and len(dates) == 5 and body["total"] == 5
    assert body["exams"][0]["study_uid"] == recent.study_uid
    assert all(e["report_url"] and e["site"] for e in body["exams"])
    day = date.today() - timedelta(days=RECENT_DAYS)
    [warning] = body["warnings"]
    assert (warning["study_uid"], warning["days_ago"], warning["window_days"]) == (
        recent.study_uid, RECENT_DAYS, 90)  # fmt: skip
    assert warning["message"] == (
        f"Examen similaire récent : scanner abdomen du {day:%d/%m/%Y} (il y a 2 semaines)"
    )
    # the page says the same, and offers every action on each exam
    html = page(box, auth)
    assert html.status_code == 200 and "Historique d'imagerie" in html.text
    assert warning["message"] in unescape(html.text)
    rows = re.findall(r'<tr id="examen-([0-9.]+)">', html.text)
    assert rows == [e["study_uid"] for e in body["exams"]]
    text = unescape(html.text)
    for exam in history_exams:
        assert f"StudyInstanceUIDs={exam.study_uid}" in text
        assert f"../api/exams/{exam.study_uid}/zip" in text
        assert f"../api/exams/{exam.study_uid}/import" in text
    assert text.count(">Importer dans mon PACS<") == 5 and text.count(">Télécharger<") == 5
    # "Comparer avec" opens OHIF on both studies with its side-by-side protocol
    heads = [e.study_uid for e in history_exams if e.record["body_part"] == "HEAD"]
    assert (
        f"StudyInstanceUIDs={heads[0]},{heads[1]}&hangingProtocolId=@ohif/hpCompare" in text
        or f"StudyInstanceUIDs={heads[1]},{heads[0]}&hangingProtocolId=@ohif/hpCompare" in text
    )
    assert "scanner" in text and "tête" in text and "abdomen" in text


def test_filters_narrow_the_list_and_unknown_values_empty_it(
    box: tuple[SourceBox, str], auth: dict[str, str], history_exams: list[Exam], recent: Exam
) -> None:
    by = {e.study_uid: e.record for e in history_exams}
    assert {by[u]["modality"] for u in studies(api(box, auth, modality="CT"))} == {"CT"}
    assert len(studies(api(box, auth, modality="CT"))) == 3
    heads = studies(api(box, auth, region="HEAD"))
    assert len(heads) == 2 and all(by[u]["body_part"] == "HEAD" for u in heads)
    assert sorted(studies(api(box, auth, region="ABDOMEN"))) == sorted(
        u for u, r in by.items() if r["body_part"] == "ABDOMEN")  # fmt: skip
    in_2015 = studies(api(box, auth, **{"from": "2015-01-01", "to": "2015-12-31"}))
    assert sorted(in_2015) == sorted(u for u, r in by.items() if r["study_date"][:4] == "2015")
    site = api(box, auth).json()["exams"][0]["site"]
    assert len(studies(api(box, auth, site=site.upper()))) == 5
    # the contextual call's own names work too (a calling software may link here)
    assert studies(api(box, auth, Modality="CT", AnatomicRegion="ABDOMEN")) == [recent.study_uid]
    for unknown in ({"modality": "ZZ"}, {"region": "Lune"}, {"site": "Nulle part"}):
        r = api(box, auth, **unknown)
        assert r.status_code == 200 and r.json()["exams"] == [] and r.json()["total"] == 5
        assert r.json()["message"] == "Aucun examen ne correspond aux filtres."
    html = page(box, auth, modality="ZZ")
    assert html.status_code == 200 and "Aucun examen ne correspond aux filtres." in html.text
    assert "0 examen(s) sur 5" in html.text


def test_warnings_follow_the_exam_being_considered(
    box: tuple[SourceBox, str], auth: dict[str, str], recent: Exam
) -> None:
    assert [w["study_uid"] for w in api(box, auth, modality="CT", region="ABDOMEN").json()[
        "warnings"]] == [recent.study_uid]  # fmt: skip
    assert api(box, auth, modality="MR", region="ABDOMEN").json()["warnings"] == []
    assert api(box, auth, modality="CT", region="HEAD").json()["warnings"] == []  # 2015
    # a date filter hiding the recent exam does not hide the warning
    old = api(box, auth, to="2016-01-01").json()
    assert recent.study_uid not in [e["study_uid"] for e in old["exams"]]
    assert [w["study_uid"] for w in old["warnings"]] == [recent.study_uid]


def test_malformed_dates_are_a_clear_400(box: tuple[SourceBox, str], auth: dict[str, str]) -> None:
    r = api(box, auth, **{"from": "2024-13-45"})
    assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json"
    assert "date de début : date illisible « 2024-13-45 »" in r.json()["detail"]
    r = api(box, auth, **{"from": "2024-03-02", "to": "2024-03-01"})
    assert r.status_code == 400 and "postérieure" in r.json()["detail"]
    assert api(box, auth, StudyDate="hier").status_code == 400
    html = page(box, auth, to="31/02/2024")
    assert html.status_code == 400 and "text/html" in html.headers["content-type"]
    assert "Filtre invalide" in html.text and "Traceback" not in html.text


def test_the_contextual_call_lands_filtered_and_can_be_widened(
    box: tuple[SourceBox, str], auth: dict[str, str], recent: Exam
) -> None:
    from tests.unit.test_contextual_call import CALL

    call = {**CALL, "Patient.identifier.value": PATIENT, "Modality": "CT",
            "AnatomicRegion": "ABDOMEN", "StudyDate": "pas une date"}  # fmt: skip
    with httpx.Client(timeout=60, headers=auth) as browser:
        r = browser.post(f"{box[1]}/conso/appel-contextuel", data=call)
        assert r.status_code == 303
        landed = browser.get(box[1] + r.headers["location"])
        assert landed.status_code == 200, landed.text
        rows = re.findall(r'<tr id="examen-([0-9.]+)">', landed.text)
        assert rows == [recent.study_uid]
        text = unescape(landed.text)
        assert "Examen similaire récent : scanner abdomen" in text and "IPP-0042" in text
        assert "Date transmise par le logiciel appelant ignorée" in text  # not a 400
        # "Effacer les filtres" keeps the caller's context (banner, IPP) and shows everything
        clear = unescape(re.search(r"href='(\?[^']*)'>Effacer les filtres", landed.text)[1])  # type: ignore[index]
        wide = browser.get(f"{box[1]}/conso/patients/{PATIENT}{clear}")
        assert wide.status_code == 200 and "MARTIN Marie" in wide.text
        assert len(re.findall(r'<tr id="examen-', wide.text)) == 5
