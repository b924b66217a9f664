"""DICOM JSON (PS3.18 F.2) for query results."""

from __future__ import annotations

from typing import Any

from pydicom.datadict import tag_for_keyword

from drimbox.adapters.storage.dicom_index import ATTRIBUTES


def attribute_json(keyword: str, value: Any) -> tuple[str, dict[str, Any]]:
    vr = ATTRIBUTES[keyword].vr if keyword in ATTRIBUTES else "LO"
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    key = f"{tag:08X}"
    if value in (None, ""):
        return key, {"vr": vr}
    if vr == "PN":
        return key, {"vr": vr, "Value": [{"Alphabetic": str(value)}]}
    if vr in ("IS", "US"):
        return key, {"vr": vr, "Value": [int(value)]}
    if isinstance(value, str) and "\\" in value:
        return key, {"vr": vr, "Value": value.split("\\")}
    return key, {"vr": vr, "Value": [value]}


def row_json(row: dict[str, Any], retrieve_url: str | None = None) -> dict[str, Any]:
    out = dict(attribute_json(k, v) for k, v in row.items())
    if retrieve_url:
        out["00081190"] = {"vr": "UR", "Value": [retrieve_url]}
    return dict(sorted(out.items()))
