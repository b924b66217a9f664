"""The embedded PACS store: ingest (parse, validate, durable write, index), read, recover.

DIMSE (C-STORE) and DICOMweb (STOW-RS) both end here, so a stored object is treated the
same whichever way it came in.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from drimbox.adapters.storage.dicom_index import (
    DicomIndex,
    InstanceRecord,
    Level,
    StoredInstance,
)
from drimbox.adapters.storage.files import FileStore
from drimbox.domain.errors import InvalidInput
from drimbox.domain.identifiers import is_valid_uid

log = logging.getLogger(__name__)

BULK_BASE = "@@BASE@@"
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class StoreResult(Enum):
    STORED = "stored"
    DUPLICATE_KEPT = "duplicate-kept"  # same SOP Instance UID already stored; the new copy dropped
    REPLACED = "replaced"


class InvalidObject(InvalidInput):
    """The object is not DICOM, is truncated, or lacks what storage needs."""


@dataclass(frozen=True, slots=True)
class Stored:
    result: StoreResult
    instance: StoredInstance


@functools.cache
def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return tag


_PLAIN_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI"})
"""String VRs in the default repertoire whatever Specific Character Set says."""
_TEXT_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_SIMPLE_CHARSETS = {"": "latin-1", "ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8"}


def _value(ds: Dataset, keyword: str) -> Any:
    # by tag, and from the raw bytes for the common cases: ingest reads some thirty
    # attributes per object, and pydicom's conversion is a fifth of its CPU
    tag = _tag(keyword)
    raw = ds.get_item(tag)
    if raw is None:
        return None
    if isinstance(raw, RawDataElement) and raw.value is not None:
        fast = _raw_value(ds, tag, raw)
        if fast is not _SLOW:
            return fast
    elem = ds.get(tag)
    return None if elem is None else elem.value


_SLOW = object()


def _charset(ds: Dataset) -> str:
    """Specific Character Set as written ("\\"-joined when several; "" when absent)."""
    elem = ds.get_item(0x00080005)
    if elem is None:
        return ""
    if isinstance(elem, RawDataElement):
        return (elem.value or b"").decode("ascii", "replace").strip(" \x00")
    value = elem.value
    return value if isinstance(value, str) else "\\".join(str(v) for v in value or [])


def _raw_value(ds: Dataset, tag: int, raw: RawDataElement) -> Any:
    vr = raw.VR or dictionary_VR(tag)
    data = bytes(raw.value or b"")
    if vr == "US" and len(data) == 2:
        return struct.unpack("<H" if raw.is_little_endian else ">H", data)[0]
    if vr in _PLAIN_VRS:
        encoding = "ascii"
    elif vr in _TEXT_VRS:
        name = _charset(ds)
        if name not in _SIMPLE_CHARSETS:
            return _SLOW  # ISO 2022 and others: pydicom's decoders
        encoding = _SIMPLE_CHARSETS[name]
    else:
        return _SLOW
    try:
        text = data.decode(encoding).strip(" \x00")
    except UnicodeDecodeError:
        return _SLOW
    if "\\" in text:
        return _SLOW  # several values: pydicom's MultiValue, as before
    return text


def _text(ds: Dataset, keyword: str) -> str:
    value = _value(ds, keyword)
    if value is None:
        return ""
    return str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _value(ds, keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def with_preamble(data: bytes | memoryview) -> bytes | memoryview:
    """Part 10 bytes with the 128-byte preamble and DICM prefix (PS3.10 7.1).

    Some STOW-RS clients (dicomweb-client among them) send the file meta group without the
    preamble; tolerate it on input and store a conformant file.
    """
    if bytes(data[128:132]) != b"DICM" and bytes(data[:2]) == b"\x02\x00":
        return b"\x00" * 128 + b"DICM" + bytes(data)
    return data


def parse_object(data: bytes | memoryview) -> Dataset:
    """Parse a Part 10 object and check it is whole; raise ``InvalidObject`` otherwise.

    The element stream is read up to the pixel data (every tag and length is checked); the
    pixel data element is checked from its header, without copying it. Values are decoded
    when used, so a malformed value in an attribute we never read is tolerated on input
    (style-anchors rule 6), while a truncated or structurally broken object is refused.
    """
    fp = io.BytesIO(data)
    try:
        ds = dcmread(fp, stop_before_pixels=True)
        tsuid = UID(str(getattr(ds.file_meta, "TransferSyntaxUID", "") or ""))
        if not is_valid_uid(str(tsuid)):
            raise InvalidObject("the file meta information has no valid Transfer Syntax UID")
        if not _pixel_element_fits(ds, data, fp.tell(), tsuid):
            ds = dcmread(io.BytesIO(data))  # anything unusual after the header: read it all
            for _ in ds.iterall():
                pass
            _check_pixel_length(ds, len(ds.PixelData) if "PixelData" in ds else None, tsuid)
    except InvalidObject:
        raise
    except InvalidDicomError as exc:
        raise InvalidObject(f"not a DICOM Part 10 object: {exc}") from None
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise InvalidObject(f"cannot decode the dataset: {type(exc).__name__}: {exc}") from None
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = _text(ds, keyword)
        if not value:
            raise InvalidObject(f"{keyword} is missing")
        if not is_valid_uid(value):
            raise InvalidObject(f"{keyword} {value[:80]!r} is not a valid UID")
    return ds


_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UC", b"UR", b"UT"}
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def _pixel_element_fits(ds: Dataset, data: bytes | memoryview, pos: int, tsuid: UID) -> bool:
    """Check the (7FE0,0010) element at ``pos`` ends the object exactly and is whole.

    False means "not the common shape" (big endian, deflated, float pixels, trailing
    elements): the caller then reads the whole object the slow way.
    """
    if pos == len(data):
        return True  # no pixel data
    if not tsuid.is_little_endian or tsuid.is_deflated:
        return False
    if bytes(data[pos : pos + 4]) != b"\xe0\x7f\x10\x00":
        return False
    if tsuid.is_implicit_VR:
        (length,), header = struct.unpack_from("<L", data, pos + 4), 8
    elif bytes(data[pos + 4 : pos + 6]) in _LONG_VRS:
        (length,), header = struct.unpack_from("<L", data, pos + 8), 12
    else:
        (length,), header = struct.unpack_from("<H", data, pos + 6), 8
    if length == 0xFFFFFFFF:  # encapsulated: fragments up to the sequence delimiter
        return bytes(data[-8:]) == _SEQ_DELIMITER
    end = pos + header + length
    if end > len(data):
        raise InvalidObject(
            f"Pixel Data is truncated: {len(data) - pos - header} bytes of {length}"
        )
    if end < len(data):
        return False
    _check_pixel_length(ds, length, tsuid)
    return True


def _check_pixel_length(ds: Dataset, actual: int | None, tsuid: UID) -> None:
    if actual is None or tsuid.is_encapsulated:
        return
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    bits = _int(ds, "BitsAllocated")
    if not (rows and cols and bits):
        raise InvalidObject("Pixel Data without Rows, Columns or Bits Allocated")
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    expected = (rows * cols * samples * frames * bits + 7) // 8
    if actual < expected:
        raise InvalidObject(f"Pixel Data is truncated: {actual} bytes, {expected} expected")


def _record(ds: Dataset, path: str, size: int) -> InstanceRecord:
    return InstanceRecord(
        sop_uid=_text(ds, "SOPInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        study_uid=_text(ds, "StudyInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        path=path,
        size=size,
        instance_number=_int(ds, "InstanceNumber"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        number_of_frames=_int(ds, "NumberOfFrames"),
        study={
            "patient_id": _text(ds, "PatientID"),
            "issuer_of_patient_id": _text(ds, "IssuerOfPatientID"),
            "patient_name": _text(ds, "PatientName"),
            "patient_birth_date": _text(ds, "PatientBirthDate"),
            "patient_sex": _text(ds, "PatientSex"),
            "study_date": _text(ds, "StudyDate"),
            "study_time": _text(ds, "StudyTime"),
            "accession_number": _text(ds, "AccessionNumber"),
            "study_id": _text(ds, "StudyID"),
            "study_description": _text(ds, "StudyDescription"),
            "referring_physician_name": _text(ds, "ReferringPhysicianName"),
        },
        series={
            "modality": _text(ds, "Modality"),
            "series_number": _int(ds, "SeriesNumber"),
            "series_description": _text(ds, "SeriesDescription"),
            "body_part_examined": _text(ds, "BodyPartExamined"),
            "series_date": _text(ds, "SeriesDate"),
        },
    )


def metadata_json(ds: Dataset, study: str, series: str, sop: str) -> str:
    """DICOM JSON (PS3.18 F.2) of one instance, bulk pixel data by reference."""
    pixel = {}
    for keyword in PIXEL_TAGS:
        if keyword in ds:
            elem = ds[keyword]
            tag = f"{elem.tag:08X}"
            uri = f"{BULK_BASE}/studies/{study}/series/{series}/instances/{sop}/bulk/{tag}"
            pixel[tag] = {"vr": elem.VR, "BulkDataURI": uri}
            del ds[keyword]
    body: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=1 << 30)
    body.update(pixel)
    tsuid = str(ds.file_meta.TransferSyntaxUID)
    body["00083002"] = {"vr": "UI", "Value": [tsuid]}  # AvailableTransferSyntaxUID
    return json.dumps(dict(sorted(body.items())), separators=(",", ":"))


class PacsStore:
    def __init__(
        self,
        root: Path,
        duplicates: Literal["keep-first", "replace"] = "keep-first",
        fsync: bool = True,
    ) -> None:
        self.files = FileStore(root, fsync=fsync)
        self.index = DicomIndex(self.files.root / "index.sqlite")
        self.duplicates = duplicates

    def ingest(
        self, data: bytes | memoryview, origin: str, expected_sop: str | None = None
    ) -> Stored:
        """Store one Part 10 object durably; raises ``InvalidObject`` (and quarantines it)."""
        data = with_preamble(data)
        try:
            ds = parse_object(data)
            sop = _text(ds, "SOPInstanceUID")
            if expected_sop is not None and sop != expected_sop:
                raise InvalidObject(
                    f"dataset SOP Instance UID {sop} differs from the request's {expected_sop}"
                )
        except InvalidObject as exc:
            where = self.files.quarantine(data, str(exc), origin)
            log.warning("rejected object from %s: %s (quarantined as %s)", origin, exc, where.name)
            raise
        existing = self.index.get_instance(sop)
        if existing is not None and self.duplicates == "keep-first":
            return Stored(StoreResult.DUPLICATE_KEPT, existing)
        rel = self.files.relative_path(
            _text(ds, "StudyInstanceUID"), _text(ds, "SeriesInstanceUID"), sop
        )
        self.files.write(data, rel)
        rec = _record(ds, rel, len(data))
        self.index.add(rec)
        if existing is not None and existing.path != rel:
            self.files.remove(existing.path)
        if existing is None:  # what was just written: no need to read it back
            return Stored(StoreResult.STORED, _as_stored(rec))
        return Stored(StoreResult.REPLACED, self.index.get_instance(sop) or _as_stored(rec))

    def recover(self) -> tuple[int, int]:
        """After a crash: drop unfinished writes, index stored files the index lacks."""
        dropped = self.files.clear_temp()
        known = self.index.all_paths()
        added = 0
        for rel in self.files.walk():
            if rel in known:
                continue
            path = self.files.absolute(rel)
            data = path.read_bytes()
            try:
                ds = parse_object(data)
            except InvalidObject as exc:
                # a write the crash cut short: it was never acknowledged
                self.files.quarantine(data, f"found after a crash: {exc}", "recovery")
                self.files.remove(rel)
                continue
            self.index.add(_record(ds, rel, path.stat().st_size))
            added += 1
        if dropped or added:
            log.warning(
                "recovery: %d unfinished writes removed, %d files re-indexed", dropped, added
            )
        return dropped, added

    def find(
        self,
        level: Level,
        filters: Mapping[str, str],
        return_keys: Sequence[str] = (),
        fuzzy: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        return self.index.find(level, filters, return_keys, fuzzy, limit, offset)

    def instances(
        self, study: str, series: str | None = None, sop: str | None = None
    ) -> list[StoredInstance]:
        return self.index.instances(study, series, sop)

    def path_of(self, inst: StoredInstance) -> Path:
        return self.files.absolute(inst.path)

    def read_dataset(self, inst: StoredInstance, stop_before_pixels: bool = False) -> Dataset:
        return dcmread(self.path_of(inst), stop_before_pixels=stop_before_pixels)

    def metadata(self, study: str, series: str | None = None, sop: str | None = None) -> list[str]:
        """Cached DICOM JSON per instance; computed on first use and kept in the index."""
        rows = self.index.metadata(study, series, sop)
        out: list[str] = []
        fresh: list[tuple[str, str]] = []
        for rel, cached in rows:
            if cached is None:
                ds = dcmread(self.files.absolute(rel))
                study_uid, series_uid, name = rel.split("/")
                cached = metadata_json(ds, study_uid, series_uid, name[:-4])
                fresh.append((name[:-4], cached))
            out.append(cached)
        if fresh:
            self.index.set_metadata(fresh)
        return out

    def warm_metadata(self, sops: Iterable[StoredInstance]) -> None:
        for inst in sops:
            self.metadata(inst.study_uid, inst.series_uid, inst.sop_uid)


def _as_stored(rec: InstanceRecord) -> StoredInstance:
    return StoredInstance(
        rec.sop_uid, rec.series_uid, rec.study_uid, rec.sop_class_uid,
        rec.transfer_syntax_uid, rec.path, rec.size, rec.number_of_frames,
    )  # fmt: skip
