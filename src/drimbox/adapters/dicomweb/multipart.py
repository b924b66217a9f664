"""multipart/related framing (RFC 2387) for WADO-RS responses and STOW-RS requests; the
body splitter is shared with MTOM (``drimbox.adapters.multipart``)."""

from __future__ import annotations

import re
import secrets

from drimbox.adapters.multipart import MultipartError, split_parts

__all__ = [
    "MultipartError",
    "closing",
    "content_type",
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
