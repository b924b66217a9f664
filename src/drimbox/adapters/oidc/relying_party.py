"""The OpenID Connect relying party that logs professionals in to the box.

In production the provider is Pro Santé Connect (a Keycloak realm: ``acr_values=eidas1``,
scope ``openid scope_all``, RS256 ID tokens); in development ``drimbox idp``; any provider
that follows OpenID Connect Core 1.0 works. The flow is the authorization code flow with
PKCE (S256) and ``client_secret_basic`` at the token endpoint::

    client = OidcClient(issuer, client_id, client_secret, redirect_uri)
    request = client.begin()          # keep request server-side, redirect to request.url
    login = client.finish(request, callback_query_params)
    login = client.refresh(login)     # later, with the refresh token

Every check refuses with ``OidcError`` and a precise ``reason`` (``OidcError.http_status``
maps it to 401, or 502 when the provider failed): ``state`` compared in constant time and
used once, the provider's ``error``, the ID token's JWS signature with a key of the
provider's JWKS (``jwks.py``), its ``alg`` in the allow-list (never ``none`` nor HS*), ``iss``
exactly the discovered issuer, ``aud`` holding our client id (and ``azp`` ours when there
are several audiences), ``exp``/``nbf``/``iat`` with a leeway, ``nonce``, ``acr``, the
``at_hash`` when given, and the UserInfo ``sub``. Tokens never appear in a ``repr`` or in an
error message.

The used-``state`` memory is per process: callers must also drop the ``AuthRequest`` from
the session once ``finish`` was called, whatever its outcome.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_plus, urlencode, urlsplit

import httpx

from drimbox.adapters.oidc.jwks import (
    FORBIDDEN_ALGS,
    JwksCache,
    OidcError,
    Reason,
    verify_jws,
)

__all__ = [
    "AuthRequest",
    "Login",
    "OidcClient",
    "OidcError",
    "ProviderMetadata",
]

DISCOVERY_PATH = "/.well-known/openid-configuration"
FORM = "application/x-www-form-urlencoded"

# claims about the token itself: UserInfo never overrides them in Login.claims
_PROTOCOL_CLAIMS = frozenset(
    {"iss", "sub", "aud", "azp", "exp", "nbf", "iat", "nonce", "acr", "amr", "auth_time"}
    | {"at_hash", "c_hash", "sid", "jti"}
)
# header "typ" values accepted for a JWT access token (RFC 9068, or none in particular)
_ACCESS_TOKEN_TYPS = frozenset({"at+jwt", "application/at+jwt", "jwt"})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _str_tuple(value: object) -> tuple[str, ...]:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return ()


@dataclass(frozen=True)
class ProviderMetadata:
    """What the provider's discovery document (OpenID Connect Discovery 1.0) tells us."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    end_session_endpoint: str | None = None
    id_token_signing_alg_values_supported: tuple[str, ...] = ()
    code_challenge_methods_supported: tuple[str, ...] = ()
    token_endpoint_auth_methods_supported: tuple[str, ...] = ()
    acr_values_supported: tuple[str, ...] = ()
    authorization_response_iss_parameter_supported: bool = False

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ProviderMetadata:
        """Metadata from a discovery document; ``invalid_metadata`` when a field is missing."""

        def required(name: str) -> str:
            value = document.get(name)
            if not isinstance(value, str) or not value:
                raise OidcError("invalid_metadata", f"the discovery document has no {name}")
            return value

        return cls(
            issuer=required("issuer"),
            authorization_endpoint=required("authorization_endpoint"),
            token_endpoint=required("token_endpoint"),
            jwks_uri=required("jwks_uri"),
            userinfo_endpoint=_optional_str(document.get("userinfo_endpoint")),
            end_session_endpoint=_optional_str(document.get("end_session_endpoint")),
            id_token_signing_alg_values_supported=_str_tuple(
                document.get("id_token_signing_alg_values_supported")
            ),
            code_challenge_methods_supported=_str_tuple(
                document.get("code_challenge_methods_supported")
            ),
            token_endpoint_auth_methods_supported=_str_tuple(
                document.get("token_endpoint_auth_methods_supported")
            ),
            acr_values_supported=_str_tuple(document.get("acr_values_supported")),
            authorization_response_iss_parameter_supported=(
                document.get("authorization_response_iss_parameter_supported") is True
            ),
        )

    def endpoints(self) -> tuple[str, ...]:
        return tuple(
            url
            for url in (
                self.authorization_endpoint,
                self.token_endpoint,
                self.jwks_uri,
                self.userinfo_endpoint,
                self.end_session_endpoint,
            )
            if url is not None
        )


