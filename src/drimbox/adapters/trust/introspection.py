"""Pro Santé Connect access tokens, checked by OAuth 2.0 Token Introspection (RFC 7662).

A Conso box forwards the professional's PSC access token to the Source box as
``Authorization: Bearer <token>``; the Source asks PSC (Keycloak) whether the token is live:
``POST {introspection_url}`` with the form ``token=...&token_type_hint=access_token`` and the
box's own client credentials in HTTP Basic (RFC 6749 §2.3.1: each part form-urlencoded).

Outcomes:

- :class:`Principal`: the token is active and every claim we rely on checks out;
- :class:`TokenRejected` (HTTP 401): the caller's token is missing, malformed, inactive,
  expired or insufficient; ``reason`` is short and safe to show to the caller;
- :class:`IntrospectionUnavailable` (HTTP 503): PSC cannot answer, or refuses *our* client
  credentials, or answers nonsense; the caller is not at fault.

Positive answers are cached (keyed by the token's SHA-256, never the token itself) for at
most ``cache_seconds`` and never past the token's ``exp``; a token revoked at PSC may thus
still be accepted for up to ``cache_seconds``. Negative answers are never cached.

Patients: a token of the patients' provider carries the patient's INS (``ins``, ``ins_oid``)
and no professional identifier. :meth:`TokenIntrospector.verify` refuses it as before (a
patient must never pass for a professional); only :meth:`TokenIntrospector.verify_identity`,
called where a patient may act on their own record, returns it, as a principal whose
``is_patient`` is true and whose INS has been checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import quote_plus

import httpx

from drimbox.domain.errors import DrimboxError, InvalidIdentifier, PeerUnavailable
from drimbox.domain.identifiers import Ins

log = logging.getLogger(__name__)

MAX_TOKEN_LENGTH = 8 * 1024
CLOCK_SKEW = 30.0
MAX_RESPONSE_BYTES = 1024 * 1024


class TokenRejected(DrimboxError):
    """The caller's token is refused (HTTP 401). ``reason`` is safe to show to the caller.

    ``error`` is the RFC 6750 §3.1 code for ``WWW-Authenticate`` (``None`` when the request
    carried no credentials at all, where RFC 6750 says to send no error code).
    """

    def __init__(self, reason: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(reason)
        self.reason = reason
        self.error = error

    def www_authenticate(self, realm: str = "drimbox") -> str:
        """The ``WWW-Authenticate`` value of the 401 answer (RFC 6750 §3)."""
        value = f'Bearer realm="{realm}"'
        if self.error is not None:
            value += f', error="{self.error}", error_description="{self.reason}"'
        return value


class IntrospectionUnavailable(PeerUnavailable):
    """PSC's introspection endpoint cannot vouch for the token now (HTTP 503): it is down,
    slow, refuses our client credentials or answers something that is not RFC 7662."""


@dataclass(frozen=True)
class Principal:
    """The professional (or, from :meth:`TokenIntrospector.verify_identity` only, the patient)
    behind an active access token."""

    subject: str  # ``sub``: PSC's internal account id
    subject_name_id: str  # ``SubjectNameID``: national professional id (RPPS/ADELI based)
    client_id: str  # the OIDC client the token was issued to (``client_id`` or ``azp``)
    scope: frozenset[str]
    acr: str  # authentication level, ``eidas1`` for PSC's substantial level
    expires_at: float  # ``exp``, seconds since the epoch
    claims: Mapping[str, Any]  # the whole introspection answer, read-only
    ins: str = ""  # a patient's token: their INS (checked key), empty for a professional
    ins_oid: str = ""

    @property
    def is_patient(self) -> bool:
        return bool(self.ins)

    @property
    def patient(self) -> Ins | None:
        """The patient's own INS, for a patient's token."""
        return Ins(self.ins, self.ins_oid) if self.ins else None


def bearer_token(authorization_header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (RFC 6750 §2.1)."""
    if authorization_header is None or not authorization_header.strip():
        raise TokenRejected("missing bearer token", error=None)
    parts = authorization_header.split(" ")
    if len(parts) != 2 or parts[0].lower() != "bearer" or not parts[1]:
        raise TokenRejected("malformed Authorization header", error="invalid_request")
    return parts[1]


