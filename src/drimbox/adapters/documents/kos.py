"""The DRIM-M imaging manifest as a DICOM Key Object Selection Document (IHE XDS-I.b).

Why pydicom rather than ``highdicom.ko.KeyObjectSelectionDocument``: highdicom (0.28) builds
the evidence only from full datasets of the referenced instances (we have a C-FIND inventory,
and the KOS patient must be the INS, not the instances' local IPP), has no per-series
RetrieveURL / RetrieveLocationUID, no IssuerOfPatientID qualifiers or OtherPatientIDs, and
writes ContinuityOfContent CONTINUOUS where the manifest uses SEPARATE. Patching all of that
afterwards would be more code than writing the IOD directly. The tests still read our output
back with highdicom as an independent check of the TID 2010 content tree.

What goes where (PS3.3 A.35.4 Key Object Selection Document IOD; digest B.3):

- Patient module: PatientID = INS with issuer ``ASIP-SANTE-INS-NIR`` qualified by the INS OID,
  repeated in OtherPatientIDsSequence, as the national record identifies patients by INS.
- General Study: study attributes from the PACS, accession with its issuer OID.
- Key Object Document: ReferencedRequestSequence (order, accession, requested procedure) and
  CurrentRequestedProcedureEvidenceSequence, whose series items carry RetrieveURL (the Source
  box's WADO-RS series URL) and RetrieveLocationUID.
- SR content: root CONTAINER 113030 "Manifest" (TID 2010), one TEXT 113012 with the French
  description for humans, one IMAGE (or COMPOSITE/WAVEFORM) item per referenced instance.

Standard Extended SOP Class (PS3.4 B.1.3): the evidence series items also carry Modality,
SeriesNumber, SeriesDescription and BodyPartExamined, and the instance items InstanceNumber and
NumberOfFrames, so a Conso can list and order an exam from the manifest alone, without a
metadata round trip to the Source. These are Type 3 additions; consumers that do not know them
ignore them, and ``parse_kos`` does not need them.
"""

from __future__ import annotations

import io
import uuid
from datetime import datetime
from typing import Final

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from drimbox.adapters.documents import dicom_values as dv
from drimbox.domain.errors import InvalidIdentifier, InvalidInput
from drimbox.domain.identifiers import INS_OIDS, Ins, is_valid_uid
from drimbox.domain.manifest import (
    Code,
    ImagingManifest,
    ManifestInstance,
    ManifestPatient,
    ManifestSeries,
    ManifestStudy,
    RequestedProcedure,
)

KOS_SOP_CLASS: Final = "1.2.840.10008.5.1.4.1.1.88.59"
MANIFEST_TITLE: Final = Code("113030", "DCM", "Manifest")
KEY_OBJECT_DESCRIPTION: Final = Code("113012", "DCM", "Key Object Description")
INS_ISSUER: Final = "ASIP-SANTE-INS-NIR"
MANUFACTURER: Final = "drimbox"
IMPLEMENTATION_CLASS_UID: Final = "2.25." + str(
    uuid.uuid5(uuid.NAMESPACE_URL, "urn:drimbox:documents").int
)
IMPLEMENTATION_VERSION_NAME: Final = "DRIMBOX_KOS_1"

# SOP classes that are not images: referenced as COMPOSITE or WAVEFORM items (PS3.3 C.17.3.2.1)
_WAVEFORM_PREFIX: Final = "1.2.840.10008.5.1.4.1.1.9."
_NON_IMAGE_PREFIXES: Final = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports and key object selections
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF / CDA / STL
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registrations, fiducials, segmentation
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT dose and RT structure / plans (481.1 is RT Image)
    "1.2.840.10008.5.1.4.1.1.481.3",
    "1.2.840.10008.5.1.4.1.1.481.5",
)


def content_value_type(sop_class_uid: str) -> str:
    if sop_class_uid.startswith(_WAVEFORM_PREFIX):
        return "WAVEFORM"
    if sop_class_uid.startswith(_NON_IMAGE_PREFIXES):
        return "COMPOSITE"
    return "IMAGE"


