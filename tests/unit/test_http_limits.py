"""The HTTP limits (``adapters/http_limits.py``) on a real uvicorn server on loopback, with short
timeouts: slow heads and bodies, oversized heads and bodies, connection caps, unread responses.
Each test checks the precise refusal and that the application did nothing and others are served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from drimbox.adapters.http_limits import (
    BodyLimit,
    HttpLimits,
    LimitedHttpToolsProtocol,
    LimitedTlsHttpToolsProtocol,
    limited_protocol,
)
from drimbox.adapters.trust.peer_tls import TlsHttpToolsProtocol
from tests.peers import free_port

FAST = HttpLimits(head_timeout=1.0, body_window=1.0, body_min_rate=1000, write_timeout=1.0,
                  max_drain_bytes=256 * 1024, max_connections=50, max_connections_per_peer=20)  # fmt: skip


class Recorder:
    """What the application did: requests started, bodies stored, streams that ended."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.stored: list[int] = []
        self.stream_ended = threading.Event()

    def app(self, max_body: int | None = None) -> Starlette:
        async def ok(request: Request) -> Response:
            self.started.append(request.url.path)
            return JSONResponse({"ok": True})

        async def store(request: Request) -> Response:
            self.started.append(request.url.path)
            body = await request.body()
            self.stored.append(len(body))
            return JSONResponse({"stored": len(body)})

        async def store_or_400(request: Request) -> Response:
            self.started.append(request.url.path)
            try:
                body = await request.body()
            except Exception:  # an application that hides every error behind a 400
                return JSONResponse({"error": "bad"}, status_code=400)
            self.stored.append(len(body))
            return JSONResponse({"stored": len(body)})

        async def big(request: Request) -> Response:
            self.started.append(request.url.path)

            async def chunks() -> Any:
                try:
                    for _ in range(4000):  # 256 MB: more than any socket buffer
                        yield b"x" * 65536
                finally:
                    self.stream_ended.set()

            return StreamingResponse(chunks(), media_type="application/octet-stream")

        async def slow(request: Request) -> Response:
            self.started.append(request.url.path)

            async def chunks() -> Any:
                for i in range(4):
                    await asyncio.sleep(0.4)
                    yield f"part {i};".encode()

            return StreamingResponse(chunks(), media_type="text/plain")

        routes = [Route("/ok", ok), Route("/slow", slow), Route("/store", store, methods=["POST"]),
                  Route("/store-or-400", store_or_400, methods=["POST"]), Route("/big", big)]  # fmt: skip
        middleware = [Middleware(BodyLimit, max_bytes=max_body)] if max_body else []
        return Starlette(routes=routes, middleware=middleware)


