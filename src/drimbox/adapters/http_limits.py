"""What one HTTP client may hold on our uvicorn servers: time, head size, connections, body size.

uvicorn (0.55, httptools) arms no timer on a new connection nor while a request arrives: its
only timer is keep-alive, after a response. A client that opens a connection and trickles
request-head bytes holds it forever, and llhttp has no head size limit, so the head it sends
also grows in memory without bound. ``limit_concurrency`` does not help: it answers 503 only
once a head is complete (a slow client never completes one) and is global, so slow clients
fill it and everyone else gets the 503. :class:`LimitedHttpToolsProtocol` adds, per
connection:

* the request head must arrive within ``head_timeout`` (from the connection, then from the
  first byte of each following request): else 408 (or a silent close when nothing came);
* at most ``max_head_bytes`` of request line and headers: else 431;
* the body must keep arriving at ``body_min_rate`` on average over each ``body_window``
  (windows where we stopped reading, or where the client awaits ``100 Continue``, do not
  count): else 408;
* a response the client does not read (writes paused) for ``write_timeout``: closed;
* after a response, at most ``max_drain_bytes`` of a request body nobody reads are drained
  (so that the client gets to read, e.g., the 413) before the connection is closed;
* ``max_connections`` in all and ``max_connections_per_peer`` per client address, per server
  process: the next one is answered 503 and closed at once, before its head is read.

Not covered here: the TLS handshake happens before the protocol exists; asyncio bounds it
(``ssl_handshake_timeout``, 60 s). Behind a reverse proxy every client has the proxy's address.

:class:`BodyLimit` is the ASGI side: a request body over ``max_bytes`` gets 413 (problem JSON,
or a French page for a browser) before the application reads it, from ``Content-Length`` when
declared, else as soon as the chunks counted go over.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, cast

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from drimbox.adapters.trust.peer_tls import TlsHttpToolsProtocol

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 1 << 20
"""Forms and JSON on the users' and Source ports (the index's SOAP has its own limit)."""


@dataclass(frozen=True, slots=True)
class HttpLimits:
    head_timeout: float = 20.0
    max_head_bytes: int = 64 * 1024
    """Request line + header names and values; a PSC token and cookies fit many times."""
    body_window: float = 20.0
    body_min_rate: int = 1024
    """Bytes per second, on average over each ``body_window``."""
    write_timeout: float = 60.0
    max_drain_bytes: int = 4 << 20
    max_connections: int = 1000
    max_connections_per_peer: int = 256
    """A Conso box may open 100 + 100 connections (its two httpx pools) to one Source box."""


def problem_bytes(status: int, detail: str) -> bytes:
    return json.dumps({"type": "about:blank", "title": HTTPStatus(status).phrase,
                       "status": status, "detail": detail}).encode()  # fmt: skip


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`HttpLimits` (module docstring)."""

    limits: ClassVar[HttpLimits] = HttpLimits()

    _timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None
    _refused = False  # an answer of ours was written: ignore what the parser still reports
    _head_too_large = False
    _begun = False  # a request has started on this connection
    _in_head = False
    _in_body = False
    _head_bytes = 0
    _window_bytes = 0
    _drained = 0

    # --- connections ----------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        peer = self.client[0] if self.client else None
        same_peer = sum(1 for c in self.connections if _address(c) == peer) if peer else 0
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, "too many connections to this server; try again later")
        elif same_peer > self.limits.max_connections_per_peer:
            self._refuse(503, "too many connections from your address; try again later")
        else:
            self._arm(self.limits.head_timeout, self._head_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_write()
        super().connection_lost(exc)

    # --- request head ---------------------------------------------------------------------

    @property
    def _ignoring(self) -> bool:
        return self._refused or self._head_too_large

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._head_too_large and not self._refused:
            if self._responding():  # a pipelined head: no answer in the middle of another
                self._refused = True
                self.transport.close()
            else:
                self._refuse(431, f"request head over {self.limits.max_head_bytes} bytes")

    def on_message_begin(self) -> None:
        if self._ignoring:
            return
        super().on_message_begin()
        self._begun, self._in_head, self._head_bytes, self._in_body = True, True, 0, False
        # the first request's deadline runs from the connection; a pipelined one's from the
        # end of the response before it (an answer then cannot cut into that response)
        if self._timer is None and not self._responding():
            self._arm(self.limits.head_timeout, self._head_expired)

    def _responding(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._in_head and self._timer is None and not self.transport.is_closing():
            self._arm(self.limits.head_timeout, self._head_expired)

    def on_url(self, url: bytes) -> None:
        if self._count_head(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._count_head(len(name) + len(value)):
            super().on_header(name, value)

    def _count_head(self, size: int) -> bool:
        self._head_bytes += size
        if self._head_bytes > self.limits.max_head_bytes:
            self._head_too_large = True
        return not self._ignoring

    def on_headers_complete(self) -> None:
        if self._ignoring:
            return
        self._disarm()
        self._in_head = False
        super().on_headers_complete()
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            self._in_body, self._window_bytes = True, 0
            self._arm(self.limits.body_window, self._body_window_ended)

    def _head_expired(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if not self._begun:  # nothing of a request came: no answer owed
            self.transport.close()
        else:
            log.info("HTTP client %s: request head not received within %.0f s",
                     self.client, self.limits.head_timeout)  # fmt: skip
            self._refuse(408, f"request head not received within {self.limits.head_timeout:g} s")

    # --- request body ---------------------------------------------------------------------

    def on_body(self, body: bytes) -> None:
        if self._ignoring:
            return
        self._window_bytes += len(body)
        if self.cycle is not None and self.cycle.response_complete:
            self._drained += len(body)
            if self._drained > self.limits.max_drain_bytes:
                self._refused = True  # answered already: just stop reading the rest
                self.transport.close()
                return
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._ignoring:
            return
        self._disarm()
        self._in_body, self._drained = False, 0
        super().on_message_complete()

    def _body_window_ended(self) -> None:
        self._timer = None
        if self.transport.is_closing() or not self._in_body:
            return
        cycle = self.cycle
        awaiting_continue = cycle is not None and cycle.waiting_for_100_continue
        stalled_by_us = self.flow.read_paused or awaiting_continue
        wanted = self.limits.body_min_rate * self.limits.body_window
        if stalled_by_us or self._window_bytes >= wanted:
            self._window_bytes = 0
            self._arm(self.limits.body_window, self._body_window_ended)
            return
        log.info("HTTP client %s: request body slower than %d bytes/s, closing", self.client,
                 self.limits.body_min_rate)  # fmt: skip
        if cycle is not None and not cycle.response_started:
            cycle.disconnected = True  # the application sees http.disconnect, its answer is dropped
            cycle.message_event.set()
            self._refuse(408, f"request body slower than {self.limits.body_min_rate} bytes/s")
        else:
            self._refused = True
            self.transport.close()

    # --- response -------------------------------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.limits.write_timeout,
                                                     self._write_expired)  # fmt: skip

    def resume_writing(self) -> None:
        self._disarm_write()
        super().resume_writing()

    def _write_expired(self) -> None:
        self._write_timer = None
        if not self.transport.is_closing():
            log.info("HTTP client %s read nothing of the response for %.0f s, closing",
                     self.client, self.limits.write_timeout)  # fmt: skip
            self._refused = True
            # close() would wait for the unread bytes to leave; connection_lost then wakes
            # the application's pending send
            self.transport.abort()

    # --- helpers --------------------------------------------------------------------------

    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _disarm_write(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` with a problem document and close, whatever the request's state."""
        self._refused = True
        self._disarm()
        body = problem_bytes(status, detail)
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/problem+json\r\n",
                 b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n"]  # fmt: skip
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def _address(protocol: object) -> str | None:
    client = getattr(protocol, "client", None)
    return str(client[0]) if client else None


class LimitedTlsHttpToolsProtocol(LimitedHttpToolsProtocol, TlsHttpToolsProtocol):
    """The limits, plus the peer certificate in the scope (the Source port's mutual TLS)."""


def limited_protocol(
    limits: HttpLimits | None = None, *, peer_certificate: bool = False
) -> type[HttpToolsProtocol]:
    """The ``http=`` class for ``uvicorn.Config``: uvicorn instantiates it itself, so the
    limits travel as a class attribute."""
    base = LimitedTlsHttpToolsProtocol if peer_certificate else LimitedHttpToolsProtocol
    if limits is None or limits == base.limits:
        return base
    return cast(type[HttpToolsProtocol], type(base.__name__, (base,), {"limits": limits}))


# --- request bodies (ASGI) ------------------------------------------------------------------


class _TooLarge(Exception):
    """Raised into the application when the chunks it reads go over the limit."""


class BodyLimit:
    """ASGI middleware: 413 for a request body over ``max_bytes``, before the application
    reads it when ``Content-Length`` says so, else when the counted chunks go over (the
    application's own answer, if it caught the error, is replaced). The connection stays
    open: uvicorn discards the rest of the body, and the protocol above bounds that."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        received, over, started = 0, False, False

        async def counted() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    over = True
                    raise _TooLarge
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # our 413 goes instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except _TooLarge:
            if started:
                raise
        if over and not started:
            await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        headers = Headers(scope=scope)
        log.info("request body over %d bytes refused: %s %s", self.max_bytes,
                 scope.get("method"), scope.get("path"))  # fmt: skip
        if "text/html" in headers.get("accept", ""):
            body = ('<!doctype html><html lang="fr"><meta charset="utf-8"><title>Requête trop '
                    "volumineuse</title><h1>Requête trop volumineuse</h1><p>"
                    + html.escape(f"Les données envoyées dépassent {self.max_bytes} octets.")
                    + "</p></html>").encode()  # fmt: skip
            media = b"text/html; charset=utf-8"
        else:
            body = problem_bytes(413, f"request body over {self.max_bytes} bytes")
            media = b"application/problem+json"
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", media),
                                (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