# --- writing --------------------------------------------------------------------------------


def _check(manifest: ImagingManifest) -> None:
    """Refuse to publish what a Conso could not use or that would misidentify the patient."""
    Ins.parse(manifest.patient.ins, manifest.patient.ins_oid)
    uids = [manifest.sop_instance_uid, manifest.series_instance_uid, manifest.study.study_uid]
    for series in manifest.series:
        uids.append(series.series_uid)
        if not series.retrieve_url:
            raise InvalidInput(f"series {series.series_uid} has no Retrieve URL")
        if series.retrieve_location_uid:
            uids.append(series.retrieve_location_uid)
        for instance in series.instances:
            uids += [instance.sop_class_uid, instance.sop_instance_uid]
    bad = [u for u in uids if not is_valid_uid(u)]
    if bad:
        raise InvalidIdentifier(f"invalid UID(s) in the manifest: {bad[:3]!r}")
    if manifest.is_empty:
        raise InvalidInput("a manifest must reference at least one instance")


def _patient_module(ds: Dataset, manifest: ImagingManifest) -> None:
    patient = manifest.patient
    ds.PatientName = "^".join(p for p in (patient.family_name, patient.given_name) if p)
    ds.PatientID = patient.ins
    ds.IssuerOfPatientID = INS_ISSUER
    ds.IssuerOfPatientIDQualifiersSequence = dv.universal_entity(patient.ins_oid)
    ds.PatientBirthDate = dv.to_da(patient.birth_date)
    ds.PatientSex = patient.sex
    other = Dataset()
    other.PatientID = patient.ins
    other.IssuerOfPatientID = INS_ISSUER
    other.IssuerOfPatientIDQualifiersSequence = dv.universal_entity(patient.ins_oid)
    other.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = DicomSequence([other])


def _study_module(ds: Dataset, manifest: ImagingManifest) -> None:
    study = manifest.study
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = dv.to_da(study.date)
    ds.StudyTime = dv.to_tm(study.time)
    ds.ReferringPhysicianName = study.referring_physician
    ds.StudyID = study.study_id
    ds.AccessionNumber = study.accession
    if study.accession_oid:
        ds.IssuerOfAccessionNumberSequence = dv.universal_entity(study.accession_oid)
    if study.description:
        ds.StudyDescription = study.description


def _request_item(manifest: ImagingManifest) -> Dataset:
    request = manifest.request or RequestedProcedure()
    item = Dataset()
    item.StudyInstanceUID = manifest.study.study_uid
    item.AccessionNumber = manifest.study.accession
    if manifest.study.accession_oid:
        item.IssuerOfAccessionNumberSequence = dv.universal_entity(manifest.study.accession_oid)
    item.PlacerOrderNumberImagingServiceRequest = request.placer_order_number
    if request.placer_order_oid:
        item.OrderPlacerIdentifierSequence = dv.universal_entity(request.placer_order_oid)
    item.FillerOrderNumberImagingServiceRequest = request.filler_order_number
    if request.filler_order_oid:
        item.OrderFillerIdentifierSequence = dv.universal_entity(request.filler_order_oid)
    item.RequestedProcedureID = request.procedure_id
    item.RequestedProcedureDescription = request.procedure_description
    codes = [dv.code_item(request.procedure_code)] if request.procedure_code else []
    item.RequestedProcedureCodeSequence = DicomSequence(codes)
    return item


def _series_item(series: ManifestSeries) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = series.series_uid
    item.RetrieveURL = series.retrieve_url
    if series.retrieve_location_uid:
        item.RetrieveLocationUID = series.retrieve_location_uid
    if series.retrieve_ae_title:
        item.RetrieveAETitle = series.retrieve_ae_title
    # Standard extended attributes (see the module docstring)
    if series.modality:
        item.Modality = series.modality
    if series.number is not None:
        item.SeriesNumber = series.number
    if series.description:
        item.SeriesDescription = series.description
    if series.body_part:
        item.BodyPartExamined = series.body_part
    refs = []
    for instance in series.instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID = instance.sop_class_uid
        ref.ReferencedSOPInstanceUID = instance.sop_instance_uid
        if instance.instance_number is not None:
            ref.InstanceNumber = instance.instance_number
        if instance.number_of_frames is not None:
            ref.NumberOfFrames = instance.number_of_frames
        refs.append(ref)
    item.ReferencedSOPSequence = DicomSequence(refs)
    return item


