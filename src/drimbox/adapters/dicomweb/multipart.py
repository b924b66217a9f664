"""multipart/related framing (RFC 2387) for WADO-RS responses and STOW-RS requests."""

from __future__ import annotations

import re
import secrets

_BOUNDARY_RE = re.compile(r'boundary\s*=\s*"?([^";,]+)"?', re.IGNORECASE)
_TYPE_RE = re.compile(r'type\s*=\s*"?([^";,]+)"?', re.IGNORECASE)


class MultipartError(ValueError):
    """The body is not a well-formed multipart/related message."""


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


def split_parts(body: bytes, boundary: str) -> list[tuple[dict[str, str], memoryview]]:
    """Headers and content of each part; memoryviews avoid copying large instances."""
    delim = b"--" + boundary.encode("ascii")
    view = memoryview(body)
    pos = body.find(delim)
    if pos < 0:
        raise MultipartError("boundary not found in the body")
    parts: list[tuple[dict[str, str], memoryview]] = []
    while True:
        pos += len(delim)
        if body.startswith(b"--", pos):
            return parts
        if body.startswith(b"\r\n", pos):
            pos += 2
        header_end = body.find(b"\r\n\r\n", pos)
        if header_end < 0:
            raise MultipartError("part without a header terminator")
        headers: dict[str, str] = {}
        for line in body[pos:header_end].split(b"\r\n"):
            if not line:
                continue
            name, sep, val = line.decode("latin-1").partition(":")
            if not sep:
                raise MultipartError(f"malformed part header line {line[:60]!r}")
            headers[name.strip().lower()] = val.strip()
        start = header_end + 4
        nxt = body.find(b"\r\n" + delim, start)
        if nxt < 0:
            raise MultipartError("part is not terminated by the boundary (truncated body?)")
        parts.append((headers, view[start:nxt]))
        pos = nxt + 2
