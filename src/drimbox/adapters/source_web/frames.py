"""Frame (pixel data) retrieval with transfer-syntax negotiation.

PS3.18 asks for frames as ``application/octet-stream`` (native) or an image media type
(``image/jls``...); DRIM-M consumers send the same Accept list as for instances
(``multipart/related; type="application/dicom"; transfer-syntax=...``), which we read as
"the pixel data encoded in that syntax".
"""

from __future__ import annotations

import io
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragmented_frames
from pydicom.uid import UID

from drimbox.adapters.dicomweb.media_types import EXPLICIT_VR_LE, MediaRange, NotAcceptable
from drimbox.adapters.dicomweb.negotiation import frame_media_type
from drimbox.adapters.dicomweb.transcode import producible, transcode_with_syntax
from drimbox.domain.errors import NotFound

OCTET = "application/octet-stream"
# the syntax an image media type stands for when the range names none (PS3.18 table 8.7.3-2)
_IMAGE_DEFAULTS = {
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/x-dicom-rle": "1.2.840.10008.1.2.5",
    "image/jpeg": "1.2.840.10008.1.2.4.50",
    "image/jphc": "1.2.840.10008.1.2.4.201",
}


def _candidate(mr: MediaRange, stored: str) -> str | None:
    part = mr.part_type if mr.type == "multipart/related" else mr.type
    ts = mr.transfer_syntax
    if ts == "*":
        return stored
    if part in (None, "*/*", OCTET, "application/dicom"):
        return ts or (EXPLICIT_VR_LE if part != "*/*" else stored)
    if part in _IMAGE_DEFAULTS:
        return ts or _IMAGE_DEFAULTS[part]
    if part == "image/*":
        return ts or stored
    return None


def frame_syntax(ranges: list[MediaRange], stored: str) -> str:
    """The best syntax the client accepts that we can produce from ``stored``; at equal q,
    the stored one (no re-encoding), then the client's order."""
    if not ranges:
        return stored if UID(stored).is_compressed else EXPLICIT_VR_LE
    can = producible(stored)
    as_stored = {stored} | (_NATIVE if stored in _NATIVE else set())
    best: tuple[float, str] | None = None
    for mr in ranges:  # best q first
        if mr.q <= 0 or (best is not None and mr.q < best[0]):
            continue
        ts = _candidate(mr, stored)
        if ts is None or (ts != stored and ts not in can):
            continue
        if ts in as_stored:
            return EXPLICIT_VR_LE if ts in _NATIVE else ts
        if best is None:
            best = (mr.q, ts)
    if best is None:
        raise NotAcceptable("none of the accepted frame encodings can be produced here")
    return EXPLICIT_VR_LE if best[1] in _NATIVE else best[1]


_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def _frames(ds: Dataset, numbers: list[int] | None) -> list[bytes]:
    if "PixelData" not in ds:
        raise NotFound("the instance has no pixel data")
    count = int(ds.get("NumberOfFrames") or 1)
    wanted = numbers or list(range(1, count + 1))
    if max(wanted) > count:
        raise NotFound(f"the instance has {count} frame(s)")
    if UID(str(ds.file_meta.TransferSyntaxUID)).is_encapsulated:
        frames = [
            b"".join(f) for f in generate_fragmented_frames(ds.PixelData, number_of_frames=count)
        ]
        return [frames[n - 1] for n in wanted]
    size = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
    size = size * int(ds.BitsAllocated) // 8
    data = ds.PixelData
    return [bytes(data[(n - 1) * size : n * size]) for n in wanted]


def read_frames(
    path: Path, numbers: list[int] | None, ranges: list[MediaRange]
) -> tuple[list[bytes], str, str]:
    """(frames, media type, transfer syntax); ``numbers`` None = every frame as stored."""
    ds = dcmread(path)
    stored = str(ds.file_meta.TransferSyntaxUID)
    syntax = stored if numbers is None else frame_syntax(ranges, stored)
    if syntax != stored and not (syntax == EXPLICIT_VR_LE and stored in _NATIVE):
        data, syntax = transcode_with_syntax(path, syntax)
        ds = dcmread(io.BytesIO(data))
    media = OCTET if not UID(syntax).is_compressed else frame_media_type(syntax)
    return _frames(ds, numbers), media, syntax