def _evidence(manifest: ImagingManifest) -> DicomSequence:
    study = Dataset()
    study.StudyInstanceUID = manifest.study.study_uid
    study.ReferencedSeriesSequence = DicomSequence(_series_item(s) for s in manifest.series)
    return DicomSequence([study])


def _content(manifest: ImagingManifest) -> DicomSequence:
    text_item = Dataset()
    text_item.RelationshipType = "CONTAINS"
    text_item.ValueType = "TEXT"
    text_item.ConceptNameCodeSequence = DicomSequence([dv.code_item(KEY_OBJECT_DESCRIPTION)])
    text_item.TextValue = manifest.description or default_description(manifest)
    content = [text_item]
    for _, instance in manifest.instances():
        # TID 2010 gives referenced objects no concept name: there is no purpose of reference
        item = Dataset()
        item.RelationshipType = "CONTAINS"
        item.ValueType = content_value_type(instance.sop_class_uid)
        ref = Dataset()
        ref.ReferencedSOPClassUID = instance.sop_class_uid
        ref.ReferencedSOPInstanceUID = instance.sop_instance_uid
        item.ReferencedSOPSequence = DicomSequence([ref])
        content.append(item)
    return DicomSequence(content)


def _document_module(ds: Dataset, manifest: ImagingManifest, created: datetime) -> None:
    ds.InstanceNumber = manifest.instance_number if manifest.instance_number is not None else 1
    ds.ContentDate = dv.to_da(created.date())
    ds.ContentTime = dv.to_tm(created.time())
    ds.ReferencedRequestSequence = DicomSequence([_request_item(manifest)])
    ds.CurrentRequestedProcedureEvidenceSequence = _evidence(manifest)
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = DicomSequence([dv.code_item(MANIFEST_TITLE)])
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = "DCMR"
    template.TemplateIdentifier = "2010"
    ds.ContentTemplateSequence = DicomSequence([template])
    ds.ContentSequence = _content(manifest)


