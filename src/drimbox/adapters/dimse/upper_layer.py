"""A DICOM upper-layer acceptor (PS3.8) for the hot path: Verification and Storage.

pynetdicom runs every association on two polling threads (DUL and DIMSE reactors that sleep
between checks), which caps C-STORE ingest below Orthanc's. This acceptor decodes PDUs with
pynetdicom's own codecs and negotiates with pynetdicom's own presentation logic, but moves
P-DATA on one blocking thread per association with no polling (exact-size ``recv_into``,
each response in one ``sendall``). An association that proposes a query/retrieve model
(C-FIND, C-GET, C-MOVE) is relayed byte for byte to a pynetdicom acceptor on loopback, so
query/retrieve keep pynetdicom's service classes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import socketserver
import struct
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import (
    ALL_TRANSFER_SYNTAXES,
    PYNETDICOM_IMPLEMENTATION_UID,
    AllStoragePresentationContexts,
    build_context,
)
from pynetdicom.dsutils import decode, encode
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from drimbox import __version__
from drimbox.domain.identifiers import is_valid_uid

log = logging.getLogger(__name__)

VERIFICATION = "1.2.840.10008.1.1"
STORAGE_CLASSES = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLEMENTATION_VERSION = f"DRIMBOX_{__version__.replace('.', '')}"[:16]

# PDU types (PS3.8 9.3)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, RELEASE_RQ, RELEASE_RP, ABORT = 0x04, 0x05, 0x06, 0x07
# DIMSE command fields (PS3.7 E.1)
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
NO_DATASET = 0x0101
MAX_PDU_ACCEPTED = 64 << 20  # a larger PDU is an attack or a bug: abort

_HEADER = struct.Struct(">BxL")
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class AssociationAborted(Exception):
    """The peer aborted, or sent something we must abort for."""


@dataclass
class StoreRequest:
    """One received C-STORE: what the store needs to durably keep it."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    calling_aet: str
    peer: str
    part10: bytes


StoreHandler = Callable[[StoreRequest], tuple[int, str | None]]


@dataclass
class _Assoc:
    calling_aet: str
    peer: str
    contexts: dict[int, PresentationContext]
    peer_max_pdu: int
    command: dict[int, list[bytes]] = field(default_factory=dict)
    data: dict[int, list[memoryview]] = field(default_factory=dict)
    pending: Dataset | None = None


def _even(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _meta_element(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":  # PS3.5 7.1.2: OB has a reserved field and a 4-byte length
        return struct.pack("<HH2sHL", 0x0002, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str, calling_aet: str) -> bytes:
    """The File Meta Information group (PS3.10 7.1), explicit VR little endian.

    Encoded directly: building a pydicom FileMetaDataset and writing it costs about a
    millisecond, per stored object, which is a third of an ingest's CPU.
    """
    body = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", _even(sop_class.encode("ascii"), b"\x00")),
            _meta_element(0x0003, b"UI", _even(sop_instance.encode("ascii"), b"\x00")),
            _meta_element(0x0010, b"UI", _even(transfer_syntax.encode("ascii"), b"\x00")),
            _meta_element(
                0x0012, b"UI", _even(str(PYNETDICOM_IMPLEMENTATION_UID).encode("ascii"), b"\x00")
            ),
            _meta_element(0x0013, b"SH", _even(IMPLEMENTATION_VERSION.encode("ascii"), b" ")),
            _meta_element(0x0016, b"AE", _even(calling_aet.encode("ascii", "replace"), b" ")),
        )
    )
    return _meta_element(0x0000, b"UL", struct.pack("<L", len(body))) + body


def pdu(pdu_type: int, body: bytes) -> bytes:
    return _HEADER.pack(pdu_type, len(body)) + body


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    return pdu(ASSOCIATE_RJ, bytes([0, result, source, reason]))


def abort_pdu() -> bytes:
    return pdu(ABORT, bytes([0, 0, 0, 0]))


def command_pdu(context_id: int, command: Dataset | bytes) -> bytes:
    """Encode a DIMSE command set (or its encoded elements), with its group length, as one
    P-DATA-TF PDU."""
    body = command if isinstance(command, bytes) else encode(command, True, True) or b""
    group = struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body
    pdv = struct.pack(">LBB", len(group) + 2, context_id, 0x03) + group
    return pdu(P_DATA_TF, pdv)


