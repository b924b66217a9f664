"""multipart/related framing (RFC 2387) for WADO-RS responses and STOW-RS requests; the
body splitter is shared with MTOM (``drimbox.adapters.multipart``). ``MultipartStream``
parses a body as it arrives (WADO-RS client), for responses too large to hold whole.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator

from drimbox.adapters.multipart import MultipartError, split_parts
from drimbox.domain.errors import InvalidInput

__all__ = [
    "MultipartError",
    "MultipartStream",
    "MultipartStreamError",
    "closing",
    "content_type",
    "iter_parts",
    "new_boundary",
    "parse_content_type",
    "part_header",
    "split_parts",
]

_BOUNDARY_RE = re.compile(r'boundary\s*=\s*"?([^";,]+)"?', re.IGNORECASE)
_TYPE_RE = re.compile(r'type\s*=\s*"?([^";,]+)"?', re.IGNORECASE)


def new_boundary() -> str:
    return f"drimbox-{secrets.token_hex(12)}"


def content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


def part_header(boundary: str, part_type: str, first: bool, extra: str = "") -> bytes:
    lead = b"" if first else b"\r\n"
    return lead + f"--{boundary}\r\nContent-Type: {part_type}\r\n{extra}\r\n".encode("ascii")


def closing(boundary: str) -> bytes:
    return f"\r\n--{boundary}--\r\n".encode("ascii")


def parse_content_type(value: str) -> tuple[str, str | None, str]:
    """(media type, type parameter, boundary) of a multipart/related Content-Type."""
    media = value.split(";", 1)[0].strip().lower()
    if media != "multipart/related":
        raise MultipartError(f"expected multipart/related, got {media or 'nothing'}")
    boundary = _BOUNDARY_RE.search(value)
    if not boundary:
        raise MultipartError("multipart/related without a boundary parameter")
    ptype = _TYPE_RE.search(value.replace("boundary", "_"))
    return media, ptype.group(1).lower() if ptype else None, boundary.group(1)


# -- incremental parser ------------------------------------------------------------------------


class MultipartStreamError(InvalidInput, MultipartError):
    """A streamed multipart body is malformed or truncated (both an ``InvalidInput`` and a
    ``MultipartError``, so either family of handlers catches it)."""


Part = tuple[dict[str, str], bytes]

_CRLF = b"\r\n"
_BLANK_LINE = b"\r\n\r\n"
_LWSP = (0x20, 0x09)  # transport padding after a boundary: SPACE / HTAB (RFC 2046 5.1.1)
_MAX_PADDING = 1024
# RFC 2046 bchars, loosened to any printable ASCII (some servers use other characters)
_BCHARS = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_PREAMBLE, _HEADERS, _BODY, _DONE = range(4)
_UNDECIDED, _NOT_DELIMITER, _NEXT_PART, _CLOSE = range(4)


class MultipartStream:
    """Incremental multipart parser (RFC 2046 5.1.1): ``feed`` it chunks of any size, it
    returns each part ``(headers, body)`` as soon as the delimiter after it has arrived.

    Header names are lower-cased. Each byte is searched once (plus the length of the
    delimiter as overlap between chunks), so parsing is linear in the body size whatever
    the chunking; only the part being received is buffered. A line starting with the
    boundary but not ending right after it (optional spaces and CRLF, or ``--``) is body
    text, not a delimiter. The preamble and the epilogue are skipped. ``close()`` at the
    end of the input raises ``MultipartStreamError`` unless the close delimiter was seen.
    """

    def __init__(self, boundary: str, *, max_header_bytes: int = 64 * 1024) -> None:
        if not 0 < len(boundary) <= 70 or not _BCHARS.fullmatch(boundary):
            raise MultipartStreamError(f"invalid multipart boundary {boundary[:80]!r}")
        self._delim = b"\r\n--" + boundary.encode("ascii")
        self._max_header = max_header_bytes
        # a CRLF put in front lets the first delimiter open the body like every later one
        self._buf = bytearray(_CRLF)
        self._state = _PREAMBLE
        self._scan = 0  # next search position for the delimiter (preamble, body)
        self._part = 0  # the CRLF ending the current part's boundary line
        self._hscan = 0  # next search position in the current part's headers
        self._body = 0  # first byte of the current part's body
        self._headers: dict[str, str] = {}
        self.parts = 0
        """Parts returned so far."""

    @property
    def done(self) -> bool:
        """Whether the close delimiter has been seen (what follows is epilogue)."""
        return self._state == _DONE

    def feed(self, data: bytes | bytearray | memoryview) -> list[Part]:
        """Add the next bytes; return the parts they complete, in order."""
        if self._state == _DONE or not data:
            return []
        self._buf += data
        out: list[Part] = []
        while self._step(out):
            pass
        self._compact()
        return out

    def close(self) -> None:
        """End of input: raise ``MultipartStreamError`` unless the body was complete."""
        if self._state == _DONE:
            return
        where = {
            _PREAMBLE: "before the first boundary",
            _HEADERS: f"in the headers of part {self.parts + 1}",
            _BODY: f"in the body of part {self.parts + 1}",
        }[self._state]
        raise MultipartStreamError(f"multipart body truncated {where} (no close delimiter)")

    # -- internals ---------------------------------------------------------------------------

    def _step(self, out: list[Part]) -> bool:
        """Advance as far as the buffer allows; False when more input is needed."""
        if self._state == _HEADERS:
            return self._parse_headers()
        # preamble or body: look for the next delimiter
        buf, delim = self._buf, self._delim
        idx = buf.find(delim, self._scan)
        if idx < 0:
            self._scan = max(self._scan, len(buf) - len(delim) + 1)
            return False
        kind, nxt = self._after_delimiter(idx + len(delim))
        if kind == _UNDECIDED:
            self._scan = idx
            return False
        if kind == _NOT_DELIMITER:
            self._scan = idx + 1
            return True
        if self._state == _BODY:
            if idx > self._body:
                with memoryview(buf) as view:
                    body = bytes(view[self._body : idx])
            else:  # idx is the header end's second CRLF: a part without body
                body = b""
            out.append((self._headers, body))
            self.parts += 1
        if kind == _CLOSE:
            self._state = _DONE
            return False
        self._state = _HEADERS
        self._part = self._hscan = nxt - 2
        return True

    def _after_delimiter(self, pos: int) -> tuple[int, int]:
        """What follows a delimiter candidate ending at ``pos``: the close delimiter, the
        end of a boundary line (with where the part starts), text, or not known yet."""
        buf, end = self._buf, len(self._buf)
        if pos >= end:
            return _UNDECIDED, 0
        if buf[pos] == 0x2D:  # "-"
            if pos + 1 >= end:
                return _UNDECIDED, 0
            return (_CLOSE, pos + 2) if buf[pos + 1] == 0x2D else (_NOT_DELIMITER, 0)
        q = pos
        while q < end and q - pos <= _MAX_PADDING and buf[q] in _LWSP:
            q += 1
        if q - pos > _MAX_PADDING:
            raise MultipartStreamError("over 1 KiB of padding after a multipart boundary")
        if q >= end:
            return _UNDECIDED, 0
        if buf[q] != 0x0D:
            return _NOT_DELIMITER, 0
        if q + 1 >= end:
            return _UNDECIDED, 0
        return (_NEXT_PART, q + 2) if buf[q + 1] == 0x0A else (_NOT_DELIMITER, 0)

    def _parse_headers(self) -> bool:
        buf, part = self._buf, self._part
        # the CRLF at ``part`` ends the boundary line, so a part without headers has its
        # blank line right there
        start = max(part, self._hscan - len(self._delim) + 1)
        blank = buf.find(_BLANK_LINE, start)
        early = buf.find(self._delim, start, None if blank < 0 else blank)
        if early >= 0:
            raise MultipartStreamError(
                f"part {self.parts + 1} has no blank line between its headers and its body"
            )
        if blank < 0:
            if len(buf) - part > self._max_header:
                raise MultipartStreamError(
                    f"part {self.parts + 1} headers exceed {self._max_header} bytes "
                    "(no blank line between headers and body?)"
                )
            self._hscan = len(buf)
            return False
        self._headers = _parse_header_block(bytes(buf[part + 2 : blank + 2]))
        self._state = _BODY
        # the delimiter's CRLF may be the blank line's second one (a part without body)
        self._scan = blank + 2
        self._body = blank + 4
        return True

    def _compact(self) -> None:
        """Drop what no later search needs: the preamble searched so far, finished parts."""
        if self._state == _DONE:
            self._buf.clear()
            return
        cut = self._scan if self._state == _PREAMBLE else self._part
        if cut > 0:
            del self._buf[:cut]
            self._scan = max(0, self._scan - cut)
            self._part -= cut
            self._hscan = max(0, self._hscan - cut)
            self._body -= cut


def _parse_header_block(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    name = ""
    for line in block.decode("latin-1").split("\r\n"):
        if not line:
            continue
        if line[0] in " \t" and name:  # obsolete line folding (RFC 5322 2.2.3)
            headers[name] = f"{headers[name]} {line.strip()}".strip()
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise MultipartStreamError(f"malformed part header line {line[:60]!r}")
        name = key.strip().lower()
        headers[name] = value.strip()
    return headers


def iter_parts(chunks: Iterable[bytes], boundary: str) -> Iterator[Part]:
    """Yield each part of a multipart body given as chunks, as soon as it is complete;
    raise ``MultipartStreamError`` if the chunks end before the close delimiter."""
    stream = MultipartStream(boundary)
    for chunk in chunks:
        yield from stream.feed(chunk)
    stream.close()
