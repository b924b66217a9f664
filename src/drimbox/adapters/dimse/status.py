"""Our errors as DIMSE statuses: the one table for this protocol (PS3.4 B.2.3, C.4)."""

from __future__ import annotations

from pydicom.dataset import Dataset

from drimbox.adapters.storage.dicom_index import QueryError
from drimbox.adapters.storage.pacs_store import InvalidObject
from drimbox.domain.errors import InvalidInput

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
# Storage (PS3.4 table B.2-1)
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
# Query/Retrieve (PS3.4 C.4.1.1.4, C.4.2.1.5)
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC001
MOVE_DESTINATION_UNKNOWN = 0xA801
SUBOPS_COMPLETE_WITH_FAILURES = 0xB000


def status(code: int, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        # ErrorComment is LO: 64 characters at most
        ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds


def store_failure(exc: BaseException) -> Dataset:
    if isinstance(exc, InvalidObject):
        return status(CANNOT_UNDERSTAND, str(exc))
    if isinstance(exc, InvalidInput):
        return status(DATASET_DOES_NOT_MATCH_SOP_CLASS, str(exc))
    if isinstance(exc, OSError):
        return status(OUT_OF_RESOURCES, f"storage failure: {exc.strerror or exc}")
    return status(PROCESSING_FAILURE, f"internal error: {type(exc).__name__}")


def query_failure(exc: BaseException) -> Dataset:
    if isinstance(exc, QueryError | InvalidInput):
        return status(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc))
    return status(UNABLE_TO_PROCESS, f"internal error: {type(exc).__name__}")
