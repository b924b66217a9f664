"""Ask the site's PACS what an exam holds: Study Root C-FIND, study then series then image.

The DRIM-M demonstrator asks for everything in one IMAGE-level query keyed by the study; a
plain Study Root SCP is only required to support hierarchical queries (PS3.4 C.4.1.2.1:
unique keys of every level above), so we walk the levels, in one association. The answer is
an :class:`ExamInventory` from which the Source builds its manifest.

Failures map to our error tree: no association, an abort or a timeout is
:class:`PeerUnavailable` (retry later); a PACS out of resources too; any other failure status
is :class:`QueryFailed`, which retrying as is will not fix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from drimbox.adapters.documents import dicom_values as dv
from drimbox.domain.errors import Conflict, DrimboxError, InvalidInput, NotFound, PeerUnavailable
from drimbox.domain.identifiers import is_valid_uid
from drimbox.domain.manifest import ExamInventory, ManifestInstance, ManifestSeries, ManifestStudy

log = logging.getLogger(__name__)

_PENDING = frozenset({0xFF00, 0xFF01})
_SUCCESS = 0x0000
_OUT_OF_RESOURCES = 0xA700

STUDY_KEYS = (
    "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "StudyID",
    "ReferringPhysicianName", "PatientID", "IssuerOfPatientID", "PatientName",
)  # fmt: skip
SERIES_KEYS = ("Modality", "SeriesNumber", "SeriesDescription", "BodyPartExamined")
IMAGE_KEYS = ("SOPClassUID", "InstanceNumber", "NumberOfFrames")


class QueryFailed(DrimboxError):
    """The PACS answered a C-FIND with a failure status (bad identifier, cannot process)."""

    def __init__(self, status: int, comment: str = "") -> None:
        self.status = status
        detail = f": {comment}" if comment else ""
        super().__init__(f"C-FIND failed with status 0x{status:04X}{detail}")


@dataclass(frozen=True, slots=True)
class PacsAddress:
    host: str
    port: int
    called_aet: str
    calling_aet: str = "DRIMBOX"
    timeout: float = 30.0


def _identifier(level: str, keys: tuple[str, ...], **matching: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in keys:
        setattr(ds, keyword, "")
    for keyword, value in matching.items():
        setattr(ds, keyword, value)
    return ds


def _find(assoc: Association, query: Dataset) -> Iterator[Dataset]:
    """Matches of one C-FIND; failures raised as our errors."""
    responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
    for status, identifier in responses:
        if not status:  # no response: DIMSE timeout, abort or connection lost
            raise PeerUnavailable("the PACS stopped answering the C-FIND (timeout or abort)")
        code = int(status.Status)
        if code in _PENDING:
            if identifier is not None:
                yield identifier
            continue
        if code == _SUCCESS:
            return
        comment = dv.text(status, "ErrorComment")
        if code == _OUT_OF_RESOURCES:
            raise PeerUnavailable(f"the PACS is out of resources (0xA700) {comment}".strip())
        raise QueryFailed(code, comment)


def _associate(address: PacsAddress) -> Association:
    ae = AE(address.calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = address.timeout
    ae.connection_timeout = address.timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(address.host, address.port, ae_title=address.called_aet)
    if assoc.is_established:
        # No TCP_NODELAY here although Nagle costs ~40 ms per C-FIND exchange: with it,
        # pynetdicom's reactor drops a pending response of a fast peer (Orthanc) now and
        # then ("Received unexpected C-FIND service message") and an instance goes missing.
        return assoc
    how = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
    raise PeerUnavailable(
        f"association with {address.called_aet}@{address.host}:{address.port} {how}"
    )


def _study(answer: Dataset) -> ManifestStudy:
    return ManifestStudy(
        study_uid=dv.text(answer, "StudyInstanceUID"),
        date=dv.from_da(answer.get("StudyDate")),
        time=dv.from_tm(answer.get("StudyTime")),
        description=dv.text(answer, "StudyDescription"),
        accession=dv.text(answer, "AccessionNumber"),
        referring_physician=dv.text(answer, "ReferringPhysicianName"),
        study_id=dv.text(answer, "StudyID"),
    )


def _instance(answer: Dataset) -> ManifestInstance:
    return ManifestInstance(
        sop_class_uid=dv.text(answer, "SOPClassUID"),
        sop_instance_uid=dv.text(answer, "SOPInstanceUID"),
        instance_number=dv.from_is(answer.get("InstanceNumber")),
        number_of_frames=dv.from_is(answer.get("NumberOfFrames")),
    )


def _order_key(instance: ManifestInstance) -> tuple[int, str]:
    number = instance.instance_number
    return (number if number is not None else 1 << 31, instance.sop_instance_uid)


def _series(assoc: Association, study_uid: str, answer: Dataset) -> ManifestSeries:
    series_uid = dv.text(answer, "SeriesInstanceUID")
    query = _identifier(
        "IMAGE", IMAGE_KEYS, StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid,
        SOPInstanceUID="",
    )  # fmt: skip
    instances = {i.sop_instance_uid: i for i in map(_instance, _find(assoc, query))}
    return ManifestSeries(
        series_uid=series_uid,
        modality=dv.text(answer, "Modality"),
        number=dv.from_is(answer.get("SeriesNumber")),
        description=dv.text(answer, "SeriesDescription"),
        body_part=dv.text(answer, "BodyPartExamined"),
        instances=tuple(sorted(instances.values(), key=_order_key)),
    )


def _locate_study(assoc: Association, study_uid: str | None, accession: str | None) -> Dataset:
    matching = {"StudyInstanceUID": study_uid or ""}
    if study_uid is None:
        matching["AccessionNumber"] = accession or ""
    keys = tuple(k for k in STUDY_KEYS if k not in matching)
    answers = list(_find(assoc, _identifier("STUDY", keys, **matching)))
    # a PACS may treat a key loosely (wildcards, case): keep exact matches only
    answers = [a for a in answers if all(dv.text(a, k) == v for k, v in matching.items() if v)]
    uids = sorted({dv.text(a, "StudyInstanceUID") for a in answers})
    wanted = f"study {study_uid}" if study_uid else f"accession {accession!r}"
    if not uids:
        raise NotFound(f"the PACS has no {wanted}")
    if len(uids) > 1:
        raise Conflict(f"{wanted} matches {len(uids)} studies in the PACS: {uids[:5]}")
    return answers[0]


def find_exam(
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "DRIMBOX",
    study_uid: str | None = None,
    accession: str | None = None,
    *,
    timeout: float = 30.0,
) -> ExamInventory:
    """Every series and instance the PACS holds for one study, found by UID or accession.

    The Study UID wins when both are given: it is what the report names, and the accession is
    then checked by :func:`drimbox.domain.manifest.inventory_mismatches`, not used to filter.
    Raises NotFound when nothing matches, Conflict when an accession matches several studies.
    """
    if study_uid is not None and not is_valid_uid(study_uid):
        raise InvalidInput(f"{study_uid[:80]!r} is not a valid Study Instance UID")
    if study_uid is None and not (accession or "").strip():
        raise InvalidInput("find_exam needs a Study Instance UID or an accession number")
    if accession is not None and any(c in accession for c in "*?\\"):
        raise InvalidInput("an accession number cannot contain wildcards or backslashes")
    address = PacsAddress(host, port, called_aet, calling_aet, timeout)
    assoc = _associate(address)
    try:
        study = _locate_study(assoc, study_uid, accession)
        uid = dv.text(study, "StudyInstanceUID")
        query = _identifier("SERIES", SERIES_KEYS, StudyInstanceUID=uid, SeriesInstanceUID="")
        # drain the SERIES answers before the IMAGE queries: one C-FIND at a time per association
        series_answers = list(_find(assoc, query))
        series = [_series(assoc, uid, s) for s in series_answers]
    finally:
        if assoc.is_established:
            assoc.release()
    series.sort(key=lambda s: (s.number if s.number is not None else 1 << 31, s.series_uid))
    return ExamInventory(
        study=_study(study),
        patient_id=dv.text(study, "PatientID"),
        issuer_of_patient_id=dv.text(study, "IssuerOfPatientID"),
        patient_name=dv.text(study, "PatientName"),
        series=tuple(series),
    )
