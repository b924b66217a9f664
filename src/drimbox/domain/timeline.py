"""A patient's imaging timeline as the professional reads it: filters over the exams, and the
warning that a similar exam (same kind of imaging, same body region) was done recently, so
that a redundant exam is not ordered. Pure: no I/O, no framework.

Similarity windows (days since the previous exam), by kind of imaging:

* CT, NM, PT: 90. Ionising and (NM/PT) costly tracers; the usual follow-up rhythm (oncology
  re-staging, post-treatment control) is about three months, so a repeat inside that window
  is the case the national guidelines on proper use of imaging ask to question.
* MR: 90. No radiation, but the scarcest machine time in France (waiting lists of weeks);
  same follow-up rhythm as CT.
* MG: 365. Organised breast screening is every two years (50-74); a mammogram within a
  year of the previous one is usually a diagnostic follow-up the reader wants to know of
  (and compare with: second reading is the expected benefit).
* CR/DX (one kind: radiography), US, and any other modality: 30. Cheap, low or no dose and
  legitimately repeated to monitor (fracture healing, effusions, pregnancy): beyond a month a
  warning would be noise the professional learns to ignore.

An exam without body region is never called similar: a warning must name what is repeated,
and a false warning costs more trust than a missed one (the history is shown anyway).
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from drimbox.domain.errors import InvalidInput


class TimelineExam(Protocol):
    """What the timeline needs of an exam (``services.conso.history.Exam`` has it)."""

    @property
    def study_uid(self) -> str: ...
    @property
    def date(self) -> dt.date | None: ...
    @property
    def modalities(self) -> tuple[str, ...]: ...
    @property
    def regions(self) -> tuple[str, ...]: ...
    @property
    def site(self) -> str: ...
    @property
    def accession(self) -> str: ...


E = TypeVar("E", bound=TimelineExam)

# -- modalities ---------------------------------------------------------------------------

_FAMILY = {"CR": "DX"}
"""Computed and digital radiography are the same exam for the patient."""
NOT_IMAGING = frozenset({"SR", "KO", "PR", "SEG", "REG", "DOC", "RWV", "AU", "ECG", "PLAN"})
"""Objects that come with an exam (reports, key images, states) and say nothing of its kind."""
HYBRID_PRIMARY = frozenset({"PT", "NM"})
"""With these, a CT in the same study is the hybrid's attenuation/localisation CT."""
MODALITY_LABELS = {
    "CT": "scanner", "MR": "IRM", "DX": "radiographie", "CR": "radiographie",
    "MG": "mammographie", "US": "échographie", "NM": "scintigraphie", "PT": "TEP",
    "XA": "angiographie", "RF": "radioscopie", "OT": "autre",
}  # fmt: skip
WINDOW_DAYS = {"CT": 90, "MR": 90, "NM": 90, "PT": 90, "MG": 365, "DX": 30, "US": 30}
DEFAULT_WINDOW_DAYS = 30


def modality_family(code: str) -> str:
    code = code.strip().upper()
    return _FAMILY.get(code, code)


def modality_label(code: str) -> str:
    return MODALITY_LABELS.get(code.strip().upper(), code)


def window_days(code: str) -> int:
    return WINDOW_DAYS.get(modality_family(code), DEFAULT_WINDOW_DAYS)


def imaging_kinds(modalities: Iterable[str]) -> frozenset[str]:
    """The kinds of imaging an exam is, for similarity: objects that are not images left
    out, and the CT of a PET-CT or SPECT-CT not counted as a diagnostic CT."""
    kinds = {modality_family(m) for m in modalities} - NOT_IMAGING - {""}
    if kinds & HYBRID_PRIMARY:
        kinds.discard("CT")
    return frozenset(kinds)


# -- body regions -------------------------------------------------------------------------

