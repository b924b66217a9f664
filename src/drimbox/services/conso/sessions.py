"""A session on the Conso: who it is (a professional, or a patient on their portal), the
access token the box forwards to the index and to Source boxes on their behalf, and the exams
they reached through a patient's history (the only ones the viewer proxy will fetch for
them). A new listing of a patient's history replaces what the previous one granted for that
patient: an exam the index no longer shows (hidden by the patient, depublished) is no longer
reachable from the session."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drimbox.domain.identifiers import Ins


@dataclass
class Session:
    id: str
    subject: str
    """The professional's national id (PSC ``SubjectNameID``)."""
    access_token: str
    expires_at: float
    exams: dict[str, str] = field(default_factory=dict)
    """Study Instance UID -> the KOS that granted it, for exams listed in this session."""
    patients: set[str] = field(default_factory=set)
    documents: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    """Report uniqueId -> (repositoryUniqueId, patient INS, its OID), for reports listed."""
    claims: dict[str, Any] = field(default_factory=dict)
    """What the identity provider says of the professional (profession, structure...)."""
    patient: Ins | None = None
    """A patient's session: their own INS, from their provider's claims (never a request)."""
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    """The token the session's forms carry (cross-site request forgery)."""
    exam_patients: dict[str, str] = field(default_factory=dict)
    """Study Instance UID -> the patient (INS) whose listing granted it."""


class SessionStore:
    def __init__(
        self, idle_seconds: float = 3600.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def open(self, subject: str, access_token: str, token_expires_at: float) -> Session:
        now = self.clock()
        session = Session(
            secrets.token_urlsafe(32), subject, access_token,
            min(token_expires_at, now + self.idle_seconds),
        )  # fmt: skip
        with self._lock:
            self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str) -> Session | None:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return None
            if session.expires_at <= self.clock():
                del self._sessions[session_id]
                return None
            return session

    def close(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def grant(
        self,
        session: Session,
        patient: str,
        exams: dict[str, str],
        documents: dict[str, tuple[str, str, str]],
    ) -> None:
        with self._lock:
            session.patients.add(patient)
            for study in [s for s, p in session.exam_patients.items()
                          if p == patient and s not in exams]:  # fmt: skip
                session.exams.pop(study, None)
                del session.exam_patients[study]
            for uid in [u for u, d in session.documents.items()
                        if d[1] == patient and u not in documents]:  # fmt: skip
                del session.documents[uid]
            session.exams.update(exams)
            session.exam_patients.update(dict.fromkeys(exams, patient))
            session.documents.update(documents)
