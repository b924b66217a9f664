"""Pull an exam from the site's PACS into the instance cache: Study Root C-GET (PS3.4 C.4.3).

C-GET brings the instances back on the association that asked for them, as C-STORE
sub-operations with the roles reversed (PS3.7 D.3.3.4): the box needs no listening port and
no entry in the PACS's move-destination table. The work is cut into jobs (a whole series, or
a slice of an instance list at IMAGE level) that up to ``associations`` associations take
from one queue, so a single large series is still pulled in parallel. Each association is a
:class:`GetAssociation`: our own blocking loop over pynetdicom's PDU codecs, with TCP_NODELAY.

Storage contexts: the SOP classes given (from a manifest) or else a default list of common
ones, each with every usual transfer syntax so that instances come as stored, untranscoded;
an instance of a class we did not propose is a failed sub-operation for the PACS.

What the PACS sends is checked before it is cached: a whole Part 10 object, of the study and
series asked for and, for an instance list, one of the listed instances; anything else is
refused (a failed sub-operation) and counted in ``RetrieveResult.rejected``.

Errors: no association, an abort, a DIMSE timeout or a protocol violation is
:class:`PeerUnavailable` (retry later); a C-GET failure status is :class:`RetrieveFailed`,
carrying the status and what arrived all the same. Instances asked for by UID that did not
arrive are reported in ``RetrieveResult.missing``, not raised: the caller decides.
Unknown study: asked for the whole study, we first ask the PACS what it holds
(:func:`find_exam`), which raises NotFound; asked for instance lists, the answer is the
PACS's: an empty result with everything missing (our PACS, dcmtk) or RetrieveFailed
(Orthanc fails a C-GET that matches nothing with 0xC000).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    BasicTextSRStorage,
    ComprehensiveSRStorage,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    EncapsulatedPDFStorage,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    KeyObjectSelectionDocumentStorage,
    MRImageStorage,
    NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
    XRayAngiographicImageStorage,
)
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, build_context, build_role
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelGet,
)

from drimbox.adapters.dimse import status as st
from drimbox.adapters.dimse.pacs_query import PacsAddress, find_exam
from drimbox.adapters.dimse.upper_layer import (
    ABORT,
    APPLICATION_CONTEXT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    C_STORE_RQ,
    C_STORE_RSP,
    IMPLEMENTATION_VERSION,
    NO_DATASET,
    P_DATA_TF,
    RELEASE_RP,
    RELEASE_RQ,
    abort_pdu,
    command_pdu,
    file_meta,
    pdu,
)
from drimbox.adapters.storage.pacs_store import InvalidObject, parse_object
from drimbox.domain.errors import DrimboxError, InvalidInput, PeerUnavailable
from drimbox.domain.identifiers import is_valid_uid


class InstanceSink(Protocol):
    """Where retrieved instances go (the box's ``InstanceCache``, or a wrapper of it)."""

    def put(self, study: str, series: str, sop: str, data: bytes) -> object: ...

    def missing(self, study: str, series: str, sop_uids: Iterable[str]) -> set[str]: ...


log = logging.getLogger(__name__)

SeriesSelection = tuple[str, Sequence[str]]
"""(Series Instance UID, SOP Instance UIDs); no SOP Instance UID: the whole series."""

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
COMPRESSED = (
    JPEGLosslessSV1, JPEG2000Lossless, JPEGBaseline8Bit, JPEG2000, JPEGLSLossless,
    JPEGLSNearLossless, JPEGLossless, JPEGExtended12Bit, RLELossless,
    DeflatedExplicitVRLittleEndian,
)  # fmt: skip
"""Offered as stored (we never ask the PACS to transcode), most common first."""
IMAGE_CLASSES = (
    CTImageStorage, MRImageStorage, ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation, DigitalMammographyXRayImageStorageForPresentation,
    UltrasoundImageStorage, UltrasoundMultiFrameImageStorage, NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage, SecondaryCaptureImageStorage,
    XRayAngiographicImageStorage, EnhancedCTImageStorage, EnhancedMRImageStorage,
)  # fmt: skip
OTHER_CLASSES = (
    KeyObjectSelectionDocumentStorage, BasicTextSRStorage, EnhancedSRStorage,
    ComprehensiveSRStorage, GrayscaleSoftcopyPresentationStateStorage, EncapsulatedPDFStorage,
)  # fmt: skip
"""Proposed when the caller does not know the SOP classes of what it retrieves."""

MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: context IDs are odd numbers 1-255
_PENDING = frozenset({0xFF00, 0xFF01})
_SUCCESS, _WARNING = 0x0000, 0xB000
_STORE_REFUSED = 0xC000  # storage "Error: cannot understand", with a comment saying why
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
_MAX_PDU = 1 << 20  # what we accept; a PACS sends at most this, often 16 KiB
_MAX_PDU_READ = 64 << 20  # a larger PDU is an attack or a bug: abort
_HEADER = struct.Struct(">BxL")
_PREAMBLE = b"\x00" * 128 + b"DICM"
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class RetrieveFailed(DrimboxError):
    """The PACS ended a C-GET with a failure status; ``result`` says what arrived anyway."""

    def __init__(self, status: int, comment: str, result: RetrieveResult) -> None:
        self.status = status
        self.comment = comment
        self.result = result
        detail = f": {comment}" if comment else ""
        super().__init__(f"C-GET failed with status 0x{status:04X}{detail}")


@dataclass
class RetrieveResult:
    """Sub-operation counts as the PACS reported them, and what we did with the instances."""

    study_uid: str
    completed: int = 0
    failed: int = 0
    warning: int = 0
    stored: int = 0
    """Instances written to the cache."""
    rejected: int = 0
    """Instances the PACS sent that we refused (not asked for, or not a whole object)."""
    bytes: int = 0
    missing: frozenset[str] = frozenset()
    """SOP Instance UIDs asked for that are not in the cache afterwards."""
    associations: int = 0
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not (self.failed or self.missing)

    def add(self, other: RetrieveResult) -> None:
        self.completed += other.completed
        self.failed += other.failed
        self.warning += other.warning
        self.stored += other.stored
        self.rejected += other.rejected
        self.bytes += other.bytes


@dataclass(frozen=True, slots=True)
class _Job:
    series_uid: str
    sop_uids: tuple[str, ...]  # empty: SERIES level, the whole series

    @property
    def size(self) -> int:
        return len(self.sop_uids)


def storage_contexts(
    sop_classes: Collection[str] = (), budget: int = MAX_CONTEXTS - 1
) -> list[PresentationContext]:
    """Contexts for the storage sub-operations: per SOP class one context with the
    uncompressed syntaxes, then one context per compressed syntax while the budget lasts
    (a context carries one accepted syntax, and we take each instance in the syntax the
    PACS stores it in). Unknown classes: a default list of the common ones."""
    classes = list(dict.fromkeys(sop_classes)) or [*IMAGE_CLASSES, *OTHER_CLASSES]
    if len(classes) > budget:
        raise InvalidInput(f"{len(classes)} SOP classes in one retrieve, at most {budget}")
    contexts = [build_context(c, list(UNCOMPRESSED)) for c in classes]
    images = [c for c in classes if c not in OTHER_CLASSES]
    for syntax in COMPRESSED:
        for sop_class in images:
            if len(contexts) >= budget:
                return contexts
            contexts.append(build_context(sop_class, syntax))
    return contexts


def plan_jobs(
    series: Sequence[SeriesSelection], associations: int, min_chunk: int = 8
) -> list[_Job]:
    """Cut instance lists into slices so that ``associations`` workers share the work;
    largest first, so that no worker is left alone with a big job at the end."""
    total = sum(len(sops) for _, sops in series)
    chunk = max(min_chunk, math.ceil(total / max(associations, 1)))
    jobs: list[_Job] = []
    for series_uid, sops in series:
        uids = tuple(dict.fromkeys(sops))
        if not uids:
            jobs.append(_Job(series_uid, ()))
        for start in range(0, len(uids), chunk):
            jobs.append(_Job(series_uid, uids[start : start + chunk]))
    jobs.sort(key=lambda j: j.size, reverse=True)
    return jobs


StoreCallback = Callable[[str, bytes], tuple[int, "str | None"]]
"""(Affected SOP Instance UID, Part 10 bytes) -> (C-STORE status, error comment)."""


class _ProtocolError(Exception):
    """The PACS broke the upper-layer or DIMSE protocol: we abort."""


class GetAssociation:
    """A C-GET requestor on one blocking socket (PS3.8 upper layer, PS3.7 DIMSE).

    pynetdicom handles each PDU on two polling threads; a 512x512 slice arrives from dcmtk
    based PACSs (Orthanc) in some 35 PDUs of 16 KiB, and that per-PDU cost made pynetdicom's
    requestor take several times as long as dcmtk's getscu. As in ``upper_layer.py``, the
    PDU and negotiation codecs stay pynetdicom's; the loop is ours: exact-size reads, each
    object joined once from views of its PDUs, each response in one ``sendall``.
    One operation at a time (no asynchronous operations window).
    """

    def __init__(
        self, address: PacsAddress, contexts: Sequence[PresentationContext], on_store: StoreCallback
    ) -> None:
        self.address = address
        self.on_store = on_store
        get_context = build_context(StudyRootQueryRetrieveInformationModelGet, list(UNCOMPRESSED))
        self.contexts = [*contexts, get_context]
        if len(self.contexts) > MAX_CONTEXTS:
            raise InvalidInput(f"{len(self.contexts)} presentation contexts, at most 128")
        self.proposed = {2 * i + 1: str(cx.abstract_syntax) for i, cx in enumerate(self.contexts)}
        self.accepted: dict[int, tuple[str, str]] = {}  # context ID -> (SOP class, syntax)
        self.peer_max_pdu = 0
        self.message_id = 0
        self.sock: socket.socket | None = None
        self._pdvs: Iterator[tuple[int, int, memoryview]] = iter(())

    # -- association ----------------------------------------------------------------------

    def open(self) -> None:
        where = f"{self.address.called_aet}@{self.address.host}:{self.address.port}"
        try:
            self.sock = socket.create_connection(
                (self.address.host, self.address.port), timeout=self.address.timeout
            )
            # each C-STORE-RSP is a small write: with Nagle on it would wait for the PACS's
            # delayed ACK (design.md section 7)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.sendall(self._request())
            pdu_type, raw = self._read_pdu()
            if pdu_type == ASSOCIATE_RJ:
                result, source, reason = raw[7], raw[8], raw[9]
                raise PeerUnavailable(
                    f"{where} rejected the association (result {result}, source {source}, "
                    f"reason {reason})"
                )
            if pdu_type != ASSOCIATE_AC:
                raise _ProtocolError(f"PDU type {pdu_type:#x} instead of A-ASSOCIATE-AC")
            self._accepted(raw)
        except (OSError, _ProtocolError) as exc:
            self._close(abort=True)
            raise PeerUnavailable(f"no association with {where}: {exc}") from None
        except PeerUnavailable:
            self._close(abort=False)
            raise
        self._pdvs = self._pdv_stream()

    def _request(self) -> bytes:
        prim = A_ASSOCIATE()
        prim.application_context_name = UID(APPLICATION_CONTEXT)
        prim.calling_ae_title = self.address.calling_aet
        prim.called_ae_title = self.address.called_aet
        for context_id, cx in zip(self.proposed, self.contexts, strict=True):
            cx.context_id = context_id
        prim.presentation_context_definition_list = self.contexts
        max_len = MaximumLengthNotification()
        max_len.maximum_length_received = _MAX_PDU
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        impl_ver = ImplementationVersionNameNotification()
        impl_ver.implementation_version_name = IMPLEMENTATION_VERSION
        # we are the storage SCP of the sub-operations (PS3.7 D.3.3.4)
        model = str(StudyRootQueryRetrieveInformationModelGet)
        classes = dict.fromkeys(c for c in self.proposed.values() if c != model)
        roles = [build_role(c, scp_role=True) for c in classes]
        prim.user_information = [max_len, impl_uid, impl_ver, *roles]
        rq = A_ASSOCIATE_RQ()
        rq.from_primitive(prim)
        return bytes(rq.encode())

    def _accepted(self, raw: bytes | bytearray) -> None:
        ac = A_ASSOCIATE_AC()
        try:
            ac.decode(bytes(raw))
            prim = ac.to_primitive()
        except Exception as exc:
            raise _ProtocolError(f"undecodable A-ASSOCIATE-AC: {exc}") from None
        for cx in prim.presentation_context_definition_results_list:
            context_id = int(cx.context_id or 0)
            if cx.result == 0 and context_id in self.proposed and cx.transfer_syntax:
                self.accepted[context_id] = (self.proposed[context_id], str(cx.transfer_syntax[0]))
        for item in prim.user_information:
            if isinstance(item, MaximumLengthNotification):
                self.peer_max_pdu = int(item.maximum_length_received or 0)
        if self._get_context() is None:
            raise PeerUnavailable(
                f"{self.address.called_aet} accepted the association but not Study Root C-GET"
            )

    def _get_context(self) -> tuple[int, str] | None:
        model = str(StudyRootQueryRetrieveInformationModelGet)
        for context_id, (abstract, syntax) in self.accepted.items():
            if abstract == model:
                return context_id, syntax
        return None

    def release(self) -> None:
        """A-RELEASE, quietly: the work is done whatever the PACS answers."""
        if self.sock is None:
            return
        try:
            self.sock.sendall(pdu(RELEASE_RQ, bytes(4)))
            for _ in range(1000):  # late PDUs may precede the answer
                pdu_type, _ = self._read_pdu()
                if pdu_type in (RELEASE_RP, ABORT):
                    break
        except (OSError, _ProtocolError):
            pass
        self._close(abort=False)

    def _close(self, abort: bool) -> None:
        if self.sock is None:
            return
        if abort:
            with contextlib.suppress(OSError):
                self.sock.sendall(abort_pdu())
        self.sock.close()
        self.sock = None

    # -- DIMSE ----------------------------------------------------------------------------

    def get(self, identifier: Dataset) -> Dataset:
        """Send one C-GET-RQ, serve its C-STORE sub-operations; the final C-GET-RSP."""
        found = self._get_context()
        if self.sock is None or found is None:
            raise PeerUnavailable("the association is closed")
        context_id, syntax = found
        self.message_id = self.message_id % 0xFFFF + 1
        command = Dataset()
        command.AffectedSOPClassUID = StudyRootQueryRetrieveInformationModelGet
        command.CommandField = C_GET_RQ
        command.MessageID = self.message_id
        command.Priority = 0
        command.CommandDataSetType = 0x0000
        data = encode(identifier, syntax == ImplicitVRLittleEndian, True) or b""
        try:
            self.sock.sendall(command_pdu(context_id, command) + self._data_pdus(context_id, data))
            while True:
                context, msg, fragments = self._message()
                field_ = int(msg.CommandField)
                if field_ == C_STORE_RQ:
                    self._store(context, msg, fragments)
                elif field_ == C_GET_RSP and int(msg.MessageIDBeingRespondedTo) == self.message_id:
                    if int(msg.Status) not in _PENDING:
                        return msg
                else:
                    raise _ProtocolError(f"unexpected DIMSE command {field_:#06x}")
        except (OSError, _ProtocolError) as exc:
            self._close(abort=True)
            raise PeerUnavailable(f"C-GET from {self.address.called_aet} broken: {exc}") from None
        except PeerUnavailable:
            self._close(abort=False)
            raise

    def _store(self, context_id: int, command: Dataset, fragments: list[memoryview]) -> None:
        sop_class, syntax = self.accepted[context_id]
        affected = str(command.get("AffectedSOPInstanceUID") or "")
        status: int
        comment: str | None
        if str(command.get("AffectedSOPClassUID") or "") != sop_class:
            status, comment = 0x0122, "SOP class differs from the presentation context"
        elif not fragments or not is_valid_uid(affected):
            status, comment = _STORE_REFUSED, "no data set, or an invalid SOP Instance UID"
        else:
            meta = file_meta(sop_class, affected, syntax, self.address.called_aet)
            status, comment = self.on_store(affected, b"".join([_PREAMBLE, meta, *fragments]))
        rsp = Dataset()
        rsp.AffectedSOPClassUID = sop_class
        rsp.CommandField = C_STORE_RSP
        rsp.MessageIDBeingRespondedTo = command.MessageID
        rsp.CommandDataSetType = NO_DATASET
        rsp.Status = status
        rsp.AffectedSOPInstanceUID = affected
        if comment:
            rsp.ErrorComment = comment.replace("\\", "/")[:64]  # LO
        assert self.sock is not None
        self.sock.sendall(command_pdu(context_id, rsp))

    def _message(self) -> tuple[int, Dataset, list[memoryview]]:
        """The next DIMSE message: context ID, command set, data set fragments."""
        parts: list[memoryview] = []
        context_id = -1
        for pdv_context, control, fragment in self._pdvs:
            if not control & 0x01:
                raise _ProtocolError("data set fragment without a command")
            if parts and pdv_context != context_id:
                raise _ProtocolError("command fragments on two presentation contexts")
            context_id = pdv_context
            parts.append(fragment)
            if control & 0x02:
                break
        if context_id not in self.accepted:
            raise _ProtocolError(f"message on unaccepted presentation context {context_id}")
        try:
            command = decode(io.BytesIO(b"".join(parts)), True, True)
        except Exception as exc:
            raise _ProtocolError(f"undecodable DIMSE command: {exc}") from None
        fragments: list[memoryview] = []
        if int(command.get("CommandDataSetType", NO_DATASET)) != NO_DATASET:
            for data_context, control, fragment in self._pdvs:
                if control & 0x01 or data_context != context_id:
                    raise _ProtocolError("command fragment inside a data set")
                fragments.append(fragment)  # a view into its PDU: copied once, when joined
                if control & 0x02:
                    break
        return context_id, command, fragments

    def _pdv_stream(self) -> Iterator[tuple[int, int, memoryview]]:
        while True:
            pdu_type, raw = self._read_pdu()
            if pdu_type == ABORT:
                raise PeerUnavailable(f"{self.address.called_aet} aborted the association")
            if pdu_type != P_DATA_TF:
                raise _ProtocolError(f"unexpected PDU type {pdu_type:#x} during an operation")
            view = memoryview(raw)
            pos = 6
            while pos < len(view):
                if pos + 6 > len(view):
                    raise _ProtocolError("truncated presentation data value item")
                length, context_id, control = struct.unpack_from(">LBB", view, pos)
                if length < 2 or pos + 4 + length > len(view):
                    raise _ProtocolError("presentation data value length out of bounds")
                yield context_id, control, view[pos + 6 : pos + 4 + length]
                pos += 4 + length

    def _data_pdus(self, context_id: int, data: bytes) -> bytes:
        step = (self.peer_max_pdu or _MAX_PDU) - 6  # room for the PDV header
        out = []
        for start in range(0, len(data), step):
            chunk = data[start : start + step]
            control = 0x02 if start + step >= len(data) else 0x00
            pdv = struct.pack(">LBB", len(chunk) + 2, context_id, control) + chunk
            out.append(pdu(P_DATA_TF, pdv))
        return b"".join(out)

    def _read_pdu(self) -> tuple[int, bytearray]:
        """One whole PDU, header included (pynetdicom's decoders want it)."""
        raw = self._read_exact(6)
        pdu_type, length = _HEADER.unpack(raw)
        if length > _MAX_PDU_READ:
            raise _ProtocolError(f"PDU of {length} bytes refused")
        raw += self._read_exact(length)
        return pdu_type, raw

    def _read_exact(self, size: int) -> bytearray:
        assert self.sock is not None
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = self.sock.recv_into(view[got:], size - got, socket.MSG_WAITALL)
            if n == 0:
                raise _ProtocolError("the PACS closed the connection")
            got += n
        if _QUICKACK is not None:
            # a PACS that leaves Nagle on (stock dcmtk) then goes on without waiting for
            # our delayed ACK (design.md section 7)
            self.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return buf


class _Receiver:
    """Checks and caches the instances one association receives."""

    def __init__(self, cache: InstanceSink, study_uid: str) -> None:
        self.cache = cache
        self.study_uid = study_uid
        self.job = _Job("", ())
        self.allowed: frozenset[str] = frozenset()
        self.counts = RetrieveResult(study_uid)

    def start(self, job: _Job) -> None:
        self.job = job
        self.allowed = frozenset(job.sop_uids)

    def __call__(self, affected_sop: str, part10: bytes) -> tuple[int, str | None]:
        """Status and error comment of the C-STORE-RSP."""
        try:
            ds = parse_object(part10)
        except InvalidObject as exc:
            return self._refuse(f"not a whole DICOM object: {exc}")
        study, series, sop = (
            str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
        )  # fmt: skip
        if sop != affected_sop:
            return self._refuse(f"{sop} differs from the Affected SOP Instance UID")
        if (study, series) != (self.study_uid, self.job.series_uid):
            return self._refuse(f"{sop} belongs to series {series} of study {study}")
        if self.allowed and sop not in self.allowed:
            return self._refuse(f"{sop} was not asked for")
        try:
            self.cache.put(study, series, sop, part10)
        except OSError as exc:
            log.error("cannot cache %s: %s", sop, exc)
            return st.OUT_OF_RESOURCES, "cache write failed"
        self.counts.stored += 1
        self.counts.bytes += len(part10)
        return st.SUCCESS, None

    def _refuse(self, why: str) -> tuple[int, str]:
        log.warning("C-GET of study %s: refused an instance: %s", self.study_uid, why)
        self.counts.rejected += 1
        return _STORE_REFUSED, why


def _identifier(study_uid: str, job: _Job) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "IMAGE" if job.sop_uids else "SERIES"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = job.series_uid
    if job.sop_uids:
        ds.SOPInstanceUID = list(job.sop_uids)  # list matching, PS3.4 C.2.2.2.2
    return ds


def _get(assoc: GetAssociation, receiver: _Receiver, study_uid: str, job: _Job) -> None:
    """One C-GET; adds the PACS's final counts to the receiver's and raises its failures."""
    receiver.start(job)
    final = assoc.get(_identifier(study_uid, job))
    counts = receiver.counts
    counts.completed += int(final.get("NumberOfCompletedSuboperations") or 0)
    counts.failed += int(final.get("NumberOfFailedSuboperations") or 0)
    counts.warning += int(final.get("NumberOfWarningSuboperations") or 0)
    code = int(final.Status)
    if code not in (_SUCCESS, _WARNING):
        raise RetrieveFailed(code, str(final.get("ErrorComment") or ""), counts)


@dataclass
class _Run:
    """One retrieval: the shared job queue and what the workers report."""

    address: PacsAddress
    cache: InstanceSink
    study_uid: str
    contexts: list[PresentationContext]
    jobs: queue.SimpleQueue[_Job]
    lock: threading.Lock = field(default_factory=threading.Lock)
    errors: list[DrimboxError] = field(default_factory=list)
    opened: int = 0

    def worker(self) -> RetrieveResult:
        receiver = _Receiver(self.cache, self.study_uid)
        assoc = GetAssociation(self.address, self.contexts, receiver)
        try:
            assoc.open()
        except PeerUnavailable as exc:
            # the others may still do all the work (a PACS limiting associations per caller)
            log.info("C-GET of study %s: one association fewer: %s", self.study_uid, exc)
            self._fail(exc)
            return receiver.counts
        with self.lock:
            self.opened += 1
        try:
            while True:
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    break
                try:
                    _get(assoc, receiver, self.study_uid, job)
                except RetrieveFailed as exc:
                    self._fail(exc)  # this job only: the others may still succeed
                except PeerUnavailable as exc:
                    self.jobs.put(job)  # for a worker still alive; left over, it is raised
                    self._fail(exc)
                    break
        finally:
            assoc.release()
        return receiver.counts

    def _fail(self, exc: DrimboxError) -> None:
        with self.lock:
            self.errors.append(exc)


def _inventory(address: PacsAddress, study_uid: str) -> tuple[list[SeriesSelection], set[str]]:
    exam = find_exam(
        address.host, address.port, address.called_aet, address.calling_aet, study_uid,
        timeout=address.timeout,
    )  # fmt: skip
    series: list[SeriesSelection] = [
        (s.series_uid, [i.sop_instance_uid for i in s.instances]) for s in exam.series
    ]
    classes = {i.sop_class_uid for s in exam.series for i in s.instances if i.sop_class_uid}
    return series, classes


def retrieve(
    address: PacsAddress,
    cache: InstanceSink,
    study_uid: str,
    series: Sequence[SeriesSelection] | None = None,
    *,
    sop_classes: Collection[str] = (),
    associations: int = 4,
) -> RetrieveResult:
    """C-GET ``series`` of a study (all of it when None) into ``cache``; see the module doc.

    ``sop_classes`` (from a manifest, say) narrows the storage contexts proposed; without
    it a default list of common classes is proposed.
    """
    if associations < 1:
        raise ValueError("associations must be at least 1")
    started = time.monotonic()
    selected = series or ()
    uids = [study_uid, *(s for s, _ in selected), *(i for _, sops in selected for i in sops)]
    bad = next((u for u in uids if not is_valid_uid(u)), None)
    if bad is not None:
        raise InvalidInput(f"{bad[:80]!r} is not a valid UID")
    if series is None:
        series, found = _inventory(address, study_uid)
        sop_classes = sop_classes or found
    jobs = plan_jobs(series, associations)
    result = RetrieveResult(study_uid)
    run: _Run | None = None
    if jobs:
        pending: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        for job in jobs:
            pending.put(job)
        run = _Run(address, cache, study_uid, storage_contexts(sop_classes), pending)
        workers = min(associations, len(jobs))
        with ThreadPoolExecutor(workers, thread_name_prefix="c-get") as pool:
            for counts in pool.map(lambda _: run.worker(), range(workers)):
                result.add(counts)
        result.associations = run.opened
    result.missing = _missing(cache, study_uid, series)
    result.seconds = time.monotonic() - started
    if run is not None:
        _raise_first(run, result)
    log.info(
        "C-GET study %s from %s: %d stored (%.1f MB), %d failed, %d refused, %d missing, "
        "%d associations, %.2f s", study_uid, address.called_aet, result.stored,
        result.bytes / 1e6, result.failed, result.rejected, len(result.missing),
        result.associations, result.seconds,
    )  # fmt: skip
    return result


def _raise_first(run: _Run, result: RetrieveResult) -> None:
    failed = [e for e in run.errors if isinstance(e, RetrieveFailed)]
    if not run.jobs.empty():  # work left undone: the PACS is down or dropped us
        first = next(e for e in run.errors if isinstance(e, PeerUnavailable))
        raise PeerUnavailable(f"{first} ({result.stored} instances cached before)") from first
    if failed:
        raise RetrieveFailed(failed[0].status, failed[0].comment, result)


def _missing(
    cache: InstanceSink, study_uid: str, series: Sequence[SeriesSelection]
) -> frozenset[str]:
    missing: set[str] = set()
    for series_uid, sops in series:
        if sops:
            missing |= cache.missing(study_uid, series_uid, sops)
    return frozenset(missing)
