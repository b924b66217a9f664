"""The imaging manifest: what a DRIM-M KOS says about one exam. Pure, no I/O.

A manifest names the patient by INS, the study, every series with the URL it can be retrieved
from (the Source box's WADO-RS series URL), every instance, and the order it fulfils. The
Source builds one from the PACS inventory (:class:`ExamInventory`) and the report; the Conso
reads one back from a KOS published in the national index. Encoding to and from DICOM lives
in ``drimbox.adapters.documents.kos``.

Fields a KOS may lack are empty strings or ``None`` rather than absent, so that a manifest
parsed from a foreign, sparse KOS is still a valid value.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, time


def new_uid() -> str:
    """A fresh ``2.25`` UID (PS3.5 B.2): a new manifest never reuses or derives an old UID."""
    return f"2.25.{uuid.uuid4().int}"


@dataclass(frozen=True, slots=True)
class Code:
    """A coded concept (DICOM Code Sequence Macro / HL7 CE)."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True, slots=True)
class ManifestPatient:
    """The patient as the national record knows them.

    ``ins``/``ins_oid`` carry the INS; for a foreign KOS that does not use the INS they carry
    its PatientID and the issuer OID (possibly empty).
    """

    ins: str
    ins_oid: str
    family_name: str = ""
    given_name: str = ""
    birth_date: date | None = None
    sex: str = ""
    """DICOM code: M, F, O or empty."""


@dataclass(frozen=True, slots=True)
class ManifestStudy:
    study_uid: str
    date: date | None = None
    time: time | None = None
    description: str = ""
    accession: str = ""
    accession_oid: str = ""
    referring_physician: str = ""
    """DICOM person name (``FAMILY^Given^^Dr``)."""
    study_id: str = ""


@dataclass(frozen=True, slots=True)
class ManifestInstance:
    sop_class_uid: str
    sop_instance_uid: str
    instance_number: int | None = None
    number_of_frames: int | None = None


@dataclass(frozen=True, slots=True)
class ManifestSeries:
    series_uid: str
    modality: str = ""
    number: int | None = None
    description: str = ""
    body_part: str = ""
    retrieve_url: str = ""
    """WADO-RS URL of the series (or of the study) on the Source box."""
    retrieve_location_uid: str = ""
    retrieve_ae_title: str = ""
    """DIMSE alternative a foreign KOS may give instead of a URL."""
    instances: tuple[ManifestInstance, ...] = ()


@dataclass(frozen=True, slots=True)
class RequestedProcedure:
    """The order the exam fulfils (KOS ReferencedRequestSequence)."""

    placer_order_number: str = ""
    placer_order_oid: str = ""
    filler_order_number: str = ""
    filler_order_oid: str = ""
    procedure_id: str = ""
    procedure_description: str = ""
    procedure_code: Code | None = None


@dataclass(frozen=True, slots=True)
class ImagingManifest:
    sop_instance_uid: str
    """The manifest's own UID: the XDS uniqueId and the WADO-RS access key."""
    series_instance_uid: str
    patient: ManifestPatient
    study: ManifestStudy
    series: tuple[ManifestSeries, ...]
    description: str = ""
    """Human text of the Key Object Description item."""
    request: RequestedProcedure | None = None
    series_number: int | None = None
    instance_number: int | None = None
    created: datetime | None = None
    manufacturer: str = ""
    institution_name: str = ""

    def instances(self) -> Iterator[tuple[ManifestSeries, ManifestInstance]]:
        for series in self.series:
            for instance in series.instances:
                yield series, instance

    @property
    def sop_instance_uids(self) -> frozenset[str]:
        return frozenset(i.sop_instance_uid for _, i in self.instances())

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Distinct series modalities, in series order (XDS eventCodeList)."""
        return tuple(dict.fromkeys(s.modality for s in self.series if s.modality))

    @property
    def is_empty(self) -> bool:
        return self.instance_count == 0


def without_instances(
    manifest: ImagingManifest, sop_uids: Iterable[str], *, new_sop_uid: str | None = None
) -> ImagingManifest:
    """The replacement manifest once ``sop_uids`` are rejected (IOCM): series left empty are
    dropped, and it gets a new SOP Instance UID because the index keys documents by it.

    The caller publishes it as a replacement, or depublishes when it ``is_empty``.
    """
    gone = frozenset(sop_uids)
    kept: list[ManifestSeries] = []
    for series in manifest.series:
        instances = tuple(i for i in series.instances if i.sop_instance_uid not in gone)
        if instances:
            kept.append(replace(series, instances=instances))
    number = manifest.instance_number
    return replace(
        manifest,
        sop_instance_uid=new_sop_uid or new_uid(),
        series=tuple(kept),
        instance_number=None if number is None else number + 1,
        created=None,
    )


# --- what the PACS holds --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExamInventory:
    """An exam as the site's PACS lists it (C-FIND), before it becomes a manifest."""

    study: ManifestStudy
    patient_id: str
    """The site's local identifier (IPP), not the INS."""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    series: tuple[ManifestSeries, ...] = ()

    @property
    def sop_instance_uids(self) -> frozenset[str]:
        return frozenset(i.sop_instance_uid for s in self.series for i in s.instances)

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One disagreement between the report and the PACS: the exam is held for a human."""

    field: str
    expected: str
    found: str

    def __str__(self) -> str:
        return f"{self.field}: the report says {self.expected!r}, the PACS has {self.found!r}"


def inventory_mismatches(
    inventory: ExamInventory,
    *,
    patient_id: str,
    accession: str,
    study_uid: str | None = None,
) -> list[Mismatch]:
    """What the PACS says that contradicts the report (local patient id, accession, study).

    Publishing images of another patient is the failure that matters most, so any difference,
    even in case or padding the PACS did not strip, is reported rather than guessed away.
    """
    found: list[Mismatch] = []
    checks = [("PatientID", patient_id, inventory.patient_id)]
    checks.append(("AccessionNumber", accession, inventory.study.accession))
    if study_uid is not None:
        checks.append(("StudyInstanceUID", study_uid, inventory.study.study_uid))
    for name, expected, actual in checks:
        if expected.strip() != actual.strip():
            found.append(Mismatch(name, expected, actual))
    if inventory.instance_count == 0:
        found.append(Mismatch("instances", "at least one", "none"))
    return found


def series_url(base: str, study_uid: str, series_uid: str) -> str:
    """The WADO-RS series URL the KOS carries (PS3.18 10.4.1)."""
    return f"{base.rstrip('/')}/studies/{study_uid}/series/{series_uid}"


def manifest_from_inventory(
    inventory: ExamInventory,
    patient: ManifestPatient,
    *,
    wado_base: str,
    description: str,
    retrieve_location_uid: str = "",
    request: RequestedProcedure | None = None,
    accession_oid: str = "",
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    created: datetime | None = None,
) -> ImagingManifest:
    """A new manifest listing every instance of ``inventory``, retrievable from ``wado_base``."""
    study = inventory.study
    if accession_oid:
        study = replace(study, accession_oid=accession_oid)
    series = tuple(
        replace(
            s,
            retrieve_url=series_url(wado_base, study.study_uid, s.series_uid),
            retrieve_location_uid=retrieve_location_uid,
            retrieve_ae_title="",
        )
        for s in inventory.series
        if s.instances
    )
    return ImagingManifest(
        sop_instance_uid=sop_instance_uid or new_uid(),
        series_instance_uid=series_instance_uid or new_uid(),
        patient=patient,
        study=study,
        series=series,
        description=description,
        request=request,
        series_number=1,
        instance_number=1,
        created=created,
    )
