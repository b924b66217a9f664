"""MLLP (HL7 v2 Minimal Lower Layer Protocol) framing and a threaded TCP/TLS server.

A frame is ``0x0B <message> 0x1C 0x0D``. TCP delivers a byte stream, so a frame may arrive
in several reads and a read may hold several frames; :class:`MllpDecoder` handles both.
Bytes outside frames (the ``0x0D`` after ``0x1C``, keep-alive newlines) are ignored; a new
start block inside a frame abandons the partial frame (the sender restarted). A frame
larger than the limit is skipped to its end, keeping only its start so that the MSH can be
answered.

Threads rather than asyncio: the per-message work (parsing a CDA, an fsync'd SQLite insert)
is blocking, and a RIS holds one or a few long-lived connections. So that a slow or hostile
client cannot hold them all: connections are capped in all and per address, a connection
that completes no message for ``idle_timeout`` is closed (bytes outside frames do not count),
and so is one whose started frame does not end within ``frame_timeout``.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from drimbox.adapters.hl7.ack import build_ack

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"
KEPT_PREFIX = 64 * 1024
"""How much of an oversize frame is kept (its MSH, for the ACK and the rejected folder)."""
_POLL = 0.25  # seconds between checks of the stop flag while a connection is quiet


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes
    too_large: bool = False
    """``data`` is only the start of a frame that exceeded the size limit."""
    size: int = 0
    """Size of the whole frame content in bytes."""


class MllpDecoder:
    """Incremental MLLP deframer: :meth:`feed` bytes as they come, get complete frames."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._size = 0
        self._in_frame = False

    @property
    def partial(self) -> bool:
        """A frame has started and not ended."""
        return self._in_frame

    def feed(self, data: bytes) -> list[Frame]:
        frames: list[Frame] = []
        pos = 0
        while pos < len(data):
            if not self._in_frame:
                start = data.find(START_BLOCK, pos)
                if start < 0:
                    break  # bytes between frames carry nothing
                self._begin()
                pos = start + 1
                continue
            end = data.find(END_BLOCK, pos)
            restart = data.find(START_BLOCK, pos, end if end >= 0 else len(data))
            if restart >= 0:
                log.warning("MLLP: start block inside a frame; dropped %d partial bytes",
                            self._size + restart - pos)  # fmt: skip
                self._begin()
                pos = restart + 1
                continue
            stop = end if end >= 0 else len(data)
            self._append(data[pos:stop])
            if end < 0:
                break
            frames.append(Frame(bytes(self._buffer), self._size > self.max_size, self._size))
            self._in_frame = False
            self._buffer.clear()
            pos = end + 1
        return frames

    def _begin(self) -> None:
        self._in_frame = True
        self._buffer.clear()
        self._size = 0

    def _append(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.max_size:
            self._buffer += chunk
        elif len(self._buffer) < KEPT_PREFIX:
            self._buffer += chunk[: KEPT_PREFIX - len(self._buffer)]
            del self._buffer[KEPT_PREFIX:]


def frame(message: bytes) -> bytes:
    return START_BLOCK + message + END_BLOCK + CARRIAGE_RETURN


FrameHandler = Callable[[Frame], bytes]
"""Answers one frame with the ACK bytes (unframed). Should not raise."""


class MllpServer:
    """Accepts MLLP connections (optionally TLS) and answers each frame with its handler."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: FrameHandler,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_message_size: int = 32 << 20,
        idle_timeout: float = 300.0,
        frame_timeout: float = 120.0,
        max_connections: int = 64,
        max_connections_per_peer: int = 8,
    ) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.max_message_size = max_message_size
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout  # 32 MiB at 4 Mbit/s: about 70 s
        self.max_connections_per_peer = max_connections_per_peer
        self._per_peer: dict[str, int] = {}
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stopping = threading.Event()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, port), backlog=64)
        self._listener.settimeout(_POLL)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"mllp-{self.port}",
                                          daemon=True)  # fmt: skip

    def start(self) -> MllpServer:
        self._acceptor.start()
        log.info("MLLP listening on %s:%d%s", self.host, self.port,
                 " (TLS)" if self.ssl_context else "")  # fmt: skip
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let connections finish the frame they are answering, then return."""
        self._stopping.set()
        if self._acceptor.is_alive():
            self._acceptor.join(timeout)
        self._listener.close()
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> MllpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn, peer = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self._stopping.is_set():
                    log.exception("MLLP accept failed")
                    time.sleep(_POLL)  # e.g. EMFILE: do not spin
                continue
            with self._lock:
                crowded = self._per_peer.get(peer[0], 0) >= self.max_connections_per_peer
                if not crowded:
                    self._per_peer[peer[0]] = self._per_peer.get(peer[0], 0) + 1
            if crowded:
                log.warning("MLLP: too many connections from %s, refusing", peer[0])
                conn.close()
                continue
            if not self._slots.acquire(blocking=False):
                log.warning("MLLP: too many connections, refusing %s", peer)
                self._leave(peer)
                conn.close()
                continue
            thread = threading.Thread(target=self._serve, args=(conn, peer), daemon=True,
                                      name=f"mllp-{peer[0]}:{peer[1]}")  # fmt: skip
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _serve(self, raw_conn: socket.socket, peer: tuple[str, int]) -> None:
        conn = raw_conn
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # ACKs are tiny
            # the TLS handshake happens here, in the connection's thread, under a timeout,
            # so that a slow or hostile client cannot stall the accept loop
            conn.settimeout(min(self.idle_timeout, 30.0))
            if self.ssl_context is not None:
                conn = self.ssl_context.wrap_socket(conn, server_side=True)
            conn.settimeout(_POLL)
            self._converse(conn, peer)
        except (OSError, ssl.SSLError) as exc:
            log.info("MLLP connection from %s ended: %s", peer, exc)
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            self._slots.release()
            self._leave(peer)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _leave(self, peer: tuple[str, int]) -> None:
        with self._lock:
            left = self._per_peer.pop(peer[0], 1) - 1
            if left > 0:
                self._per_peer[peer[0]] = left

    def _converse(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        decoder = MllpDecoder(self.max_message_size)
        # only a complete message counts as activity: a trickle of bytes holds nothing
        last_message = time.monotonic()
        frame_started: float | None = None
        while not self._stopping.is_set():
            now = time.monotonic()
            if frame_started is not None and now - frame_started > self.frame_timeout:
                log.warning("MLLP connection from %s: frame not ended within %.0f s, closing",
                            peer, self.frame_timeout)  # fmt: skip
                return
            if frame_started is None and now - last_message > self.idle_timeout:
                log.info("MLLP connection from %s idle for %.0f s, closing", peer,
                         self.idle_timeout)  # fmt: skip
                return
            try:
                data = conn.recv(256 * 1024)
            except TimeoutError:
                continue
            if not data:
                if decoder.partial:
                    log.warning("MLLP connection from %s closed inside a frame", peer)
                return
            messages = decoder.feed(data)
            for message in messages:
                conn.sendall(frame(self._answer(message)))
            if messages:
                last_message = time.monotonic()
            if not decoder.partial:
                frame_started = None
            elif messages or frame_started is None:  # a new frame began in this read
                frame_started = time.monotonic()

    def _answer(self, message: Frame) -> bytes:
        try:
            return self.handler(message)
        except Exception as exc:  # one bad frame must not end the connection
            log.exception("MLLP handler failed")
            return build_ack(None, exc)


def send_message(host: str, port: int, message: bytes, timeout: float = 30.0) -> bytes:
    """Send one message as a RIS does and return the ACK (unframed): for scripts and the demo;
    a connection per message keeps it simple and a lost ACK visible."""
    decoder = MllpDecoder(max_size=1 << 20)
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(frame(message))
        while True:
            data = conn.recv(65536)
            if not data:
                raise ConnectionError(f"MLLP peer {host}:{port} closed without an ACK")
            frames = decoder.feed(data)
            if frames:
                return frames[0].data
