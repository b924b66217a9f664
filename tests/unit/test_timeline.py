"""The timeline's filters and the "similar recent exam" warning, on exams shaped like the
Conso's history entries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import pytest

from drimbox.domain.errors import InvalidInput
from drimbox.domain.timeline import (
    TimelineFilter,
    ago,
    filter_exams,
    newest_first,
    parse_day,
    parse_study_date,
    region_label,
    region_parts,
    similar_recent,
)

TODAY = date(2026, 11, 2)


@dataclass(frozen=True)
class Ex:
    study_uid: str
    date: date | None
    modalities: tuple[str, ...]
    regions: tuple[str, ...]
    site: str = "Imagerie du Grésivaudan"
    accession: str = ""


def days_ago(n: int) -> date:
    return TODAY - timedelta(days=n)


def uids(exams: list[Ex]) -> list[str]:
    return [e.study_uid for e in exams]


# -- similar recent exams -----------------------------------------------------------------


def test_a_ct_of_the_same_region_three_weeks_ago_is_named() -> None:
    ct = Ex("1", date(2026, 10, 12), ("CT", "SR"), ("CHEST",))
    [warning] = similar_recent([ct], TODAY, "CT", "CHEST")
    assert warning.exam is ct and warning.days_ago == 21 and warning.window_days == 90
    assert (
        warning.message
        == "Examen similaire récent : scanner thorax du 12/10/2026 (il y a 3 semaines)"
    )


@pytest.mark.parametrize(
    ("modality", "window"), [("CT", 90), ("MR", 90), ("NM", 90), ("MG", 365), ("US", 30),
                             ("DX", 30), ("CR", 30)],
)  # fmt: skip
def test_the_window_boundary_is_inclusive(modality: str, window: int) -> None:
    on_edge = Ex("edge", days_ago(window), (modality,), ("CHEST",))
    past_edge = Ex("past", days_ago(window + 1), (modality,), ("CHEST",))
    assert uids([w.exam for w in similar_recent([on_edge], TODAY)]) == ["edge"]
    assert similar_recent([past_edge], TODAY) == []


def test_another_region_another_modality_or_no_region_is_not_similar() -> None:
    exams = [
        Ex("knee", days_ago(10), ("MR",), ("KNEE",)),
        Ex("us-chest", days_ago(10), ("US",), ("CHEST",)),
        Ex("no-region", days_ago(5), ("CT",), ()),
        Ex("blank-region", days_ago(5), ("CT",), ("",)),
    ]
    assert similar_recent(exams, TODAY, "CT", "CHEST") == []
    assert similar_recent(exams, TODAY, "MR", "CHEST") == []
    # with nothing planned, each recent exam with a region is a reminder of its own
    assert sorted(uids([w.exam for w in similar_recent(exams, TODAY)])) == ["knee", "us-chest"]


def test_one_warning_per_kind_and_region_the_most_recent() -> None:
    exams = [
        Ex("older", days_ago(40), ("CT",), ("CHEST",)),
        Ex("newer", days_ago(10), ("CT",), ("THORAX",)),
        Ex("mr", days_ago(20), ("MR",), ("CHEST",)),
    ]
    warnings = similar_recent(exams, TODAY)
    assert [(w.exam.study_uid, w.modality) for w in warnings] == [("newer", "CT"), ("mr", "MR")]


def test_overlapping_regions_and_radiography_codes_are_alike() -> None:
    tap = Ex("tap", days_ago(14), ("CT",), ("Thorax-abdomen-pelvis",))
    [w] = similar_recent([tap], TODAY, "CT", "ABDOMEN")
    assert w.exam is tap and w.message.endswith("(il y a 2 semaines)")
    cr = Ex("cr", days_ago(3), ("CR",), ("CHEST",))
    assert uids([w.exam for w in similar_recent([cr], TODAY, "DX", "CHEST")]) == ["cr"]
    brain = Ex("brain", days_ago(30), ("MR",), ("BRAIN",))
    assert uids([w.exam for w in similar_recent([brain], TODAY, "MR", "HEAD")]) == ["brain"]


def test_the_ct_of_a_pet_ct_is_not_a_diagnostic_ct() -> None:
    pet = Ex("pet", days_ago(20), ("PT", "CT"), ("CHESTABDPELVIS",))
    assert similar_recent([pet], TODAY, "CT", "CHEST") == []
    assert uids([w.exam for w in similar_recent([pet], TODAY, "PT", "CHEST")]) == ["pet"]


def test_undated_and_future_exams_give_no_warning() -> None:
    exams = [Ex("undated", None, ("CT",), ("CHEST",)),
             Ex("future", TODAY + timedelta(days=3), ("CT",), ("CHEST",))]  # fmt: skip
    assert similar_recent(exams, TODAY) == []


# -- filters ------------------------------------------------------------------------------

HISTORY = [
    Ex("ct-head-2015", date(2015, 5, 6), ("CT",), ("HEAD",), "Site A", "ACC1"),
    Ex("us-2016", date(2016, 12, 19), ("US",), ("ABDOMEN",), "Site B"),
    Ex("dx-2022", date(2022, 1, 8), ("DX",), ("CHEST",), "Site A"),
    Ex("undated", None, ("CT",), ("CHEST",), "Site B"),
    Ex("tap-2024", date(2024, 3, 1), ("CT", "SR"), ("CHESTABDPELVIS",), "site a"),
]


def test_filters_by_modality_region_site_and_dates() -> None:
    assert uids(filter_exams(HISTORY, TimelineFilter(modality="ct"))) == [
        "tap-2024", "ct-head-2015", "undated"]  # fmt: skip
    assert uids(filter_exams(HISTORY, TimelineFilter(modality="CR"))) == ["dx-2022"]
    assert uids(filter_exams(HISTORY, TimelineFilter(region="abdomen"))) == ["tap-2024", "us-2016"]
    assert uids(filter_exams(HISTORY, TimelineFilter(site="SITE A"))) == [
        "tap-2024", "dx-2022", "ct-head-2015"]  # fmt: skip
    window = TimelineFilter(date_from=date(2016, 12, 19), date_to=date(2022, 1, 8))
    assert uids(filter_exams(HISTORY, window)) == ["dx-2022", "us-2016"]  # bounds included
    assert uids(filter_exams(HISTORY, TimelineFilter(date_to=date(2015, 12, 31)))) == [
        "ct-head-2015"]  # fmt: skip
    assert uids(filter_exams(HISTORY, TimelineFilter(accession="ACC1"))) == ["ct-head-2015"]


def test_unknown_filter_values_match_nothing() -> None:
    assert filter_exams(HISTORY, TimelineFilter(modality="ZZ")) == []
    assert filter_exams(HISTORY, TimelineFilter(region="lune")) == []
    assert filter_exams(HISTORY, TimelineFilter(site="Nulle part")) == []
    everything = filter_exams(HISTORY, TimelineFilter())
    assert len(everything) == len(HISTORY) and not TimelineFilter().active


def test_newest_first_puts_undated_exams_last() -> None:
    assert uids(newest_first(HISTORY)) == [
        "tap-2024", "dx-2022", "us-2016", "ct-head-2015", "undated"]  # fmt: skip


def test_dates_in_every_usual_spelling_and_clear_errors() -> None:
    assert parse_day("2024-03-01", "du") == parse_day("20240301", "du") == date(2024, 3, 1)
    assert parse_day("01/03/2024", "du") == date(2024, 3, 1)
    with pytest.raises(InvalidInput, match="du : date illisible « 2024-13-45 »"):
        parse_day("2024-13-45", "du")
    with pytest.raises(InvalidInput, match="postérieure"):
        TimelineFilter(date_from=date(2024, 3, 2), date_to=date(2024, 3, 1))
    assert parse_study_date("20240301") == (date(2024, 3, 1), date(2024, 3, 1))
    assert parse_study_date("20240101-20240301") == (date(2024, 1, 1), date(2024, 3, 1))
    assert parse_study_date("-20240301") == (None, date(2024, 3, 1))
    assert parse_study_date("20240101-") == (date(2024, 1, 1), None)
    with pytest.raises(InvalidInput):
        parse_study_date("-")
    with pytest.raises(InvalidInput):
        parse_study_date("hier")


def test_region_names_and_how_long_ago() -> None:
    assert region_parts("Abdomen + pelvis") == {"ABDOMEN", "PELVIS"}
    assert region_parts("Lune") == {"LUNE"} and region_parts(" ") == frozenset()
    assert region_label("CHEST") == "thorax" and region_label("Lune") == "Lune"
    assert [ago(d) for d in (0, 1, 5, 21, 95, 800)] == [
        "aujourd'hui", "hier", "il y a 5 jours", "il y a 3 semaines", "il y a 3 mois",
        "il y a 2 ans"]  # fmt: skip
