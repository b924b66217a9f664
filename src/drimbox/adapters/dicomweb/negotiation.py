"""Transfer syntax negotiation for WADO-RS instance retrieval (PS3.18 8.7.3.5), taking q-values
and what this server can actually produce from the stored instances into account."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from pydicom.uid import UID

from drimbox.adapters.dicomweb.media_types import (
    ANY_SYNTAX,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    MediaRange,
    NotAcceptable,
)
from drimbox.adapters.dicomweb.transcode import producible

# PS3.18 Table 8.7.3-5 (media types of single-frame/bulk data parts per transfer syntax).
_FRAME_MEDIA_TYPES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.110": "image/jxl",
    "1.2.840.10008.1.2.4.111": "image/jxl",
    "1.2.840.10008.1.2.4.112": "image/jxl",
    # The current standard (and IANA) name; older editions said image/x-dicom-rle.
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.100": "video/mpeg2",
    "1.2.840.10008.1.2.4.101": "video/mpeg2",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}

OCTET_STREAM = "application/octet-stream"
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def frame_media_type(syntax: str) -> str:
    """Media type of a frame (or pixel bulk data) part encoded in ``syntax``."""
    return _FRAME_MEDIA_TYPES.get(syntax, OCTET_STREAM)


def _covers_dicom(pattern: str | None) -> bool:
    # a multipart range without a type parameter is taken as any part type
    return pattern in (None, "*/*", "application/*", "application/dicom")


def _counts(mr: MediaRange) -> bool:
    """Whether a range asks for DICOM instances (bare or as multipart parts)."""
    if mr.type in ("multipart/related", "multipart/*"):
        return _covers_dicom(mr.part_type)
    return _covers_dicom(mr.type)


def _syntax(mr: MediaRange) -> str:
    return (mr.transfer_syntax or "").strip()


def _specific(mr: MediaRange) -> bool:
    """Whether a range names DICOM or a syntax; "*/*;q=0" only means "nothing unlisted"
    (RFC 9110 12.5.1: the most specific range decides), so it refuses nothing in particular.
    """
    if _syntax(mr):
        return True
    if mr.type == "multipart/related":
        return mr.part_type == "application/dicom"
    return mr.type == "application/dicom"


@dataclass(frozen=True, slots=True)
class _Candidate:
    q: float
    order: int
    syntax: str  # a UID, or ANY_SYNTAX
    as_stored: bool  # no transcoding needed


def _describe(ranges: list[MediaRange]) -> str:
    """What the client asked for, for error messages."""
    asked = []
    for mr in ranges:
        if not _counts(mr):
            what = mr.type
        elif (ts := mr.transfer_syntax) in (None, ""):
            what = f"{EXPLICIT_VR_LE} (default)"
        elif ts == "*" or not _UID_RE.match(ts) or UID(ts).name == ts:
            what = ts  # UID() would warn about a malformed value
        else:
            what = f"{ts} ({UID(ts).name})"
        asked.append(f"{what};q={mr.q:g}")
    return ", ".join(asked)


# Concrete syntaxes to fall back on for "transfer-syntax=*" when a stored one is refused.
_FALLBACK_ORDER = (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5",
)


@dataclass(frozen=True, slots=True)
class _Constraints:
    stored: frozenset[str]
    common: frozenset[str] | None  # producible from every stored syntax; None: no constraint
    refused: frozenset[str]  # q=0, "*" included when the wildcard syntax is refused

    def can(self, ts: str) -> bool:
        return ts not in self.refused and (self.common is None or ts in self.common)

    @property
    def stored_ok(self) -> bool:
        """Whether sending as stored is allowed (no stored syntax is refused)."""
        return not self.stored & self.refused

    def resolve(self, ts: str) -> tuple[str, bool] | None:
        """What a range naming ``ts`` ("" if none, "*") gets: (syntax, as stored), or None."""
        if ts == "*":
            if "*" in self.refused:
                return None
            if self.stored_ok:
                return ANY_SYNTAX, True
            fallback = next((f for f in _FALLBACK_ORDER if self.can(f)), None)
            return None if fallback is None else (fallback, False)
        if ts:
            return (ts, self.stored == {ts}) if self.can(ts) else None
        # PS3.18 8.7.3.5.2: no transfer-syntax parameter means explicit VR little endian...
        if self.can(EXPLICIT_VR_LE):
            return EXPLICIT_VR_LE, self.stored == {EXPLICIT_VR_LE}
        # ... unless the server cannot decode what it holds: then it sends it as stored.
        if self.stored_ok and EXPLICIT_VR_LE not in self.refused:
            return ANY_SYNTAX, True
        return None


def choose_syntax(ranges: list[MediaRange], stored: Collection[str]) -> str:
    """The transfer syntax to send ``stored`` instances in, or ``ANY_SYNTAX`` (as stored).

    ``ranges`` come from ``parse_accept`` (best q first). The winner is the highest-q syntax
    producible from every stored syntax; ties go to one needing no transcoding, then to the
    client's order. q=0 refuses a syntax outright, even the stored one.
    """
    if not ranges:
        ranges = [MediaRange("*/*")]
    stored_set = frozenset(s for s in stored if s)
    common: frozenset[str] | None = None
    for s in stored_set:
        common = producible(s) if common is None else common & producible(s)
    dicom = [mr for mr in ranges if _counts(mr)]
    refused = {_syntax(mr) or EXPLICIT_VR_LE for mr in dicom if mr.q <= 0 and _specific(mr)}
    limits = _Constraints(stored_set, common, frozenset(refused))

    candidates: list[_Candidate] = []
    for order, mr in enumerate(dicom):
        if mr.q > 0 and (got := limits.resolve(_syntax(mr))) is not None:
            candidates.append(_Candidate(mr.q, order, *got))
    if candidates:
        return min(candidates, key=lambda c: (-c.q, not c.as_stored, c.order)).syntax
    if not dicom:
        raise NotAcceptable(
            'only multipart/related; type="application/dicom" is available here, '
            f"asked for: {_describe(ranges)}"
        )
    have = ", ".join(sorted(stored_set)) or "nothing"
    raise NotAcceptable(
        f"none of the acceptable transfer syntaxes ({_describe(dicom)}) can be produced "
        f"from the stored {have}"
    )
