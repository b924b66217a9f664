"""``drimbox synth``: write a synthetic multi-site imaging history to disk.

Layout under ``out_dir``::

    manifest.json                                   everything below, cross-referenced
    <site-id>/dicom/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm
    <site-id>/hl7/<accession>-ORU.hl7, -MDM.hl7     the RIS messages (and -v2 corrections)
    <site-id>/reports/<accession>-v<N>.xml, .txt    the CDA of each report version, its text

Every value derives from ``seed`` through named ``random.Random`` streams (sites, patients,
one per exam), never from the clock, so two runs with the same arguments write identical
bytes. Each patient gets 3 to 8 exams between 2014 and the reference date, spread over
several sites; about one report in eight is later corrected (version 2). A corrected report's
messages are listed with their exam but sent days later: replay messages in ``sent`` order.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Literal

from drimbox.synth.cda import ReportDocument, make_report
from drimbox.synth.hl7 import MessageKind, build_message
from drimbox.synth.patients import REFERENCE_DATE, Patient, make_patients
from drimbox.synth.sites import Physician, Site, make_physician, make_sites
from drimbox.synth.studies import (
    EXAM_TYPES,
    Exam,
    SeriesPlan,
    choose_exam_type,
    new_uid,
    plan_exam,
    write_exam,
)

MessageChoice = Literal["ORU", "MDM", "both"]

HISTORY_START = date(2014, 1, 1)
CORRECTION_RATE = 0.12


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    series_uid: str
    series_number: int
    modality: str
    description: str
    sop_class_uid: str
    instance_count: int
    sop_instance_uids: list[str]
    files: list[str]


@dataclass(frozen=True, slots=True)
class ReportRecord:
    version: int
    document_id: str
    set_id: str
    replaces: str | None
    authored: str
    cda: str
    text: str


@dataclass(frozen=True, slots=True)
class MessageRecord:
    kind: str
    event: str
    control_id: str
    sent: str
    path: str


@dataclass(frozen=True, slots=True)
class ExamRecord:
    site: str
    patient_ins: str
    ins_oid: str
    ipp: str
    ipp_oid: str
    study_uid: str
    accession: str
    accession_oid: str
    order_number: str
    order_oid: str
    modality: str
    body_part: str
    description: str
    procedure_code: str
    study_date: str
    study_time: str
    radiologist_rpps: str
    instance_count: int
    series: list[SeriesRecord]
    reports: list[ReportRecord]
    hl7_messages: list[MessageRecord]


@dataclass(frozen=True, slots=True)
class PatientRecord:
    ins: str
    ins_oid: str
    birth_family: str
    given_names: list[str]
    used_family: str | None
    birth_date: str
    sex: str
    birthplace_code: str
    birthplace_name: str
    ipps: dict[str, str]


@dataclass(frozen=True, slots=True)
class RadiologistRecord:
    family: str
    given: str
    rpps: str
    idnat: str


@dataclass(frozen=True, slots=True)
class SiteRecord:
    id: str
    name: str
    ae_title: str
    finess: str
    structure_id: str
    oid_root: str
    ipp_oid: str
    accession_oid: str
    order_oid: str
    ris_application: str
    radiologists: list[RadiologistRecord]


@dataclass(slots=True)
class SynthManifest:
    seed: int
    size: str
    message_type: str
    reference_date: str
    sites: list[SiteRecord] = field(default_factory=list)
    patients: list[PatientRecord] = field(default_factory=list)
    exams: list[ExamRecord] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=2) + "\n"


def _site_record(site: Site) -> SiteRecord:
    return SiteRecord(
        id=site.id,
        name=site.name,
        ae_title=site.ae_title,
        finess=site.finess,
        structure_id=site.structure_id,
        oid_root=site.oid_root,
        ipp_oid=site.ipp_oid,
        accession_oid=site.accession_oid,
        order_oid=site.order_oid,
        ris_application=site.ris_application,
        radiologists=[
            RadiologistRecord(d.family, d.given, d.rpps, d.idnat) for d in site.radiologists
        ],
    )


def _patient_record(p: Patient) -> PatientRecord:
    return PatientRecord(
        ins=p.ins.value,
        ins_oid=p.ins.oid,
        birth_family=p.birth_family,
        given_names=list(p.given_names),
        used_family=p.used_family,
        birth_date=p.birth_date.isoformat(),
        sex=p.sex,
        birthplace_code=p.birthplace_code,
        birthplace_name=p.birthplace_name,
        ipps=dict(p.ipps),
    )


@dataclass(frozen=True, slots=True)
class _Slot:
    when: datetime
    patient_index: int
    exam_index: int
    site: Site


def _schedule(rng: random.Random, index: int, patient: Patient, sites: list[Site]) -> list[_Slot]:
    """3-8 exam dates of an adult patient, at a home site and elsewhere (at least two sites)."""
    adult = date(patient.birth_date.year + 18, patient.birth_date.month, 1)
    last = REFERENCE_DATE - timedelta(days=7)
    first = min(max(HISTORY_START, adult), last - timedelta(days=365))
    count = rng.randint(3, 8)
    days = sorted(rng.sample(range((last - first).days), count))
    home = rng.choice(sites)
    chosen = [home if rng.random() < 0.5 else rng.choice(sites) for _ in days]
    if len(sites) > 1 and len(set(s.id for s in chosen)) == 1:
        chosen[rng.randrange(count)] = rng.choice([s for s in sites if s.id != home.id])
    slots = []
    for j, (offset, site) in enumerate(zip(days, chosen, strict=True)):
        clock = time(rng.randint(8, 18), rng.randrange(0, 60, 5), rng.randrange(60))
        slots.append(_Slot(datetime.combine(first + timedelta(days=offset), clock), index, j, site))
    return slots


@dataclass(slots=True)
class _Counters:
    """Per-site sequences, consumed in chronological order like a real RIS."""

    exams: int = 0
    documents: int = 0
    messages: int = 0


class _Writer:
    def __init__(self, out_dir: Path, kinds: tuple[MessageKind, ...]) -> None:
        self.out_dir = out_dir
        self.kinds = kinds
        self.counters: dict[str, _Counters] = {}

    def rel(self, path: Path) -> str:
        return path.relative_to(self.out_dir).as_posix()

    def report(self, report: ReportDocument) -> ReportRecord:
        folder = self.out_dir / report.exam.site.id / "reports"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{report.exam.accession}-v{report.version}"
        (folder / f"{stem}.xml").write_bytes(report.xml)
        (folder / f"{stem}.txt").write_bytes(report.text.encode("utf-8"))
        return ReportRecord(
            version=report.version,
            document_id=report.document_id,
            set_id=report.set_id,
            replaces=report.replaces,
            authored=report.authored.isoformat(),
            cda=self.rel(folder / f"{stem}.xml"),
            text=self.rel(folder / f"{stem}.txt"),
        )

    def messages(self, report: ReportDocument, counters: _Counters) -> list[MessageRecord]:
        site = report.exam.site
        folder = self.out_dir / site.id / "hl7"
        folder.mkdir(parents=True, exist_ok=True)
        event: Literal["new", "correction"] = "new" if report.version == 1 else "correction"
        suffix = "" if report.version == 1 else f"-v{report.version}"
        records = []
        for kind in self.kinds:
            counters.messages += 1
            control_id = f"{site.short}{counters.messages:08d}"
            sent = report.authored + timedelta(seconds=30)
            text = build_message(report, kind, event, control_id=control_id, sent=sent)
            path = folder / f"{report.exam.accession}-{kind}{suffix}.hl7"
            path.write_bytes(text.encode("utf-8"))
            records.append(MessageRecord(kind, event, control_id, sent.isoformat(), self.rel(path)))
        return records

    def exam(self, exam: Exam, rng: random.Random) -> ExamRecord:
        counters = self.counters.setdefault(exam.site.id, _Counters())
        written = write_exam(exam, self.out_dir / exam.site.id / "dicom")
        series = [
            SeriesRecord(
                series_uid=s.uid,
                series_number=s.number,
                modality=s.modality,
                description=s.description,
                sop_class_uid=s.sop_class_uid,
                instance_count=s.count,
                sop_instance_uids=list(s.sop_uids),
                files=[self.rel(p) for p in written[s.uid]],
            )
            for s in exam.series
        ]
        site = exam.site
        counters.documents += 1
        set_id = f"{site.set_oid}.{counters.exams}"
        authored = exam.end + timedelta(minutes=rng.randint(20, 180))
        if rng.random() < 0.3:  # read the next day, during working hours
            next_day = exam.end.date() + timedelta(days=1)
            authored = datetime.combine(next_day, time(rng.randint(8, 17), rng.randrange(60)))
        versions = [
            make_report(
                exam,
                document_id=f"{site.document_oid}.{counters.documents}",
                set_id=set_id,
                authored=authored,
            )
        ]
        if rng.random() < CORRECTION_RATE:
            counters.documents += 1
            versions.append(
                make_report(
                    exam,
                    document_id=f"{site.document_oid}.{counters.documents}",
                    set_id=set_id,
                    authored=authored + timedelta(days=rng.randint(1, 6), hours=rng.randint(0, 8)),
                    version=2,
                    replaces=versions[0].document_id,
                )
            )
        reports = [self.report(r) for r in versions]
        messages = [m for r in versions for m in self.messages(r, counters)]
        p = exam.patient
        return ExamRecord(
            site=site.id,
            patient_ins=p.ins.value,
            ins_oid=p.ins.oid,
            ipp=exam.ipp,
            ipp_oid=site.ipp_oid,
            study_uid=exam.study_uid,
            accession=exam.accession,
            accession_oid=site.accession_oid,
            order_number=exam.order_number,
            order_oid=site.order_oid,
            modality=exam.modality,
            body_part=exam.exam_type.body_part,
            description=exam.exam_type.description,
            procedure_code=exam.exam_type.loinc[0],
            study_date=exam.start.strftime("%Y%m%d"),
            study_time=exam.start.strftime("%H%M%S"),
            radiologist_rpps=exam.radiologist.rpps,
            instance_count=exam.instance_count,
            series=series,
            reports=reports,
            hl7_messages=messages,
        )


def _general_practitioners(seed: int) -> list[Physician]:
    rng = random.Random(f"{seed}:general-practitioners")
    return [make_physician(rng) for _ in range(24)]


def generate_history(
    out_dir: Path,
    patients: int,
    sites: int,
    seed: int,
    size: Literal["realistic", "medium", "small"] = "realistic",
    message_type: Literal["ORU", "MDM", "both"] = "both",
) -> SynthManifest:
    """Write the imaging history of ``patients`` patients across ``sites`` sites."""
    if patients < 0:
        raise ValueError("the number of patients cannot be negative")
    kinds: tuple[MessageKind, ...] = ("ORU", "MDM") if message_type == "both" else (message_type,)
    out_dir.mkdir(parents=True, exist_ok=True)
    site_list = make_sites(sites, seed)
    people = make_patients(patients, site_list, seed)
    gps = _general_practitioners(seed)
    manifest = SynthManifest(seed, size, message_type, REFERENCE_DATE.isoformat())
    manifest.sites = [_site_record(s) for s in site_list]
    manifest.patients = [_patient_record(p) for p in people]
    slots = [
        slot
        for i, patient in enumerate(people)
        for slot in _schedule(random.Random(f"{seed}:schedule:{i}"), i, patient, site_list)
    ]
    slots.sort(key=lambda s: (s.when, s.patient_index, s.exam_index))
    writer = _Writer(out_dir, kinds)
    for slot in slots:
        rng = random.Random(f"{seed}:exam:{slot.patient_index}:{slot.exam_index}")
        patient, site = people[slot.patient_index], slot.site
        counters = writer.counters.setdefault(site.id, _Counters())
        counters.exams += 1
        n = counters.exams
        exam = plan_exam(
            rng,
            choose_exam_type(rng, patient, slot.when),
            patient,
            site,
            slot.when,
            size,
            accession=f"{site.number:02d}{slot.when:%y}{n:06d}",
            order_number=f"DEM{slot.when:%y}{n:07d}",
            visit_number=f"{site.number:02d}{n:08d}",
            study_id=f"{n}",
            referring=gps[slot.patient_index % len(gps)] if rng.random() < 0.7 else rng.choice(gps),
        )
        manifest.exams.append(writer.exam(exam, rng))
    (out_dir / "manifest.json").write_bytes(manifest.to_json().encode("utf-8"))
    return manifest


def write_ct_study(
    out_dir: Path, slices: int = 500, rows: int = 512, columns: int = 512, seed: int = 0
) -> list[Path]:
    """One patient, one CT study with a single axial series; returns files in slice order.

    Files go to ``out_dir/dicom/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``. Meant for
    benchmarks (a 500 x 512 x 512 study is about 260 MB).
    """
    return write_ct_exam(out_dir, slices, rows, columns, seed).files


@dataclass(frozen=True)
class CtExam:
    files: list[Path]
    study_uid: str
    patient_ins: str
    ins_oid: str
    oru: bytes
    """The RIS's ORU^R01 for its validated report (what makes a box publish it)."""


