"""The MLLP listener end to end: real synthetic ORU/MDM over TCP and TLS, sent by ``hl7``'s
MLLP client or a raw socket, acknowledged only once durably stored."""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hl7.client import MLLPClient

from drimbox.adapters.hl7.listener import serve_mllp
from drimbox.adapters.hl7.mllp import MllpServer
from drimbox.adapters.hl7.parse import parse_message
from drimbox.domain.report import ReportMessage
from drimbox.services.source.inbox import Inbox
from tests.peers import free_port

SB, EB, CR = b"\x0b", b"\x1c", b"\r"


@pytest.fixture(scope="module")
def synth_messages(synth_dir: Path) -> list[tuple[dict[str, Any], bytes]]:
    manifest = json.loads((synth_dir / "manifest.json").read_text(encoding="utf-8"))
    return [
        (record, (synth_dir / record["path"]).read_bytes())
        for exam in manifest["exams"]
        for record in exam["hl7_messages"]
    ]


@pytest.fixture
def inbox(tmp_path: Path) -> Iterator[Inbox]:
    with Inbox(tmp_path / "inbox", parse_message) as box:
        yield box


@pytest.fixture
def listener(inbox: Inbox) -> Iterator[MllpServer]:
    server = serve_mllp("127.0.0.1", free_port(), inbox)
    try:
        yield server
    finally:
        server.stop()


def _ack(reply: bytes) -> hl7.Message:
    assert reply.startswith(SB) and reply.endswith(EB + CR), reply[:40]
    return hl7.parse(reply[1:-2].decode("utf-8"))


def _msa_of(ack: hl7.Message) -> tuple[str, str]:
    msa = ack.segment("MSA")
    return str(msa[1]), str(msa[2])


def _msa(reply: bytes) -> tuple[str, str]:
    return _msa_of(_ack(reply))


def _read_frames(sock: socket.socket, count: int, timeout: float = 10.0) -> list[bytes]:
    sock.settimeout(timeout)
    data = b""
    while data.count(EB + CR) < count:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the ACKs"
        data += chunk
    return [part + EB + CR for part in data.split(EB + CR)[:count]]


