"""The preparation stage when the PACS cannot answer yet: wait, then hold with a clear reason."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from drimbox.adapters.documents.manifest_codec import KosCodec
from drimbox.adapters.hl7.parse import parse_message
from drimbox.domain.errors import NotFound, PeerUnavailable
from drimbox.domain.manifest import ExamInventory
from drimbox.services.source.inbox import Inbox
from drimbox.services.source.outbox import Outbox
from drimbox.services.source.publisher import Preparer, SourcePolicy
from tests.unit.test_hl7_inbox import _messages

POLICY = SourcePolicy(wado_base="https://box/dicomweb", retrieve_location_uid="1.2.3",
                      images_retry=5.0, images_deadline=600.0)  # fmt: skip


def _preparer(folder: Path, error: Exception, now: datetime) -> tuple[Preparer, Inbox]:
    inbox = Inbox(folder, parse_message)

    def finder(study_uid: str, accession: str) -> ExamInventory:
        raise error

    return Preparer(inbox, Outbox(inbox), finder, KosCodec(), POLICY, clock=lambda: now), inbox


@pytest.fixture(scope="module")
def raw() -> bytes:
    return _messages(1)[0][0]


def test_missing_images_wait_then_are_held_with_the_reason(tmp_path: Path, raw: bytes) -> None:
    preparer, inbox = _preparer(tmp_path, NotFound("the PACS has no study 1.2"), datetime.now(UTC))
    inbox.accept(raw, parse_message(raw))
    assert preparer.run_once() == 0
    [entry] = inbox.pending(now=time.time() + 10)
    assert entry.attempts == 1 and "not in the PACS yet" in (entry.last_error or "")
    assert inbox.pending() == []  # postponed by images_retry

    # past the deadline (and past the retry time), the next lookup gives up
    later = datetime.now(UTC) + timedelta(seconds=601)
    preparer.clock = lambda: later
    with inbox.transaction() as db:
        db.execute("UPDATE messages SET not_before = 0")
    assert preparer.run_once() == 0
    [held] = inbox.held()
    assert "never arrived" in (held.last_error or "") and "1.2" in (held.last_error or "")
    assert inbox.release(held.id) and inbox.pending()  # a human puts it back


def test_pacs_down_backs_off_and_keeps_the_message(tmp_path: Path, raw: bytes) -> None:
    preparer, inbox = _preparer(tmp_path, PeerUnavailable("association refused"),
                                datetime.now(UTC))  # fmt: skip
    inbox.accept(raw, parse_message(raw))
    for _ in range(3):
        with inbox.transaction() as db:
            db.execute("UPDATE messages SET not_before = 0")
        preparer.run_once()
    [entry] = inbox.pending(now=time.time() + 3600)
    assert entry.attempts == 3 and "PACS unavailable" in (entry.last_error or "")
    assert inbox.held() == []
