"""Hostile clients against running servers, with the limits they meet in production.

A box (its users' port served with ``run_box``'s uvicorn options, its Source port by its
worker process over mutual TLS, its MLLP listener for the RIS), the development identity
provider (professionals and patients), an index, our PACS, and a real ``drimbox index``
process. Slow clients (slowloris), oversized bodies, XXE and billion laughs in a CDA sent over
MLLP, path traversal through UIDs over HTTP: each refusal is checked precisely, and so is that
nothing was stored, published or written and that others were still served.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html import unescape
from pathlib import Path
from typing import Any

import hl7
import httpx
import pytest
import uvicorn
from hl7.client import MLLPClient

from drimbox.adapters.hl7.listener import ReportReceiver
from drimbox.adapters.hl7.mllp import MllpServer, frame
from drimbox.adapters.hl7.parse import decode, parse_message
from drimbox.adapters.http_limits import DEFAULT_MAX_BODY, HttpLimits
from drimbox.adapters.xds.client import XdsClient
from drimbox.entrypoints.box import SourceBox, create_app
from drimbox.entrypoints.idp import create_idp_app
from drimbox.entrypoints.source_workers import tls_options
from drimbox.services.source.inbox import Inbox
from drimbox.services.source.outbox import PublicationState
from drimbox.settings import IdpSettings
from tests import xds_messages as m
from tests.box_pki import Pki
from tests.idp_people import people_with_exam_patient
from tests.index_fixtures import IndexServer, database_url, running_index, vihf_roots
from tests.integration.test_conso_login import _log_in
from tests.integration.test_source_publication import box_settings, running_box, store, wait_for
from tests.integration.test_source_wado import with_pacs
from tests.peers import Pacs, free_port, running_pacs, serving, stop, wait_port
from tests.source_exams import Exam
from tests.unit.test_hl7_parse import edit_cda
from tests.xds_messages import Doc, new_ins, post

HEAD_TIMEOUT = HttpLimits().head_timeout
BIG = 2 * DEFAULT_MAX_BODY


# --- the network ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exam(exams: list[Exam]) -> Exam:
    return next(e for e in exams[:-1] if len(e.record["reports"]) == 1)


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"idp": free_port(), "users": free_port(), "source": free_port()}


@pytest.fixture(scope="module")
def issuer(
    tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int], exam: Exam
) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("idp")
    people_file = people_with_exam_patient(folder, exam)
    users = f"http://127.0.0.1:{ports['users']}"
    settings = IdpSettings.model_validate({
        "port": ports["idp"], "data_dir": folder, "people_file": people_file,
        "clients": [
            {"client_id": "box", "client_secret": "secret-b",
             "redirect_uris": [f"{users}/conso/callback"]},
            {"client_id": "portal", "client_secret": "secret-p",
             "redirect_uris": [f"{users}/patient/callback"]},
            {"client_id": "index", "client_secret": "secret-i"},
        ],
    })  # fmt: skip
    with serving(create_idp_app(settings), port=ports["idp"]):
        yield settings.issuer_url


def _introspection(issuer: str, client: str, secret: str) -> dict[str, str]:
    return {"introspection_url": f"{issuer}/protocol/openid-connect/token/introspect",
            "client_id": client, "client_secret": secret}  # fmt: skip


@pytest.fixture(scope="module")
def index(
    tmp_path_factory: pytest.TempPathFactory, issuer: str, signer_files: tuple[Path, Path]
) -> Iterator[IndexServer]:
    """Users' tokens checked at the provider; the box publishes with its signed VIHF."""
    folder = tmp_path_factory.mktemp("index-hostile")
    roots = vihf_roots(signer_files[1], folder / "vihf-roots.pem")
    trust = {**_introspection(issuer, "index", "secret-i"), "vihf_trust_anchors": roots}
    with database_url("sqlite", folder) as url, running_index(url, trust=trust) as server:
        yield server


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory, exam: Exam) -> Iterator[Pacs]:
    with running_pacs(tmp_path_factory.mktemp("pacs") / "store") as p:
        store(exam.files(), p.port, p.aet)
        yield p


@dataclass
class Box:
    box: SourceBox
    users: str
    source: str


