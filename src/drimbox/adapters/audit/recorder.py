"""What the web layers record in the access trail, and how often.

A viewer asks for hundreds of frames per exam: each request is not an access of its own. A
(who, exam, action) is recorded once per ``window`` seconds, so the trail says that this
professional viewed that exam at that time, not how many HTTP requests it took; every
history listing, report reading, download and import is recorded. A failure to record is
logged loudly and does not hide the data from the professional (the trail is the record of
accesses, not their gate).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from drimbox.adapters.audit.jsonl_trail import JsonlTrail
from drimbox.domain.audit import Action, Actor, ActorKind, Outcome
from drimbox.domain.errors import DrimboxError, InvalidInput
from drimbox.domain.identifiers import Ins
from drimbox.services.audit import Auditor

log = logging.getLogger(__name__)


def patient_ins(ins: str, oid: str) -> Ins | None:
    try:
        return Ins.parse(ins, oid)
    except InvalidInput:
        return None  # a foreign manifest naming the patient otherwise: recorded without


def professional(subject: str, claims: dict[str, Any] | None = None, client_id: str = "") -> Actor:
    claims = claims or {}
    name = " ".join(str(claims.get(k, "")) for k in ("given_name", "family_name")).strip()
    return Actor(id=subject or "inconnu", kind=ActorKind.PROFESSIONAL, name=name,
                 client_id=client_id)  # fmt: skip


class AccessRecorder:
    def __init__(self, auditor: Auditor, window: float = 300.0) -> None:
        self.auditor = auditor
        self.window = window
        self._seen: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def record(
        self,
        actor: Actor,
        action: Action,
        patient: Ins | None,
        *,
        study_uid: str = "",
        document_id: str = "",
        outcome: Outcome = Outcome.SUCCESS,
        detail: str = "",
        source: str = "",
        client_ip: str = "",
        once_per_window: bool = False,
        emergency_reason: str = "",
    ) -> None:
        if once_per_window:
            key = (actor.id, study_uid or document_id, action.value)
            now = time.monotonic()
            with self._lock:
                if now - self._seen.get(key, -1e18) < self.window:
                    return
                self._seen[key] = now
                if len(self._seen) > 100_000:
                    self._seen = {k: t for k, t in self._seen.items() if now - t < self.window}
        try:
            self.auditor.record(actor, action, patient, outcome=outcome, detail=detail,
                                study_uid=study_uid, document_id=document_id, source=source,
                                client_ip=client_ip,
                                emergency_reason=emergency_reason)  # fmt: skip
        except (DrimboxError, OSError):
            log.exception("ACCESS TRAIL: could not record %s by %s", action.value, actor.id)


def open_recorder(folder: Path, observer: str) -> AccessRecorder:
    return AccessRecorder(Auditor(JsonlTrail(folder, observer=observer)))
