"""The admin page's parts on their own: counts from a real access trail read a piece at a
time, link checks (cached, failures reported), import counts from a real importer database,
and who may open the page (loopback, forwarded requests, declared administrators)."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.testclient import TestClient

from drimbox.adapters.audit.jsonl_trail import JsonlTrail
from drimbox.adapters.box_web.admin import (
    AdminGate,
    LinkProbe,
    TrailCounter,
    admin_routes,
    c_echo,
    http_ping,
    import_counts,
)
from drimbox.adapters.hl7.parse import parse_message
from drimbox.domain.audit import AccessRecord, Action, Actor, ActorKind, Outcome
from drimbox.domain.errors import PeerUnavailable
from drimbox.services.conso.importer import Importer
from drimbox.services.source.inbox import Inbox
from drimbox.services.source.outbox import Outbox
from tests.peers import free_port

PRO = Actor("899700218896", ActorKind.PROFESSIONAL)


def record(trail: JsonlTrail, action: Action, outcome: Outcome = Outcome.SUCCESS) -> None:
    trail.record(AccessRecord(PRO, action, outcome, datetime.now(UTC),
                              patient_ins="285067511602105",
                              patient_oid="1.2.250.1.213.1.4.10"))  # fmt: skip


def test_the_trail_is_counted_by_action_reading_on_from_where_it_stopped(tmp_path: Path) -> None:
    with JsonlTrail(tmp_path, fsync=False) as trail:
        for _ in range(3):
            record(trail, Action.HISTORY_LIST)
        record(trail, Action.IMAGES_VIEW)
        record(trail, Action.HISTORY_LIST, Outcome.REFUSED)
        line = len((tmp_path / "trail.jsonl").read_bytes().splitlines()[0])
        counter = TrailCounter(tmp_path / "trail.jsonl", budget=2 * line + 10)
        counts, complete = counter.counts()  # two records per call at most
        assert not complete and sum(counts.values()) == 2
        while not complete:
            counts, complete = counter.counts()
        assert counts == {"history.list": 3, "images.view": 1, "refused": 1}
        # a line a crash cut short is not counted; the next record is
        with (tmp_path / "trail.jsonl").open("ab") as out:
            out.write(b'{"event":{"action":"R","outcome":"0","subtype":[{"code":"images.view"')
        record(trail, Action.IMAGES_IMPORT)
        assert trail.verify().torn_lines
    while not complete or counts.get("images.import") is None:
        counts, complete = counter.counts()
    assert counts == {"history.list": 3, "images.view": 1, "refused": 1, "images.import": 1}


def test_a_missing_trail_counts_nothing(tmp_path: Path) -> None:
    assert TrailCounter(tmp_path / "nope.jsonl").counts() == ({}, True)


def test_a_link_is_checked_once_per_period_and_failures_say_why() -> None:
    calls: list[float] = []
    up = LinkProbe("pacs", "PACS", "X@h:1", lambda: calls.append(time.monotonic()), ttl=60)
    first, second = up.state(), up.state()
    assert first is second and len(calls) == 1
    assert first.ok and first.latency_ms is not None and first.error == ""

    def refuse() -> None:
        raise PeerUnavailable("association refusée")

    down = LinkProbe("index", "Index", "http://x", refuse, ttl=0)
    state = down.state()
    assert not state.ok and state.latency_ms is None and state.error == "association refusée"


def test_c_echo_and_http_ping_to_nothing_fail_with_the_reason() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(PeerUnavailable, match="injoignable"):
        c_echo("127.0.0.1", port, "DRIMPACS", "DRIMBOX", timeout=2)
    with pytest.raises(PeerUnavailable, match="ConnectError"):
        http_ping(f"http://127.0.0.1:{port}/health", timeout=2)()


def test_imports_are_counted_from_the_importers_database(tmp_path: Path) -> None:
    stored = tmp_path / "x.dcm"
    stored.write_bytes(b"x")

    def fetch(study: str, items: list[tuple[str, str]], context: Any) -> Any:
        return ((item, stored) for item in items)

    def send(files: list[Path]) -> tuple[int, list[tuple[Path, str]]]:
        return len(files), []

    importer = Importer(tmp_path / "imports.sqlite", fetch, send, tmp_path / "work")
    job = importer.start("1.2.3", "1.2.4", [("1.2.3.1", "1.2.3.1.1")], "IPP1", "pro",
                         lambda data: data, None)  # fmt: skip
    deadline = time.monotonic() + 10
    while importer.job(job.id).state == "running" and time.monotonic() < deadline:  # type: ignore[union-attr]
        time.sleep(0.05)
    assert import_counts(tmp_path / "imports.sqlite") == {"done": 1}
    assert import_counts(tmp_path / "absent.sqlite") == {} and import_counts(None) == {}


# -- who may open the page ----------------------------------------------------------------


class Sessions:
    """The professional a bearer token names (what the Conso's SessionAuth answers)."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = tokens

    async def current(self, request: Request) -> Any:
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        subject = self.tokens.get(token)
        return None if subject is None else type("S", (), {"subject": subject, "patient": None})


@pytest.fixture
def boxes(tmp_path: Path) -> Any:
    inbox = Inbox(tmp_path, parse_message)
    outbox = Outbox(inbox)
    woken = threading.Event()
    yield inbox, outbox, woken
    inbox.close()


def app(boxes: Any, gate: AdminGate | None = None) -> Starlette:
    inbox, outbox, woken = boxes
    return Starlette(routes=admin_routes(inbox, outbox, woken.set, gate=gate))


def test_only_loopback_clients_by_default(boxes: Any) -> None:
    local = TestClient(app(boxes), client=("127.0.0.1", 50000))
    r = local.get("/api/admin/status")
    assert r.status_code == 200 and set(r.json()) >= {"messages", "operations", "held"}
    assert local.get("/admin").status_code == 200
    assert TestClient(app(boxes), client=("::1", 50000)).get("/admin").status_code == 200
    for client in (("10.0.0.7", 50000), ("192.168.1.20", 50000), ("testclient", 50000)):
        remote = TestClient(app(boxes), client=client)
        for method, path in (("GET", "/admin"), ("GET", "/api/admin/status"),
                             ("POST", "/admin/operations/1/retry"),
                             ("POST", "/admin/messages/1/release")):  # fmt: skip
            r = remote.request(method, path)
            assert r.status_code == 403, (client, path)
            assert r.headers["content-type"] == "application/problem+json"
            assert "poste local" in r.json()["detail"]
    # a reverse proxy on this machine forwarding someone else's request
    forwarded = local.get("/admin", headers={"X-Forwarded-For": "203.0.113.9"})
    assert forwarded.status_code == 403
    assert local.get("/admin", headers={"Forwarded": "for=203.0.113.9"}).status_code == 403


def test_declared_administrators_from_anywhere(boxes: Any) -> None:
    gate = AdminGate(frozenset({"899700218896"}),
                     Sessions({"tok-admin": "899700218896", "tok-other": "899700000000"}))  # fmt: skip
    remote = TestClient(app(boxes, gate), client=("10.0.0.7", 50000))
    assert remote.get("/api/admin/status").status_code == 403
    assert "connectez-vous" in remote.get("/api/admin/status").json()["detail"]
    other = remote.get("/api/admin/status", headers={"Authorization": "Bearer tok-other"})
    assert other.status_code == 403 and "899700000000" in other.json()["detail"]
    ok = remote.get("/api/admin/status", headers={"Authorization": "Bearer tok-admin"})
    assert ok.status_code == 200 and "messages" in ok.json()
    r = remote.post("/admin/operations/99/retry", headers={"Authorization": "Bearer tok-admin"})
    assert r.status_code == 404  # let in; there is no such operation


def test_a_post_from_another_sites_page_is_refused(boxes: Any) -> None:
    local = TestClient(app(boxes), client=("127.0.0.1", 50000))
    r = local.post("/admin/messages/1/release", headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "autre site" in r.json()["detail"]
    same = local.post("/admin/messages/1/release", headers={"Origin": "http://testserver"})
    assert same.status_code == 404


def test_counter_survives_a_trail_replaced_by_a_shorter_file(tmp_path: Path) -> None:
    with JsonlTrail(tmp_path / "a", fsync=False) as trail:
        record(trail, Action.HISTORY_LIST)
        record(trail, Action.HISTORY_LIST)
    path = tmp_path / "a" / "trail.jsonl"
    counter = TrailCounter(path)
    assert counter.counts() == ({"history.list": 2}, True)
    lines = path.read_bytes().splitlines(keepends=True)
    os.truncate(path, len(lines[0]))  # what verification then reports as a truncation
    assert counter.counts() == ({"history.list": 1}, True)


def test_the_whitelist_is_described_and_a_refused_refresh_reported(boxes: Any) -> None:
    from datetime import timedelta

    from drimbox.adapters.box_web.admin import BoxHealth, status_document
    from drimbox.adapters.trust import pki
    from drimbox.adapters.trust.whitelist import WhitelistHolder

    inbox, outbox, _ = boxes
    ca, _ = pki.create_ca()
    signer = pki.issue(ca, "Liste Blanche DRIM-M dev", kind="signing")
    holder = WhitelistHolder([ca.root])
    t0 = datetime.now(UTC)
    assert not status_document(inbox, outbox, BoxHealth(whitelist=holder))["whitelist"]["loaded"]
    assert holder.refresh(pki.sign_whitelist(["box-a.example.fr", "box-b.example.fr"], signer, t0))
    older = pki.sign_whitelist(["old.example.fr"], signer, t0 - timedelta(days=1))
    assert not holder.refresh(older)  # a rollback: refused, the current list kept
    wl = status_document(inbox, outbox, BoxHealth(whitelist=holder))["whitelist"]
    assert wl["configured"] and wl["loaded"] and wl["hosts"] == 2 and wl["domains"] == 2
    assert "Liste Blanche DRIM-M dev" in wl["signer"] and wl["signed_at"]
    assert "older than the current one" in wl["last_error"]
    assert status_document(inbox, outbox, BoxHealth())["whitelist"] == {
        "configured": False, "loaded": False}  # fmt: skip
