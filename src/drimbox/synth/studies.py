"""Imaging exams: catalogue, series planning, DICOM datasets and files.

An :class:`Exam` is planned first (UIDs, series and instance counts, geometry, dates), entirely
from a seeded ``random.Random``; pixels and datasets are produced from the plan afterwards, so
the manifest, the DICOM files, the CDA and the HL7 messages all describe the same exam.

Patient identification follows what a French PACS holds: ``PatientID`` is the site's IPP with
its issuer, and the INS travels in ``OtherPatientIDsSequence`` qualified by the INS OID (what the
DRIMbox adds on import and what the KOS uses).

Procedure codes (LOINC) are checked against public references; anatomic regions use SNOMED CT
concepts as the CI-SIS region value set does. They are illustrative, not a conformance test set.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    NuclearMedicineImageStorage,
    UltrasoundImageStorage,
)

from drimbox.synth import images
from drimbox.synth.patients import Patient
from drimbox.synth.sites import Physician, Site

Size = Literal["realistic", "medium", "small"]
Orientation = Literal["AX", "COR", "SAG"]
SeriesKind = Literal["ct", "ct_localizer", "mr", "projection", "mammo", "us", "nm"]

IMPLEMENTATION_CLASS_UID = "2.25." + str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:drimbox:synth").int)
IMPLEMENTATION_VERSION_NAME = "DRIMBOX_SYNTH_1"
MANUFACTURER = "DRIMBOX SYNTH"
INS_ISSUER_NAME = "ASIP-SANTE-INS-NIR"

SOP_CLASSES: dict[str, str] = {
    "CT": str(CTImageStorage),
    "MR": str(MRImageStorage),
    "CR": str(ComputedRadiographyImageStorage),
    "DX": str(DigitalXRayImageStorageForPresentation),
    "MG": str(DigitalMammographyXRayImageStorageForPresentation),
    "US": str(UltrasoundImageStorage),
    "NM": str(NuclearMedicineImageStorage),
}
MODALITY_NAMES: dict[str, str] = {
    "CT": "Tomodensitométrie",
    "MR": "Imagerie par résonance magnétique",
    "CR": "Radiographie numérisée",
    "DX": "Radiographie numérique",
    "MG": "Mammographie",
    "US": "Échographie",
    "NM": "Médecine nucléaire",
}


def new_uid(rng: random.Random) -> str:
    """A ``2.25`` UID (PS3.5 B.2) from 128 random bits shaped as a UUID v4: deterministic."""
    return "2.25." + str(uuid.UUID(int=rng.getrandbits(128), version=4).int)


@dataclass(frozen=True, slots=True)
class ExamType:
    key: str
    modalities: tuple[str, ...]
    """Acquisition modalities this exam may use (CR or DX for radiographs)."""
    description: str
    body_part: str
    loinc: tuple[str, str]
    region: tuple[str, str]
    """SNOMED CT anatomic region (code, French display)."""
    indications: tuple[str, ...]
    findings: tuple[tuple[str, str], ...]
    """(results, conclusion) variants for the report."""
    weight: float = 1.0


EXAM_TYPES: dict[str, ExamType] = {
    t.key: t
    for t in (
        ExamType(
            "ct_chest", ("CT",), "Scanner thoracique", "CHEST", ("24627-2", "CT Chest"),
            ("51185008", "Structure thoracique"),
            ("Toux persistante.", "Bilan d'extension.", "Suivi de nodule pulmonaire."),
            (
                ("Pas de nodule ni de masse pulmonaire. Pas d'épanchement pleural. Médiastin "
                 "sans adénomégalie.", "Scanner thoracique sans anomalie significative."),
                ("Micronodule de 4 mm du lobe supérieur droit, non spécifique. Absence "
                 "d'épanchement.", "Micronodule infracentimétrique ; contrôle à 12 mois."),
                ("Emphysème centrolobulaire des apex. Pas de lésion tumorale visible.",
                 "Emphysème centrolobulaire modéré."),
            ),
            1.4,
        ),
        ExamType(
            "ct_head", ("CT",), "Scanner cérébral sans injection", "HEAD", ("24725-4", "CT Head"),
            ("69536005", "Structure de la tête"),
            ("Céphalées inhabituelles.", "Chute avec traumatisme crânien.", "Vertiges."),
            (
                ("Pas d'hémorragie intra ou extra-axiale. Pas d'effet de masse. Système "
                 "ventriculaire de taille normale.", "Pas d'anomalie intracrânienne décelable."),
                ("Leucopathie vasculaire périventriculaire modérée. Pas de saignement.",
                 "Leucopathie d'allure vasculaire, sans lésion aiguë."),
            ),
        ),
        ExamType(
            "ct_head_iv", ("CT",), "Scanner cérébral avec injection", "HEAD",
            ("24727-0", "CT Head W contrast IV"), ("69536005", "Structure de la tête"),
            ("Bilan d'une lésion cérébrale connue.", "Recherche de métastases."),
            (
                ("Pas de prise de contraste anormale. Pas d'effet de masse.",
                 "Absence de lésion expansive intracrânienne."),
                ("Méningiome frontal droit de 12 mm, stable.", "Méningiome stable."),
            ),
            0.5,
        ),
        ExamType(
            "ct_abdo_pelvis", ("CT",), "Scanner abdomino-pelvien avec injection", "ABDOMEN",
            ("36813-4", "CT Abdomen and Pelvis W contrast IV"),
            ("818981001", "Structure abdominale"),
            ("Douleurs abdominales.", "Bilan d'extension.", "Syndrome inflammatoire."),
            (
                ("Foie, rate, pancréas et reins sans anomalie. Pas d'épanchement "
                 "péritonéal.", "Scanner abdomino-pelvien normal."),
                ("Kyste biliaire simple du segment VII de 15 mm. Diverticulose sigmoïdienne "
                 "non compliquée.", "Kyste hépatique simple ; diverticulose non compliquée."),
            ),
            1.2,
        ),
        ExamType(
            "mr_brain", ("MR",), "IRM cérébrale", "BRAIN", ("24590-2", "MR Brain"),
            ("12738006", "Structure cérébrale"),
            ("Céphalées chroniques.", "Troubles mnésiques.", "Suivi de sclérose en plaques."),
            (
                ("Pas d'anomalie de signal du parenchyme. Pas de restriction de la "
                 "diffusion.", "IRM cérébrale normale."),
                ("Quelques hypersignaux FLAIR punctiformes de la substance blanche.",
                 "Hypersignaux non spécifiques, d'allure vasculaire."),
            ),
        ),
        ExamType(
            "mr_knee", ("MR",), "IRM du genou", "KNEE", ("24802-1", "MR Knee"),
            ("72696002", "Structure de la région du genou"),
            ("Gonalgie après torsion.", "Blocage du genou.", "Douleur méniscale."),
            (
                ("Fissure horizontale de la corne postérieure du ménisque médial. Ligaments "
                 "croisés intacts.", "Lésion méniscale médiale de grade 3."),
                ("Ménisques et ligaments sans anomalie. Discret épanchement.",
                 "Pas de lésion méniscoligamentaire."),
            ),
        ),
        ExamType(
            "xr_chest_2v", ("DX", "CR"), "Radiographie thoracique de face et de profil", "CHEST",
            ("24647-0", "XR Chest PA and Lateral upright"), ("51185008", "Structure thoracique"),
            ("Toux fébrile.", "Dyspnée.", "Bilan préopératoire."),
            (
                ("Pas de foyer parenchymateux. Culs-de-sac pleuraux libres. Silhouette "
                 "cardiaque normale.", "Radiographie thoracique normale."),
                ("Opacité alvéolaire basale droite.", "Aspect de pneumopathie basale droite."),
            ),
            1.2,
        ),
        ExamType(
            "xr_chest_pa", ("DX", "CR"), "Radiographie thoracique de face", "CHEST",
            ("24648-8", "XR Chest PA upright"), ("51185008", "Structure thoracique"),
            ("Contrôle après pneumopathie.", "Bilan préopératoire."),
            (
                ("Pas d'anomalie pleuroparenchymateuse.", "Radiographie thoracique normale."),
                ("Régression de l'opacité basale droite.", "Évolution favorable."),
            ),
        ),
        ExamType(
            "mg_screening", ("MG",), "Mammographie de dépistage bilatérale", "BREAST",
            ("24606-6", "MG Breast Screening"), ("76752008", "Structure du sein"),
            ("Dépistage organisé du cancer du sein.",),
            (
                ("Seins de densité B. Pas de masse, pas de foyer de microcalcifications "
                 "suspect.", "ACR 1 bilatéral. Prochain dépistage dans deux ans."),
                ("Seins de densité C. Microcalcifications rondes éparses bilatérales.",
                 "ACR 2 bilatéral."),
            ),
        ),
        ExamType(
            "us_abdomen", ("US",), "Échographie abdominale", "ABDOMEN",
            ("24558-9", "US Abdomen"), ("818981001", "Structure abdominale"),
            ("Douleurs de l'hypochondre droit.", "Perturbation du bilan hépatique."),
            (
                ("Foie de taille normale, homogène. Vésicule alithiasique. Reins sans "
                 "dilatation.", "Échographie abdominale normale."),
                ("Foie hyperéchogène homogène. Vésicule lithiasique sans signe de "
                 "cholécystite.", "Stéatose hépatique ; lithiase vésiculaire non compliquée."),
            ),
            1.1,
        ),
        ExamType(
            "nm_thyroid", ("NM",), "Scintigraphie thyroïdienne", "THYROID",
            ("25007-6", "NM Thyroid gland Views W I-131 IV"),
            ("69748006", "Structure de la glande thyroïde"),
            ("Hyperthyroïdie.", "Nodule thyroïdien."),
            (
                ("Fixation homogène des deux lobes, sans nodule chaud ni froid.",
                 "Scintigraphie thyroïdienne normale."),
                ("Nodule hyperfixant du lobe droit avec extinction partielle du "
                 "parenchyme.", "Nodule toxique du lobe droit."),
            ),
            0.4,
        ),
    )
}  # fmt: skip


def choose_exam_type(rng: random.Random, patient: Patient, day: datetime) -> ExamType:
    """Pick a plausible exam for this patient on this day (mammography for women 40+)."""
    age = patient.age_on(day.date())
    weights: list[float] = []
    for t in EXAM_TYPES.values():
        w = t.weight
        if t.key == "mg_screening":
            w = 2.5 if patient.sex == "F" and age >= 40 else 0.0
        weights.append(w)
    return rng.choices(list(EXAM_TYPES.values()), weights)[0]


@dataclass(frozen=True, slots=True)
class SeriesPlan:
    uid: str
    number: int
    description: str
    modality: str
    kind: SeriesKind
    count: int
    rows: int
    cols: int
    pixel_spacing: float
    sop_uids: tuple[str, ...]
    start: datetime
    orientation: Orientation = "AX"
    anatomy: images.Anatomy = "trunk"
    z_range: tuple[float, float] = (0.0, 1.0)
    spacing: float = 0.0
    """Distance between slice centres (mm); 0 for single images."""
    contrast: bool = False
    weighting: images.Weighting = "T1"
    projection: images.ProjectionKind = "chest_pa"
    views: tuple[tuple[str, str], ...] = ()
    """(laterality, view position) per instance: MG views, radiograph views."""
    window: tuple[float, float] = (40.0, 400.0)

    @property
    def sop_class_uid(self) -> str:
        return SOP_CLASSES[self.modality]


@dataclass(frozen=True, slots=True)
class Exam:
    exam_type: ExamType
    modality: str
    patient: Patient
    site: Site
    radiologist: Physician
    referring: Physician
    study_uid: str
    frame_of_reference_uid: str
    accession: str
    order_number: str
    visit_number: str
    study_id: str
    start: datetime
    """Local (Europe/Paris) wall-clock time the acquisition started."""
    end: datetime
    series: tuple[SeriesPlan, ...]
    pixel_seed: int

    @property
    def ipp(self) -> str:
        return self.patient.ipp(self.site)

    @property
    def instance_count(self) -> int:
        return sum(s.count for s in self.series)


@dataclass(frozen=True, slots=True)
class _SeriesSpec:
    """What to acquire, before UIDs and times are drawn."""

    description: str
    kind: SeriesKind
    count: int
    matrix: tuple[int, int]
    fov: float
    orientation: Orientation = "AX"
    anatomy: images.Anatomy = "trunk"
    z_range: tuple[float, float] = (0.0, 1.0)
    thickness: float = 0.0
    contrast: bool = False
    weighting: images.Weighting = "T1"
    projection: images.ProjectionKind = "chest_pa"
    views: tuple[tuple[str, str], ...] = ()
    window: tuple[float, float] = (40.0, 400.0)


def _count(rng: random.Random, size: Size, low: int, high: int) -> int:
    """Slices of a stack: realistic ranges, at most 16 in the medium size (real matrices, a
    demo that starts in a minute), at most five in the small size."""
    if size == "realistic":
        return rng.randint(low, high)
    if size == "medium":
        return rng.randint(min(8, low), min(16, high))
    return rng.randint(min(3, low), 5)


def _ct_specs(rng: random.Random, key: str, size: Size) -> list[_SeriesSpec]:
    m = (64, 64) if size == "small" else (512, 512)
    anatomy: images.Anatomy
    loc: images.ProjectionKind
    if key == "ct_chest":
        anatomy, z, loc, fov, window = "trunk", (1.0, 0.48), "chest_pa", 360.0, (-600.0, 1500.0)
    elif key == "ct_abdo_pelvis":
        anatomy, z, loc, fov, window = "trunk", (0.62, -0.02), "abdomen", 380.0, (50.0, 350.0)
    else:
        anatomy, z, loc, fov, window = "head", (0.0, 1.0), "head", 240.0, (40.0, 80.0)
    contrast = key in {"ct_head_iv", "ct_abdo_pelvis"}
    thin_mm = {"ct_chest": 1.0, "ct_abdo_pelvis": 1.25}.get(key, 0.625)
    coverage = {"trunk": 650.0, "head": 150.0}[anatomy] * abs(z[1] - z[0])
    thin = round(coverage / thin_mm)
    specs = [
        _SeriesSpec("Topogramme", "ct_localizer", 1, m, 500.0, "COR", projection=loc),
        _SeriesSpec(
            f"{'Parenchyme' if key == 'ct_chest' else 'Acquisition'} {thin_mm:g} mm",
            "ct",
            _count(rng, size, int(thin * 0.85), thin),
            m,
            fov,
            anatomy=anatomy,
            z_range=z,
            thickness=thin_mm,
            contrast=contrast,
            window=window,
        ),
    ]
    if rng.random() < 0.7:
        trunk = anatomy == "trunk"
        specs.append(
            _SeriesSpec(
                "Fenêtre tissus mous 5 mm" if trunk else "Parenchyme cérébral 5 mm",
                "ct",
                _count(rng, size, int(coverage / 5.5), round(coverage / 5)),
                m,
                fov,
                anatomy=anatomy,
                z_range=z,
                thickness=5.0,
                contrast=contrast,
                window=(40.0, 400.0) if trunk else (40.0, 80.0),
            )
        )
    if rng.random() < 0.4:
        specs.append(
            _SeriesSpec(
                "MPR coronale",
                "ct",
                _count(rng, size, 50, 90),
                m,
                fov,
                "COR",
                anatomy=anatomy,
                z_range=z,
                thickness=3.0,
                contrast=contrast,
                window=(40.0, 400.0),
            )
        )
    return specs


_MR_PROTOCOLS: dict[str, tuple[tuple[str, images.Weighting, Orientation], ...]] = {
    "mr_brain": (
        ("SAG T1", "T1", "SAG"), ("AX T2 FSE", "T2", "AX"), ("AX FLAIR", "FLAIR", "AX"),
        ("AX DIFFUSION b1000", "DWI", "AX"), ("AX T1 GADO", "T1C", "AX"), ("COR T2", "T2", "COR"),
    ),
    "mr_knee": (
        ("SAG DP FS", "PDFS", "SAG"), ("COR DP FS", "PDFS", "COR"), ("COR T1", "T1", "COR"),
        ("AX DP FS", "PDFS", "AX"), ("SAG T2", "T2", "SAG"), ("SAG T1", "T1", "SAG"),
    ),
}  # fmt: skip


def _mr_specs(rng: random.Random, key: str, size: Size) -> list[_SeriesSpec]:
    m = (64, 64) if size == "small" else (256, 256)
    protocol = _MR_PROTOCOLS[key]
    chosen = list(protocol[:3]) + rng.sample(protocol[3:], rng.randint(0, len(protocol) - 3))
    anatomy: images.Anatomy = "head" if key == "mr_brain" else "knee"
    fov = 230.0 if key == "mr_brain" else 160.0
    thickness = 4.0 if key == "mr_brain" else 3.0
    return [
        _SeriesSpec(
            name, "mr", _count(rng, size, 20, 40), m, fov, orientation, anatomy,
            (0.05, 0.95) if anatomy == "head" else (0.1, 0.9), thickness,
            weighting=weighting, window=(600.0, 1200.0),
        )
        for name, weighting, orientation in chosen
    ]  # fmt: skip


def _series_specs(rng: random.Random, exam_type: ExamType, size: Size) -> list[_SeriesSpec]:
    key = exam_type.key
    realistic = size == "realistic"
    medium = size == "medium"
    if key.startswith("ct_"):
        return _ct_specs(rng, key, size)
    if key.startswith("mr_"):
        return _mr_specs(rng, key, size)
    if key.startswith("xr_"):
        m = (2500, 2048) if realistic else (1250, 1024) if medium else (128, 104)
        specs = [_SeriesSpec("Thorax face", "projection", 1, m, 430.0, views=(("U", "PA"),),
                             window=(2048.0, 4096.0))]  # fmt: skip
        if key == "xr_chest_2v":
            specs.append(
                _SeriesSpec("Thorax profil", "projection", 1, m, 430.0, projection="chest_lat",
                            views=(("U", "LL"),), window=(2048.0, 4096.0))
            )  # fmt: skip
        return specs
    if key == "mg_screening":
        m = (2500, 2000) if realistic else (1250, 1000) if medium else (128, 104)
        views = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
        return [_SeriesSpec("Mammographie de dépistage", "mammo", 4, m, 240.0, views=views,
                            window=(2048.0, 4096.0))]  # fmt: skip
    if key == "us_abdomen":
        m = (60, 80) if size == "small" else (480, 640)
        return [_SeriesSpec("Échographie abdominale", "us", _count(rng, size, 10, 30), m, 160.0,
                            window=(128.0, 256.0))]  # fmt: skip
    m = (64, 64) if size == "small" else (128, 128)
    specs = [_SeriesSpec("Thyroïde statique antérieure", "nm", 1, m, 250.0, window=(70.0, 140.0))]
    if rng.random() < 0.5:
        specs.append(_SeriesSpec("Thyroïde obliques", "nm", 2, m, 250.0, window=(70.0, 140.0)))
    return specs


def plan_exam(
    rng: random.Random,
    exam_type: ExamType,
    patient: Patient,
    site: Site,
    start: datetime,
    size: Size,
    *,
    accession: str,
    order_number: str,
    visit_number: str,
    study_id: str,
    referring: Physician,
) -> Exam:
    """Draw everything about one exam (UIDs, series, counts, times) from ``rng``."""
    modality = rng.choice(exam_type.modalities)
    series: list[SeriesPlan] = []
    clock = start
    for number, spec in enumerate(_series_specs(rng, exam_type, size), start=1):
        uid = new_uid(rng)
        sop_uids = tuple(new_uid(rng) for _ in range(spec.count))
        spacing = spec.thickness if spec.count > 1 else 0.0
        series.append(
            SeriesPlan(
                uid=uid,
                number=number,
                description=spec.description,
                modality=modality,
                kind=spec.kind,
                count=spec.count,
                rows=spec.matrix[0],
                cols=spec.matrix[1],
                pixel_spacing=round(spec.fov / spec.matrix[1], 4),
                sop_uids=sop_uids,
                orientation=spec.orientation,
                anatomy=spec.anatomy,
                z_range=spec.z_range,
                spacing=spacing,
                contrast=spec.contrast,
                weighting=spec.weighting,
                projection=spec.projection,
                views=spec.views,
                window=spec.window,
                start=clock,
            )
        )
        clock += timedelta(seconds=rng.randint(40, 420))
    return Exam(
        exam_type=exam_type,
        modality=modality,
        patient=patient,
        site=site,
        radiologist=rng.choice(site.radiologists),
        referring=referring,
        study_uid=new_uid(rng),
        frame_of_reference_uid=new_uid(rng),
        accession=accession,
        order_number=order_number,
        visit_number=visit_number,
        study_id=study_id,
        start=start,
        end=clock + timedelta(minutes=rng.randint(2, 10)),
        series=tuple(series),
        pixel_seed=rng.getrandbits(32),
    )


# --- pixels -------------------------------------------------------------------------------


def series_pixels(exam: Exam, series: SeriesPlan) -> Iterator[npt.NDArray[np.generic]]:
    """The pixel arrays of ``series``, one per instance, in instance order."""
    seed = exam.pixel_seed ^ (series.number * 0x9E3779B1)
    rows, cols, n = series.rows, series.cols, series.count
    if series.kind == "ct":
        yield from images.ct_slices(
            series.anatomy, rows, cols, n, series.z_range, seed, contrast=series.contrast
        )
    elif series.kind == "mr":
        yield from images.mr_slices(
            series.anatomy, rows, cols, n, series.z_range, series.weighting, seed
        )
    elif series.kind in {"ct_localizer", "projection"}:
        yield images.projection(series.projection, rows, cols, seed)
    elif series.kind == "mammo":
        for i, (laterality, view) in enumerate(series.views):
            lat: Literal["R", "L"] = "R" if laterality == "R" else "L"
            pos: Literal["CC", "MLO"] = "CC" if view == "CC" else "MLO"
            yield images.mammogram(rows, cols, lat, pos, seed + i)
    elif series.kind == "us":
        yield from images.ultrasound_frames(rows, cols, n, seed)
    else:
        for i in range(n):
            yield images.nm_image(rows, cols, seed + i, oblique=series.number > 1)


# --- datasets -----------------------------------------------------------------------------

_IOP: dict[Orientation, tuple[float, float, float, float, float, float]] = {
    "AX": (1, 0, 0, 0, 1, 0),
    "COR": (1, 0, 0, 0, 0, -1),
    "SAG": (0, 1, 0, 0, 0, -1),
}


def _normal(iop: Sequence[float]) -> tuple[float, float, float]:
    r, c = iop[:3], iop[3:]
    return (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])


def _ds_value(v: float) -> str:
    text = f"{v:.3f}".rstrip("0").rstrip(".")
    return "0" if text in {"-0", ""} else text


def _da(d: datetime) -> str:
    return d.strftime("%Y%m%d")


def _tm(d: datetime) -> str:
    return d.strftime("%H%M%S")


def person_name(p: Physician) -> str:
    return f"{p.family}^{p.given}^^Dr"


def _qualifiers(oid: str) -> DicomSequence:
    item = Dataset()
    item.UniversalEntityID = oid
    item.UniversalEntityIDType = "ISO"
    return DicomSequence([item])


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _patient_study_module(ds: Dataset, exam: Exam) -> None:
    patient, site = exam.patient, exam.site
    ds.PatientName = f"{patient.birth_family}^{patient.first_given}"
    ds.PatientID = exam.ipp
    ds.IssuerOfPatientID = site.short
    ds.IssuerOfPatientIDQualifiersSequence = _qualifiers(site.ipp_oid)
    ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
    ds.PatientSex = patient.sex
    ds.PatientAge = f"{min(patient.age_on(exam.start.date()), 999):03d}Y"
    other = Dataset()
    other.PatientID = patient.ins.value
    other.IssuerOfPatientID = INS_ISSUER_NAME
    other.TypeOfPatientID = "TEXT"
    other.IssuerOfPatientIDQualifiersSequence = _qualifiers(patient.ins.oid)
    ds.OtherPatientIDsSequence = DicomSequence([other])
    ds.StudyInstanceUID = exam.study_uid
    ds.StudyDate = _da(exam.start)
    ds.StudyTime = _tm(exam.start)
    ds.StudyID = exam.study_id
    ds.StudyDescription = exam.exam_type.description
    ds.AccessionNumber = exam.accession
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = site.ris_application
    issuer.UniversalEntityID = site.accession_oid
    issuer.UniversalEntityIDType = "ISO"
    ds.IssuerOfAccessionNumberSequence = DicomSequence([issuer])
    ds.ReferringPhysicianName = person_name(exam.referring)
    ds.NameOfPhysiciansReadingStudy = person_name(exam.radiologist)
    ds.InstitutionName = site.name
    ds.InstitutionAddress = f"{site.street}, {site.postal_code} {site.city}"
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = f"Synth {exam.modality}"
    ds.StationName = f"{site.ae_title[:12]}{exam.modality}"
    ds.BodyPartExamined = exam.exam_type.body_part


def _pixel_module(ds: Dataset, series: SeriesPlan, pixels: npt.NDArray[np.generic]) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    if pixels.dtype == np.uint8:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        vr = "OB"
    elif pixels.dtype == np.int16:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        vr = "OW"
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        vr = "OW"
    ds.WindowCenter = _ds_value(series.window[0])
    ds.WindowWidth = _ds_value(series.window[1])
    data = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<"), copy=False)
    raw = data.tobytes()
    ds.add_new(0x7FE00010, vr, raw + b"\x00" * (len(raw) % 2))


def _geometry(ds: Dataset, exam: Exam, series: SeriesPlan, index: int) -> None:
    iop = _IOP[series.orientation]
    normal = _normal(iop)
    width, height = series.cols * series.pixel_spacing, series.rows * series.pixel_spacing
    offset = ((series.count - 1) / 2 - index) * series.spacing
    centre = (0.0, 0.0, {"trunk": -150.0, "head": 80.0, "knee": -750.0}[series.anatomy])
    ipp = tuple(
        centre[k] - iop[k] * width / 2 - iop[3 + k] * height / 2 + normal[k] * offset
        for k in range(3)
    )
    ds.ImagePositionPatient = [_ds_value(v) for v in ipp]
    ds.ImageOrientationPatient = [_ds_value(v) for v in iop]
    ds.SliceLocation = _ds_value(sum(ipp[k] * normal[k] for k in range(3)))
    ds.FrameOfReferenceUID = exam.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PixelSpacing = [_ds_value(series.pixel_spacing)] * 2
    if series.spacing:
        ds.SliceThickness = _ds_value(series.spacing)
        ds.SpacingBetweenSlices = _ds_value(series.spacing)


def _modality_module(ds: Dataset, exam: Exam, series: SeriesPlan, index: int) -> None:
    kind = series.kind
    if kind in {"ct", "ct_localizer"}:
        ds.ImageType = (
            ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            if kind == "ct_localizer"
            else ["ORIGINAL", "PRIMARY", "AXIAL"]
            if series.orientation == "AX"
            else ["DERIVED", "SECONDARY", "REFORMATTED"]
        )
        ds.RescaleIntercept = str(images.CT_RESCALE_INTERCEPT)
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.ConvolutionKernel = "LUNG" if series.window[0] < -300 else "STANDARD"
        if kind == "ct_localizer":
            ds.SliceThickness = "1"
        if series.contrast:
            ds.ContrastBolusAgent = "IOMERON 350"
    elif kind == "mr":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        inversion = series.weighting == "FLAIR"
        ds.ScanningSequence = "IR" if inversion else "EP" if series.weighting == "DWI" else "SE"
        ds.SequenceVariant = "SK"
        ds.ScanOptions = "FS" if series.weighting == "PDFS" else ""
        ds.MRAcquisitionType = "2D"
        timings = {"T1": (550, 12), "T1C": (550, 12), "T2": (4000, 95), "FLAIR": (9000, 120),
                   "DWI": (5000, 70), "PDFS": (3000, 35)}  # fmt: skip
        tr, te = timings[series.weighting]
        ds.RepetitionTime, ds.EchoTime = str(tr), str(te)
        if inversion:
            ds.InversionTime = "2500"
        ds.EchoTrainLength = 16 if series.weighting in {"T2", "FLAIR", "PDFS"} else 1
        ds.MagneticFieldStrength = "1.5"
        ds.ImagedNucleus = "1H"
        ds.AcquisitionNumber = 1
        if series.weighting == "T1C":
            ds.ContrastBolusAgent = "DOTAREM"
    elif kind in {"projection", "mammo"}:
        laterality, view = series.views[index]
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImagerPixelSpacing = [_ds_value(series.pixel_spacing)] * 2
        if exam.modality == "CR":
            ds.PixelSpacing = ds.ImagerPixelSpacing
        ds.ViewPosition = view
        ds.PresentationLUTShape = "IDENTITY"
        ds.BurnedInAnnotation = "NO"
        if exam.modality != "CR":
            ds.PixelIntensityRelationship = "LOG"
            ds.PixelIntensityRelationshipSign = 1
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
            ds.DetectorType = "SCINTILLATOR"
            ds.ImageLaterality = laterality
        ds.KVP = "28" if kind == "mammo" else "125"
        if kind == "mammo":
            ds.PatientOrientation = {
                ("R", "CC"): ["P", "L"], ("L", "CC"): ["A", "R"],
                ("R", "MLO"): ["P", "F"], ("L", "MLO"): ["A", "F"],
            }[(laterality, view)]  # fmt: skip
            meaning = "cranio-caudal" if view == "CC" else "medio-lateral oblique"
            ds.ViewCodeSequence = DicomSequence(
                [_code("399162004" if view == "CC" else "399368009", "SCT", meaning)]
            )
            ds.AnatomicRegionSequence = DicomSequence([_code("76752008", "SCT", "Breast")])
            ds.PartialView = "NO"
            ds.BreastImplantPresent = "NO"
        else:
            ds.PatientOrientation = ["L", "F"] if view == "PA" else ["A", "F"]
    elif kind == "us":
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
        ds.PatientOrientation = ""
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "STATIC", "EMISSION"]
        ds.NumberOfFrames = 1
        ds.FrameIncrementPointer = [0x00540010, 0x00540020]
        ds.EnergyWindowVector = [1]
        ds.NumberOfEnergyWindows = 1
        ds.DetectorVector = [1]
        ds.NumberOfDetectors = 1
        ds.PixelSpacing = [_ds_value(series.pixel_spacing)] * 2
        ds.PatientOrientation = ["L", "F"]
        ds.EnergyWindowInformationSequence = DicomSequence([])
        ds.RadiopharmaceuticalInformationSequence = DicomSequence([])


def build_instance(
    exam: Exam, series: SeriesPlan, index: int, pixels: npt.NDArray[np.generic]
) -> Dataset:
    """The complete dataset (with file meta) of instance ``index`` (0-based) of ``series``."""
    sop_uid = series.sop_uids[index]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(series.sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    acquired = series.start + timedelta(milliseconds=250 * index)
    ds.InstanceCreationDate, ds.InstanceCreationTime = _da(acquired), _tm(acquired)
    ds.SOPClassUID = series.sop_class_uid
    ds.SOPInstanceUID = sop_uid
    _patient_study_module(ds, exam)
    ds.Modality = series.modality
    ds.SeriesInstanceUID = series.uid
    ds.SeriesNumber = series.number
    ds.SeriesDescription = series.description
    ds.SeriesDate, ds.SeriesTime = _da(series.start), _tm(series.start)
    ds.AcquisitionDate, ds.AcquisitionTime = _da(acquired), _tm(acquired)
    ds.ContentDate, ds.ContentTime = _da(acquired), _tm(acquired)
    ds.InstanceNumber = index + 1
    if series.kind in {"ct", "mr", "ct_localizer"}:
        _geometry(ds, exam, series, index)
    _modality_module(ds, exam, series, index)
    _pixel_module(ds, series, pixels)
    return ds


def iter_instances(exam: Exam) -> Iterator[tuple[SeriesPlan, int, Dataset]]:
    """Every instance of ``exam`` as ``(series, index, dataset)``, pixels generated lazily."""
    for series in exam.series:
        for index, pixels in enumerate(series_pixels(exam, series)):
            yield series, index, build_instance(exam, series, index, pixels)


def write_exam(exam: Exam, dicom_root: Path) -> dict[str, list[Path]]:
    """Write ``dicom_root/<Study>/<Series>/<SOP>.dcm``; return the paths per series UID."""
    written: dict[str, list[Path]] = {}
    for series, index, ds in iter_instances(exam):
        folder = dicom_root / exam.study_uid / series.uid
        if index == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{series.sop_uids[index]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.setdefault(series.uid, []).append(path)
    return written