def _read_until_closed(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_oru_and_mdm_are_acknowledged_and_queued(
    listener: MllpServer, inbox: Inbox, synth_messages: list[tuple[dict[str, Any], bytes]]
) -> None:
    kinds = set()
    with MLLPClient("127.0.0.1", listener.port) as client:
        for record, raw in synth_messages:
            reply = client.send_message(raw)
            assert _msa(reply) == ("AA", record["control_id"])
            kinds.add(record["kind"])
    assert kinds == {"ORU", "MDM"}
    count = inbox._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    assert count == len(synth_messages)
    patients = {parse_message(raw).patient.ins.value for _, raw in synth_messages}
    assert {e.patient for e in inbox.pending()} == patients


def test_refused_messages_get_ae_or_ar_with_err(
    listener: MllpServer, inbox: Inbox, synth_messages: list[tuple[dict[str, Any], bytes]]
) -> None:
    record, raw = next(m for m in synth_messages if m[0]["kind"] == "ORU")
    ins = raw.split(b"PID|||", 1)[1][:15]
    wrong_key = raw.replace(ins, ins[:13] + (b"00" if ins[13:] != b"00" else b"01"), 1)
    adt = raw.replace(b"ORU^R01^ORU_R01", b"ADT^A08^ADT_A01")
    with MLLPClient("127.0.0.1", listener.port) as client:
        ack = _ack(client.send_message(wrong_key))
        assert _msa_of(ack) == ("AE", record["control_id"])
        err = ack.segment("ERR")
        assert str(err[2]) == "PID^1^3^1" and str(err[3][0][0]) == "102"
        assert "key" in ack.unescape(str(err[8]))
        ack = _ack(client.send_message(adt))
        assert str(ack.segment("MSA")[1]) == "AR"
        assert str(ack.segment("ERR")[3][0][0]) == "200"
        ack = _ack(client.send_message(b"hello, is this HTTP?"))
        assert str(ack.segment("MSA")[1]) == "AR" and str(ack.segment("MSA")[2]) == ""
        ack = _ack(client.send_message(raw.replace(b"\rPID|", b"\rp|d|")))
        assert _msa_of(ack) == ("AR", record["control_id"])
        assert str(ack.segment("ERR")[3][0][0]) == "100"
        # the connection survived four bad frames
        assert _msa(client.send_message(raw))[0] == "AA"
    assert len(inbox.pending()) == 1
    rejected = sorted((inbox.folder / "rejected").glob("*.json"))
    assert len(rejected) == 4
    reasons = [json.loads(p.read_text())["reason"] for p in rejected]
    assert reasons[0].startswith("INVALID_INS") and reasons[1].startswith("UNSUPPORTED")


def test_frame_split_in_three_writes(
    listener: MllpServer, synth_messages: list[tuple[dict[str, Any], bytes]]
) -> None:
    record, raw = synth_messages[0]
    data = SB + raw + EB + CR
    cuts = [0, 1, len(data) // 2, len(data) - 1, len(data)]  # SB alone, ..., CR alone
    with _connect(listener.port) as sock:
        for start, stop in itertools.pairwise(cuts):
            sock.sendall(data[start:stop])
            time.sleep(0.05)
        (reply,) = _read_frames(sock, 1)
    assert _msa(reply) == ("AA", record["control_id"])


def test_two_frames_in_one_write(
    listener: MllpServer, inbox: Inbox, synth_messages: list[tuple[dict[str, Any], bytes]]
) -> None:
    (r1, m1), (r2, m2) = synth_messages[:2]
    with _connect(listener.port) as sock:
        sock.sendall(SB + m1 + EB + CR + SB + m2 + EB + CR)
        replies = _read_frames(sock, 2)
    assert [_msa(r) for r in replies] == [("AA", r1["control_id"]), ("AA", r2["control_id"])]


def test_duplicate_is_acknowledged_and_stored_once(
    listener: MllpServer, inbox: Inbox, synth_messages: list[tuple[dict[str, Any], bytes]]
) -> None:
    record, raw = synth_messages[0]
    for _ in range(2):  # the RIS lost our first ACK and resends on a new connection
        with MLLPClient("127.0.0.1", listener.port) as client:
            assert _msa(client.send_message(raw)) == ("AA", record["control_id"])
    assert inbox._db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1


def test_acknowledged_message_survives_restart(
    tmp_path: Path, synth_messages: list[tuple[dict[str, Any], bytes]]
) -> None:
    folder = tmp_path / "durable"
    record, raw = synth_messages[-1]
    inbox = Inbox(folder, parse_message)
    server = serve_mllp("127.0.0.1", free_port(), inbox)
    try:
        with MLLPClient("127.0.0.1", server.port) as client:
            assert _msa(client.send_message(raw)) == ("AA", record["control_id"])
    finally:
        server.stop()
        inbox.close()
    with Inbox(folder, parse_message) as reopened:
        (entry,) = reopened.pending()
        assert entry.raw == raw and entry.control_id == record["control_id"]


class _BrokenInbox:
    def accept(self, raw: bytes, report: ReportMessage) -> object:
        raise OSError("No space left on device")

    def reject(self, raw: bytes, reason: str, *, ack: str, control_id: str = "") -> object:
        return None


def test_storage_failure_is_ar_so_the_ris_retries(
    synth_messages: list[tuple[dict[str, Any], bytes]],
) -> None:
    server = serve_mllp("127.0.0.1", 0, _BrokenInbox())
    try:
        with MLLPClient("127.0.0.1", server.port) as client:
            ack = _ack(client.send_message(synth_messages[0][1]))
    finally:
        server.stop()
    assert str(ack.segment("MSA")[1]) == "AR"
    assert str(ack.segment("ERR")[3][0][0]) == "207"


def test_oversize_message_and_idle_timeout(
    inbox: Inbox, synth_messages: list[tuple[dict[str, Any], bytes]]
) -> None:
    record, raw = synth_messages[0]
    server = serve_mllp("127.0.0.1", 0, inbox, max_message_size=len(raw) - 1, idle_timeout=1.0)
    try:
        with _connect(server.port) as sock:
            sock.sendall(SB + raw + EB + CR)
            ack = _ack(_read_frames(sock, 1)[0])
            assert _msa_of(ack) == ("AE", record["control_id"])
            assert str(ack.segment("ERR")[5][0][0]) == "MESSAGE_TOO_LARGE"
            sock.settimeout(5)
            started = time.monotonic()
            assert sock.recv(10) == b""  # closed by the server after 1 s of silence
            assert 0.2 < time.monotonic() - started < 4
    finally:
        server.stop()


# --- TLS ------------------------------------------------------------------------------------


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls(
    tmp_path: Path, inbox: Inbox, synth_messages: list[tuple[dict[str, Any], bytes]]
) -> None:
    cert, key = _self_signed(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    record, raw = synth_messages[0]
    server = serve_mllp("127.0.0.1", free_port(), inbox, ssl_context=server_context)
    try:
        with (
            _connect(server.port) as plain,
            client_context.wrap_socket(plain, server_hostname="localhost") as sock,
        ):
            data = SB + raw + EB + CR
            sock.sendall(data[:100])
            sock.sendall(data[100:] + data)  # rest of the first frame + a resend in one write
            replies = _read_frames(sock, 2)
        assert [_msa(r) for r in replies] == [("AA", record["control_id"])] * 2
        # a client speaking plain MLLP to the TLS port gets nothing, and the server lives on
        with _connect(server.port) as sock:
            sock.sendall(data)
            assert SB not in _read_until_closed(sock)
        with (
            _connect(server.port) as plain,
            client_context.wrap_socket(plain, server_hostname="localhost") as sock,
        ):
            sock.sendall(data)
            assert _msa(_read_frames(sock, 1)[0])[0] == "AA"
    finally:
        server.stop()
    assert len(inbox.pending()) == 1