# DICOM Body Part Examined (CS, PS3.16 CID 4031), a few SNOMED CT codes the index's region
# event codes carry, and French words: each to the elementary regions it covers, so that a
# "scanner TAP" (thorax-abdomen-pelvis) is similar to a chest CT.
_PARTS: dict[str, frozenset[str]] = {
    alias: frozenset(parts)
    for parts, aliases in [
        (("HEAD",), ("HEAD", "BRAIN", "SKULL", "TETE", "CRANE", "ENCEPHALE", "CEREBRAL",
                     "69536005", "12738006", "89546000")),
        (("CHEST",), ("CHEST", "THORAX", "LUNG", "POUMON", "POUMONS", "51185008")),
        (("ABDOMEN",), ("ABDOMEN", "113345001", "818981001")),
        (("PELVIS",), ("PELVIS", "BASSIN", "PELVIEN", "12921003", "816092008")),
        (("ABDOMEN", "PELVIS"), ("ABDOMENPELVIS", "ABDOMENETPELVIS", "ABDOMINOPELVIEN",
                                 "63337009")),
        (("CHEST", "ABDOMEN"), ("CHESTABDOMEN", "THORAXABDOMEN", "THORACOABDOMINAL")),
        (("CHEST", "ABDOMEN", "PELVIS"), ("CHESTABDPELVIS", "CHESTABDOMENPELVIS", "TAP",
                                          "THORAXABDOMENPELVIS")),
        (("NECK",), ("NECK", "COU", "CERVICAL", "45048000")),
        (("CSPINE",), ("CSPINE", "RACHISCERVICAL", "122494005")),
        (("TSPINE",), ("TSPINE", "RACHISDORSAL", "RACHISTHORACIQUE", "122495006")),
        (("LSPINE",), ("LSPINE", "RACHISLOMBAIRE", "122496007")),
        (("CSPINE", "TSPINE", "LSPINE"), ("SPINE", "WHOLESPINE", "RACHIS")),
        (("BREAST",), ("BREAST", "SEIN", "SEINS", "76752008")),
        (("HEART",), ("HEART", "COEUR", "CARDIAQUE", "80891009")),
        (("KNEE",), ("KNEE", "GENOU", "72696002")),
        (("SHOULDER",), ("SHOULDER", "EPAULE", "16982005")),
        (("HIP",), ("HIP", "HANCHE", "24136001")),
        (("ANKLE",), ("ANKLE", "CHEVILLE", "70258002")),
        (("WRIST",), ("WRIST", "POIGNET", "74670003")),
        (("ELBOW",), ("ELBOW", "COUDE", "16953009")),
        (("HAND",), ("HAND", "MAIN", "85562004")),
        (("FOOT",), ("FOOT", "PIED", "56459004")),
    ]
    for alias in aliases
}  # fmt: skip
_REGION_LABELS = {
    "HEAD": "tête", "BRAIN": "encéphale", "SKULL": "crâne", "CHEST": "thorax",
    "ABDOMEN": "abdomen", "PELVIS": "pelvis", "ABDOMENPELVIS": "abdomen-pelvis",
    "CHESTABDOMEN": "thorax-abdomen", "CHESTABDPELVIS": "thorax-abdomen-pelvis",
    "NECK": "cou", "CSPINE": "rachis cervical", "TSPINE": "rachis dorsal",
    "LSPINE": "rachis lombaire", "SPINE": "rachis", "BREAST": "sein", "HEART": "cœur",
    "KNEE": "genou", "SHOULDER": "épaule", "HIP": "hanche", "ANKLE": "cheville",
    "WRIST": "poignet", "ELBOW": "coude", "HAND": "main", "FOOT": "pied",
}  # fmt: skip


