"""DICOM value representations to and from Python values, tolerant on the way in.

Writing is strict (we only emit well-formed DA/TM/IS); reading accepts what real archives
send (padding, ACR-NEMA ``HH:MM:SS`` times, empty values) and turns garbage into ``None``
rather than failing, because one odd optional attribute must not make a manifest unreadable.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence as DicomSequence

from drimbox.domain.manifest import Code

_TM_RE = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")
_OFFSET_RE = re.compile(r"([+-])(\d{2})(\d{2})")


def to_da(value: date | None) -> str:
    return "" if value is None else value.strftime("%Y%m%d")


def to_tm(value: time | None) -> str:
    if value is None:
        return ""
    text = value.strftime("%H%M%S")
    return f"{text}.{value.microsecond:06d}" if value.microsecond else text


def to_offset(value: datetime) -> str:
    """TimezoneOffsetFromUTC (``+HHMM``) of an aware datetime; empty for a naive one."""
    offset = value.utcoffset()
    if offset is None:
        return ""
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"


def from_da(value: object) -> date | None:
    text = str(value or "").strip().replace(".", "")
    try:
        return datetime.strptime(text, "%Y%m%d").date() if len(text) == 8 else None
    except ValueError:
        return None


def from_tm(value: object) -> time | None:
    match = _TM_RE.fullmatch(str(value or "").strip())
    if match is None:
        return None
    hh, mm, ss, frac = match.groups()
    try:
        return time(int(hh), int(mm or 0), min(int(ss or 0), 59), int((frac or "0").ljust(6, "0")))
    except ValueError:
        return None


def from_offset(value: object) -> timezone | None:
    match = _OFFSET_RE.fullmatch(str(value or "").strip())
    if match is None:
        return None
    sign, hh, mm = match.groups()
    delta = timedelta(hours=int(hh), minutes=int(mm))
    try:
        return timezone(-delta if sign == "-" else delta)
    except ValueError:
        return None


def from_is(value: object) -> int | None:
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None


def text(ds: Dataset, keyword: str) -> str:
    """A string attribute, empty when absent or empty (multi-valued: the first value)."""
    value: Any = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else ""
    return str(value).strip()


def items(ds: Dataset, keyword: str) -> list[Dataset]:
    value = ds.get(keyword)
    return list(value) if isinstance(value, DicomSequence | list) else []


def first_item(ds: Dataset, keyword: str) -> Dataset | None:
    found = items(ds, keyword)
    return found[0] if found else None


def code_item(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def code_of(ds: Dataset | None) -> Code | None:
    if ds is None:
        return None
    value = text(ds, "CodeValue") or text(ds, "LongCodeValue") or text(ds, "URNCodeValue")
    if not value:
        return None
    return Code(value, text(ds, "CodingSchemeDesignator"), text(ds, "CodeMeaning"))


def universal_entity(uid: str) -> DicomSequence:
    """An issuer given by its OID (PS3.3 10.14 HL7v2 Hierarchic Designator Macro)."""
    item = Dataset()
    item.UniversalEntityID = uid
    item.UniversalEntityIDType = "ISO"
    return DicomSequence([item])


def universal_entity_id(ds: Dataset, keyword: str) -> str:
    item = first_item(ds, keyword)
    return text(item, "UniversalEntityID") if item is not None else ""