@contextlib.contextmanager
def served_as_run_box(box: SourceBox, port: int) -> Iterator[str]:
    """The users' port with the options ``run_box`` gives uvicorn (protocol, TLS)."""
    config = uvicorn.Config(create_app(box), host="127.0.0.1", port=port, log_level="warning",
                            access_log=False, loop="uvloop",
                            **tls_options(box.settings, client_certs=False))  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="module")
def box(
    tmp_path_factory: pytest.TempPathFactory, issuer: str, pacs: Pacs, index: IndexServer,
    signer_files: tuple[Path, Path], ports: dict[str, int], pki: Pki,
) -> Iterator[Box]:  # fmt: skip
    users = f"http://127.0.0.1:{ports['users']}"
    settings = box_settings(
        tmp_path_factory.mktemp("box"), pacs.aet, pacs.port, index.url, signer_files,
        prefetch=False, source_port=ports["source"], source_workers=1,
        public_url=f"https://localhost:{ports['source']}",
        psc=_introspection(issuer, "box", "secret-b"),
        tls={"cert": pki.folder / "box-a-fullchain.pem", "key": pki.folder / "box-a.key",
             "trust_anchors": pki.folder / "root.crt", "allowed_boxes": ["box-b.example"],
             "users_https": False},  # plain behind a proxy: the browser flows stay simple
        conso={"secure_cookie": False,
               "allowed_sources": [f"https://localhost:{ports['source']}/dicomweb"],
               "oidc": {"issuer": issuer, "client_id": "box", "client_secret": "secret-b",
                        "redirect_uri": f"{users}/conso/callback"},
               "patient_oidc": {"issuer": issuer, "client_id": "portal",
                                "client_secret": "secret-p",
                                "redirect_uri": f"{users}/patient/callback"}},
    )  # fmt: skip
    with (
        running_box(with_pacs(settings, dicomweb_url=pacs.dicomweb)) as b,
        served_as_run_box(b, ports["users"]) as url,
    ):
        wait_port(ports["source"])
        yield Box(b, url, f"https://localhost:{ports['source']}")


def _publish(box: SourceBox, exam: Exam) -> str:
    """The genuine report (idempotent): its KOS UID once published."""

    def done() -> str:
        pub = box.outbox.publication(exam.study_uid)
        return pub.indexed_kos_uid if pub and pub.state is PublicationState.PUBLISHED else ""

    if not done():
        assert _ack(box.mllp.port, exam.message("ORU"))[0] == "AA"
    return str(wait_for(done, timeout=90, what="publication", box=box))


@pytest.fixture(scope="module")
def published(box: Box, exam: Exam) -> str:
    return _publish(box.box, exam)


@pytest.fixture(scope="module")
def professional(box: Box, published: str, exam: Exam) -> Iterator[httpx.Client]:
    """A radiologist logged in at the Conso, who listed the exam."""
    with httpx.Client(base_url=box.users, timeout=60) as browser:
        _log_in(browser, box.users, "radiologue", "/conso/")
        assert _lists(browser, exam)
        yield browser


@pytest.fixture(scope="module")
def patient(box: Box, published: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=box.users, timeout=60) as browser:
        landed = _log_in(browser, box.users, "patient-examen", "/patient/", area="patient")
        assert landed.status_code == 303
        yield browser