def _element(element: int, value: bytes, pad: bytes = b"\x00") -> bytes:
    if len(value) % 2:
        value += pad
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def store_response(
    sop_class: str, message_id: int, status: int, sop_instance: str, comment: str | None
) -> bytes:
    """The C-STORE-RSP command elements (implicit VR little endian, tag order), encoded by
    hand: one per stored image, and pydicom's encoder costs several percent of the ingest."""
    parts = [
        _element(0x0002, sop_class.encode("ascii")),
        _element(0x0100, struct.pack("<H", C_STORE_RSP)),
        _element(0x0120, struct.pack("<H", message_id)),
        _element(0x0800, struct.pack("<H", NO_DATASET)),
        _element(0x0900, struct.pack("<H", status)),
    ]
    if comment:
        parts.append(_element(0x0902, comment[:64].encode("ascii", "replace"), b" "))
    parts.append(_element(0x1000, sop_instance.encode("ascii")))
    return b"".join(parts)


def supported_contexts(storage: Iterable[str] = STORAGE_CLASSES) -> list[PresentationContext]:
    # pynetdicom picks the first of *our* syntaxes that the requestor proposed: explicit VR
    # little endian first, since storing the WADO-RS default spares transcoding later
    syntaxes = [EXPLICIT_VR_LE, *(ts for ts in ALL_TRANSFER_SYNTAXES if ts != EXPLICIT_VR_LE)]
    out = [build_context(VERIFICATION)]
    out += [build_context(uid, syntaxes) for uid in sorted(storage)]
    return out


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    allow_reuse_port = True
    request_queue_size = 128


