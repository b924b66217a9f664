"""Re-encoding stored instances into the transfer syntax a client asked for, losslessly.

What we can produce depends on the pydicom pixel plugins installed (pyjpegls, pylibjpeg and its
openjpeg/libjpeg back ends), so it is asked of pydicom rather than hard-coded.
"""

from __future__ import annotations

import io
import re
from functools import lru_cache
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID

from drimbox.adapters.dicomweb.media_types import (
    ANY_SYNTAX,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    NotAcceptable,
)
from drimbox.adapters.dicomweb.part10 import stored_syntax

BIG_ENDIAN = "1.2.840.10008.1.2.2"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_2000_LOSSLESS = "1.2.840.10008.1.2.4.90"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"

_NATIVE = {
    IMPLICIT_VR_LE,
    EXPLICIT_VR_LE,
    BIG_ENDIAN,  # retired, still seen
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
}
_WRITABLE_NATIVE = frozenset({EXPLICIT_VR_LE, IMPLICIT_VR_LE})

# Encodings we may produce: lossless only, so re-encoding never degrades an image. HTJ2K is
# listed but pydicom 3.0 has no encoder for it (only decoders), so get_encoder() keeps it out
# until one exists. The lossy ones (JPEG baseline 4.50/4.51, JPEG 2000 4.91, near-lossless
# JPEG-LS 4.81) are never produced; JPEG lossless 4.57/4.70 has no Python encoder.
_LOSSLESS_TARGETS = (
    JPEG_LS_LOSSLESS,
    JPEG_2000_LOSSLESS,
    RLE_LOSSLESS,
    HTJ2K_LOSSLESS,
    HTJ2K_LOSSLESS_RPCL,
)

# Stored syntaxes whose pixel data went through lossy compression (PS3.5 8.2, 8.4).
_LOSSY = frozenset(
    {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.203",
    }
)

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _known_syntax(uid: str) -> bool:
    return bool(_UID_RE.match(uid)) and UID(uid).is_transfer_syntax


def _can_encode(uid: str) -> bool:
    try:
        return bool(get_encoder(uid).is_available)
    except NotImplementedError:
        return False


def _can_decode(uid: str) -> bool:
    if uid in _NATIVE:
        return True
    try:
        return bool(get_decoder(uid).is_available)
    except NotImplementedError:
        return False


@lru_cache(maxsize=64)
def producible(stored: str) -> frozenset[str]:
    """Transfer syntaxes we can send an instance stored in ``stored`` in (itself included)."""
    out = {stored}
    # Big endian -> little endian would need every OW/OF/OL... value byte-swapped by hand
    # (pydicom refuses to do it); the syntax is retired, so such instances go as stored.
    if not _known_syntax(stored) or stored == BIG_ENDIAN or not _can_decode(stored):
        return frozenset(out)
    out |= _WRITABLE_NATIVE
    out.update(ts for ts in _LOSSLESS_TARGETS if _can_encode(ts))
    return frozenset(out)


def can_serve_as_is(stored: str, wanted: str) -> bool:
    return wanted in (ANY_SYNTAX, stored)


def transcode(path: Path, wanted: str) -> bytes:
    """The Part 10 bytes of ``path`` in ``wanted``; raises ``NotAcceptable`` if we cannot.

    Instances without pixel data asked in a compressed syntax come in explicit VR little
    endian: use ``transcode_with_syntax`` to learn which syntax was actually used.
    """
    return transcode_with_syntax(path, wanted)[0]


def transcode_with_syntax(source: Path | bytes, wanted: str) -> tuple[bytes, str]:
    """The Part 10 bytes of ``source`` (a file, or the bytes of one) in ``wanted``
    (``ANY_SYNTAX``: as stored), and their actual transfer syntax.

    Compressed targets apply to pixel data only: an instance without any (SR, KOS...) is sent
    in explicit VR little endian instead, as PS3.18 8.7.3.5.2 allows.
    """
    if isinstance(source, Path):
        stored = str(read_file_meta_info(source).TransferSyntaxUID)
    else:
        stored = stored_syntax(source[:65536])
    if can_serve_as_is(stored, wanted):
        return _bytes(source), stored
    if not _known_syntax(wanted):
        raise NotAcceptable(f"{wanted!r} is not a transfer syntax")
    ds = dcmread(source if isinstance(source, Path) else io.BytesIO(source))
    # Float pixel data only exists in native syntaxes: it is treated like no pixel data.
    if "PixelData" not in ds:
        if stored == BIG_ENDIAN:
            raise NotAcceptable("instances in explicit VR big endian are only sent as stored")
        target = wanted if wanted in _WRITABLE_NATIVE else EXPLICIT_VR_LE
        if target == stored:
            return _bytes(source), stored
        return _part10(ds, target), target
    if wanted not in producible(stored):
        raise NotAcceptable(
            f"cannot produce {UID(wanted).name} from an instance in {UID(stored).name}"
        )
    try:
        _reencode(ds, stored, wanted)
    except (ValueError, RuntimeError, NotImplementedError, TypeError) as exc:
        # e.g. 32-bit or bit-packed pixels that JPEG-LS/JPEG 2000 cannot hold
        raise NotAcceptable(
            f"cannot transcode {UID(stored).name} to {UID(wanted).name}: {exc}"
        ) from None
    return _part10(ds, wanted), wanted


def _bytes(source: Path | bytes) -> bytes:
    return source.read_bytes() if isinstance(source, Path) else source


def _reencode(ds: Dataset, stored: str, wanted: str) -> None:
    """Re-encode the pixel data of ``ds`` (in place) from ``stored`` to ``wanted``."""
    if UID(stored).is_encapsulated:
        lossy = stored in _LOSSY
        # Lossless sources keep their colour space (a YBR -> RGB conversion rounds); lossy
        # JPEG is converted to RGB, as every decoder does. The instance UID stays: the pixels
        # are the ones the sender made.
        ds.decompress(as_rgb=lossy, generate_instance_uid=False)
        if lossy and "LossyImageCompression" not in ds:
            ds.LossyImageCompression = "01"  # PS3.3 C.7.6.1.1.5: once lossy, always flagged
    if wanted in _WRITABLE_NATIVE:
        ds.file_meta.TransferSyntaxUID = UID(wanted)
        return
    # Encode from the decoded array rather than the native buffer: it is masked/sign-extended
    # to Bits Stored as any decoder reads it, and pydicom's RLE and JPEG 2000 encoders read a
    # buffer as colour-by-pixel whatever Planar Configuration says. raw=True keeps YBR as is.
    arr = pixel_array(ds, raw=True)
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
            ds.PhotometricInterpretation = "YBR_FULL"  # the array comes upsampled
        ds.PlanarConfiguration = 0  # PS3.5 8.2.3/8.2.4 (JPEG-LS, JPEG 2000)
    ds.compress(wanted, arr, generate_instance_uid=False)
    if wanted == RLE_LOSSLESS and "PlanarConfiguration" in ds:
        ds.PlanarConfiguration = 1  # PS3.5 G.2: RLE segments are colour-by-plane


def _part10(ds: Dataset, syntax: str) -> bytes:
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