@contextlib.contextmanager
def serving(app: Starlette, limits: HttpLimits = FAST) -> Iterator[int]:
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                            access_log=False, lifespan="off", http=limited_protocol(limits))  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    return sock


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything until the server closes (fails if it does not within ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def status_and_problem(raw: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert b"content-type: application/problem+json" in head.lower()
    return int(head.split(b" ", 2)[1]), json.loads(body)


def get_ok(port: int) -> None:
    assert httpx.get(f"http://127.0.0.1:{port}/ok", timeout=5).json() == {"ok": True}


# --- slow heads ------------------------------------------------------------------------------


def test_a_trickled_head_gets_408_and_others_are_served_meanwhile() -> None:
    rec = Recorder()
    with serving(rec.app()) as port, connect(port) as slow, connect(port) as silent:
        started = time.monotonic()
        slow.sendall(b"GET /ok HTTP/1.1\r\n")
        for _ in range(3):
            time.sleep(0.3)
            slow.sendall(b"X")  # one header byte now and then
            get_ok(port)  # others are served while the slow client waits
        status, problem = status_and_problem(read_all(slow))
        assert status == 408 and problem["status"] == 408
        assert "within 1 s" in problem["detail"]
        assert 0.9 < time.monotonic() - started < 3
        # a connection that never sent a byte is closed without an answer
        assert read_all(silent) == b""
        assert rec.started == ["/ok"] * 3  # the slow request never reached the application


def test_the_second_request_on_a_connection_has_its_own_deadline() -> None:
    rec = Recorder()
    with serving(rec.app()) as port, connect(port) as sock:
        time.sleep(0.6)  # idle before the first request: counts towards the first deadline only
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200") and b'{"ok":true}' in first
        time.sleep(0.6)  # later than 1 s after the connection: the first deadline is gone
        sock.sendall(b"GET /ok HTTP/1.1\r\nHo")  # the second head, never finished
        status, problem = status_and_problem(read_all(sock))
        assert status == 408 and problem["title"] == "Request Timeout"
        assert rec.started == ["/ok"]


def test_a_pipelined_slow_head_does_not_cut_into_the_response_before_it() -> None:
    rec = Recorder()
    with serving(rec.app()) as port, connect(port) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /ok HTTP/1.1\r\nHo")
        raw = read_all(sock, timeout=8)
        first, _, second = raw.partition(b"0\r\n\r\n")  # the end of the chunked response
        assert first.startswith(b"HTTP/1.1 200") and b"part 3;" in first
        status, problem = status_and_problem(second)
        assert status == 408 and problem["status"] == 408
        assert time.monotonic() - started > 2.4  # 1.6 s of response, then the 1 s deadline
        assert rec.started == ["/slow"]


def test_an_oversized_head_gets_431_without_reaching_the_application() -> None:
    rec = Recorder()
    limits = HttpLimits(max_head_bytes=8192, head_timeout=5)
    with serving(rec.app(), limits) as port, connect(port) as sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\n")
        for _ in range(10):  # over the limit, the head still unfinished
            sock.sendall(b"X-Pad: " + b"a" * 1000 + b"\r\n")
            time.sleep(0.01)
        status, problem = status_and_problem(read_all(sock))
        assert status == 431 and "8192" in problem["detail"]
        get_ok(port)
        assert rec.started == ["/ok"]
    # one huge URL counts too, even in a single read with a complete head
    with serving(rec.app(), limits) as port, connect(port) as sock:
        sock.sendall(b"GET /ok?" + b"q" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status_and_problem(read_all(sock))[0] == 431
        assert rec.started == ["/ok"]


# --- connections -----------------------------------------------------------------------------


def test_connections_per_address_are_capped_and_other_addresses_still_served() -> None:
    rec = Recorder()
    limits = HttpLimits(max_connections_per_peer=3, max_connections=10, head_timeout=10)
    with serving(rec.app(), limits) as port:
        held = [connect(port) for _ in range(3)]
        try:
            time.sleep(0.2)  # the server has them all
            with connect(port) as extra:
                status, problem = status_and_problem(read_all(extra))
            assert status == 503 and "your address" in problem["detail"]
            # another address is served while this one is at its cap
            with connect(port, source="127.0.0.2") as other:
                other.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert read_all(other).startswith(b"HTTP/1.1 200")
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        get_ok(port)  # freed: served again
        assert rec.started == ["/ok", "/ok"]


def test_connections_in_all_are_capped() -> None:
    rec = Recorder()
    limits = HttpLimits(max_connections_per_peer=10, max_connections=4, head_timeout=10)
    with serving(rec.app(), limits) as port:
        held = [connect(port, source=f"127.0.0.{2 + i}") for i in range(4)]
        try:
            time.sleep(0.2)
            with connect(port, source="127.0.0.9") as extra:
                status, problem = status_and_problem(read_all(extra))
            assert status == 503 and "this server" in problem["detail"]
        finally:
            for sock in held:
                sock.close()
        time.sleep(0.2)
        get_ok(port)
        assert rec.started == ["/ok"]


# --- bodies ----------------------------------------------------------------------------------


def test_a_trickled_body_gets_408_and_nothing_is_stored() -> None:
    rec = Recorder()
    with serving(rec.app()) as port, connect(port) as sock:
        sock.sendall(b"POST /store HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for _ in range(20):  # 10 bytes every 0.2 s: 50 bytes/s, under the 1000 asked
                sock.sendall(b"0123456789")
                time.sleep(0.2)
                if time.monotonic() - started > 2.5:
                    break
        status, problem = status_and_problem(read_all(sock))
        assert status == 408 and "slower than 1000 bytes/s" in problem["detail"]
        assert time.monotonic() - started < 3.5
        get_ok(port)
    assert rec.started == ["/store", "/ok"] and rec.stored == []


def test_a_body_at_a_decent_rate_is_taken() -> None:
    rec = Recorder()
    with serving(rec.app()) as port, connect(port) as sock:
        size = 40_000  # 2.2 s at ~20 kB/s: longer than a window, well above the rate
        sock.sendall(b"POST /store HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     + f"Content-Length: {size}\r\n\r\n".encode())  # fmt: skip
        for _ in range(size // 2000):
            sock.sendall(b"y" * 2000)
            time.sleep(0.1)
        assert read_all(sock).startswith(b"HTTP/1.1 200")
    assert rec.stored == [size]


def test_declared_oversized_body_is_refused_before_the_application_runs() -> None:
    rec = Recorder()
    with serving(rec.app(max_body=1000)) as port, connect(port) as sock:
        # only the head and a little of the announced body: the answer does not wait for it
        sock.sendall(b"POST /store HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\nab")
        sock.settimeout(5)
        raw = sock.recv(65536)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413")
        assert b"content-type: application/problem+json" in head.lower()
        assert json.loads(body) == {"type": "about:blank", "title": "Request Entity Too Large",
                                    "status": 413, "detail": "request body over 1000 bytes"}  # fmt: skip
        get_ok(port)
    assert rec.started == ["/ok"] and rec.stored == []


@pytest.mark.parametrize("path", ["/store", "/store-or-400"])
def test_chunked_oversized_body_is_refused_and_nothing_is_stored(path: str) -> None:
    rec = Recorder()
    with serving(rec.app(max_body=1000)) as port, httpx.Client(timeout=10) as client:
        r = client.post(f"http://127.0.0.1:{port}{path}", content=iter([b"z" * 600] * 3))
        assert r.status_code == 413 and r.json()["detail"] == "request body over 1000 bytes"
        small = client.post(f"http://127.0.0.1:{port}{path}", content=iter([b"z" * 600]))
        assert small.json() == {"stored": 600}  # the same connection, still usable
    assert rec.stored == [600]


def test_a_browser_gets_the_french_page() -> None:
    rec = Recorder()
    with serving(rec.app(max_body=1000)) as port:
        r = httpx.post(f"http://127.0.0.1:{port}/store", content=b"a=" + b"b" * 5000,
                       headers={"Accept": "text/html,*/*",
                                "Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert r.status_code == 413 and r.headers["content-type"].startswith("text/html")
    assert "Requête trop volumineuse" in r.text and "1000 octets" in r.text
    assert rec.started == []


def test_draining_an_unread_body_is_bounded() -> None:
    rec = Recorder()
    with serving(rec.app(max_body=1000)) as port, connect(port) as sock:
        sock.sendall(b"POST /store HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
        sent = 0
        with contextlib.suppress(OSError):  # closed after 256 KiB drained
            while sent < 5_000_000:
                sock.sendall(b"w" * 65536)
                sent += 65536
        assert sent < 5_000_000
        assert read_all(sock).startswith(b"HTTP/1.1 413")
        get_ok(port)
    assert rec.stored == []


# --- responses -------------------------------------------------------------------------------


def test_a_client_that_reads_nothing_of_the_response_is_dropped() -> None:
    rec = Recorder()
    with serving(rec.app()) as port:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        with sock:
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            # the server's buffers fill, writes pause, and 1 s later the connection goes
            assert rec.stream_ended.wait(8), "the stream kept waiting for a reader"
        get_ok(port)


# --- classes ---------------------------------------------------------------------------------


def test_protocol_classes() -> None:
    assert limited_protocol() is LimitedHttpToolsProtocol
    assert limited_protocol(HttpLimits()) is LimitedHttpToolsProtocol
    assert limited_protocol(peer_certificate=True) is LimitedTlsHttpToolsProtocol
    custom = limited_protocol(FAST, peer_certificate=True)
    assert issubclass(custom, LimitedTlsHttpToolsProtocol)
    assert issubclass(custom, TlsHttpToolsProtocol)  # the peer certificate still reaches the scope
    assert custom.limits == FAST  # type: ignore[attr-defined]
    assert LimitedHttpToolsProtocol.limits == HttpLimits()  # the defaults are not changed
