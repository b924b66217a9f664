"""IHE IOCM rejection notes: which instances a PACS tells us it rejected.

A rejection note is a KOS whose title is a rejection reason (DICOM CID 7011) and whose
evidence lists the rejected instances. The Source rebuilds its manifest without them
(``drimbox.domain.manifest.without_instances``) and replaces or depublishes it.
"""

from __future__ import annotations

from typing import Final

from pydicom.dataset import Dataset

from drimbox.adapters.documents import dicom_values as dv
from drimbox.adapters.documents.kos import KOS_SOP_CLASS
from drimbox.domain.errors import InvalidInput
from drimbox.domain.manifest import Code

REJECTED_FOR_QUALITY: Final = Code("113001", "DCM", "Rejected for Quality Reasons")
REJECTED_FOR_PATIENT_SAFETY: Final = Code("113037", "DCM", "Rejected for Patient Safety Reasons")
INCORRECT_WORKLIST_ENTRY: Final = Code("113038", "DCM", "Incorrect Modality Worklist Entry")
RETENTION_EXPIRED: Final = Code("113039", "DCM", "Data Retention Policy Expired")
REJECTION_REASONS: Final = {
    c.value: c
    for c in (
        REJECTED_FOR_QUALITY,
        REJECTED_FOR_PATIENT_SAFETY,
        INCORRECT_WORKLIST_ENTRY,
        RETENTION_EXPIRED,
    )
}


def rejection_reason(note: Dataset) -> Code | None:
    """The CID 7011 reason when ``note`` is a rejection note, else ``None``."""
    if dv.text(note, "SOPClassUID") != KOS_SOP_CLASS:
        return None
    code = dv.code_of(dv.first_item(note, "ConceptNameCodeSequence"))
    if code is None or code.scheme != "DCM":
        return None
    return REJECTION_REASONS.get(code.value)


def rejected_instances(note: Dataset) -> set[str]:
    """SOP Instance UIDs a rejection note rejects: its evidence and its content tree (IOCM
    requires both to list the same instances; a PACS that fills only one is still heeded)."""
    if rejection_reason(note) is None:
        raise InvalidInput("not an IOCM rejection note (KOS titled by a CID 7011 reason)")
    found: set[str] = set()
    for study in dv.items(note, "CurrentRequestedProcedureEvidenceSequence"):
        for series in dv.items(study, "ReferencedSeriesSequence"):
            for ref in dv.items(series, "ReferencedSOPSequence"):
                found.add(dv.text(ref, "ReferencedSOPInstanceUID"))
    for item in dv.items(note, "ContentSequence"):
        for ref in dv.items(item, "ReferencedSOPSequence"):
            found.add(dv.text(ref, "ReferencedSOPInstanceUID"))
    found.discard("")
    return found
