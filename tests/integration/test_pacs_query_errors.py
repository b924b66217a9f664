"""find_exam against a scripted pynetdicom SCP: failure statuses and silent peers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from drimbox.adapters.dimse.pacs_query import QueryFailed, find_exam
from drimbox.domain.errors import Conflict, PeerUnavailable
from tests.peers import free_port

Handler = Callable[[evt.Event], Iterator[tuple[int, Dataset | None]]]


@pytest.fixture
def scp() -> Iterator[Callable[[Handler], int]]:
    servers: list[ThreadedAssociationServer] = []

    def start(handler: Handler) -> int:
        ae = AE("FAKEPACS")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        port = free_port()
        server = ae.start_server(
            ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, handler)]
        )
        assert server is not None
        servers.append(server)
        return port

    yield start
    for server in servers:
        server.shutdown()


def failing(code: int) -> Handler:
    def handler(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        status = Dataset()
        status.Status = code
        status.ErrorComment = "scripted failure"
        yield status, None  # type: ignore[misc]

    return handler


def test_failure_status_is_query_failed(scp: Callable[[Handler], int]) -> None:
    port = scp(failing(0xC001))
    with pytest.raises(QueryFailed, match=r"0xC001.*scripted failure") as info:
        find_exam("127.0.0.1", port, "FAKEPACS", study_uid="1.2.3")
    assert info.value.status == 0xC001


def test_out_of_resources_is_retryable(scp: Callable[[Handler], int]) -> None:
    port = scp(failing(0xA700))
    with pytest.raises(PeerUnavailable, match="out of resources"):
        find_exam("127.0.0.1", port, "FAKEPACS", study_uid="1.2.3")


def test_silent_pacs_times_out(scp: Callable[[Handler], int]) -> None:
    stop = threading.Event()

    def silent(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        stop.wait(10)
        yield 0x0000, None

    port = scp(silent)
    started = time.monotonic()
    try:
        with pytest.raises(PeerUnavailable):
            find_exam("127.0.0.1", port, "FAKEPACS", study_uid="1.2.3", timeout=1)
    finally:
        stop.set()
    assert time.monotonic() - started < 8


def test_accession_matching_two_studies_is_a_conflict(scp: Callable[[Handler], int]) -> None:
    def two(event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        for uid in ("1.2.3", "1.2.4"):
            answer = Dataset()
            answer.QueryRetrieveLevel = "STUDY"
            answer.StudyInstanceUID, answer.AccessionNumber = uid, "ACC1"
            yield 0xFF00, answer
        yield 0x0000, None

    port = scp(two)
    with pytest.raises(Conflict, match="2 studies"):
        find_exam("127.0.0.1", port, "FAKEPACS", accession="ACC1")
