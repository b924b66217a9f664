"""multipart/related bodies (RFC 2046, RFC 2387), shared by DICOMweb (STOW-RS) and MTOM/XOP."""

from __future__ import annotations


class MultipartError(ValueError):
    """The body is not a well-formed multipart/related message."""


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