@pytest.fixture(scope="module")
def index_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``drimbox index`` itself: the uvicorn options of its ``_serve``."""
    folder = tmp_path_factory.mktemp("index-process")
    port = free_port()
    log = (folder / "index.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "drimbox", "index", "--port", str(port), "--data-dir",
         str(folder), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_port(port, proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


def _lists(client: httpx.Client, exam: Exam) -> bool:
    r = client.get("/conso/api/history", params={"ins": exam.record["patient_ins"],
                                                 "oid": exam.record["ins_oid"]})  # fmt: skip
    assert r.status_code == 200, r.text
    return exam.study_uid in {e["study_uid"] for e in r.json()["exams"]}


def _ack(port: int, raw: bytes) -> tuple[str, str, hl7.Message]:
    with MLLPClient("127.0.0.1", port) as client:
        reply = client.send_message(raw)
    ack = hl7.parse(reply.decode() if isinstance(reply, bytes) else str(reply))
    return str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2]), ack


def _problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    return body


# --- slow clients ----------------------------------------------------------------------------


@dataclass
class SlowClient:
    sock: socket.socket
    trickles: bool
    data: bytes = b""
    closed_after: float | None = None
    opened: float = field(default_factory=time.monotonic)

    def poll(self) -> None:
        if self.closed_after is not None:
            return
        try:
            chunk = self.sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError, BlockingIOError):
            return
        except (ConnectionError, ssl.SSLError):
            chunk = b""
        if chunk:
            self.data += chunk
        else:
            self.closed_after = time.monotonic() - self.opened

    def trickle(self) -> None:
        if self.trickles and self.closed_after is None:
            with contextlib.suppress(OSError):
                self.sock.sendall(b"X")  # one more byte of a header name, never the end


def _slow_clients(port: int, context: ssl.SSLContext | None, path: str) -> list[SlowClient]:
    clients = []
    for trickles in (True, True, True, False):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        if context is not None:
            sock = context.wrap_socket(sock, server_hostname="localhost")
        if trickles:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n".encode())
        sock.settimeout(0.01)
        clients.append(SlowClient(sock, trickles))
    return clients


def test_slow_clients_are_cut_off_on_every_http_port_and_others_served(
    box: Box, index_process: str, pki: Pki
) -> None:
    """The users' port, the Source port (mutual TLS, a listed box's certificate: the slow
    client passed the handshake) and the index: three clients trickle a request head one byte
    a second, one sends nothing. Others are served meanwhile; after ``head_timeout`` the
    tricklers get 408 and the silent one a close without an answer."""
    box_b = pki.ctx("box-b")
    targets = {
        "users": (int(box.users.rsplit(":", 1)[1]), None, box.users),
        "source": (int(box.source.rsplit(":", 1)[1]), box_b, box.source),
        "index": (int(index_process.rsplit(":", 1)[1]), None, index_process),
    }
    slow = {name: _slow_clients(port, ctx, "/health") for name, (port, ctx, _) in targets.items()}
    everyone = [c for clients in slow.values() for c in clients]
    try:
        with httpx.Client(timeout=10) as plain, httpx.Client(verify=box_b, timeout=10) as tls:
            deadline = time.monotonic() + HEAD_TIMEOUT + 10
            last_trickle = 0.0
            while time.monotonic() < deadline and any(c.closed_after is None for c in everyone):
                if time.monotonic() - last_trickle >= 1.0:
                    last_trickle = time.monotonic()
                    for client in everyone:
                        client.trickle()
                    for name, (_, ctx, url) in targets.items():  # others are served
                        try:
                            r = (tls if ctx else plain).get(f"{url}/health")
                        except httpx.HTTPError as exc:
                            raise AssertionError(f"{name} not served: {exc!r}") from exc
                        assert r.status_code == 200 and r.json()["status"] == "ok", name
                for client in everyone:
                    client.poll()
                time.sleep(0.05)
    finally:
        for client in everyone:
            client.sock.close()
    for name, clients in slow.items():
        for client in clients:
            assert client.closed_after is not None, f"{name}: a slow client is still connected"
            assert HEAD_TIMEOUT - 1 < client.closed_after < HEAD_TIMEOUT + 5, (name, client)
            if not client.trickles:
                assert client.data == b"", name  # nothing of a request came: no answer
                continue
            head, _, body = client.data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408 "), (name, client.data[:200])
            assert b"connection: close" in head.lower()
            assert json.loads(body) == {
                "type": "about:blank", "title": "Request Timeout", "status": 408,
                "detail": f"request head not received within {HEAD_TIMEOUT:g} s"}  # fmt: skip


# --- MLLP ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _mllp(folder: Path, **limits: Any) -> Iterator[tuple[MllpServer, Inbox]]:
    inbox = Inbox(folder, parse_message)
    server = MllpServer("127.0.0.1", 0, ReportReceiver(inbox), **limits).start()
    try:
        yield server, inbox
    finally:
        server.stop()
        inbox.close()


def _closed_by_server(sock: socket.socket, within: float) -> float:
    """Seconds until the server closed ``sock`` (no ACK on the way)."""
    started = time.monotonic()
    sock.settimeout(within)
    assert sock.recv(1024) == b""
    return time.monotonic() - started


def _mllp_ack(port: int, raw: bytes, source: str = "127.0.0.1") -> str:
    with socket.create_connection(("127.0.0.1", port), 10, (source, 0)) as sock:
        sock.sendall(frame(raw))
        sock.settimeout(10)
        data = b""
        while b"\x1c" not in data:
            chunk = sock.recv(65536)
            assert chunk, "closed without an ACK"
            data += chunk
    return str(hl7.parse(data.strip(b"\x0b\x1c\r").decode()).segment("MSA")[1])


def test_mllp_a_frame_trickled_byte_by_byte_is_dropped(tmp_path: Path, exam: Exam) -> None:
    raw = exam.message("ORU")
    with _mllp(tmp_path / "in", idle_timeout=60, frame_timeout=1.0) as (server, inbox):
        with socket.create_connection(("127.0.0.1", server.port), 10) as sock:
            sock.sendall(b"\x0b" + raw[:200])
            stop_trickle = threading.Event()

            def trickle() -> None:
                for byte in raw[200:]:
                    if stop_trickle.wait(0.2):
                        return
                    with contextlib.suppress(OSError):
                        sock.sendall(bytes([byte]))

            thread = threading.Thread(target=trickle, daemon=True)
            thread.start()
            try:
                assert 0.5 < _closed_by_server(sock, 5) < 3  # bytes kept coming: not idle
            finally:
                stop_trickle.set()
                thread.join(5)
        assert inbox.counts() == {}
        assert _mllp_ack(server.port, raw) == "AA"  # the RIS is still served


def test_mllp_bytes_between_frames_do_not_keep_a_connection(tmp_path: Path, exam: Exam) -> None:
    with (
        _mllp(tmp_path / "in", idle_timeout=1.0) as (server, inbox),
        socket.create_connection(("127.0.0.1", server.port), 10) as sock,
    ):
        stop_noise = threading.Event()

        def noise() -> None:
            while not stop_noise.wait(0.2):
                with contextlib.suppress(OSError):
                    sock.sendall(b"\r")

        thread = threading.Thread(target=noise, daemon=True)
        thread.start()
        try:
            assert 0.5 < _closed_by_server(sock, 5) < 3
        finally:
            stop_noise.set()
            thread.join(5)
        assert inbox.counts() == {}


def test_mllp_connections_are_capped_per_address_and_in_all(tmp_path: Path, exam: Exam) -> None:
    raw = exam.message("ORU")
    with _mllp(tmp_path / "a", max_connections_per_peer=2, max_connections=4) as (server, inbox):
        held = [socket.create_connection(("127.0.0.1", server.port), 10) for _ in range(2)]

        def serving(count: int) -> None:  # the server's own count, not a guess at timing
            deadline = time.monotonic() + 10
            while sum(server._per_peer.values()) != count:
                assert time.monotonic() < deadline, server._per_peer
                time.sleep(0.02)

        try:
            serving(2)
            with socket.create_connection(("127.0.0.1", server.port), 10) as third:
                assert _closed_by_server(third, 5) < 1  # refused at once
            assert _mllp_ack(server.port, raw, source="127.0.0.2") == "AA"  # another address
            more = [socket.create_connection(("127.0.0.1", server.port), 10, (f"127.0.0.{i}", 0))
                    for i in (3, 4)]  # fmt: skip
            held += more
            serving(4)  # the two held here, two more; the ACK's connection is gone
            with socket.create_connection(("127.0.0.1", server.port), 10, ("127.0.0.5", 0)) as s:
                assert _closed_by_server(s, 5) < 1  # four in all: the fifth is refused
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.5)
        assert _mllp_ack(server.port, raw) == "AA"  # freed
        assert inbox.counts() == {"pending": 1}  # the one accepted message, stored once


# --- XXE and billion laughs in the CDA, over MLLP to the running box --------------------------


@contextlib.contextmanager
def _canary() -> Iterator[tuple[int, list[bytes]]]:
    """A port an external entity or DTD would be fetched from; what it received."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    received: list[bytes] = []
    done = threading.Event()

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1)
                with contextlib.suppress(OSError):
                    received.append(conn.recv(4096) or b"(connected)")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], received
    finally:
        done.set()
        thread.join(5)
        listener.close()


