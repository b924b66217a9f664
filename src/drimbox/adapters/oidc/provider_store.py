"""What ``drimbox idp`` remembers between requests, in memory (a restart forgets it all but
the signing key): authorization codes, refresh tokens, revoked access tokens and sessions,
used nonces and the one-time tickets of the login form.

Secrets (codes, refresh tokens, tickets) are kept under their SHA-256, never as such. Taking a
code or a refresh token is atomic: two requests racing with the same one cannot both win.
A session (``sid``) is one login at one client: every token issued from it carries its id,
and revoking it makes them all inactive (a replayed code or refresh token revokes it).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from drimbox.adapters.oidc.people import Person

PURGE_EVERY = 30.0


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Login:
    """Who logged in, how and when (authlib's "user" of a grant)."""

    person: Person
    acr: str
    auth_time: int
    sid: str

    def get_user_id(self) -> str:
        return self.person.subject


@dataclass(frozen=True, slots=True)
class CodeRecord:
    """An authorization code's grant (authlib's ``AuthorizationCodeMixin``, OpenID flavour)."""

    client_id: str
    redirect_uri: str
    scope: str
    nonce: str | None
    code_challenge: str
    code_challenge_method: str
    login: Login
    expires_at: float

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.login.auth_time

    def get_acr(self) -> str:
        return self.login.acr

    def get_amr(self) -> list[str] | None:
        return None


@dataclass(slots=True)
class RefreshRecord:
    """A refresh token (authlib's ``TokenMixin``); ``used`` once rotated."""

    client_id: str
    scope: str
    login: Login
    issued_at: float
    expires_at: float
    used: bool = False
    revoked: bool = False
    clock: Callable[[], float] = field(default=time.time, repr=False)
    session_revoked: bool = False

    kind = "refresh_token"

    def check_client(self, client: Any) -> bool:
        return bool(client.get_client_id() == self.client_id)

    def get_client_id(self) -> str:
        return self.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return int(self.expires_at - self.issued_at)

    def is_expired(self) -> bool:
        return self.expires_at <= self.clock()

    def is_revoked(self) -> bool:
        return self.revoked or self.used or self.session_revoked


@dataclass(frozen=True, slots=True)
class _Ticket:
    browser: str
    request: str
    expires_at: float


class ProviderStore:
    """Thread-safe; ``clock`` gives seconds since the epoch."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._codes: dict[str, CodeRecord] = {}
        self._spent_codes: dict[str, tuple[str, float]] = {}  # digest -> (sid, forget at)
        self._refresh: dict[str, RefreshRecord] = {}
        self._revoked_jti: dict[str, float] = {}
        self._revoked_sid: dict[str, float] = {}
        self._sid_until: dict[str, float] = {}  # how long a session's tokens may live
        self._nonces: dict[tuple[str, str], float] = {}
        self._tickets: dict[str, _Ticket] = {}
        self._last_purge = 0.0

    # -- authorization codes

    def put_code(self, code: str, record: CodeRecord) -> None:
        with self._lock:
            self._purge()
            self._codes[digest(code)] = record
            if record.nonce:
                self._nonces[(record.client_id, record.nonce)] = record.expires_at + 3600
            self._extend(record.login.sid, record.expires_at)

    def take_code(self, code: str, client_id: str) -> CodeRecord | None:
        """The code's grant if it is live and was issued to ``client_id``. Whatever the
        outcome the code is spent; a second use revokes what the first one issued."""
        key = digest(code)
        now = self.clock()
        with self._lock:
            record = self._codes.pop(key, None)
            if record is None:
                spent = self._spent_codes.get(key)
                if spent is not None:
                    self._revoke_sid(spent[0])
                return None
            self._spent_codes[key] = (record.login.sid, now + 3600)
            if record.expires_at <= now or record.client_id != client_id:
                return None
            return record

    def nonce_used(self, client_id: str, nonce: str) -> bool:
        with self._lock:
            until = self._nonces.get((client_id, nonce))
            return until is not None and until > self.clock()

    # -- refresh tokens

    def put_refresh(self, token: str, record: RefreshRecord) -> None:
        record.clock = self.clock
        with self._lock:
            self._purge()
            self._refresh[digest(token)] = record
            self._extend(record.login.sid, record.expires_at)

    def find_refresh(self, token: str) -> RefreshRecord | None:
        with self._lock:
            record = self._refresh.get(digest(token))
            if record is not None:
                record.session_revoked = record.login.sid in self._revoked_sid
            return record

    def take_refresh(self, token: str, client_id: str) -> RefreshRecord | None:
        """The refresh token's record if it is live and ``client_id``'s, now marked used
        (rotation). A used one presented again revokes its whole session."""
        now = self.clock()
        with self._lock:
            record = self._refresh.get(digest(token))
            if record is None or record.client_id != client_id:
                return None
            if record.used:
                self._revoke_sid(record.login.sid)
                return None
            if record.revoked or record.expires_at <= now:
                return None
            if record.login.sid in self._revoked_sid:
                return None
            record.used = True
            return record

    def revoke_refresh(self, record: RefreshRecord) -> None:
        """Revoking a refresh token ends its session, as Keycloak does."""
        with self._lock:
            record.revoked = True
            self._revoke_sid(record.login.sid)

    # -- access tokens and sessions

    def track_access(self, sid: str, expires_at: float) -> None:
        with self._lock:
            self._extend(sid, expires_at)

    def revoke_access(self, jti: str, expires_at: float) -> None:
        with self._lock:
            self._purge()
            self._revoked_jti[jti] = expires_at

    def revoke_session(self, sid: str) -> None:
        with self._lock:
            self._revoke_sid(sid)

    def access_revoked(self, jti: str, sid: str) -> bool:
        with self._lock:
            return jti in self._revoked_jti or sid in self._revoked_sid

    def session_revoked(self, sid: str) -> bool:
        with self._lock:
            return sid in self._revoked_sid

    # -- login form tickets

    def put_ticket(self, ticket: str, browser: str, request: str, lifetime: float) -> None:
        with self._lock:
            self._purge()
            self._tickets[digest(ticket)] = _Ticket(
                digest(browser), digest(request), self.clock() + lifetime
            )

    def take_ticket(self, ticket: str, browser: str, request: str) -> bool:
        """True once for a live ticket issued to this browser for this very request."""
        with self._lock:
            record = self._tickets.pop(digest(ticket), None)
        return (
            record is not None
            and record.expires_at > self.clock()
            and record.browser == digest(browser)
            and record.request == digest(request)
        )

    # -- internals (lock held)

    def _extend(self, sid: str, until: float) -> None:
        self._sid_until[sid] = max(until, self._sid_until.get(sid, 0.0))

    def _revoke_sid(self, sid: str) -> None:
        self._revoked_sid[sid] = max(self._sid_until.get(sid, 0.0), self.clock() + 3600)
        for record in self._refresh.values():
            if record.login.sid == sid:
                record.revoked = True

    def _purge(self) -> None:
        now = self.clock()
        if now - self._last_purge < PURGE_EVERY:
            return
        self._last_purge = now
        for table in (self._revoked_jti, self._revoked_sid, self._sid_until):
            for key in [k for k, until in table.items() if until <= now]:
                del table[key]
        for pair in [k for k, until in self._nonces.items() if until <= now]:
            del self._nonces[pair]
        for key in [k for k, (_, until) in self._spent_codes.items() if until <= now]:
            del self._spent_codes[key]
        for key in [k for k, code in self._codes.items() if code.expires_at <= now]:
            del self._codes[key]
        for key in [k for k, r in self._refresh.items() if r.expires_at <= now]:
            del self._refresh[key]
        for key in [k for k, t in self._tickets.items() if t.expires_at <= now]:
            del self._tickets[key]