def write_ct_exam(
    out_dir: Path, slices: int = 500, rows: int = 512, columns: int = 512, seed: int = 0
) -> CtExam:
    """:func:`write_ct_study`, with the report message that publishes it."""
    if slices < 1:
        raise ValueError("a CT series needs at least one slice")
    site = make_sites(1, seed)[0]
    patient = make_patients(1, [site], seed)[0]
    rng = random.Random(f"{seed}:ct-study")
    start = datetime(2024, 3, 12, 9, 30) + timedelta(minutes=rng.randrange(600))
    series = SeriesPlan(
        uid=new_uid(rng),
        number=2,
        description="Thorax-abdomen-pelvis 1.25 mm",
        modality="CT",
        kind="ct",
        count=slices,
        rows=rows,
        cols=columns,
        pixel_spacing=round(400.0 / columns, 4),
        sop_uids=tuple(new_uid(rng) for _ in range(slices)),
        anatomy="trunk",
        z_range=(1.0, 0.0),
        spacing=1.25,
        contrast=True,
        window=(50.0, 350.0),
        start=start,
    )
    exam = Exam(
        exam_type=EXAM_TYPES["ct_abdo_pelvis"],
        modality="CT",
        patient=patient,
        site=site,
        radiologist=site.radiologists[0],
        referring=make_physician(rng),
        study_uid=new_uid(rng),
        frame_of_reference_uid=new_uid(rng),
        accession=f"{site.number:02d}{start:%y}000001",
        order_number=f"DEM{start:%y}0000001",
        visit_number=f"{site.number:02d}00000001",
        study_id="1",
        start=start,
        end=start + timedelta(minutes=12),
        series=(series,),
        pixel_seed=rng.getrandbits(32),
    )
    files = write_exam(exam, out_dir / "dicom")[series.uid]
    authored = exam.end + timedelta(minutes=30)
    report = make_report(exam, document_id=f"{site.document_oid}.1", set_id=f"{site.set_oid}.1",
                         authored=authored)  # fmt: skip
    oru = build_message(report, "ORU", "new", control_id="CT0001",
                        sent=authored + timedelta(minutes=1))  # fmt: skip
    return CtExam(files, exam.study_uid, patient.ins.value, patient.ins.oid,
                  oru.encode("utf-8"))  # fmt: skip
