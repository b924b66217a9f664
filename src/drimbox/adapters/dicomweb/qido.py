"""QIDO-RS query parameters (PS3.18 8.3.4) to index filters."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.datadict import keyword_for_tag

from drimbox.adapters.dicomweb.errors import HttpProblem
from drimbox.adapters.storage.dicom_index import ATTRIBUTES, DEFAULT_KEYS, Level

MAX_LIMIT = 10_000


@dataclass
class QidoQuery:
    filters: dict[str, str] = field(default_factory=dict)
    include: list[str] = field(default_factory=list)
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0


def _keyword(name: str) -> str:
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        keyword = keyword_for_tag(int(name, 16))
        if keyword:
            return keyword
    return name


def _int(name: str, value: str, low: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise HttpProblem(400, f"{name} must be an integer, got {value!r}") from None
    if number < low:
        raise HttpProblem(400, f"{name} must be at least {low}")
    return number


def parse_qido(params: Iterable[tuple[str, str]], level: Level) -> QidoQuery:
    q = QidoQuery()
    for name, value in params:
        if name == "includefield":
            for item in value.split(","):
                item = _keyword(item.strip())
                if item == "all":
                    q.include.extend(k for k in ATTRIBUTES if k not in q.include)
                elif item in ATTRIBUTES and item not in q.include:
                    q.include.append(item)
                # other keys are not indexed: PS3.18 lets the origin server ignore them
        elif name == "fuzzymatching":
            q.fuzzy = value.lower() == "true"
        elif name == "limit":
            q.limit = min(_int(name, value, 0), MAX_LIMIT)
        elif name == "offset":
            q.offset = _int(name, value, 0)
        else:
            keyword = _keyword(name)
            if keyword not in ATTRIBUTES:
                raise HttpProblem(400, f"unsupported query key {name!r}")
            q.filters[keyword] = value
    # keys valid at a deeper level than asked cannot be returned (e.g. SOP UID on /studies)
    depth = list(Level).index(level)
    q.include = [k for k in q.include if list(Level).index(ATTRIBUTES[k].level) <= depth]
    if level is Level.IMAGE or level is Level.SERIES:
        q.include.extend(k for k in DEFAULT_KEYS[Level.STUDY][:1] if k not in q.include)
    return q
