"""Re-encoding stored instances into the transfer syntax a client asked for."""

from __future__ import annotations

import io
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import UID

from drimbox.adapters.dicomweb.media_types import NotAcceptable

_NATIVE = {
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.2",  # explicit VR big endian (retired, still seen)
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian
}


def can_serve_as_is(stored: str, wanted: str) -> bool:
    return stored == wanted


def transcode(path: Path, wanted: str) -> bytes:
    """The Part 10 bytes of ``path`` in ``wanted``; raises ``NotAcceptable`` if we cannot."""
    if wanted not in _NATIVE - {"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}:
        raise NotAcceptable(f"transfer syntax {wanted} is not offered by this server")
    ds = dcmread(path)
    stored = UID(str(ds.file_meta.TransferSyntaxUID))
    if stored.is_compressed:
        try:
            ds.decompress()
        except Exception as exc:
            raise NotAcceptable(
                f"cannot decompress {stored.name} to {UID(wanted).name}: {exc}"
            ) from None
    ds.file_meta.TransferSyntaxUID = UID(wanted)
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=wanted == "1.2.840.10008.1.2", little_endian=True)
    return buf.getvalue()
