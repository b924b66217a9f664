"""The box's DICOM listener for IHE IOCM: the PACS C-STOREs rejection notes to it.

Only Key Object Selection documents (and C-ECHO) are accepted. A rejection note is answered
0x0000 only after ``on_note`` returned, i.e. once it is durably queued; a KOS that is not a
rejection note gets 0xC000 with a reason, a storage failure 0xA700 so that the PACS retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from drimbox.adapters.documents import dicom_values as dv
from drimbox.adapters.documents import iocm
from drimbox.adapters.documents.kos import KOS_SOP_CLASS
from drimbox.domain.errors import DrimboxError
from drimbox.domain.identifiers import is_valid_uid

log = logging.getLogger(__name__)

NoteSink = Callable[[str, frozenset[str], bytes], None]
"""(note SOP Instance UID, Study Instance UIDs it touches, Part 10 bytes) -> durably queued."""

_SUCCESS = 0x0000
_OUT_OF_RESOURCES = 0xA700
_CANNOT_UNDERSTAND = 0xC000
_TRANSFER_SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.1.99"]


def studies_of(note: Dataset) -> frozenset[str]:
    found = {
        dv.text(study, "StudyInstanceUID")
        for study in dv.items(note, "CurrentRequestedProcedureEvidenceSequence")
    }
    return frozenset(uid for uid in found if is_valid_uid(uid))


def _failure(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds


@dataclass
class IocmListener:
    server: ThreadedAssociationServer

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_iocm(
    host: str,
    port: int,
    aet: str,
    on_note: NoteSink,
    allowed_calling_aets: Collection[str] = (),
) -> IocmListener:
    """Start the listener in background threads (port 0 picks a free one)."""

    def handle_store(event: Any) -> int | Dataset:
        calling = event.assoc.requestor.ae_title.strip()
        try:
            note = event.dataset
            note.file_meta = event.file_meta
        except Exception as exc:
            return _failure(_CANNOT_UNDERSTAND, f"unreadable dataset: {exc}")
        if iocm.rejection_reason(note) is None:
            return _failure(_CANNOT_UNDERSTAND, "not an IOCM rejection note (CID 7011 title)")
        studies = studies_of(note)
        note_uid = dv.text(note, "SOPInstanceUID")
        if not studies or not is_valid_uid(note_uid):
            return _failure(_CANNOT_UNDERSTAND, "rejection note without study or valid UID")
        try:
            on_note(note_uid, studies, bytes(event.encoded_dataset()))
        except DrimboxError as exc:
            return _failure(_CANNOT_UNDERSTAND, str(exc))
        except Exception:
            log.exception("could not queue rejection note %s from %s", note_uid, calling)
            return _OUT_OF_RESOURCES
        log.info("rejection note %s from %s for %d studies", note_uid, calling, len(studies))
        return _SUCCESS

    ae = AE(aet)
    if allowed_calling_aets:
        ae.require_calling_aet = list(allowed_calling_aets)
    ae.add_supported_context(KOS_SOP_CLASS, _TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    handlers: list[Any] = [(evt.EVT_C_STORE, handle_store)]
    server = ae.start_server((host, port), block=False, evt_handlers=handlers)
    assert server is not None  # block=False always returns the server
    return IocmListener(server)
