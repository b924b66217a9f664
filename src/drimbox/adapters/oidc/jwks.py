"""Signed JWTs checked against an OpenID provider's published keys (its JWKS).

``JwksCache`` fetches the provider's ``jwks_uri`` and keeps the keys: they are fetched again
when the cache is older than ``max_age``, and once when a token names a key (``kid``) the
cache does not hold, but never more often than every ``min_refetch_interval`` seconds, so a
flood of tokens with made-up key ids cannot make us hammer the provider.

``verify_jws`` checks a JWS compact serialization: the header's ``alg`` must be in the
caller's allow-list (``none`` and the HMAC algorithms never are: an HS256 token "signed"
with the provider's public RSA key as a secret must not pass), the key is the JWKS key with
that ``kid`` whose type fits the algorithm, and the signature is checked by joserfc. Keys
named or embedded in the token itself (``jku``, ``x5u``, ``jwk``, ``x5c``) are never used.

``OidcError`` is the single refusal type of the relying party; its ``reason`` is a short
code that callers map to a status (``http_status``) and tests assert on.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Collection
from typing import Any, Literal

import httpx
from joserfc import jwk, jws
from joserfc.errors import JoseError

from drimbox.domain.errors import DrimboxError

Reason = Literal[
    "acr_mismatch",
    "alg_not_allowed",
    "at_hash_mismatch",
    "expired",
    "invalid_metadata",
    "invalid_response",
    "invalid_signature",
    "issued_in_future",
    "malformed_token",
    "missing_claim",
    "missing_code",
    "no_refresh_token",
    "nonce_mismatch",
    "not_yet_valid",
    "provider_error",
    "provider_unreachable",
    "state_expired",
    "state_mismatch",
    "state_replayed",
    "subject_mismatch",
    "unknown_key",
    "wrong_audience",
    "wrong_azp",
    "wrong_issuer",
    "wrong_token_type",
]

# the provider misbehaves or is down: a gateway problem, not the user's
_GATEWAY_REASONS = frozenset({"provider_unreachable", "invalid_metadata", "invalid_response"})

# algorithms never accepted, whatever the configuration says
FORBIDDEN_ALGS = frozenset({"none", "HS256", "HS384", "HS512"})


class OidcError(DrimboxError):
    """A login, token or provider answer refused; ``reason`` says why in one code.

    ``provider_error`` (and ``provider_error_description``) hold the OAuth ``error`` the
    provider sent, when the refusal comes from the provider itself.
    """

    def __init__(
        self,
        reason: Reason,
        detail: str = "",
        *,
        provider_error: str | None = None,
        provider_error_description: str | None = None,
    ) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: Reason = reason
        self.detail = detail
        self.provider_error = provider_error
        self.provider_error_description = provider_error_description

    @property
    def http_status(self) -> int:
        """502 when the provider failed us, 401 when the login or token is refused."""
        return 502 if self.reason in _GATEWAY_REASONS else 401


def check_alg_allowed(alg: object, allowed_algs: Collection[str]) -> str:
    """The header's ``alg`` when it is in the allow-list and never a forbidden one."""
    if not isinstance(alg, str) or alg in FORBIDDEN_ALGS or alg not in allowed_algs:
        raise OidcError("alg_not_allowed", f"alg {alg!r} is not accepted")
    return alg


def _key_fits(key: jwk.Key, alg: str) -> bool:
    """Whether ``key`` may verify ``alg`` signatures (type, curve, ``use`` and ``alg``)."""
    try:
        jws.JWSRegistry(algorithms=[alg]).get_alg(alg).check_key(key)
    except (JoseError, ValueError):
        return False
    return True


