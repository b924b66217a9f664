"""The development provider's people for tests whose patient must own a test exam."""

from __future__ import annotations

from pathlib import Path

from drimbox.adapters.oidc.people import BUILT_IN, People
from tests.source_exams import Exam


def people_with_exam_patient(folder: Path, exam: Exam) -> Path:
    """A people file: the built-in people plus ``patient-examen``, the patient of ``exam``."""
    mine = BUILT_IN.patients[1].model_copy(update={
        "id": "patient-examen", "ins": exam.record["patient_ins"],
        "ins_oid": exam.record["ins_oid"]})  # fmt: skip
    people = People(professionals=BUILT_IN.professionals, patients=[*BUILT_IN.patients, mine])
    path = folder / "people.json"
    path.write_text(people.model_dump_json())
    return path
