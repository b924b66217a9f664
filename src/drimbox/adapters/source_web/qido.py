"""QIDO-RS answers drawn from a published manifest (never from the PACS): a consumer learns
only what the KOS it holds already told it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from drimbox.domain.errors import InvalidInput
from drimbox.domain.manifest import ImagingManifest, ManifestInstance, ManifestSeries

# the matching keys a viewer sends; anything else is ignored (PS3.18 8.3.4.1 allows it)
_MATCH = {
    "StudyInstanceUID": "0020000D", "0020000D": "0020000D",
    "SeriesInstanceUID": "0020000E", "0020000E": "0020000E",
    "SOPInstanceUID": "00080018", "00080018": "00080018",
    "Modality": "00080060", "00080060": "00080060",
    "AccessionNumber": "00080050", "00080050": "00080050",
    "PatientID": "00100020", "00100020": "00100020",
    "StudyDate": "00080020", "00080020": "00080020",
}  # fmt: skip
_CONTROL = {"includefield", "limit", "offset", "fuzzymatching"}


def _v(vr: str, *values: Any) -> dict[str, Any]:
    kept = [v for v in values if v not in (None, "")]
    return {"vr": vr, "Value": kept} if kept else {"vr": vr}


def _pn(name: str) -> dict[str, Any]:
    return {"vr": "PN", "Value": [{"Alphabetic": name}]} if name else {"vr": "PN"}


def study_json(m: ImagingManifest, base: str) -> dict[str, Any]:
    p, s = m.patient, m.study
    return {
        "00080020": _v("DA", s.date.strftime("%Y%m%d") if s.date else None),
        "00080030": _v("TM", s.time.strftime("%H%M%S") if s.time else None),
        "00080050": _v("SH", s.accession),
        "00080061": _v("CS", *m.modalities),
        "00080090": _pn(s.referring_physician),
        "00081030": _v("LO", s.description),
        "00081190": _v("UR", f"{base}/studies/{s.study_uid}"),
        "00100010": _pn("^".join(x for x in (p.family_name, p.given_name) if x)),
        "00100020": _v("LO", p.ins),
        "00100030": _v("DA", p.birth_date.strftime("%Y%m%d") if p.birth_date else None),
        "00100040": _v("CS", p.sex),
        "0020000D": _v("UI", s.study_uid),
        "00200010": _v("SH", s.study_id),
        "00201206": _v("IS", len(m.series)),
        "00201208": _v("IS", m.instance_count),
    }


def series_json(m: ImagingManifest, series: ManifestSeries, base: str) -> dict[str, Any]:
    study = m.study.study_uid
    return {
        "00080060": _v("CS", series.modality),
        "0008103E": _v("LO", series.description),
        "00081190": _v("UR", f"{base}/studies/{study}/series/{series.series_uid}"),
        "00180015": _v("CS", series.body_part),
        "0020000D": _v("UI", study),
        "0020000E": _v("UI", series.series_uid),
        "00200011": _v("IS", series.number),
        "00201209": _v("IS", len(series.instances)),
    }


def instance_json(
    m: ImagingManifest, series: ManifestSeries, inst: ManifestInstance, base: str
) -> dict[str, Any]:
    study = m.study.study_uid
    url = f"{base}/studies/{study}/series/{series.series_uid}/instances/{inst.sop_instance_uid}"
    return {
        "00080016": _v("UI", inst.sop_class_uid),
        "00080018": _v("UI", inst.sop_instance_uid),
        "00080060": _v("CS", series.modality),
        "00081190": _v("UR", url),
        "0020000D": _v("UI", study),
        "0020000E": _v("UI", series.series_uid),
        "00200013": _v("IS", inst.instance_number),
        "00280008": _v("IS", inst.number_of_frames),
    }


def filters(params: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Exact-match filters by tag; ``limit``/``offset``/``includefield`` are accepted."""
    out: dict[str, str] = {}
    for name, value in params:
        if name.lower() in _CONTROL:
            continue
        tag = _MATCH.get(name)
        if tag is None:
            raise InvalidInput(f"cannot match on {name[:40]!r} here")
        out[tag] = value
    return out


def matches(item: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    for tag, value in wanted.items():
        values = item.get(tag, {}).get("Value", [])
        if value not in (str(v) for v in values):
            return False
    return True
