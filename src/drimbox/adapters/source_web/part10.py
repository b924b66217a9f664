"""Reading a Part 10 file's transfer syntax from its first bytes, without pydicom (the hot
path of whole-study retrieval: one look per instance)."""

from __future__ import annotations

import struct

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"}


def stored_syntax(head: bytes | memoryview) -> str:
    """Transfer Syntax UID of the File Meta group; explicit VR little endian if absent."""
    data = memoryview(head)
    if bytes(data[128:132]) != b"DICM":
        return EXPLICIT_VR_LE
    pos = 132
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = bytes(data[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                break
            (length,) = struct.unpack_from("<I", data, pos + 8)
            value_at = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            value_at = pos + 8
        if element == 0x0010:
            raw = bytes(data[value_at : value_at + length])
            return raw.rstrip(b"\x00 ").decode("ascii", "replace") or EXPLICIT_VR_LE
        pos = value_at + length
    return EXPLICIT_VR_LE