def build_kos(manifest: ImagingManifest, *, now: datetime | None = None) -> Dataset:
    """The KOS dataset (with file meta) of ``manifest``; creation time is ``manifest.created``,
    else ``now``, else the current local time."""
    _check(manifest)
    created = manifest.created or now or datetime.now().astimezone()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(KOS_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = UID(manifest.sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds = Dataset()
    ds.file_meta = meta
    # UTF-8: French names and descriptions need more than Latin-1 (œ, ’)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = KOS_SOP_CLASS
    ds.SOPInstanceUID = manifest.sop_instance_uid
    ds.InstanceCreationDate = dv.to_da(created.date())
    ds.InstanceCreationTime = dv.to_tm(created.time())
    if offset := dv.to_offset(created):
        ds.TimezoneOffsetFromUTC = offset
    _patient_module(ds, manifest)
    _study_module(ds, manifest)
    ds.Modality = "KO"
    ds.SeriesInstanceUID = manifest.series_instance_uid
    ds.SeriesNumber = manifest.series_number if manifest.series_number is not None else 1
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence([])
    ds.Manufacturer = manifest.manufacturer or MANUFACTURER
    if manifest.institution_name:
        ds.InstitutionName = manifest.institution_name
    _document_module(ds, manifest, created)
    return ds


def kos_bytes(manifest: ImagingManifest, *, now: datetime | None = None) -> bytes:
    """The KOS as a DICOM Part 10 file (what is published to the index)."""
    buffer = io.BytesIO()
    build_kos(manifest, now=now).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def default_description(manifest: ImagingManifest) -> str:
    """A short French summary for humans; software reads the structured attributes instead."""
    study = manifest.study
    parts = [f"Examen {study.description}".strip() if study.description else "Examen d'imagerie"]
    if study.date is not None:
        parts.append(f"du {study.date:%d/%m/%Y}")
    series, images = len(manifest.series), manifest.instance_count
    modalities = ", ".join(manifest.modalities)
    summary = f"{series} série{_plural(series)}, {images} objet{_plural(images)}"
    return " ".join(parts) + f" : {summary}" + (f" ({modalities})." if modalities else ".")


def _plural(count: int) -> str:
    return "s" if count > 1 else ""


# --- reading --------------------------------------------------------------------------------


def _load(data: Dataset | bytes) -> Dataset:
    if isinstance(data, Dataset):
        return data
    try:
        return dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, TypeError) as exc:
        raise InvalidInput(f"not a readable DICOM object: {exc}") from None


def _parse_instance(item: Dataset) -> ManifestInstance:
    return ManifestInstance(
        sop_class_uid=dv.text(item, "ReferencedSOPClassUID"),
        sop_instance_uid=dv.text(item, "ReferencedSOPInstanceUID"),
        instance_number=dv.from_is(item.get("InstanceNumber")),
        number_of_frames=dv.from_is(item.get("NumberOfFrames")),
    )


def _parse_series(item: Dataset) -> ManifestSeries:
    return ManifestSeries(
        series_uid=dv.text(item, "SeriesInstanceUID"),
        modality=dv.text(item, "Modality"),
        number=dv.from_is(item.get("SeriesNumber")),
        description=dv.text(item, "SeriesDescription"),
        body_part=dv.text(item, "BodyPartExamined"),
        retrieve_url=dv.text(item, "RetrieveURL"),
        retrieve_location_uid=dv.text(item, "RetrieveLocationUID"),
        retrieve_ae_title=dv.text(item, "RetrieveAETitle"),
        instances=tuple(_parse_instance(i) for i in dv.items(item, "ReferencedSOPSequence")),
    )


def _evidence_study(ds: Dataset, study_uid: str) -> Dataset:
    studies = dv.items(ds, "CurrentRequestedProcedureEvidenceSequence")
    if not studies:
        raise InvalidInput("the KOS has no CurrentRequestedProcedureEvidenceSequence")
    uids = {dv.text(s, "StudyInstanceUID") for s in studies}
    if len(uids) > 1:
        # an XDS-I.b manifest may span studies; DRIM-M publishes one manifest per exam
        raise InvalidInput(f"the KOS references {len(uids)} studies; one per manifest expected")
    if study_uid and uids != {study_uid}:
        raise InvalidInput("the evidence study differs from the KOS StudyInstanceUID")
    merged = Dataset()
    merged.StudyInstanceUID = uids.pop()
    merged.ReferencedSeriesSequence = DicomSequence(
        series for s in studies for series in dv.items(s, "ReferencedSeriesSequence")
    )
    return merged


def _parse_patient(ds: Dataset) -> tuple[str, str]:
    """(INS, OID): PatientID when issued by an INS register, else the first INS among
    OtherPatientIDsSequence, else PatientID as is (a foreign KOS)."""
    oid = dv.universal_entity_id(ds, "IssuerOfPatientIDQualifiersSequence")
    if oid in INS_OIDS:
        return dv.text(ds, "PatientID"), oid
    for other in dv.items(ds, "OtherPatientIDsSequence"):
        other_oid = dv.universal_entity_id(other, "IssuerOfPatientIDQualifiersSequence")
        if other_oid in INS_OIDS:
            return dv.text(other, "PatientID"), other_oid
    return dv.text(ds, "PatientID"), oid


def _parse_request(ds: Dataset) -> RequestedProcedure | None:
    item = dv.first_item(ds, "ReferencedRequestSequence")
    if item is None:
        return None
    return RequestedProcedure(
        placer_order_number=dv.text(item, "PlacerOrderNumberImagingServiceRequest"),
        placer_order_oid=dv.universal_entity_id(item, "OrderPlacerIdentifierSequence"),
        filler_order_number=dv.text(item, "FillerOrderNumberImagingServiceRequest"),
        filler_order_oid=dv.universal_entity_id(item, "OrderFillerIdentifierSequence"),
        procedure_id=dv.text(item, "RequestedProcedureID"),
        procedure_description=dv.text(item, "RequestedProcedureDescription"),
        procedure_code=dv.code_of(dv.first_item(item, "RequestedProcedureCodeSequence")),
    )


def _description(ds: Dataset) -> str:
    for item in dv.items(ds, "ContentSequence"):
        code = dv.code_of(dv.first_item(item, "ConceptNameCodeSequence"))
        if code is not None and (code.value, code.scheme) == ("113012", "DCM"):
            return str(item.get("TextValue", "")).strip()
    return ""


def _created(ds: Dataset) -> datetime | None:
    day = dv.from_da(ds.get("InstanceCreationDate"))
    clock = dv.from_tm(ds.get("InstanceCreationTime"))
    if day is None or clock is None:
        return None
    return datetime.combine(day, clock, dv.from_offset(ds.get("TimezoneOffsetFromUTC")))


def parse_kos(data: Dataset | bytes) -> ImagingManifest:
    """Read any KOS (ours or another vendor's) into a manifest.

    Optional parts may be missing; the evidence sequence may not, since without it the
    manifest points at nothing. Series keep their Retrieve URL (series or study URL) or
    Retrieve AE title as found: whether to trust them is the caller's decision.
    """
    ds = _load(data)
    if dv.text(ds, "SOPClassUID") != KOS_SOP_CLASS:
        raise InvalidInput(f"SOP class {dv.text(ds, 'SOPClassUID')!r} is not a KOS")
    study_uid = dv.text(ds, "StudyInstanceUID")
    evidence = _evidence_study(ds, study_uid)
    ins, ins_oid = _parse_patient(ds)
    name = dv.text(ds, "PatientName").split("^")
    return ImagingManifest(
        sop_instance_uid=dv.text(ds, "SOPInstanceUID"),
        series_instance_uid=dv.text(ds, "SeriesInstanceUID"),
        patient=ManifestPatient(
            ins=ins,
            ins_oid=ins_oid,
            family_name=name[0],
            given_name=name[1] if len(name) > 1 else "",
            birth_date=dv.from_da(ds.get("PatientBirthDate")),
            sex=dv.text(ds, "PatientSex"),
        ),
        study=ManifestStudy(
            study_uid=study_uid or dv.text(evidence, "StudyInstanceUID"),
            date=dv.from_da(ds.get("StudyDate")),
            time=dv.from_tm(ds.get("StudyTime")),
            description=dv.text(ds, "StudyDescription"),
            accession=dv.text(ds, "AccessionNumber") or _request_accession(ds),
            accession_oid=dv.universal_entity_id(ds, "IssuerOfAccessionNumberSequence")
            or _request_accession_oid(ds),
            referring_physician=dv.text(ds, "ReferringPhysicianName"),
            study_id=dv.text(ds, "StudyID"),
        ),
        series=tuple(_parse_series(s) for s in dv.items(evidence, "ReferencedSeriesSequence")),
        description=_description(ds),
        request=_parse_request(ds),
        series_number=dv.from_is(ds.get("SeriesNumber")),
        instance_number=dv.from_is(ds.get("InstanceNumber")),
        created=_created(ds),
        manufacturer=dv.text(ds, "Manufacturer"),
        institution_name=dv.text(ds, "InstitutionName"),
    )


def _request_accession(ds: Dataset) -> str:
    """The demonstrator leaves the top-level AccessionNumber empty and fills the request's."""
    item = dv.first_item(ds, "ReferencedRequestSequence")
    return dv.text(item, "AccessionNumber") if item is not None else ""


def _request_accession_oid(ds: Dataset) -> str:
    item = dv.first_item(ds, "ReferencedRequestSequence")
    return dv.universal_entity_id(item, "IssuerOfAccessionNumberSequence") if item else ""