class UpperLayerAcceptor:
    """Accepts associations, one thread each; one instance per process."""

    def __init__(
        self,
        aet: str,
        on_store: StoreHandler,
        relay_to: tuple[str, int] | None,
        relayed_classes: Iterable[str] = (),
        allowed_calling_aets: Iterable[str] = (),
        max_pdu: int = 0,
        timeout: float = 120.0,
        max_associations: int = 64,
    ) -> None:
        self.aet = aet
        self.slots = threading.BoundedSemaphore(max_associations)
        self.on_store = on_store
        self.relay_to = relay_to
        self.relayed_classes = frozenset(str(uid) for uid in relayed_classes)
        self.allowed = {a.strip() for a in allowed_calling_aets}
        self.max_pdu = max_pdu
        self.timeout = timeout
        self.contexts = supported_contexts()

    def make_server(self, host: str, port: int) -> socketserver.ThreadingTCPServer:
        acceptor = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                acceptor.handle(self.request, self.client_address)

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        _Server.address_family = family
        return _Server((host, port), Handler)

    def serve_in_thread(self, host: str, port: int) -> socketserver.ThreadingTCPServer:
        server = self.make_server(host, port)
        threading.Thread(target=server.serve_forever, name="dimse-accept", daemon=True).start()
        return server

    def _read_exact(self, sock: socket.socket, size: int) -> bytearray:
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        while got < size:
            n = sock.recv_into(view[got:], size - got, socket.MSG_WAITALL)
            if n == 0:
                raise ConnectionResetError("peer closed the connection")
            got += n
            if _QUICKACK is not None:
                # stock dcmtk leaves Nagle on: without an immediate ACK its next small
                # write waits for our delayed-ACK timer (design.md section 7)
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        return buf

    def _read_pdu(self, sock: socket.socket) -> tuple[int, bytes, bytearray]:
        header = bytes(self._read_exact(sock, 6))
        pdu_type, length = _HEADER.unpack(header)
        if length > MAX_PDU_ACCEPTED:
            raise AssociationAborted(f"PDU of {length} bytes refused")
        return pdu_type, header, self._read_exact(sock, length)

    def handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.timeout)
        peer = f"{address[0]}:{address[1]}"
        if not self.slots.acquire(blocking=False):
            # PS3.8 table 9-21: rejected-transient, service-provider (presentation), local limit
            log.warning("association from %s refused: too many associations", peer)
            self._send_quietly(sock, reject_pdu(2, 3, 2))
            return
        try:
            self._serve(sock, peer)
        finally:
            self.slots.release()

    def _serve(self, sock: socket.socket, peer: str) -> None:
        try:
            pdu_type, header, body = self._read_pdu(sock)
            if pdu_type != ASSOCIATE_RQ:
                raise AssociationAborted(f"expected A-ASSOCIATE-RQ, got PDU type {pdu_type:#x}")
            self._associate(sock, header + bytes(body), peer)
        except (ConnectionError, TimeoutError, OSError) as exc:
            log.debug("connection from %s closed: %s", peer, exc)
        except AssociationAborted as exc:
            log.warning("aborting association from %s: %s", peer, exc)
            self._send_quietly(sock, abort_pdu())
        except Exception:
            log.exception("association from %s failed", peer)
            self._send_quietly(sock, abort_pdu())

    @staticmethod
    def _send_quietly(sock: socket.socket, data: bytes) -> None:
        with contextlib.suppress(OSError):
            sock.sendall(data)

    def _associate(self, sock: socket.socket, raw: bytes, peer: str) -> None:
        rq = A_ASSOCIATE_RQ()
        try:
            rq.decode(raw)
        except Exception as exc:
            raise AssociationAborted(f"undecodable A-ASSOCIATE-RQ: {exc}") from None
        prim = rq.to_primitive()
        calling = str(prim.calling_ae_title).strip()
        called = str(prim.called_ae_title).strip()
        # PS3.8 table 9-21: rejected-permanent, service-user, calling/called AE not recognized
        if self.allowed and calling not in self.allowed:
            log.warning("association from %s (%s) refused: calling AE not allowed", calling, peer)
            sock.sendall(reject_pdu(1, 1, 3))
            return
        if called != self.aet:
            log.warning("association from %s (%s) refused: called AE %r", calling, peer, called)
            sock.sendall(reject_pdu(1, 1, 7))
            return
        proposed = {str(cx.abstract_syntax) for cx in prim.presentation_context_definition_list}
        if proposed & self.relayed_classes and self.relay_to is not None:
            self._relay(sock, raw)
            return
        self._accept(sock, prim, calling, peer)

    def _relay(self, sock: socket.socket, raw: bytes) -> None:
        assert self.relay_to is not None
        upstream = socket.create_connection(self.relay_to, timeout=self.timeout)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        upstream.sendall(raw)

        def pipe(src: socket.socket, dst: socket.socket) -> None:
            try:
                while chunk := src.recv(1 << 20):
                    dst.sendall(chunk)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pipe, args=(upstream, sock), daemon=True)
        back.start()
        pipe(sock, upstream)
        back.join(self.timeout)
        upstream.close()

    def _accept(self, sock: socket.socket, prim: A_ASSOCIATE, calling: str, peer: str) -> None:
        roles = {
            UID(str(item.sop_class_uid)): (item.scu_role, item.scp_role)
            for item in prim.user_information
            if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
        }
        results, ac_roles = negotiate_as_acceptor(
            prim.presentation_context_definition_list,
            self.contexts,
            roles or None,
        )
        peer_max = 0
        for item in prim.user_information:
            if isinstance(item, MaximumLengthNotification):
                peer_max = int(item.maximum_length_received or 0)
        sock.sendall(self._accept_pdu(prim, results, ac_roles))
        accepted = {int(cx.context_id or 0): cx for cx in results if cx.result == 0}
        if not accepted:
            log.warning("association from %s (%s): no presentation context accepted", calling, peer)
        assoc = _Assoc(calling, peer, accepted, peer_max)
        while True:
            pdu_type, _, body = self._read_pdu(sock)
            if pdu_type == P_DATA_TF:
                self._on_pdata(assoc, body, sock)
            elif pdu_type == RELEASE_RQ:
                sock.sendall(pdu(RELEASE_RP, bytes(4)))
                return
            elif pdu_type == ABORT:
                log.info("association from %s (%s) aborted by the peer", calling, peer)
                return
            else:
                raise AssociationAborted(f"unexpected PDU type {pdu_type:#x}")

    def _accept_pdu(
        self,
        rq: A_ASSOCIATE,
        results: list[PresentationContext],
        roles: list[SCP_SCU_RoleSelectionNegotiation],
    ) -> bytes:
        ac = A_ASSOCIATE()
        ac.application_context_name = UID(APPLICATION_CONTEXT)
        ac.calling_ae_title = rq.calling_ae_title
        ac.called_ae_title = rq.called_ae_title
        ac.result = 0x00
        ac.result_source = 0x01
        ac.presentation_context_definition_results_list = results
        max_len = MaximumLengthNotification()
        max_len.maximum_length_received = self.max_pdu
        impl_uid = ImplementationClassUIDNotification()
        impl_uid.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
        impl_ver = ImplementationVersionNameNotification()
        impl_ver.implementation_version_name = IMPLEMENTATION_VERSION
        ac.user_information = [max_len, impl_uid, impl_ver, *roles]
        out = A_ASSOCIATE_AC()
        out.from_primitive(ac)
        return out.encode()

    def _on_pdata(self, assoc: _Assoc, body: bytearray, sock: socket.socket) -> None:
        view = memoryview(body)
        pos = 0
        while pos < len(view):
            if pos + 6 > len(view):
                raise AssociationAborted("truncated presentation data value item")
            length, context_id, control = struct.unpack_from(">LBB", view, pos)
            if length < 2 or pos + 4 + length > len(view):
                raise AssociationAborted("presentation data value length out of bounds")
            fragment = view[pos + 6 : pos + 4 + length]
            pos += 4 + length
            if context_id not in assoc.contexts:
                raise AssociationAborted(f"data on unaccepted presentation context {context_id}")
            is_command, is_last = bool(control & 0x01), bool(control & 0x02)
            if is_command:
                assoc.command.setdefault(context_id, []).append(bytes(fragment))
                if is_last:
                    raw = b"".join(assoc.command.pop(context_id))
                    self._on_command(assoc, context_id, raw, sock)
            else:
                if assoc.pending is None:
                    raise AssociationAborted("data set without a preceding command")
                # views into the PDU buffers: the object is copied once, in _store
                assoc.data.setdefault(context_id, []).append(fragment)
                if is_last:
                    command, assoc.pending = assoc.pending, None
                    fragments = assoc.data.pop(context_id)
                    self._store(assoc, context_id, command, fragments, sock)

    def _on_command(self, assoc: _Assoc, context_id: int, raw: bytes, sock: socket.socket) -> None:
        try:
            command = decode(io.BytesIO(raw), True, True)
            field_ = int(command.CommandField)
        except Exception as exc:
            raise AssociationAborted(f"undecodable DIMSE command: {exc}") from None
        if field_ == C_ECHO_RQ:
            rsp = Dataset()
            rsp.AffectedSOPClassUID = command.get("AffectedSOPClassUID", VERIFICATION)
            rsp.CommandField = C_ECHO_RSP
            rsp.MessageIDBeingRespondedTo = command.MessageID
            rsp.CommandDataSetType = NO_DATASET
            rsp.Status = 0x0000
            sock.sendall(command_pdu(context_id, rsp))
        elif field_ == C_STORE_RQ:
            if int(command.get("CommandDataSetType", NO_DATASET)) == NO_DATASET:
                raise AssociationAborted("C-STORE-RQ without a data set")
            assoc.pending = command
        else:
            raise AssociationAborted(f"DIMSE command {field_:#06x} is not served here")

    def _store(
        self,
        assoc: _Assoc,
        context_id: int,
        command: Dataset,
        fragments: list[memoryview],
        sock: socket.socket,
    ) -> None:
        context = assoc.contexts[context_id]
        sop_class = str(command.AffectedSOPClassUID)
        sop_instance = str(command.AffectedSOPInstanceUID)
        tsuid = str(context.transfer_syntax[0])
        status: int
        comment: str | None
        if sop_class != str(context.abstract_syntax):
            status, comment = 0x0122, "SOP class differs from the presentation context"
        elif not is_valid_uid(sop_instance):
            status, comment = 0xC000, "Affected SOP Instance UID is not a valid UID"
        else:
            meta = file_meta(sop_class, sop_instance, tsuid, assoc.calling_aet)
            part10 = b"".join([b"\x00" * 128, b"DICM", meta, *fragments])
            request = StoreRequest(
                sop_class, sop_instance, tsuid, assoc.calling_aet, assoc.peer, part10
            )
            status, comment = self.on_store(request)
        rsp = store_response(sop_class, int(command.MessageID), status, sop_instance, comment)
        sock.sendall(command_pdu(context_id, rsp))
