"""DIMSE service class provider of the embedded PACS: C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE.

Handlers parse the request, call the store, and map the outcome through ``status.py``.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from drimbox.adapters.dimse import status as st
from drimbox.adapters.dimse.contexts import FIND_MODELS, scp_contexts, storage_contexts_for
from drimbox.adapters.dimse.upper_layer import StoreRequest
from drimbox.adapters.storage.dicom_index import ATTRIBUTES, Level, QueryError, StoredInstance
from drimbox.adapters.storage.pacs_store import PacsStore, StoreResult
from drimbox.settings import RemoteAE

log = logging.getLogger(__name__)

_SKIP_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet"}
# computed at the PATIENT level by the index, returned but never matched
_PATIENT_COUNTS = {
    "NumberOfPatientRelatedStudies",
    "NumberOfPatientRelatedSeries",
    "NumberOfPatientRelatedInstances",
}
_RETRIEVE_KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_LEVELS = {
    "PATIENT": (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    "STUDY": (Level.STUDY, Level.SERIES, Level.IMAGE),
}


class FastAssociationServer(ThreadedAssociationServer):
    """Accepts with TCP_NODELAY (no Nagle stalls with dcmtk peers) and SO_REUSEPORT,
    so several worker processes can share one DIMSE port."""

    def server_bind(self) -> None:
        assert self.socket is not None
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def _origin(event: Event) -> str:
    req = event.assoc.requestor
    return f"{req.ae_title}@{req.address}"


def _value(elem_value: Any) -> str:
    if isinstance(elem_value, MultiValue):
        return "\\".join(str(v) for v in elem_value)
    return "" if elem_value is None else str(elem_value)


class PacsServiceProvider:
    def __init__(self, store: PacsStore, destinations: Mapping[str, RemoteAE]) -> None:
        self.store = store
        self.destinations = destinations

    def handlers(self) -> list[Any]:
        return [
            (evt.EVT_C_ECHO, self.on_echo),
            (evt.EVT_C_STORE, self.on_store),
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
        ]

    def on_echo(self, event: Event) -> int:
        return st.SUCCESS

    def store_request(self, req: StoreRequest) -> tuple[int, str | None]:
        """C-STORE received by the asyncio upper layer: (status, error comment)."""
        try:
            stored = self.store.ingest(
                req.part10, f"{req.calling_aet}@{req.peer}", expected_sop=req.sop_instance_uid
            )
        except Exception as exc:
            if not isinstance(exc, ValueError | OSError):
                log.exception("C-STORE from %s@%s failed", req.calling_aet, req.peer)
            failure = st.store_failure(exc)
            return int(failure.Status), failure.get("ErrorComment")
        if stored.result is StoreResult.DUPLICATE_KEPT:
            log.debug("duplicate %s from %s: first kept", req.sop_instance_uid, req.calling_aet)
        return st.SUCCESS, None

    def on_store(self, event: Event) -> Dataset | int:
        try:
            stored = self.store.ingest(
                event.encoded_dataset(include_meta=True),
                origin=_origin(event),
                expected_sop=str(getattr(event.request, "AffectedSOPInstanceUID", "")),
            )
        except Exception as exc:
            if not isinstance(exc, ValueError | OSError):
                log.exception("C-STORE from %s failed", _origin(event))
            return st.store_failure(exc)
        if stored.result is StoreResult.DUPLICATE_KEPT:
            log.debug(
                "duplicate %s from %s: first copy kept", stored.instance.sop_uid, _origin(event)
            )
        return st.SUCCESS

    # -- query ----------------------------------------------------------------------------

    def on_find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        identifier = event.identifier
        model = FIND_MODELS.get(str(event.request.AffectedSOPClassUID), "STUDY")
        try:
            level = self._level(identifier, model)
            filters, extra = self._keys(identifier)
            rows = self.store.index.find(level, filters)
        except Exception as exc:
            yield st.query_failure(exc), None
            return
        for row in rows:
            if event.is_cancelled:
                yield st.CANCEL, None
                return
            yield st.PENDING, self._answer(identifier, level, row, extra)

    @staticmethod
    def _level(identifier: Dataset, model: str) -> Level:
        raw = str(identifier.get("QueryRetrieveLevel", "")).strip()
        for level in _LEVELS[model]:
            if level.value == raw:
                return level
        raise QueryError(f"Query/Retrieve Level {raw!r} is not valid for this model")

    @staticmethod
    def _keys(identifier: Dataset) -> tuple[dict[str, str], list[int]]:
        filters: dict[str, str] = {}
        unsupported: list[int] = []
        for elem in identifier:
            keyword = elem.keyword
            if keyword in _SKIP_KEYS or keyword in _PATIENT_COUNTS or elem.VR == "SQ":
                continue
            if keyword in ATTRIBUTES:
                filters[keyword] = _value(elem.value)
            else:
                unsupported.append(int(elem.tag))
        return filters, unsupported

    @staticmethod
    def _answer(
        identifier: Dataset, level: Level, row: dict[str, Any], extra: list[int]
    ) -> Dataset:
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.QueryRetrieveLevel = level.value
        requested = {e.keyword for e in identifier}
        for keyword, value in row.items():
            if keyword not in requested and keyword not in _RETRIEVE_KEYS:
                continue
            setattr(ds, keyword, "" if value is None else value)
        for tag in extra:
            ds.add_new(tag, identifier[tag].VR, None)
        return ds

    # -- retrieve -------------------------------------------------------------------------

    def _select(self, identifier: Dataset) -> list[StoredInstance]:
        raw = str(identifier.get("QueryRetrieveLevel", "")).strip()
        if raw not in ("PATIENT", "STUDY", "SERIES", "IMAGE"):
            raise QueryError(f"Query/Retrieve Level {raw!r} is not valid")
        filters = {k: _value(identifier.get(k)) for k in _RETRIEVE_KEYS if identifier.get(k)}
        if not filters:
            raise QueryError("no unique key given for the retrieve")
        rows = self.store.index.find(Level.IMAGE, filters)
        found = (self.store.index.get_instance(r["SOPInstanceUID"]) for r in rows)
        return [inst for inst in found if inst is not None]

    def _datasets(self, event: Event, instances: list[StoredInstance]) -> Iterator[Any]:
        for inst in instances:
            if event.is_cancelled:
                yield st.CANCEL, None
                return
            try:
                yield st.PENDING, dcmread(self.store.path_of(inst))
            except OSError as exc:
                log.error("cannot read %s: %s", inst.path, exc)
                yield st.PENDING, None  # counted as a failed sub-operation

    def on_get(self, event: Event) -> Iterator[Any]:
        try:
            instances = self._select(event.identifier)
        except Exception as exc:
            # the count comes first; a failure status then ends the retrieve (PS3.4 C.4.3.1.3)
            yield 1
            yield st.query_failure(exc), None
            return
        yield len(instances)
        yield from self._datasets(event, instances)

    def on_move(self, event: Event) -> Iterator[Any]:
        dest = self.destinations.get(str(event.move_destination).strip())
        if dest is None:
            log.warning("C-MOVE to unknown destination %r", event.move_destination)
            yield None, None
            return
        try:
            instances = self._select(event.identifier)
            contexts = storage_contexts_for(
                (i.sop_class_uid, i.transfer_syntax_uid) for i in instances
            )
        except Exception as exc:
            yield dest.host, dest.port
            yield 1
            yield st.query_failure(exc), None
            return
        yield dest.host, dest.port, {"contexts": contexts}
        yield len(instances)
        yield from self._datasets(event, instances)


def build_ae(aet: str, allowed_calling_aets: list[str], max_pdu: int) -> AE:
    ae = AE(ae_title=aet)
    ae.maximum_pdu_size = max_pdu
    ae.require_calling_aet = list(allowed_calling_aets)
    # big studies over slow links: the defaults (30 s) drop healthy associations
    ae.dimse_timeout = 120
    ae.network_timeout = 120
    ae.acse_timeout = 30
    for cx in scp_contexts():
        ae.add_supported_context(
            str(cx.abstract_syntax), cx.transfer_syntax, scu_role=cx.scu_role, scp_role=cx.scp_role
        )
    return ae


def serve(
    provider: PacsServiceProvider,
    host: str,
    port: int,
    aet: str,
    allowed_calling_aets: list[str],
    max_pdu: int,
) -> ThreadedAssociationServer:
    """Start a non-blocking DIMSE server; the caller owns its lifetime (``server.shutdown()``)."""
    ae = build_ae(aet, allowed_calling_aets, max_pdu)
    server = ae.make_server(
        (host, port), evt_handlers=provider.handlers(), server_class=FastAssociationServer
    )
    threading.Thread(target=server.serve_forever, name=f"dimse-{port}", daemon=True).start()
    return server