class JwksCache:
    """The signing keys of one provider, fetched from its ``jwks_uri``; thread-safe."""

    def __init__(
        self,
        jwks_uri: str,
        http: httpx.Client,
        *,
        clock: Callable[[], float],
        min_refetch_interval: float = 60.0,
        max_age: float = 3600.0,
    ) -> None:
        self.jwks_uri = jwks_uri
        self._http = http
        self._clock = clock
        self.min_refetch_interval = min_refetch_interval
        self.max_age = max_age
        self.fetches = 0  # requests sent to jwks_uri, whatever their outcome
        self._keys: list[jwk.Key] | None = None
        self._fetched_at = float("-inf")  # last successful fetch
        self._attempted_at = float("-inf")  # last fetch attempt, successful or not
        self._lock = threading.Lock()

    def key_for(self, kid: str | None, alg: str) -> jwk.Key:
        """The key with this ``kid`` able to verify ``alg``; without ``kid``, the only such key."""
        with self._lock:
            now = self._clock()
            if self._keys is None or now - self._fetched_at >= self.max_age:
                if now - self._attempted_at < self.min_refetch_interval:
                    # the last attempt failed a moment ago: do not hammer the provider
                    raise OidcError("provider_unreachable", "the provider's JWKS is unavailable")
                self._fetch(now)
            key = self._find(kid, alg)
            if key is None and now - self._attempted_at >= self.min_refetch_interval:
                self._fetch(now)
                key = self._find(kid, alg)
        if key is None:
            raise OidcError("unknown_key", f"no {alg} key with kid {kid!r} in the provider's JWKS")
        return key

    def _find(self, kid: str | None, alg: str) -> jwk.Key | None:
        candidates = [k for k in self._keys or () if _key_fits(k, alg)]
        if kid is not None:
            candidates = [k for k in candidates if k.kid == kid]
        return candidates[0] if len(candidates) == 1 else None

    def _fetch(self, now: float) -> None:
        self._attempted_at = now
        self.fetches += 1
        try:
            response = self._http.get(self.jwks_uri, headers={"Accept": "application/json"})
        except httpx.HTTPError as error:
            raise OidcError("provider_unreachable", f"JWKS: {type(error).__name__}") from error
        if response.status_code != 200:
            reason: Reason = (
                "provider_unreachable" if response.status_code >= 500 else "invalid_response"
            )
            raise OidcError(reason, f"JWKS answered HTTP {response.status_code}")
        try:
            document = response.json()
        except ValueError as error:
            raise OidcError("invalid_response", "the JWKS is not JSON") from error
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise OidcError("invalid_response", "the JWKS has no keys array")
        self._keys = [key for key in map(_import_public_key, document["keys"]) if key is not None]
        self._fetched_at = now


def _import_public_key(value: object) -> jwk.Key | None:
    """A JWKS entry as a joserfc key; None for symmetric, private, broken or unknown keys."""
    if not isinstance(value, dict) or value.get("kty") not in ("RSA", "EC", "OKP"):
        return None
    try:
        key = jwk.import_key(value)
    except (JoseError, ValueError, TypeError):
        return None
    if key.is_private:  # a provider publishing private keys is broken: trust none of it
        return None
    return key


def verify_jws(
    token: object, allowed_algs: Collection[str], keys: JwksCache
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (header, claims) of a compact JWS whose signature a provider's key verifies."""
    if not isinstance(token, str) or token.count(".") != 2:
        raise OidcError("malformed_token", "not a JWS compact serialization")
    try:
        signed = jws.extract_compact(token.encode("ascii"))
    except (JoseError, ValueError, UnicodeError) as error:
        raise OidcError("malformed_token", "undecodable JWS") from error
    header = dict(signed.headers())
    alg = check_alg_allowed(header.get("alg"), allowed_algs)
    if "crit" in header or "b64" in header:
        raise OidcError("malformed_token", "JWS extensions (crit, b64) are not accepted")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise OidcError("malformed_token", "kid is not a string")
    key = keys.key_for(kid, alg)
    try:
        valid = jws.validate_compact(signed, key, algorithms=[alg])
    except JoseError as error:
        raise OidcError("invalid_signature", type(error).__name__) from error
    if not valid:
        raise OidcError("invalid_signature", "the signature does not verify")
    try:
        claims = json.loads(signed.payload)
    except ValueError as error:
        raise OidcError("malformed_token", "the payload is not JSON") from error
    if not isinstance(claims, dict):
        raise OidcError("malformed_token", "the payload is not a JSON object")
    return header, claims