def _normal(text: str) -> str:
    """Upper case, accents and punctuation gone: "Abdomen + pelvis" -> "ABDOMENPELVIS"."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Z0-9]", "", plain.upper())


def region_parts(region: str) -> frozenset[str]:
    """The elementary regions ``region`` covers; an unknown name stands for itself."""
    key = _normal(region)
    if not key:
        return frozenset()
    return _PARTS.get(key, frozenset({key}))


def region_label(region: str) -> str:
    """French name of a region for the page (the value itself when unknown)."""
    return _REGION_LABELS.get(_normal(region), region)


def _exam_parts(exam: TimelineExam) -> frozenset[str]:
    return frozenset().union(*(region_parts(r) for r in exam.regions))


# -- dates --------------------------------------------------------------------------------

_DAY_FORMATS = ("%Y-%m-%d", "%Y%m%d", "%d/%m/%Y")


def parse_day(text: str, what: str) -> dt.date:
    """A day as a form or a calling software writes it: ``AAAA-MM-JJ`` (HTML date input),
    ``AAAAMMJJ`` (DICOM DA) or ``JJ/MM/AAAA``; ``InvalidInput`` naming ``what`` otherwise."""
    value = text.strip()
    for fmt in _DAY_FORMATS:
        try:
            return dt.datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    raise InvalidInput(f"{what} : date illisible « {value[:40]} » (attendu AAAA-MM-JJ)")


def parse_study_date(text: str) -> tuple[dt.date | None, dt.date | None]:
    """A DICOM Study Date matching value (PS3.4 C.2.2.2.5): one day, or a range
    ``début-fin`` where either end may be missing."""
    value = text.strip()
    if "-" in value and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        start, _, end = value.partition("-")
        if not start and not end:
            raise InvalidInput("StudyDate : intervalle de dates vide")
        return (parse_day(start, "StudyDate") if start else None,
                parse_day(end, "StudyDate") if end else None)  # fmt: skip
    day = parse_day(value, "StudyDate")
    return day, day


def french_day(day: dt.date) -> str:
    return day.strftime("%d/%m/%Y")


def ago(days: int) -> str:
    """How long ago, as said in French: "il y a 3 semaines"."""
    if days <= 0:
        return "aujourd'hui"
    if days == 1:
        return "hier"
    if days < 14:
        return f"il y a {days} jours"
    if days < 60:
        return f"il y a {days // 7} semaines"
    if days < 365:
        return f"il y a {days // 30} mois"
    years = days // 365
    return f"il y a {years} an{'s' if years > 1 else ''}"


# -- filters ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TimelineFilter:
    """What the professional narrows the history to; empty fields do not filter."""

    modality: str = ""
    """Any modality code of the exam, radiography codes alike (a "CR" filter finds "DX")."""
    region: str = ""
    """Overlapping body regions match (an abdomen filter finds the thorax-abdomen-pelvis)."""
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    """Inclusive bounds; an exam without date never matches a date filter."""
    site: str = ""
    """The exam's source structure, case-insensitive."""
    study_uid: str = ""
    accession: str = ""

    def __post_init__(self) -> None:
        if self.date_from and self.date_to and self.date_from > self.date_to:
            raise InvalidInput(
                f"la date de début ({french_day(self.date_from)}) est postérieure à la date "
                f"de fin ({french_day(self.date_to)})"
            )

    @property
    def active(self) -> bool:
        return any((self.modality, self.region, self.date_from, self.date_to, self.site,
                    self.study_uid, self.accession))  # fmt: skip

    def matches(self, exam: TimelineExam) -> bool:
        return (
            self._kind_matches(exam)
            and self._date_matches(exam.date)
            and (not self.site or exam.site.strip().casefold() == self.site.strip().casefold())
            and (not self.study_uid or exam.study_uid == self.study_uid.strip())
            and (not self.accession or exam.accession == self.accession.strip())
        )

    def _kind_matches(self, exam: TimelineExam) -> bool:
        if self.modality and modality_family(self.modality) not in {
            modality_family(m) for m in exam.modalities
        }:
            return False
        return not self.region or bool(region_parts(self.region) & _exam_parts(exam))

    def _date_matches(self, day: dt.date | None) -> bool:
        if self.date_from is None and self.date_to is None:
            return True
        if day is None:
            return False
        return (self.date_from is None or day >= self.date_from) and (
            self.date_to is None or day <= self.date_to
        )


def newest_first(exams: Iterable[E]) -> list[E]:
    """Newest first; exams without a date last (their place in time is unknown)."""
    return sorted(exams, key=lambda e: (e.date is not None, e.date or dt.date.min), reverse=True)


def filter_exams(exams: Iterable[E], which: TimelineFilter) -> list[E]:
    return newest_first(e for e in exams if which.matches(e))


# -- similar recent exams -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimilarExam(Generic[E]):
    """A recent exam of the same kind and region as the one being considered."""

    exam: E
    modality: str
    """The kind of imaging shared (a modality family: "DX" for radiography)."""
    regions: tuple[str, ...]
    days_ago: int
    window_days: int

    @property
    def message(self) -> str:
        when = french_day(self.exam.date) if self.exam.date else ""
        region = ", ".join(dict.fromkeys(region_label(r) for r in self.regions))
        return (f"Examen similaire récent : {modality_label(self.modality)} {region} du {when}"
                f" ({ago(self.days_ago)})")  # fmt: skip


def similar_recent(
    exams: Sequence[E], today: dt.date, modality: str = "", region: str = ""
) -> list[SimilarExam[E]]:
    """Exams done within their kind's window before ``today``, one per kind and region (the
    most recent: an older one of the same kind and region adds nothing). ``modality`` and
    ``region``, when given, are the exam being considered: only exams like it are named."""
    wanted_kind = modality_family(modality) if modality.strip() else ""
    wanted_parts = region_parts(region)
    warned: dict[str, frozenset[str]] = {}
    out: list[SimilarExam[E]] = []
    for exam in newest_first(exams):
        if exam.date is None:
            continue
        days = (today - exam.date).days
        parts = _exam_parts(exam)
        if wanted_parts:
            parts &= wanted_parts
        if days < 0 or not parts:
            continue  # dated in the future (a clock is wrong), or no region to compare
        kinds = imaging_kinds(exam.modalities)
        if wanted_kind:
            kinds &= {wanted_kind}
        for kind in sorted(kinds):
            new = parts - warned.get(kind, frozenset())
            if days > window_days(kind) or not new:
                continue
            warned[kind] = warned.get(kind, frozenset()) | parts
            out.append(SimilarExam(exam, kind, exam.regions, days, window_days(kind)))
    return out
