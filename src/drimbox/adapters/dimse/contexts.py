"""Presentation contexts the embedded PACS accepts and proposes."""

from __future__ import annotations

from collections.abc import Iterable

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

FIND_MODELS = {
    str(PatientRootQueryRetrieveInformationModelFind): "PATIENT",
    str(StudyRootQueryRetrieveInformationModelFind): "STUDY",
}
QR_CLASSES = (
    Verification,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelMove,
)


def scp_contexts() -> list[PresentationContext]:
    """Every storage SOP class with every transfer syntax, plus the Q/R models.

    The storage contexts also accept the SCP role from a C-GET requestor (PS3.7 D.3.3.4).
    """
    contexts = [build_context(uid) for uid in QR_CLASSES]
    for cx in AllStoragePresentationContexts:
        ctx = build_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        ctx.scp_role = True
        ctx.scu_role = True
        contexts.append(ctx)
    return contexts


def storage_contexts_for(pairs: Iterable[tuple[str, str]]) -> list[PresentationContext]:
    """Contexts to propose when sending stored instances: their own syntax, then the
    uncompressed ones as fall-backs. At most 128 contexts may be proposed (PS3.8 9.3.2.2)."""
    by_class: dict[str, list[str]] = {}
    for sop_class, tsuid in pairs:
        syntaxes = by_class.setdefault(sop_class, [])
        if tsuid not in syntaxes:
            syntaxes.insert(0, tsuid)
    contexts = []
    for sop_class, syntaxes in by_class.items():
        for fallback in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if fallback not in syntaxes:
                syntaxes.append(fallback)
        contexts.append(build_context(sop_class, syntaxes))
    if len(contexts) > 128:
        raise ValueError("more than 128 SOP classes in one retrieve")
    return contexts
