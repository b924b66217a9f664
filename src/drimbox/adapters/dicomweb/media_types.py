"""Accept-header negotiation for DICOMweb (PS3.18 8.7), tolerant of what DRIM-M consumers send:
several Accept headers or one comma-joined header, quoted or bare parameters, q from 0 to 1
(q=0 means "not acceptable")."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
ANY_SYNTAX = "*"


class NotAcceptable(ValueError):
    """No representation satisfies the Accept header (HTTP 406)."""


@dataclass(frozen=True, slots=True)
class MediaRange:
    type: str  # e.g. "multipart/related", "application/dicom", "*/*"
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    @property
    def part_type(self) -> str | None:
        """The ``type`` parameter of a multipart range (the media type of each part)."""
        return self.params.get("type")

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    out: list[str] = []
    buf: list[str] = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    out.append("".join(buf))
    return out


def parse_accept(headers: Iterable[str]) -> list[MediaRange]:
    """Media ranges from every Accept header, best first (stable for equal q)."""
    ranges: list[MediaRange] = []
    for header in headers:
        for item in _split_outside_quotes(header, ","):
            parts = [p.strip() for p in _split_outside_quotes(item, ";")]
            mtype = parts[0].lower()
            if not mtype:
                continue
            if "/" not in mtype:
                raise ValueError(f"invalid media range {mtype!r} in Accept")
            params: dict[str, str] = {}
            q = 1.0
            for param in parts[1:]:
                if not param:
                    continue
                name, _, value = param.partition("=")
                name = name.strip().lower()
                value = value.strip().strip('"')
                if name == "q":
                    try:
                        q = float(value)
                    except ValueError:
                        raise ValueError(f"invalid q value {value!r} in Accept") from None
                    if not 0.0 <= q <= 1.0:
                        raise ValueError(f"q value {value} out of range [0, 1] in Accept")
                else:
                    params[name] = value.lower() if name == "type" else value
            ranges.append(MediaRange(mtype, params, q))
    order = sorted(range(len(ranges)), key=lambda i: -ranges[i].q)
    return [ranges[i] for i in order]


def _type_matches(pattern: str | None, wanted: str) -> bool:
    """Whether a media range (``*/*``, ``image/*``, or exact; None = any) covers ``wanted``."""
    if pattern is None or pattern in ("*/*", wanted):
        return True
    return pattern == wanted.split("/")[0] + "/*"


def _matches(mr: MediaRange, wanted: str) -> bool:
    return _type_matches(mr.type, wanted)


def choose_dicom_syntax(ranges: list[MediaRange]) -> str:
    """Transfer syntax for ``multipart/related; type="application/dicom"`` responses.

    Returns ``ANY_SYNTAX`` when the client accepts any syntax (``transfer-syntax=*``: each
    instance is sent as stored), else the best explicit request, explicit VR little endian
    by default (PS3.18 8.7.3.5.2).
    """
    if not ranges:
        return EXPLICIT_VR_LE
    for mr in ranges:
        if mr.q <= 0:
            continue
        if mr.type == "multipart/related":
            if not _type_matches(mr.part_type, "application/dicom"):
                continue
        elif not _matches(mr, "application/dicom"):
            continue
        ts = mr.transfer_syntax
        return ts or EXPLICIT_VR_LE
    raise NotAcceptable('only multipart/related; type="application/dicom" is available here')


def accepts(ranges: list[MediaRange], media_type: str, part_type: str | None = None) -> bool:
    """Whether ``media_type`` (or multipart with parts of ``part_type``) is acceptable."""
    if not ranges:
        return True
    for mr in ranges:
        if mr.q <= 0:
            continue
        if part_type is not None and mr.type == "multipart/related":
            if _type_matches(mr.part_type, part_type):
                return True
        elif _matches(mr, media_type):
            return True
    return False
