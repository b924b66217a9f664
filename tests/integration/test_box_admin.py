"""The box's admin on the real path: a box with its PACS and index; after one exam is
published and a professional lists the patient's history, the counters say so; a message
whose images are not in the PACS shows in the recent errors; a box whose PACS and index are
down says so with the reason; remote clients are refused unless a declared administrator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from drimbox.entrypoints.box import SourceBox, create_app
from drimbox.services.source.outbox import PublicationState
from tests.fake_psc import FakePsc
from tests.index_fixtures import IndexServer
from tests.integration.test_conso_timeline import index, psc  # noqa: F401
from tests.integration.test_source_publication import (
    box_settings,
    running_box,
    send,
    store,
    wait_for,
)
from tests.peers import Pacs, free_port, running_pacs, serving
from tests.source_exams import Exam

ADMIN = "899700218896"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, exams: list[Exam]) -> Iterator[Pacs]:
    with running_pacs(tmp_path_factory.mktemp("pacs") / "store") as p:
        store(exams[0].files(), p.port, p.aet)  # exams[1]'s images never come
        yield p


def _psc(fake: FakePsc) -> dict[str, str]:
    return {"introspection_url": fake.introspection_url, "client_id": "drimbox",
            "client_secret": "secret"}  # fmt: skip


@pytest.fixture(scope="module")
def box(
    tmp_path_factory: pytest.TempPathFactory, pacs: Pacs, index: IndexServer,  # noqa: F811
    signer_files: tuple[Path, Path], psc: FakePsc,  # noqa: F811
) -> Iterator[tuple[SourceBox, str]]:  # fmt: skip
    settings = box_settings(
        tmp_path_factory.mktemp("box"), pacs.aet, pacs.port, index.url, signer_files,
        prefetch=False, psc=_psc(psc), conso={"secure_cookie": False},
        admin_national_ids=[ADMIN], images_deadline=3600,
    )  # fmt: skip
    settings = settings.model_copy(update={"pacs": settings.pacs.model_copy(
        update={"dicomweb_url": pacs.dicomweb})})  # fmt: skip
    with running_box(settings) as b, serving(create_app(b)) as url:
        yield b, url


def status(box: tuple[SourceBox, str]) -> dict[str, Any]:
    r = httpx.get(f"{box[1]}/api/admin/status", timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_fresh_box_reports_healthy_links_and_empty_counters(box: tuple[SourceBox, str]) -> None:
    doc = status(box)
    # the keys the page had before are still there
    assert {"messages", "operations", "held", "failed", "waiting", "publications"} <= set(doc)
    links = doc["links"]
    assert set(links) == {"pacs", "pacs_dicomweb", "index"}
    for link in links.values():
        assert link["ok"] and link["error"] == "" and link["latency_ms"] >= 0, link
    assert links["index"]["target"].endswith("/health")
    counters = doc["counters"]
    assert counters["exams_published"] == 0 and counters["history_listed"] == 0
    assert counters["imports_done"] == 0 and counters["trail_complete"]
    settings = box[0].settings
    assert doc["caches"]["source"]["max_bytes"] == settings.cache_max_bytes
    assert doc["caches"]["conso"]["max_bytes"] == settings.conso.cache_max_bytes
    assert doc["caches"]["source"]["entries"] == 0
    assert doc["whitelist"] == {"configured": False, "loaded": False}
    assert doc["queue"]["outbox_pending"] == 0 and doc["recent_errors"] == []


def test_a_publication_and_a_consultation_are_counted(
    box: tuple[SourceBox, str],
    exams: list[Exam],
    psc: FakePsc,  # noqa: F811
) -> None:
    b, url = box
    exam = exams[0]
    assert send(b.mllp.port, exam.message("ORU"))[0] == "AA"

    def published() -> bool:
        pub = b.outbox.publication(exam.study_uid)
        return pub is not None and pub.state is PublicationState.PUBLISHED

    wait_for(published, timeout=60, what="publication", box=b)
    assert status(box)["counters"]["exams_published"] == 1
    token = psc.issue(ADMIN)
    r = httpx.get(f"{url}/conso/api/history", headers={"Authorization": f"Bearer {token}"},
                  params={"ins": exam.record["patient_ins"], "oid": exam.record["ins_oid"]},
                  timeout=60)  # fmt: skip
    assert r.status_code == 200, r.text
    counters = status(box)["counters"]
    assert counters["history_listed"] == 1 and counters["exams_published"] == 1
    page = httpx.get(f"{url}/admin", timeout=30)
    assert page.status_code == 200 and "Historiques consultés" in page.text
    assert "Examens publiés" in page.text and "joignable" in page.text


def test_a_message_waiting_for_its_images_is_in_the_recent_errors(
    box: tuple[SourceBox, str], exams: list[Exam]
) -> None:
    b, _ = box
    exam = exams[1]
    assert send(b.mllp.port, exam.message("ORU"))[0] == "AA"

    def reported() -> list[dict[str, Any]]:
        return [e for e in status(box)["recent_errors"] if e["study_uid"] == exam.study_uid]

    [error] = wait_for(reported, timeout=30, what="the error in the admin status")
    assert error["kind"] == "message" and error["state"] == "pending" and error["reason"]
    assert error["at"]
    assert status(box)["queue"]["inbox_pending"] >= 1


def test_remote_clients_need_a_declared_administrator(
    box: tuple[SourceBox, str],
    psc: FakePsc,  # noqa: F811
) -> None:
    remote = TestClient(create_app(box[0]), client=("10.20.30.40", 40000))
    r = remote.get("/api/admin/status")
    assert r.status_code == 403 and r.headers["content-type"] == "application/problem+json"
    other = remote.get("/admin", headers={"Authorization": f"Bearer {psc.issue('899700000000')}"})
    assert other.status_code == 403
    admin = remote.get("/api/admin/status",
                       headers={"Authorization": f"Bearer {psc.issue(ADMIN)}"})  # fmt: skip
    assert admin.status_code == 200 and "counters" in admin.json()
    assert remote.post("/admin/operations/1/retry").status_code == 403


def test_a_box_whose_pacs_and_index_are_down_says_so(
    tmp_path: Path, signer_files: tuple[Path, Path]
) -> None:
    dead_pacs, dead_index = free_port(), free_port()  # nothing listens on either
    settings = box_settings(tmp_path, "DRIMPACS", dead_pacs, f"http://127.0.0.1:{dead_index}",
                            signer_files, prefetch=False, conso={"enabled": False})  # fmt: skip
    with running_box(settings) as b:
        local = TestClient(create_app(b), client=("127.0.0.1", 40000))
        doc = local.get("/api/admin/status").json()
        pacs, idx = doc["links"]["pacs"], doc["links"]["index"]
        assert not pacs["ok"] and "injoignable" in pacs["error"] and pacs["latency_ms"] is None
        assert pacs["target"] == f"DRIMPACS@127.0.0.1:{dead_pacs}"
        assert not idx["ok"] and "ConnectError" in idx["error"]
        assert "caches" in doc and "conso" not in doc["caches"]
        page = local.get("/admin")
        assert page.status_code == 200 and "en panne" in page.text and "injoignable" in page.text