def _hostile_cdas(canary: int) -> dict[str, tuple[str, str]]:
    """(DOCTYPE, entity reference put in the title) of each attack."""
    laughs = ['<!ENTITY lol0 "lol">']
    for i in range(1, 10):  # lol9: a billion "lol" if expanded
        laughs.append(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">')
    url = f"http://127.0.0.1:{canary}"
    return {
        "file XXE": (
            '<!DOCTYPE ClinicalDocument [<!ENTITY x SYSTEM "file:///etc/passwd">]>',
            "&x;",
        ),
        "network XXE": (f'<!DOCTYPE ClinicalDocument [<!ENTITY x SYSTEM "{url}/x">]>', "&x;"),
        "external DTD": (f'<!DOCTYPE ClinicalDocument SYSTEM "{url}/cda.dtd">', ""),
        "parameter entity": (
            f'<!DOCTYPE ClinicalDocument [<!ENTITY % p SYSTEM "{url}/p"> %p;]>',
            "",
        ),
        "billion laughs": (f"<!DOCTYPE ClinicalDocument [{''.join(laughs)}]>", "&lol9;"),
    }


def _poison(cda: bytes, doctype: str, reference: str) -> bytes:
    """The genuine CDA with a DOCTYPE before its root and the entity used in its title."""
    assert cda.count(b"<ClinicalDocument") == 1 and b"</title>" in cda
    cda = cda.replace(b"<ClinicalDocument", doctype.encode() + b"\n<ClinicalDocument", 1)
    return cda.replace(b"</title>", reference.encode() + b"</title>", 1)


def _refused_for_dtd(reason: str) -> bool:
    # libxml2 (2.11+) stops the billion laughs itself, as it reads the declarations, before
    # our check of the parsed tree refuses any DTD
    return "declares a DTD" in reason or "entity amplification factor exceeded" in reason


def _cda_of(raw: bytes) -> bytes:
    data = raw.split(b"^TEXT^XML^Base64^", 1)[1].split(b"|", 1)[0]
    return base64.b64decode(data)


def test_xxe_and_billion_laughs_in_a_cda_are_refused_and_nothing_is_published(
    box: Box, exam: Exam, index: IndexServer
) -> None:
    source = box.box
    genuine = exam.message("ORU")
    with _canary() as (canary, fetched):
        for name, (doctype, reference) in _hostile_cdas(canary).items():
            before = source.inbox.counts()
            raw = edit_cda(genuine, lambda cda, d=doctype, r=reference: _poison(cda, d, r))
            started = time.monotonic()
            code, control_id, ack = _ack(source.mllp.port, raw)
            assert time.monotonic() - started < 5, name  # nothing was expanded
            assert (code, control_id) == ("AE", decode(genuine).msh.value(10)), name
            err = ack.segment("ERR")
            assert str(err[3][0][0]) == "102", name  # data type error, on OBX-5
            assert _refused_for_dtd(str(err[8])), (name, str(err))
            assert "root:" not in str(ack)
            assert source.inbox.counts() == before, name  # not accepted: nothing to publish
        time.sleep(1)
        assert fetched == []  # no entity, DTD or parameter entity was fetched
    notes = [json.loads(p.read_text()) for p in source.inbox.rejected_folder.glob("*.json")]
    assert sum(_refused_for_dtd(n["reason"]) and n["ack"] == "AE" for n in notes) == 5
    conso = box.box.conso
    assert conso is not None
    with httpx.Client(base_url=box.users, timeout=60) as browser:  # the index asks who reads
        _log_in(browser, box.users, "radiologue", "/conso/")
        session = conso.proxy.sessions.store.get(browser.cookies.get("drimbox_session"))
    assert session is not None
    with XdsClient(index.url, timeout=30) as xds_client, \
            xds_client.on_behalf_of(str(session.access_token)):  # fmt: skip
        assert xds_client.find_documents(exam.patient_id) == []
        # the listener and the pipeline still work: the genuine report is published, alone
        _publish(source, exam)
        documents = xds_client.find_documents(exam.patient_id)
        reports = [d for d in documents if d.type_code is not None
                   and d.type_code.code == "18748-4"]  # fmt: skip
        assert len(reports) == 1
        stored = xds_client.retrieve(index.repository, [reports[0].unique_id])
        assert stored[reports[0].unique_id] == _cda_of(genuine)


# --- oversized bodies on the users' port -----------------------------------------------------


def _big(pattern: bytes = b"a") -> bytes:
    return pattern * BIG


def _csrf(client: httpx.Client) -> str:
    page = client.get("/patient/")
    assert page.status_code == 200, page.text
    return unescape(re.search(r'name="csrf" value="([^"]+)"', page.text)[1])  # type: ignore[index]


def _my_exam(client: httpx.Client, exam: Exam) -> dict[str, Any]:
    r = client.get("/patient/api/exams")
    assert r.status_code == 200, r.text
    return next(e for e in r.json()["exams"] if e["study_uid"] == exam.study_uid)


def test_oversized_bodies_get_413_and_change_nothing(
    box: Box, exam: Exam, professional: httpx.Client, patient: httpx.Client
) -> None:
    conso = box.box.conso
    assert conso is not None
    trail = box.box.settings.data_dir / "trail" / "trail.jsonl"
    calls = box.box.settings.data_dir / "conso" / "contextual-calls.jsonl"
    session = conso.proxy.sessions.store.get(professional.cookies.get("drimbox_session"))
    assert session is not None
    token = str(session.access_token)
    csrf = _csrf(patient)
    study = exam.study_uid
    detail = f"request body over {DEFAULT_MAX_BODY} bytes"
    trail_before = trail.read_bytes()
    calls_before = calls.read_bytes() if calls.exists() else b""
    html = {"Accept": "text/html,application/xhtml+xml", "Origin": box.users}

    with httpx.Client(base_url=box.users, timeout=60) as anonymous:
        # a token opens no session when its request is too large: it was never looked at
        r = anonymous.post("/conso/api/session", content=_big(),
                           headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert _problem(r, 413)["detail"] == detail
        assert "set-cookie" not in r.headers and conso.proxy.sessions.session_of(token) is None
        # the RIS's contextual call, a form posted by a browser: the French page
        form = {"Content-Type": "application/x-www-form-urlencoded", **html}
        r = anonymous.post("/conso/appel-contextuel", content=b"INS=" + _big(b"1"), headers=form)
        assert r.status_code == 413 and r.headers["content-type"].startswith("text/html")
        assert "Requête trop volumineuse" in r.text
    # the professional's JSON: declared, and streamed without a length (read by the app)
    r = professional.post(f"/conso/api/exams/{study}/import", content=b'{"ipp": "' + _big(b"9"),
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert _problem(r, 413)["detail"] == detail
    chunks = iter([b'{"ipp": "'] + [b"9" * 65536] * (BIG // 65536))
    r = professional.post(f"/conso/api/exams/{study}/import", content=chunks,
                          headers={"Content-Type": "application/json"})  # fmt: skip
    assert _problem(r, 413)["detail"] == detail
    r = professional.post("/conso/api/history/emergency", headers={"Content-Type": "application/json"},
                          content=b'{"ins": "1", "reason": "' + _big(b"r") + b'"}')  # fmt: skip
    assert _problem(r, 413)["detail"] == detail
    # the patient's forms
    for action in ("/patient/opposition", f"/patient/exams/{study}/masquer"):
        body = f"csrf={csrf}&opposed=oui&pad=".encode() + _big(b"p")
        r = patient.post(action, content=body,
                         headers={"Content-Type": "application/x-www-form-urlencoded", **html})  # fmt: skip
        assert r.status_code == 413 and "Requête trop volumineuse" in r.text, action

    # nothing was recorded, counted, imported, hidden or opposed
    assert trail.read_bytes() == trail_before
    assert (calls.read_bytes() if calls.exists() else b"") == calls_before
    assert conso.importer.job(1) is None
    assert professional.get("/conso/api/imports/1").status_code == 404
    assert _my_exam(patient, exam)["hidden"] is False
    assert "Vous vous opposez" not in patient.get("/patient/").text
    assert _lists(professional, exam)
    # the same requests at their normal size still work (the refusal was about size)
    with httpx.Client(base_url=box.users, timeout=60) as anonymous:
        r = anonymous.post("/conso/api/session", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and conso.proxy.sessions.session_of(token) is not None


def test_oversized_soap_to_the_index_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    """A real ITI-41 (MTOM) just over the index's ``max_body_bytes``: the SOAP fault, nothing
    registered; the same with a smaller document is registered (the limit was the reason)."""
    patient = new_ins()
    with database_url("sqlite", tmp_path) as url, \
            running_index(url, max_body_bytes=64 * 1024) as index:  # fmt: skip
        big = Doc(patient, content=b"DICM" + b"\0" * 80 * 1024)
        ctype, body = m.provide_and_register(patient, [big])
        for content in (body, iter([body[i : i + 8192] for i in range(0, len(body), 8192)])):
            r = index.client.post("/repository", content=content,
                                  headers={"Content-Type": ctype})  # fmt: skip
            assert r.status_code == 413
            assert b"the request exceeds 65536 bytes" in r.content and b"Fault" in r.content
        query = {"$XDSDocumentEntryPatientId": [f"'{patient}'"],
                 "$XDSDocumentEntryStatus": [f"('{m.APPROVED}')"]}  # fmt: skip
        found = post(
            index.client, "/registry", m.stored_query(m.FIND_DOCUMENTS, query, "ObjectRef")
        )
        assert found.status() == "Success" and found.body.findall(".//{*}ObjectRef") == []
        small = Doc(patient)
        answer = post(index.client, "/repository", m.provide_and_register(patient, [small]))
        assert answer.status() == "Success"


# --- path traversal through UIDs, over HTTP --------------------------------------------------

# a "/" decoded from %2F leaves the UID's path segment: no route matches (plain 404)
UNROUTED = ["..%2F..%2F..%2Fetc%2Fpasswd", "1.2.3%2F..%2F..%2F4", "%2Fetc%2Fpasswd"]
# dot segments and backslashes stay in the segment: the handler gets them as the UID
ROUTED = ["%2E%2E", "..%5C..%5Cetc%5Cpasswd", "1.2.3%00"]


def _refused_uid(r: httpx.Response, uid: str, *, checks_syntax: bool, what: str = "") -> None:
    assert "root:" not in r.text and r.headers.get("content-type") != "application/zip"
    if uid in UNROUTED:
        assert (r.status_code, r.text) == (404, "Not Found"), (uid, r.status_code, r.text)
    elif checks_syntax:  # DICOMweb: the UID is checked before anything is looked up
        assert f"{what} UID" in _problem(r, 400)["detail"] and "not a valid DICOM UID" in r.text
    else:  # the session's listed exams are looked up by UID: never a file name
        assert _problem(r, 404)["detail"].startswith("cet examen")


@pytest.mark.parametrize("uid", UNROUTED + ROUTED)
def test_path_traversal_through_uids_is_refused_over_http(
    box: Box, exam: Exam, pki: Pki, professional: httpx.Client, patient: httpx.Client,
    published: str, uid: str,
) -> None:  # fmt: skip
    conso = box.box.conso
    assert conso is not None
    session = conso.proxy.sessions.store.get(professional.cookies.get("drimbox_session"))
    assert session is not None
    series = exam.record["series"][0]["series_uid"]
    headers = {"Authorization": f"Bearer {session.access_token}", "KOS-SOPInstanceUID": published}
    # the Source port, as another box (listed, valid token, the exam's manifest)
    with httpx.Client(verify=pki.ctx("box-b"), timeout=30) as box_b:
        for path, what in ((f"/dicomweb/studies/{uid}/series/{series}/metadata", "study"),
                           (f"/dicomweb/studies/{exam.study_uid}/series/{uid}", "series")):  # fmt: skip
            _refused_uid(box_b.get(box.source + path, headers=headers), uid, checks_syntax=True,
                         what=what)  # fmt: skip
    # the users' port: the Conso and the patient's portal
    for client, path, what in (
        (professional, f"/conso/dicomweb/studies/{uid}/metadata", "study"),
        (professional, f"/conso/dicomweb/studies/{exam.study_uid}/series/{uid}/metadata", "series"),
        (patient, f"/patient/dicomweb/studies/{uid}/metadata", "study"),
    ):
        _refused_uid(client.get(path), uid, checks_syntax=True, what=what)
    for client, path in ((professional, f"/conso/api/exams/{uid}/zip"),
                         (patient, f"/patient/api/exams/{uid}/zip")):  # fmt: skip
        _refused_uid(client.get(path), uid, checks_syntax=False)
    r = professional.post(f"/conso/api/exams/{uid}/import", json={"ipp": "X1"})
    _refused_uid(r, uid, checks_syntax=False)
    assert conso.importer.job(1) is None