@dataclass(frozen=True)
class AuthRequest:
    """One login under way: send the browser to ``url``, keep the rest server-side."""

    url: str
    state: str = field(repr=False)
    nonce: str = field(repr=False)
    code_verifier: str = field(repr=False)
    redirect_uri: str
    created_at: float


@dataclass(frozen=True)
class Login:
    """A professional logged in: the checked claims and the tokens to act on their behalf."""

    subject: str
    claims: Mapping[str, Any]
    access_token: str = field(repr=False)
    access_token_expires_at: float | None
    refresh_token: str | None = field(repr=False)
    id_token: str = field(repr=False)


@dataclass(frozen=True)
class _ClaimRules:
    """What one kind of token must satisfy besides its signature."""

    audience: str
    check_azp: bool
    require_iat: bool


class OidcClient:
    """A relying party of one OpenID provider, for one registered client; thread-safe."""

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        *,
        scopes: Collection[str] = ("openid", "scope_all"),
        acr_values: str | None = "eidas1",
        allowed_algs: Collection[str] = ("RS256", "PS256", "ES256"),
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        leeway: float = 30,
        access_token_audience: str | None = None,
        fetch_userinfo: bool = True,
        auth_request_max_age: float = 600,
        jwks_min_refetch_interval: float = 60,
        jwks_max_age: float = 3600,
        allow_http: bool = False,
    ) -> None:
        forbidden = FORBIDDEN_ALGS.intersection(allowed_algs)
        if forbidden:
            raise ValueError(f"algorithms {sorted(forbidden)} are never accepted")
        if not allowed_algs:
            raise ValueError("allowed_algs is empty")
        if "openid" not in scopes:
            raise ValueError("the scopes must include openid")
        self.allow_http = allow_http
        self._check_url(issuer, "issuer")
        self.issuer = issuer
        self.client_id = client_id
        self._client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.scopes = tuple(scopes)
        self.acr_values = acr_values
        self.allowed_algs = tuple(allowed_algs)
        self.clock = clock
        self.leeway = leeway
        self.access_token_audience = access_token_audience
        self.fetch_userinfo = fetch_userinfo
        self.auth_request_max_age = auth_request_max_age
        self._jwks_min_refetch_interval = jwks_min_refetch_interval
        self._jwks_max_age = jwks_max_age
        self._own_http = http is None
        self._http = http or httpx.Client(timeout=10.0, follow_redirects=False)
        self._lock = threading.Lock()
        self._metadata: ProviderMetadata | None = None
        self._jwks: JwksCache | None = None
        self._used_states: dict[str, float] = {}  # state -> when it was used

    # -- lifecycle -----------------------------------------------------------------------

    def close(self) -> None:
        if self._own_http:
            self._http.close()

    def __enter__(self) -> OidcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- discovery -----------------------------------------------------------------------

    @property
    def metadata(self) -> ProviderMetadata:
        """The provider's metadata, discovered on first use and kept."""
        with self._lock:
            if self._metadata is None:
                self._metadata = self._discover()
            return self._metadata

    @property
    def jwks(self) -> JwksCache:
        metadata = self.metadata
        with self._lock:
            if self._jwks is None:
                self._jwks = JwksCache(
                    metadata.jwks_uri,
                    self._http,
                    clock=self.clock,
                    min_refetch_interval=self._jwks_min_refetch_interval,
                    max_age=self._jwks_max_age,
                )
            return self._jwks

    def _discover(self) -> ProviderMetadata:
        url = self.issuer.rstrip("/") + DISCOVERY_PATH
        response = self._send("GET", url, "discovery", headers={"Accept": "application/json"})
        if response.status_code != 200:
            raise OidcError("invalid_metadata", f"discovery answered HTTP {response.status_code}")
        metadata = ProviderMetadata.from_document(self._json(response, "discovery"))
        if metadata.issuer != self.issuer:  # Discovery §4.3: exactly, not even a trailing /
            raise OidcError("wrong_issuer", f"the provider calls itself {metadata.issuer!r}")
        for url in metadata.endpoints():
            self._check_url(url, "endpoint")
        if metadata.code_challenge_methods_supported and (
            "S256" not in metadata.code_challenge_methods_supported
        ):
            raise OidcError("invalid_metadata", "the provider does not support PKCE S256")
        algs = metadata.id_token_signing_alg_values_supported
        if algs and not set(algs).intersection(self.allowed_algs):
            raise OidcError("invalid_metadata", f"the provider signs with {algs}, none allowed")
        return metadata

    def _check_url(self, url: str, what: str) -> None:
        parts = urlsplit(url)
        if parts.scheme == "https" or (
            parts.scheme == "http" and (self.allow_http or _is_loopback(parts.hostname))
        ):
            return
        if what == "issuer":
            raise ValueError(f"the issuer must be an https URL: {url!r}")
        raise OidcError("invalid_metadata", f"the provider's {what} {url!r} is not https")

    # -- the authorization code flow -----------------------------------------------------

    def begin(self, extra_params: Mapping[str, str] | None = None) -> AuthRequest:
        """A new authorization request; ``extra_params`` (``prompt``, ``login_hint``...)."""
        metadata = self.metadata
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(32)
        code_verifier = secrets.token_urlsafe(64)  # 86 characters, RFC 7636 allows 43-128
        params = dict(extra_params or {})
        params.update(
            response_type="code",
            client_id=self.client_id,
            redirect_uri=self.redirect_uri,
            scope=" ".join(self.scopes),
            state=state,
            nonce=nonce,
            code_challenge=_b64url(hashlib.sha256(code_verifier.encode("ascii")).digest()),
            code_challenge_method="S256",
        )
        if self.acr_values:
            params["acr_values"] = self.acr_values
        endpoint = metadata.authorization_endpoint
        separator = "&" if urlsplit(endpoint).query else "?"
        return AuthRequest(
            url=endpoint + separator + urlencode(params),
            state=state,
            nonce=nonce,
            code_verifier=code_verifier,
            redirect_uri=self.redirect_uri,
            created_at=self.clock(),
        )

    def finish(self, request: AuthRequest, callback_params: Mapping[str, str]) -> Login:
        """The login that the provider's redirect back (its query parameters) completes."""
        self._check_state(request, callback_params)
        metadata = self.metadata
        iss = callback_params.get("iss")  # RFC 9207, against mix-up attacks
        if (
            iss is not None or metadata.authorization_response_iss_parameter_supported
        ) and iss != self.issuer:
            raise OidcError("wrong_issuer", f"the callback comes from {iss!r}")
        error = callback_params.get("error")
        if error is not None:
            description = callback_params.get("error_description")
            raise OidcError(
                "provider_error",
                f"the provider answered {error}",
                provider_error=error,
                provider_error_description=description,
            )
        code = callback_params.get("code")
        if not code:
            raise OidcError("missing_code", "the callback has no authorization code")
        tokens = self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": request.redirect_uri,
                "code_verifier": request.code_verifier,
            }
        )
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("invalid_response", "the token response has no id_token")
        access_token = tokens["access_token"]
        claims = self._check_id_token(id_token, nonce=request.nonce, access_token=access_token)
        if self.acr_values:
            acr = claims.get("acr")
            if not isinstance(acr, str) or acr not in self.acr_values.split():
                raise OidcError("acr_mismatch", f"acr {acr!r}, {self.acr_values!r} requested")
        merged = dict(claims)
        if self.fetch_userinfo and metadata.userinfo_endpoint:
            userinfo = self._userinfo(metadata.userinfo_endpoint, access_token)
            if not hmac.compare_digest(str(userinfo.get("sub")), claims["sub"]):
                raise OidcError("subject_mismatch", "UserInfo is about another subject")
            merged.update((k, v) for k, v in userinfo.items() if k not in _PROTOCOL_CLAIMS)
        return Login(
            subject=claims["sub"],
            claims=merged,
            access_token=access_token,
            access_token_expires_at=self._expires_at(tokens),
            refresh_token=_optional_str(tokens.get("refresh_token")),
            id_token=id_token,
        )

    def refresh(self, login: Login) -> Login:
        """New tokens for the same professional (OpenID Connect Core §12)."""
        if not login.refresh_token:
            raise OidcError("no_refresh_token", "this login has no refresh token")
        tokens = self._token_request(
            {"grant_type": "refresh_token", "refresh_token": login.refresh_token}
        )
        access_token = tokens["access_token"]
        id_token = tokens.get("id_token")
        claims = dict(login.claims)
        if id_token is not None:
            original_nonce = login.claims.get("nonce")
            new = self._check_id_token(
                id_token,
                nonce=original_nonce if isinstance(original_nonce, str) else None,
                access_token=access_token,
                nonce_required=False,
            )
            if not hmac.compare_digest(new["sub"], login.subject):
                raise OidcError("subject_mismatch", "the refreshed ID token is about another sub")
            acr = new.get("acr")
            if self.acr_values and acr is not None and acr not in self.acr_values.split():
                raise OidcError("acr_mismatch", f"refreshed acr {acr!r}")
            claims.update(new)
        return Login(
            subject=login.subject,
            claims=claims,
            access_token=access_token,
            access_token_expires_at=self._expires_at(tokens),
            refresh_token=_optional_str(tokens.get("refresh_token")) or login.refresh_token,
            id_token=id_token if isinstance(id_token, str) else login.id_token,
        )

    def verify_access_token(self, token: str, *, audience: str | None = None) -> Mapping[str, Any]:
        """The claims of a JWT access token this provider signed for ``audience`` (by default
        ``access_token_audience``, else our client id); refuses ID tokens passed as such."""
        header, claims = verify_jws(token, self.allowed_algs, self.jwks)
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.lower() not in _ACCESS_TOKEN_TYPS):
            raise OidcError("wrong_token_type", f"header typ {typ!r}")
        # an ID token (Keycloak marks them typ ID; all carry ID-token-only claims) is no
        # access token, even though its audience is our client id
        if claims.get("typ") not in (None, "Bearer") or "nonce" in claims or "at_hash" in claims:
            raise OidcError("wrong_token_type", "an ID token is not an access token")
        rules = _ClaimRules(
            audience=audience or self.access_token_audience or self.client_id,
            check_azp=False,
            require_iat=False,
        )
        self._check_claims(claims, rules)
        return claims

    # -- checks ------------------------------------------------------------------------

    def _check_state(self, request: AuthRequest, params: Mapping[str, str]) -> None:
        state = params.get("state")
        if not state or not hmac.compare_digest(state.encode(), request.state.encode()):
            raise OidcError("state_mismatch", "the callback's state is not this request's")
        now = self.clock()
        with self._lock:
            for used, at in list(self._used_states.items()):
                if now - at > 2 * self.auth_request_max_age:
                    del self._used_states[used]
            if request.state in self._used_states:
                raise OidcError("state_replayed", "this authorization request was already used")
            self._used_states[request.state] = now
        if now - request.created_at > self.auth_request_max_age:
            raise OidcError("state_expired", "the authorization request is too old")

    def _check_id_token(
        self,
        id_token: object,
        *,
        nonce: str | None,
        access_token: str | None,
        nonce_required: bool = True,
    ) -> dict[str, Any]:
        header, claims = verify_jws(id_token, self.allowed_algs, self.jwks)
        typ = header.get("typ")
        if isinstance(typ, str) and typ.lower() in ("at+jwt", "application/at+jwt"):
            raise OidcError("wrong_token_type", "an access token is not an ID token")
        if claims.get("typ") not in (None, "ID"):  # Keycloak's marker
            raise OidcError("wrong_token_type", f"token typ {claims.get('typ')!r}")
        self._check_claims(
            claims, _ClaimRules(audience=self.client_id, check_azp=True, require_iat=True)
        )
        token_nonce = claims.get("nonce")
        if (nonce_required or token_nonce is not None) and (
            not isinstance(token_nonce, str)
            or nonce is None
            or not hmac.compare_digest(token_nonce.encode(), nonce.encode())
        ):
            raise OidcError("nonce_mismatch", "the ID token's nonce is not this request's")
        at_hash = claims.get("at_hash")
        if at_hash is not None and access_token is not None:
            expected = _token_hash(access_token, str(header["alg"]))
            if not isinstance(at_hash, str) or not hmac.compare_digest(at_hash, expected):
                raise OidcError("at_hash_mismatch", "at_hash does not match the access token")
        return claims

    def _check_claims(self, claims: Mapping[str, Any], rules: _ClaimRules) -> None:
        iss = claims.get("iss")
        if iss != self.issuer:
            raise OidcError("wrong_issuer", f"iss {iss!r}")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise OidcError("missing_claim", "no sub")
        self._check_audience(claims, rules)
        self._check_times(claims, require_iat=rules.require_iat)

    def _check_audience(self, claims: Mapping[str, Any], rules: _ClaimRules) -> None:
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or rules.audience not in audiences:
            raise OidcError("wrong_audience", f"aud {aud!r}")
        if not rules.check_azp:
            return
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != self.client_id:
            raise OidcError("wrong_azp", f"azp {azp!r}")

    def _check_times(self, claims: Mapping[str, Any], *, require_iat: bool) -> None:
        now = self.clock()
        exp = _numeric_date(claims, "exp", required=True)
        nbf = _numeric_date(claims, "nbf", required=False)
        iat = _numeric_date(claims, "iat", required=require_iat)
        if exp is not None and now - self.leeway >= exp:
            raise OidcError("expired", f"expired {now - exp:.0f} s ago")
        if nbf is not None and now + self.leeway < nbf:
            raise OidcError("not_yet_valid", f"valid in {nbf - now:.0f} s")
        if iat is not None and now + self.leeway < iat:
            raise OidcError("issued_in_future", f"issued {iat - now:.0f} s in the future")

    # -- provider requests -------------------------------------------------------------

    def _send(self, method: str, url: str, what: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as error:
            raise OidcError("provider_unreachable", f"{what}: {type(error).__name__}") from error
        if response.status_code >= 500:
            raise OidcError("provider_unreachable", f"{what} answered HTTP {response.status_code}")
        return response

    @staticmethod
    def _json(response: httpx.Response, what: str) -> dict[str, Any]:
        try:
            document = response.json()
        except ValueError as error:
            raise OidcError("invalid_response", f"{what} did not answer JSON") from error
        if not isinstance(document, dict):
            raise OidcError("invalid_response", f"{what} did not answer a JSON object")
        return document

    def _token_request(self, form: Mapping[str, str]) -> dict[str, Any]:
        # client_secret_basic: each part form-urlencoded first (RFC 6749 §2.3.1)
        credentials = f"{quote_plus(self.client_id)}:{quote_plus(self._client_secret)}"
        basic = base64.b64encode(credentials.encode()).decode("ascii")
        response = self._send(
            "POST",
            self.metadata.token_endpoint,
            "token endpoint",
            content=urlencode(form).encode("ascii"),
            headers={
                "Authorization": f"Basic {basic}",
                "Content-Type": FORM,
                "Accept": "application/json",
            },
        )
        if response.status_code != 200:
            raise _provider_refusal(response, "token endpoint")
        tokens = self._json(response, "token endpoint")
        if not isinstance(tokens.get("access_token"), str) or not tokens["access_token"]:
            raise OidcError("invalid_response", "the token response has no access_token")
        if str(tokens.get("token_type", "")).lower() not in ("bearer", "dpop"):
            raise OidcError("invalid_response", f"token_type {tokens.get('token_type')!r}")
        return tokens

    def _userinfo(self, endpoint: str, access_token: str) -> Mapping[str, Any]:
        response = self._send(
            "GET",
            endpoint,
            "userinfo",
            headers={
                "Authorization": f"Bearer {access_token}",
                "Accept": "application/json, application/jwt",
            },
        )
        if response.status_code != 200:
            raise _provider_refusal(response, "userinfo")
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/jwt":  # a signed UserInfo response (Core §5.3.2)
            _header, userinfo = verify_jws(response.text.strip(), self.allowed_algs, self.jwks)
            if "iss" in userinfo and userinfo["iss"] != self.issuer:
                raise OidcError("wrong_issuer", f"UserInfo iss {userinfo['iss']!r}")
            if "aud" in userinfo:
                self._check_audience(
                    userinfo, _ClaimRules(self.client_id, check_azp=False, require_iat=False)
                )
            return userinfo
        return self._json(response, "userinfo")

    def _expires_at(self, tokens: Mapping[str, Any]) -> float | None:
        expires_in = tokens.get("expires_in")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            return None
        return self.clock() + float(expires_in)


def _provider_refusal(response: httpx.Response, what: str) -> OidcError:
    """The ``OidcError`` for a 4xx answer, carrying the OAuth ``error`` when there is one."""
    error: str | None = None
    description: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = _optional_str(body.get("error"))
        description = _optional_str(body.get("error_description"))
    reason: Reason = "provider_error"
    return OidcError(
        reason,
        f"{what} answered HTTP {response.status_code} {error or ''}".rstrip(),
        provider_error=error,
        provider_error_description=description,
    )


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _numeric_date(claims: Mapping[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise OidcError("missing_claim", f"no {name}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OidcError("malformed_token", f"{name} is not a number")
    return float(value)


def _token_hash(token: str, alg: str) -> str:
    """``at_hash``/``c_hash``: the left half of the token's hash (Core §3.1.3.6)."""
    size = alg[-3:]
    digest = {"384": hashlib.sha384, "512": hashlib.sha512}.get(size, hashlib.sha256)
    if alg in ("EdDSA", "Ed25519"):
        digest = hashlib.sha512
    value = digest(token.encode()).digest()
    return _b64url(value[: len(value) // 2])
