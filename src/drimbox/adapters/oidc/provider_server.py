"""authlib's authorization server, fitted to Starlette and to what ``drimbox idp`` plays.

authlib does the protocol: the authorization code grant (RFC 6749 §4.1) with PKCE
(RFC 7636, here S256 only and always required), OpenID Connect ID tokens (``OpenIDCode``),
refresh tokens (rotated on use), client authentication, introspection (RFC 7662),
revocation (RFC 7009), RP-initiated logout and bearer-token checks (RFC 6750). This module
gives it what authlib leaves to the framework and the application: the request adapter,
storage (``provider_store``), the clients, the people's claims and the tokens' shapes.

Written here rather than taken from authlib, and why:

- the access token is a Keycloak-shaped RS256 JWT (``typ: "Bearer"``, ``azp``, ``sid``,
  ``nbf``, ``acr`` and Pro Santé Connect's claims) stamped with the provider's clock; RFC 9068's
  ``JWTBearerTokenGenerator`` stamps ``time.time()``, has no ``nbf`` and no per-login ``acr``;
- ``client_secret_basic`` decodes each part as ``application/x-www-form-urlencoded``
  (RFC 6749 §2.3.1, ``+`` is a space), which authlib's built-in method does not;
- authlib's ``UserInfoEndpoint`` reads the request from Flask's context: the userinfo answer
  is built here on authlib's ``ResourceProtector`` and ``BearerTokenValidator``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote_plus

from authlib.common.security import generate_token
from authlib.consts import default_json_headers
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    OAuth2Payload,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6749.resource_protector import ResourceProtector
from authlib.oauth2.rfc6749.util import scope_to_list
from authlib.oauth2.rfc6750 import (
    BearerTokenGenerator,
    BearerTokenValidator,
    InvalidTokenError,
)
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core.grants import OpenIDCode
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from starlette.responses import Response

from drimbox.adapters.oidc.people import People
from drimbox.adapters.oidc.provider_keys import ALG, SigningKey
from drimbox.adapters.oidc.provider_store import (
    CodeRecord,
    Login,
    ProviderStore,
    RefreshRecord,
)

CODE_LIFETIME = 60
SUPPORTED_ACR = ("eidas1",)
DEFAULT_ACR = "eidas1"
CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]
GRANT_TYPES = ("authorization_code", "refresh_token")


class Client:
    """A registered relying party (authlib's ``ClientMixin``). A client without redirect
    URIs can only use the back channel (introspection, like a Source box)."""

    def __init__(self, client_id: str, client_secret: str, redirect_uris: Sequence[str]) -> None:
        self.client_id = client_id
        self._secret = client_secret.encode("utf-8")
        self.redirect_uris = tuple(redirect_uris)

    def __repr__(self) -> str:
        return f"Client({self.client_id!r})"

    @property
    def client_metadata(self) -> dict[str, Any]:
        # Keycloak's default ("+"): post-logout redirects may go to the login redirect URIs
        return {"post_logout_redirect_uris": list(self.redirect_uris)}

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # redirect_uri is required and must match a registered one exactly

    def get_allowed_scope(self, scope: str | None) -> str | None:
        if not scope:
            return None
        return " ".join(dict.fromkeys(scope_to_list(scope)))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(client_secret.encode("utf-8", "surrogatepass"), self._secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in CLIENT_AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in GRANT_TYPES


@dataclass
class ProviderCore:
    """What every piece of the provider shares."""

    issuer: str
    clients: Mapping[str, Client]
    people: People
    key: SigningKey
    store: ProviderStore
    access_token_lifetime: int
    refresh_token_lifetime: int

    def now(self) -> int:
        return int(self.store.clock())


# -- requests


@dataclass(frozen=True)
class HttpInput:
    """A request as authlib needs it, read from Starlette beforehand (authlib is synchronous,
    Starlette's body is not). ``params`` are the protocol parameters: the query of the
    authorization and logout endpoints, the form body of the others."""

    method: str
    uri: str
    headers: Mapping[str, str]
    params: Sequence[tuple[str, str]]


class _Payload(OAuth2Payload):  # type: ignore[misc]  # authlib is untyped
    def __init__(self, params: Sequence[tuple[str, str]]) -> None:
        self._data: dict[str, str] = {}
        self._datalist: defaultdict[str, list[str]] = defaultdict(list)
        for name, value in params:
            self._data.setdefault(name, value)
            self._datalist[name].append(value)

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return self._datalist


class _Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, http: HttpInput) -> None:
        super().__init__(http.method, http.uri, headers=http.headers)
        self.payload = _Payload(http.params)

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data  # type: ignore[no-any-return]

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data  # type: ignore[no-any-return]


def repeated_parameter(params: Sequence[tuple[str, str]]) -> str | None:
    """The first parameter given more than once (RFC 6749 §3.1, §3.2: never allowed)."""
    seen: set[str] = set()
    for name, _ in params:
        if name in seen:
            return name
        seen.add(name)
    return None


def _client_secret_basic(query_client: Callable[[str], Client | None], request: Any) -> Any:
    header = request.headers.get("Authorization") or ""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    client = query_client(unquote_plus(client_id))
    if client is not None and client.check_client_secret(unquote_plus(secret)):
        return client
    return None


# -- tokens


class AccessToken:
    """A verified access token of ours (authlib's ``TokenMixin``)."""

    kind = "access_token"

    def __init__(self, claims: dict[str, Any], expired: bool, revoked: bool) -> None:
        self.claims = claims
        self.expired = expired
        self.revoked = revoked

    def get_scope(self) -> str:
        return str(self.claims.get("scope", ""))

    def get_client_id(self) -> str:
        return str(self.claims.get("azp", ""))

    def check_client(self, client: Client) -> bool:
        return self.get_client_id() == client.get_client_id()

    def is_expired(self) -> bool:
        return self.expired

    def is_revoked(self) -> bool:
        return self.revoked


def decode_access_token(core: ProviderCore, token: str) -> AccessToken | None:
    """Our access token ``token`` (signature and issuer checked), or ``None``."""
    if token.count(".") != 2 or len(token) > 16 * 1024:
        return None
    try:
        decoded = jwt.decode(token, core.key.public, algorithms=[ALG])
    except (JoseError, ValueError, TypeError):
        return None
    claims = dict(decoded.claims)
    if claims.get("iss") != core.issuer or claims.get("typ") != "Bearer":
        return None
    exp, nbf = claims.get("exp"), claims.get("nbf", 0)
    if not isinstance(exp, int) or not isinstance(nbf, int):
        return None
    now = core.now()
    expired = exp <= now or nbf > now
    revoked = core.store.access_revoked(str(claims.get("jti")), str(claims.get("sid")))
    return AccessToken(claims, expired, revoked)


class AccessTokenGenerator(BearerTokenGenerator):  # type: ignore[misc]
    """Keycloak-shaped JWT access tokens, opaque refresh tokens."""

    def __init__(self, core: ProviderCore) -> None:
        super().__init__(self._access_token, self._refresh_token, self._expires_in)
        self.core = core

    def _expires_in(self, client: Client, grant_type: str) -> int:
        return self.core.access_token_lifetime

    def _refresh_token(self, **_: Any) -> str:
        return str(generate_token(48))

    def _access_token(self, client: Client, grant_type: str, user: Login, scope: str) -> str:
        core = self.core
        now = core.now()
        claims: dict[str, Any] = {
            **user.person.claims(),
            "exp": now + core.access_token_lifetime,
            "iat": now,
            "nbf": now,
            "auth_time": user.auth_time,
            "jti": str(uuid.uuid4()),
            "iss": core.issuer,
            "aud": client.client_id,
            "sub": user.person.subject,
            "typ": "Bearer",
            "azp": client.client_id,
            "client_id": client.client_id,
            "sid": user.sid,
            "session_state": user.sid,
            "acr": user.acr,
            "scope": scope,
        }
        core.store.track_access(user.sid, claims["exp"])
        header = {"alg": ALG, "typ": "JWT", "kid": core.key.kid}
        return jwt.encode(header, claims, core.key.private, algorithms=[ALG])


# -- grants and their extensions


class S256Challenge(CodeChallenge):  # type: ignore[misc]
    """PKCE required of every client, S256 only: a missing challenge or ``plain`` is
    refused at the authorization endpoint (back to the client, ``invalid_request``)."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: missing 'code_challenge'.")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("'code_challenge_method' must be S256.")
        super().validate_code_challenge(grant, redirect_uri)


class IdTokens(OpenIDCode):  # type: ignore[misc]
    """RS256 ID tokens (authorization code and refresh grants)."""

    def __init__(self, core: ProviderCore) -> None:
        super().__init__(require_nonce=False)
        self.core = core

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return self.core.store.nonce_used(request.payload.client_id, nonce)

    def resolve_client_private_key(self, client: Client) -> RSAKey:
        return self.core.key.private

    def get_client_algorithm(self, client: Client) -> str:
        return ALG

    def get_encode_header(self, client: Client) -> dict[str, str]:
        return {"alg": ALG, "typ": "JWT", "kid": self.core.key.kid}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        now = self.core.now()
        return {
            "iss": self.core.issuer,
            "aud": client.client_id,
            "azp": client.client_id,
            "iat": now,
            "nbf": now,
            "exp": now + self.core.access_token_lifetime,
            "typ": "ID",
        }

    def generate_user_info(self, user: Login, scope: str) -> dict[str, Any]:
        return {
            **user.person.claims(),
            "acr": user.acr,
            "auth_time": user.auth_time,
            "sid": user.sid,
            "session_state": user.sid,
        }


class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS

    @property
    def core(self) -> ProviderCore:
        return self.server.core  # type: ignore[no-any-return]

    def validate_requested_scope(self) -> None:
        scopes = scope_to_list(self.request.payload.scope) or []
        if "openid" not in scopes:
            raise InvalidScopeError("The 'openid' scope is required.")

    def save_authorization_code(self, code: str, request: Any) -> None:
        data = request.payload.data
        self.core.store.put_code(
            code,
            CodeRecord(
                client_id=request.client.get_client_id(),
                redirect_uri=request.payload.redirect_uri,
                scope=request.scope,
                nonce=data.get("nonce") or None,
                code_challenge=data["code_challenge"],
                code_challenge_method=data["code_challenge_method"],
                login=request.user,
                expires_at=self.core.store.clock() + CODE_LIFETIME,
            ),
        )

    def query_authorization_code(self, code: str, client: Client) -> CodeRecord | None:
        return self.core.store.take_code(code, client.get_client_id())

    def delete_authorization_code(self, authorization_code: CodeRecord) -> None:
        pass  # taken (spent) by query_authorization_code

    def authenticate_user(self, authorization_code: CodeRecord) -> Login | None:
        login = authorization_code.login
        return None if self.core.store.session_revoked(login.sid) else login


class RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True

    @property
    def core(self) -> ProviderCore:
        return self.server.core  # type: ignore[no-any-return]

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshRecord | None:
        return self.core.store.take_refresh(refresh_token, self.request.client.get_client_id())

    def authenticate_user(self, refresh_token: RefreshRecord) -> Login:
        return refresh_token.login

    def revoke_old_credential(self, refresh_token: RefreshRecord) -> None:
        pass  # marked used by authenticate_refresh_token


# -- token endpoints


def _find_token(
    core: ProviderCore, token: str, hint: str | None
) -> AccessToken | RefreshRecord | None:
    if hint != "refresh_token":
        access = decode_access_token(core, token)
        if access is not None:
            return access
    return core.store.find_refresh(token)


class Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    """Any registered client may introspect any token, as in a Keycloak realm."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def __init__(self, core: ProviderCore) -> None:
        super().__init__()
        self.core = core

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        return _find_token(self.core, token_string, token_type_hint)

    def check_permission(self, token: Any, client: Client, request: Any) -> bool:
        return True

    def introspect_token(self, token: AccessToken | RefreshRecord) -> dict[str, Any]:
        if isinstance(token, AccessToken):
            claims = token.claims
            answer = {**claims, "active": True, "client_id": claims["azp"], "token_type": "Bearer"}
            if "preferred_username" in claims:
                answer["username"] = claims["preferred_username"]
            return answer
        return {
            "active": True,
            "typ": "Refresh",
            "token_type": "Refresh",
            "iss": self.core.issuer,
            "sub": token.login.person.subject,
            "client_id": token.client_id,
            "azp": token.client_id,
            "scope": token.scope,
            "acr": token.login.acr,
            "sid": token.login.sid,
            "iat": int(token.issued_at),
            "exp": int(token.expires_at),
        }


class Revocation(RevocationEndpoint):  # type: ignore[misc]
    """Revoking an access token kills it alone; a refresh token, its whole session."""

    CLIENT_AUTH_METHODS = CLIENT_AUTH_METHODS

    def __init__(self, core: ProviderCore) -> None:
        super().__init__()
        self.core = core

    def query_token(self, token_string: str, token_type_hint: str | None) -> Any:
        return _find_token(self.core, token_string, token_type_hint)

    def revoke_token(self, token: AccessToken | RefreshRecord, request: Any) -> None:
        if isinstance(token, AccessToken):
            self.core.store.revoke_access(str(token.claims["jti"]), float(token.claims["exp"]))
        else:
            self.core.store.revoke_refresh(token)


class EndSession(EndSessionEndpoint):  # type: ignore[misc]
    def __init__(self, core: ProviderCore) -> None:
        super().__init__()
        self.core = core

    def get_server_jwks(self) -> KeySet:
        return self.core.key.public_set

    def get_algorithms(self) -> list[str]:
        return [ALG]

    def end_session(self, end_session_request: EndSessionRequest) -> None:
        claims = end_session_request.id_token_claims or {}
        if claims.get("iss") == self.core.issuer and isinstance(claims.get("sid"), str):
            self.core.store.revoke_session(claims["sid"])


class _BearerValidator(BearerTokenValidator):  # type: ignore[misc]
    def __init__(self, core: ProviderCore, realm: str) -> None:
        super().__init__(realm=realm)
        self.core = core

    def authenticate_token(self, token_string: str) -> AccessToken | None:
        return decode_access_token(self.core, token_string)


# -- the server


class Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, core: ProviderCore, realm: str) -> None:
        super().__init__()
        self.core = core
        self.register_token_generator("default", AccessTokenGenerator(core))
        self.register_client_auth_method("client_secret_basic", _client_secret_basic)
        id_tokens = IdTokens(core)
        self.register_grant(CodeGrant, [S256Challenge(), id_tokens])
        self.register_grant(RefreshGrant, [id_tokens])
        self.register_endpoint(Introspection(core))
        self.register_endpoint(Revocation(core))
        self.register_endpoint(EndSession(core))
        self.resources = ResourceProtector()
        self.resources.register_token_validator(_BearerValidator(core, realm))

    def query_client(self, client_id: str) -> Client | None:
        return self.core.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        login: Login = request.user
        refresh = token.get("refresh_token")
        if refresh:
            now = self.core.store.clock()
            lifetime = self.core.refresh_token_lifetime
            record = RefreshRecord(
                client_id=request.client.get_client_id(),
                scope=token.get("scope", ""),
                login=login,
                issued_at=now,
                expires_at=now + lifetime,
            )
            self.core.store.put_refresh(refresh, record)
            token["refresh_expires_in"] = lifetime
        token["session_state"] = login.sid

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if isinstance(request, OAuth2Request):
            return request
        return _Request(request)

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError("no JSON endpoint")

    def handle_response(self, status_code: int, payload: Any, headers: Any) -> Response:
        if isinstance(payload, dict):
            body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        else:
            body = str(payload or "").encode("utf-8")
        response = Response(body, status_code=status_code)
        for name, value in headers or ():
            response.headers[name] = value
        return response

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def userinfo(self, http: HttpInput) -> Response:
        """The UserInfo answer (OIDC Core §5.3) for the bearer token of ``http``."""
        request = _Request(http)
        if not http.headers.get("Authorization"):
            # RFC 6750 §3.1: no error code when the request carried no credentials
            realm = self.resources._default_realm
            challenge = [("WWW-Authenticate", f'Bearer realm="{realm}"')]
            return self.handle_response(401, {"error": "invalid_request"}, challenge)
        try:
            token: AccessToken = self.resources.validate_request(["openid"], request)
        except OAuth2Error as error:
            return self.handle_error_response(request, error)  # type: ignore[no-any-return]
        person = self.core.people.find_subject(str(token.claims.get("sub")))
        if person is None:  # the people file changed since the token was issued
            unknown = InvalidTokenError(realm=self.resources._default_realm)
            return self.handle_error_response(request, unknown)  # type: ignore[no-any-return]
        return self.handle_response(200, person.claims(), default_json_headers)


def new_session_id() -> str:
    return secrets.token_urlsafe(24)
