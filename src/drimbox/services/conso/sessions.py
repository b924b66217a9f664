"""A professional's session on the Conso: who they are, the Pro Santé Connect token the box
forwards to Source boxes on their behalf, and the exams they reached through a patient's
history (the only ones the viewer proxy will fetch for them)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


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
            session.exams.update(exams)
            session.documents.update(documents)