def token_fingerprint(token: str) -> str:
    """A short, non-reversible tag of ``token`` for logs (never log the token itself)."""
    return _digest(token)[:12]


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _check_syntax(token: str) -> None:
    if not token:
        raise TokenRejected("missing bearer token", error=None)
    if len(token) > MAX_TOKEN_LENGTH:
        raise TokenRejected("token too long")
    if not all("!" <= c <= "~" for c in token):  # visible US-ASCII only
        raise TokenRejected("token has invalid characters")


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise TokenRejected(f"token has an invalid {name}")
    return float(value)


def _text(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TokenRejected(f"token has an invalid {name}")
    return value


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    valid_until: float


class TokenIntrospector:
    """Verifies bearer tokens against an RFC 7662 introspection endpoint; thread-safe."""

    def __init__(
        self,
        url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout: float = 5.0,
        cache_seconds: float = 30.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
        client: httpx.Client | None = None,
        required_acr: str | None = None,
    ) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be >= 0")
        self.url = url
        self.client_id = client_id
        self.timeout = timeout
        self.cache_seconds = cache_seconds
        self.max_entries = max_entries
        self.required_acr = required_acr
        self._clock = clock
        self._auth = httpx.BasicAuth(quote_plus(client_id), quote_plus(client_secret))
        self._own = client is None
        self._http = client or httpx.Client(timeout=timeout)
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._own:
            self._http.close()

    def __enter__(self) -> TokenIntrospector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def cache_size(self) -> int:
        with self._lock:
            return len(self._cache)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def verify(self, token: str) -> Principal:
        """The professional of an active ``token``; raises :class:`TokenRejected` (a
        patient's token included) or :class:`IntrospectionUnavailable`."""
        return _professional(self.verify_identity(token))

    def verify_identity(self, token: str) -> Principal:
        """The professional or the patient of an active ``token``: for the places where a
        patient acts on their own record, and only there (check ``is_patient``)."""
        _check_syntax(token)
        key = _digest(token)
        cached = self._cached(key)
        if cached is not None:
            return cached
        claims = self._introspect(token)
        try:
            principal = self._principal(claims)
        except TokenRejected as exc:
            log.info("token %s rejected: %s", key[:12], exc.reason)
            raise
        self._remember(key, principal)
        return principal

    def known(self, token: str) -> Principal | None:
        """The professional of a token verified recently (cached), without any network call:
        lets an event loop skip a thread hop on the common path."""
        found = self.known_identity(token)
        return found if found is not None and not found.is_patient else None

    def known_identity(self, token: str) -> Principal | None:
        """As :meth:`known`, a patient's token included."""
        try:
            _check_syntax(token)
        except TokenRejected:
            return None
        return self._cached(_digest(token))

    # -- cache

    def _cached(self, key: str) -> Principal | None:
        now = self._clock()
        with self._lock:
            entry = self._cache.get(key)
            if entry is None:
                return None
            if now >= entry.valid_until:
                del self._cache[key]
                return None
            return entry.principal

    def _remember(self, key: str, principal: Principal) -> None:
        if self.cache_seconds <= 0 or self.max_entries == 0:
            return
        now = self._clock()
        valid_until = min(principal.expires_at, now + self.cache_seconds)
        if valid_until <= now:
            return
        with self._lock:
            self._cache.pop(key, None)
            if len(self._cache) >= self.max_entries:
                self._prune(now)
            while len(self._cache) >= self.max_entries:
                self._cache.popitem(last=False)  # the oldest entry
            self._cache[key] = _Entry(principal, valid_until)

    def _prune(self, now: float) -> None:
        """Drop expired entries (called with the lock held, only when the cache is full)."""
        for key in [k for k, e in self._cache.items() if now >= e.valid_until]:
            del self._cache[key]

    # -- protocol

    def _introspect(self, token: str) -> dict[str, Any]:
        try:
            with self._http.stream(
                "POST",
                self.url,
                data={"token": token, "token_type_hint": "access_token"},
                headers={"accept": "application/json"},
                auth=self._auth,
                timeout=self.timeout,
            ) as resp:
                status = resp.status_code
                body = self._read(resp) if status == 200 else b""
        except httpx.HTTPError as exc:  # refused, reset, timeout, DNS, protocol...
            log.warning("token introspection at %s failed: %r", self.url, exc)
            raise IntrospectionUnavailable(f"token introspection unreachable: {exc!r}") from exc
        if status in (401, 403):
            log.error(
                "token introspection at %s refused our client credentials (client_id=%r, "
                "HTTP %d): check the PSC client id and secret",
                self.url,
                self.client_id,
                status,
            )
            raise IntrospectionUnavailable(
                f"token introspection refused our client credentials (HTTP {status})"
            )
        if status != 200:
            log.warning("token introspection at %s answered HTTP %d", self.url, status)
            raise IntrospectionUnavailable(f"token introspection answered HTTP {status}")
        try:
            claims = json.loads(body)
        except ValueError as exc:  # includes UnicodeDecodeError
            log.warning("token introspection at %s answered a non-JSON body", self.url)
            raise IntrospectionUnavailable("token introspection answered a non-JSON body") from exc
        if not isinstance(claims, dict):
            log.warning("token introspection at %s answered JSON that is not an object", self.url)
            raise IntrospectionUnavailable("token introspection answered a non-object")
        return claims

    def _read(self, resp: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        for chunk in resp.iter_bytes():
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                log.warning("token introspection at %s answered more than %d bytes",
                            self.url, MAX_RESPONSE_BYTES)  # fmt: skip
                raise IntrospectionUnavailable("token introspection answer too large")
            chunks.append(chunk)
        return b"".join(chunks)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        if claims.get("active") is not True:
            raise TokenRejected("token is not active")
        now = self._clock()
        exp = _number(claims, "exp")
        if exp is None:
            raise TokenRejected("token has no expiry")
        if exp + CLOCK_SKEW <= now:
            raise TokenRejected("token expired")
        for name in ("iat", "nbf"):
            moment = _number(claims, name)
            if moment is not None and moment > now + CLOCK_SKEW:
                raise TokenRejected(f"token {name} is in the future")
        subject = _text(claims, "sub")
        if not subject:
            raise TokenRejected("token has no subject")
        # Keycloak introspects refresh and ID tokens too ("typ" Refresh, ID): only access tokens
        typ = _text(claims, "typ")
        if typ and typ.lower() != "bearer":
            raise TokenRejected("not an access token")
        subject_name_id = _text(claims, "SubjectNameID") or _text(claims, "preferred_username")
        acr = _text(claims, "acr")
        patient = None if subject_name_id else _patient(claims)
        if not subject_name_id and patient is None:
            raise TokenRejected("token has no professional identifier")
        # the required level is Pro Santé Connect's; the patients' provider has its own
        if patient is None and self.required_acr is not None and acr != self.required_acr:
            raise TokenRejected(
                "insufficient authentication level", error="insufficient_user_authentication"
            )
        return Principal(
            subject=subject,
            subject_name_id=subject_name_id,
            client_id=_text(claims, "client_id") or _text(claims, "azp"),
            scope=frozenset(_text(claims, "scope").split()),
            acr=acr,
            expires_at=exp,
            claims=MappingProxyType(dict(claims)),
            ins=patient.value if patient else "",
            ins_oid=patient.oid if patient else "",
        )


def _patient(claims: Mapping[str, Any]) -> Ins | None:
    """The INS of a patient's token (``ins``, ``ins_oid``), None when it names none."""
    value = _text(claims, "ins")
    if not value:
        return None
    try:
        return Ins.parse(value, _text(claims, "ins_oid"))
    except InvalidIdentifier:
        raise TokenRejected("token has an invalid ins") from None


def _professional(principal: Principal) -> Principal:
    if principal.is_patient:
        raise TokenRejected("token has no professional identifier")
    return principal
