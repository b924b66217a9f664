"""The OpenID Connect relying party against an in-test provider (httpx.MockTransport).

The provider below is honest by default (discovery, JWKS, a token endpoint that checks
client_secret_basic, the code, the redirect URI and PKCE, a UserInfo endpoint); each test
breaks one thing and asserts the exact ``OidcError.reason`` the relying party refuses with.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit

import httpx
import pytest
from joserfc import jwk, jwt

from drimbox.adapters.oidc.relying_party import (
    AuthRequest,
    Login,
    OidcClient,
    OidcError,
    ProviderMetadata,
)
from drimbox.domain.errors import DrimboxError

ISSUER = "https://psc.test/auth/realms/esante-wallet"
CLIENT_ID = "drimbox:box/1"  # ':' and '/' must be form-urlencoded in the Basic header
CLIENT_SECRET = "s3cret+&="
REDIRECT = "https://box.test/oidc/callback"
NOW = 1_900_000_000.0

RSA = jwk.RSAKey.generate_key(2048, parameters={"kid": "rsa1", "use": "sig", "alg": "RS256"})
RSA_OTHER = jwk.RSAKey.generate_key(2048, parameters={"kid": "rsa2", "use": "sig"})
EC = jwk.ECKey.generate_key("P-256", parameters={"kid": "ec1", "use": "sig"})
# the attacker's key: never published by the provider
ATTACKER = jwk.RSAKey.generate_key(2048, parameters={"kid": "rsa1"})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def at_hash(token: str) -> str:
    return b64url(hashlib.sha256(token.encode()).digest()[:16])


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Provider:
    """A scriptable OpenID provider; attributes change what it answers."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.issuer = ISSUER
        self.discovery_extra: dict[str, Any] = {}
        self.published: list[jwk.Key] = [RSA, RSA_OTHER, EC]
        self.sign_key: jwk.Key = RSA
        self.alg = "RS256"
        self.header_patch: dict[str, Any] = {}
        self.claims_patch: dict[str, Any] = {}  # None deletes the claim
        self.id_token_factory: Callable[[dict[str, Any], dict[str, Any]], str] | None = None
        self.token_response_patch: dict[str, Any] = {}
        self.token_status = 200
        self.token_unreachable = False
        self.userinfo_patch: dict[str, Any] = {}
        self.userinfo_jwt = False
        self.subject = "899700218896"  # an RPPS-like identifier, as PSC gives
        self.codes: dict[str, dict[str, str]] = {}
        self.refresh_tokens: set[str] = set()
        self.jwks_fetches = 0
        self.token_requests: list[httpx.Request] = []

    # -- the authorization endpoint, as the browser would reach it -----------------------

    def authorize(self, url: str, *, approve: bool = True) -> dict[str, str]:
        """The query parameters the provider redirects the browser back with."""
        query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
        if not approve:
            return {"error": "access_denied", "state": query["state"], "iss": self.issuer}
        code = secrets.token_urlsafe(16)
        self.codes[code] = query
        return {"code": code, "state": query["state"], "iss": self.issuer}

    # -- tokens ------------------------------------------------------------------------

    def id_token(self, request: dict[str, str] | None, access_token: str) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": CLIENT_ID,
            "exp": now + 300,
            "iat": now,
            "auth_time": now - 5,
            "acr": "eidas1",
            "at_hash": at_hash(access_token),
            "typ": "ID",
            "family_name": "DOC",
        }
        if request is not None:
            claims["nonce"] = request["nonce"]
        for name, value in self.claims_patch.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        header: dict[str, Any] = {"alg": self.alg, "kid": self.sign_key.kid, "typ": "JWT"}
        header.update(self.header_patch)
        header = {k: v for k, v in header.items() if v is not None}
        if self.id_token_factory is not None:
            return self.id_token_factory(header, claims)
        return jwt.encode(header, claims, self.sign_key, algorithms=[header["alg"]])

    def access_token(self, **extra: Any) -> str:
        now = int(self.clock())
        claims = {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": ["drimbox-api", "account"],
            "azp": "another-box",
            "exp": now + 300,
            "iat": now,
            "typ": "Bearer",
            **extra,
        }
        return jwt.encode({"alg": "RS256", "kid": "rsa1"}, claims, RSA, algorithms=["RS256"])

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        if self.token_unreachable:
            raise httpx.ConnectError("connection refused", request=request)
        if self.token_status != 200:
            return httpx.Response(self.token_status, json={"error": "server_error"})
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        client_id, _, secret = base64.b64decode(credentials).decode().partition(":")
        if (
            scheme != "Basic"
            or unquote_plus(client_id) != CLIENT_ID
            or unquote_plus(secret) != CLIENT_SECRET
        ):
            return httpx.Response(401, json={"error": "invalid_client"})
        form = {k: v[0] for k, v in parse_qs(request.content.decode()).items()}
        if form.get("grant_type") == "refresh_token":
            if form.get("refresh_token") not in self.refresh_tokens:
                return httpx.Response(400, json={"error": "invalid_grant"})
            auth = None
        else:
            auth = self.codes.pop(form.get("code", ""), None)
            if auth is None or form.get("redirect_uri") != auth["redirect_uri"]:
                return httpx.Response(400, json={"error": "invalid_grant"})
            verifier = form.get("code_verifier", "")
            challenge = b64url(hashlib.sha256(verifier.encode()).digest())
            if auth["code_challenge_method"] != "S256" or challenge != auth["code_challenge"]:
                return httpx.Response(
                    400, json={"error": "invalid_grant", "error_description": "PKCE"}
                )
        access = secrets.token_urlsafe(24)
        refresh = secrets.token_urlsafe(24)
        self.refresh_tokens.add(refresh)
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": 120,
            "refresh_token": refresh,
            "id_token": self.id_token(auth, access),
        }
        for name, value in self.token_response_patch.items():
            if value is None:
                body.pop(name, None)
            else:
                body[name] = value
        return httpx.Response(200, json=body)

    def _userinfo(self, request: httpx.Request) -> httpx.Response:
        if not request.headers.get("authorization", "").startswith("Bearer "):
            return httpx.Response(401, json={"error": "invalid_token"})
        claims = {
            "sub": self.subject,
            "SubjectNameID": self.subject,
            "given_name": "KIT",
            "family_name": "DOC",
            **self.userinfo_patch,
        }
        if self.userinfo_jwt:
            claims.update(iss=self.issuer, aud=CLIENT_ID)
            token = jwt.encode({"alg": "RS256", "kid": "rsa1"}, claims, RSA, algorithms=["RS256"])
            return httpx.Response(200, text=token, headers={"content-type": "application/jwt"})
        return httpx.Response(200, json=claims)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        base = urlsplit(ISSUER).path
        if path == base + "/.well-known/openid-configuration":
            return httpx.Response(
                200,
                json={
                    "issuer": self.issuer,
                    "authorization_endpoint": f"{ISSUER}/protocol/openid-connect/auth",
                    "token_endpoint": f"{ISSUER}/protocol/openid-connect/token",
                    "userinfo_endpoint": f"{ISSUER}/protocol/openid-connect/userinfo",
                    "jwks_uri": f"{ISSUER}/protocol/openid-connect/certs",
                    "id_token_signing_alg_values_supported": ["RS256", "PS256", "ES256"],
                    "code_challenge_methods_supported": ["plain", "S256"],
                    "acr_values_supported": ["eidas1"],
                    **self.discovery_extra,
                },
            )
        if path == base + "/protocol/openid-connect/certs":
            self.jwks_fetches += 1
            return httpx.Response(
                200, json={"keys": [k.as_dict(private=False) for k in self.published]}
            )
        if path == base + "/protocol/openid-connect/token":
            return self._token(request)
        if path == base + "/protocol/openid-connect/userinfo":
            return self._userinfo(request)
        return httpx.Response(404)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def provider(clock: Clock) -> Provider:
    return Provider(clock)


def make_client(provider: Provider, clock: Clock, **kwargs: Any) -> OidcClient:
    http = httpx.Client(transport=httpx.MockTransport(provider.handle))
    return OidcClient(ISSUER, CLIENT_ID, CLIENT_SECRET, REDIRECT, http=http, clock=clock, **kwargs)


@pytest.fixture
def client(provider: Provider, clock: Clock) -> Iterator[OidcClient]:
    with make_client(provider, clock) as c:
        yield c


def log_in(client: OidcClient, provider: Provider) -> Login:
    request = client.begin()
    return client.finish(request, provider.authorize(request.url))


def assert_refused(reason: str, call: Callable[[], object]) -> OidcError:
    """``call`` raises OidcError with this exact reason, and returns nothing."""
    result: object = None
    with pytest.raises(OidcError) as info:
        result = call()
    assert result is None
    assert info.value.reason == reason, str(info.value)
    return info.value


def refused_login(client: OidcClient, provider: Provider, reason: str) -> OidcError:
    request = client.begin()
    params = provider.authorize(request.url)
    return assert_refused(reason, lambda: client.finish(request, params))


# -- the happy paths -------------------------------------------------------------------


def test_begin_builds_a_pkce_s256_authorization_url(client: OidcClient, clock: Clock) -> None:
    request = client.begin()
    parts = urlsplit(request.url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == (
        f"{ISSUER}/protocol/openid-connect/auth"
    )
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == REDIRECT
    assert query["scope"] == "openid scope_all"
    assert query["acr_values"] == "eidas1"
    assert query["state"] == request.state
    assert query["nonce"] == request.nonce
    assert query["code_challenge_method"] == "S256"
    expected = b64url(hashlib.sha256(request.code_verifier.encode()).digest())
    assert query["code_challenge"] == expected
    assert "code_verifier" not in query
    assert 43 <= len(request.code_verifier) <= 128
    assert len({request.state, request.nonce, request.code_verifier}) == 3
    assert request.created_at == clock.now
    other = client.begin()
    assert other.state != request.state and other.nonce != request.nonce
    # the PKCE secret stays out of logs (state and nonce travel in the URL anyway)
    assert request.code_verifier not in repr(request)


def test_login_happy_path(client: OidcClient, provider: Provider, clock: Clock) -> None:
    login = log_in(client, provider)
    assert isinstance(login, Login)
    assert login.subject == provider.subject
    assert login.claims["acr"] == "eidas1"
    assert login.claims["iss"] == ISSUER
    assert login.claims["given_name"] == "KIT"  # from UserInfo
    assert login.claims["SubjectNameID"] == provider.subject
    assert login.access_token_expires_at == clock.now + 120
    assert login.refresh_token and login.id_token.count(".") == 2
    assert login.access_token not in repr(login)
    # client_secret_basic with form-urlencoded parts, and no secret in the body
    (token_request,) = provider.token_requests
    assert token_request.headers["authorization"].startswith("Basic ")
    assert CLIENT_SECRET not in token_request.content.decode()
    assert provider.jwks_fetches == 1


@pytest.mark.parametrize(("alg", "key"), [("RS256", RSA), ("PS256", RSA_OTHER), ("ES256", EC)])
def test_login_with_each_allowed_algorithm(
    client: OidcClient, provider: Provider, alg: str, key: jwk.Key
) -> None:
    provider.alg, provider.sign_key = alg, key
    assert log_in(client, provider).subject == provider.subject


def test_login_without_userinfo_nor_acr(provider: Provider, clock: Clock) -> None:
    provider.claims_patch = {"acr": None}
    with make_client(provider, clock, acr_values=None, fetch_userinfo=False) as c:
        request = c.begin()
        assert "acr_values" not in request.url
        login = c.finish(request, provider.authorize(request.url))
    assert "given_name" not in login.claims


def test_signed_userinfo_is_verified_and_merged(client: OidcClient, provider: Provider) -> None:
    provider.userinfo_jwt = True
    assert log_in(client, provider).claims["given_name"] == "KIT"


def test_leeway_accepts_a_token_just_expired(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"exp": int(NOW) - 20, "iat": int(NOW) - 320}
    assert log_in(client, provider).subject == provider.subject


def test_several_audiences_with_our_azp(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"aud": [CLIENT_ID, "another"], "azp": CLIENT_ID}
    assert log_in(client, provider).subject == provider.subject


def test_key_rotation_refetches_the_jwks(
    client: OidcClient, provider: Provider, clock: Clock
) -> None:
    log_in(client, provider)
    new = jwk.RSAKey.generate_key(2048, parameters={"kid": "rsa3"})
    provider.published = [RSA, new]
    provider.sign_key = new
    clock.now += 61
    assert log_in(client, provider).subject == provider.subject
    assert provider.jwks_fetches == 2


def test_refresh(client: OidcClient, provider: Provider, clock: Clock) -> None:
    login = log_in(client, provider)
    clock.now += 100
    provider.claims_patch = {"nonce": None}  # a refreshed ID token has no nonce
    refreshed = client.refresh(login)
    assert refreshed.subject == login.subject
    assert refreshed.access_token != login.access_token
    assert refreshed.refresh_token != login.refresh_token
    assert refreshed.access_token_expires_at == clock.now + 120
    assert refreshed.claims["given_name"] == "KIT"  # kept from the login
    assert refreshed.claims["iat"] == int(clock.now)


def test_refresh_refuses_another_subject(client: OidcClient, provider: Provider) -> None:
    login = log_in(client, provider)
    provider.subject = "someone-else"
    assert_refused("subject_mismatch", lambda: client.refresh(login))


def test_refresh_refused_by_the_provider(client: OidcClient, provider: Provider) -> None:
    login = log_in(client, provider)
    provider.refresh_tokens.clear()
    error = assert_refused("provider_error", lambda: client.refresh(login))
    assert error.provider_error == "invalid_grant"


def test_refresh_without_refresh_token(client: OidcClient, provider: Provider) -> None:
    login = log_in(client, provider)
    bare = Login(login.subject, login.claims, login.access_token, None, None, login.id_token)
    assert_refused("no_refresh_token", lambda: client.refresh(bare))


def test_verify_access_token(client: OidcClient, provider: Provider) -> None:
    token = provider.access_token()
    claims = client.verify_access_token(token, audience="drimbox-api")
    assert claims["sub"] == provider.subject
    with make_client(provider, Clock(), access_token_audience="drimbox-api") as c:
        assert c.verify_access_token(token)["azp"] == "another-box"
    assert_refused("wrong_audience", lambda: client.verify_access_token(token))
    expired = provider.access_token(exp=int(NOW) - 60)
    assert_refused("expired", lambda: client.verify_access_token(expired, audience="drimbox-api"))


def test_an_id_token_is_no_access_token(client: OidcClient, provider: Provider) -> None:
    login = log_in(client, provider)
    assert_refused("wrong_token_type", lambda: client.verify_access_token(login.id_token))


def test_metadata_is_discovered_once(client: OidcClient) -> None:
    metadata = client.metadata
    assert isinstance(metadata, ProviderMetadata)
    assert metadata.issuer == ISSUER
    assert metadata.jwks_uri.endswith("/certs")
    assert client.metadata is metadata


# -- refusals: the ID token ------------------------------------------------------------


def test_expired(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"exp": int(NOW) - 31, "iat": int(NOW) - 331}
    refused_login(client, provider, "expired")


def test_not_yet_valid(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"nbf": int(NOW) + 120}
    refused_login(client, provider, "not_yet_valid")


def test_issued_in_the_future(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"iat": int(NOW) + 3600, "exp": int(NOW) + 7200}
    refused_login(client, provider, "issued_in_future")


def test_missing_exp(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"exp": None}
    refused_login(client, provider, "missing_claim")


def test_wrong_audience(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"aud": "another-client"}
    refused_login(client, provider, "wrong_audience")


def test_wrong_issuer(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"iss": "https://evil.test/auth/realms/esante-wallet"}
    refused_login(client, provider, "wrong_issuer")


def test_issuer_with_a_trailing_slash(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"iss": ISSUER + "/"}
    refused_login(client, provider, "wrong_issuer")


def test_discovered_issuer_with_a_trailing_slash(provider: Provider, clock: Clock) -> None:
    provider.issuer = ISSUER + "/"
    with make_client(provider, clock) as c:
        assert_refused("wrong_issuer", c.begin)


def test_alg_none(client: OidcClient, provider: Provider) -> None:
    def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
        header = {**header, "alg": "none"}
        return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."

    provider.id_token_factory = unsigned
    refused_login(client, provider, "alg_not_allowed")


def test_hs256_signed_with_the_rsa_public_key(client: OidcClient, provider: Provider) -> None:
    """Key confusion: the attacker uses the published RSA key as an HMAC secret."""
    public_pem = RSA.as_pem(private=False)

    def confused(header: dict[str, Any], claims: dict[str, Any]) -> str:
        header = {**header, "alg": "HS256"}
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        )
        mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(mac)}"

    provider.id_token_factory = confused
    refused_login(client, provider, "alg_not_allowed")


def test_alg_outside_the_allow_list(provider: Provider, clock: Clock) -> None:
    provider.alg, provider.sign_key = "ES256", EC
    with make_client(provider, clock, allowed_algs=("RS256",)) as c:
        refused_login(c, provider, "alg_not_allowed")


def test_forged_signature(client: OidcClient, provider: Provider) -> None:
    """Signed by the attacker's key under the provider's kid."""
    provider.sign_key = ATTACKER
    refused_login(client, provider, "invalid_signature")


def test_tampered_payload(client: OidcClient, provider: Provider) -> None:
    def tampered(header: dict[str, Any], claims: dict[str, Any]) -> str:
        token = jwt.encode(header, claims, RSA, algorithms=["RS256"])
        head, _payload, signature = token.split(".")
        forged = b64url(json.dumps({**claims, "sub": "admin"}).encode())
        return f"{head}.{forged}.{signature}"

    provider.id_token_factory = tampered
    refused_login(client, provider, "invalid_signature")


def test_key_embedded_in_the_header_is_never_used(client: OidcClient, provider: Provider) -> None:
    attacker = jwk.ECKey.generate_key("P-256", parameters={"kid": "attacker"})
    provider.alg, provider.sign_key = "ES256", attacker
    provider.header_patch = {"jwk": attacker.as_dict(private=False), "jku": "https://evil.test/k"}
    refused_login(client, provider, "unknown_key")
    assert provider.jwks_fetches == 1  # and jku was not fetched (the transport would 404)


def test_unknown_kid_refetches_once_then_refuses(
    client: OidcClient, provider: Provider, clock: Clock
) -> None:
    log_in(client, provider)
    assert provider.jwks_fetches == 1
    unpublished = jwk.RSAKey.generate_key(2048, parameters={"kid": "rsa-unpublished"})
    provider.sign_key = unpublished
    clock.now += 61
    refused_login(client, provider, "unknown_key")
    assert provider.jwks_fetches == 2
    # a flood of unknown kids within the next 60 s does not hit the provider again
    for _ in range(3):
        refused_login(client, provider, "unknown_key")
    assert provider.jwks_fetches == 2


def test_kid_of_a_key_removed_from_the_jwks(
    client: OidcClient, provider: Provider, clock: Clock
) -> None:
    provider.sign_key = RSA_OTHER
    log_in(client, provider)
    provider.published = [RSA, EC]  # the provider retired rsa2
    clock.now += 3601  # the cached JWKS is stale: fetched again before use
    refused_login(client, provider, "unknown_key")
    assert provider.jwks_fetches == 2


def test_kid_of_a_key_of_another_type(client: OidcClient, provider: Provider) -> None:
    """RS256 claimed, kid of the EC key: no key fits."""
    provider.header_patch = {"kid": "ec1"}
    refused_login(client, provider, "unknown_key")


def test_nonce_mismatch(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"nonce": "another-nonce"}
    refused_login(client, provider, "nonce_mismatch")


def test_nonce_missing(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"nonce": None}
    refused_login(client, provider, "nonce_mismatch")


def test_acr_missing_when_eidas1_requested(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"acr": None}
    refused_login(client, provider, "acr_mismatch")


def test_acr_weaker_than_requested(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"acr": "eidas0"}
    refused_login(client, provider, "acr_mismatch")


def test_azp_mismatch_with_several_audiences(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"aud": [CLIENT_ID, "another"], "azp": "another"}
    refused_login(client, provider, "wrong_azp")


def test_azp_missing_with_several_audiences(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"aud": [CLIENT_ID, "another"]}
    refused_login(client, provider, "wrong_azp")


def test_at_hash_mismatch(client: OidcClient, provider: Provider) -> None:
    provider.claims_patch = {"at_hash": at_hash("another access token")}
    refused_login(client, provider, "at_hash_mismatch")


def test_access_token_passed_as_id_token(client: OidcClient, provider: Provider) -> None:
    provider.header_patch = {"typ": "at+jwt"}
    refused_login(client, provider, "wrong_token_type")


def test_encrypted_or_garbled_id_token(client: OidcClient, provider: Provider) -> None:
    provider.token_response_patch = {"id_token": "a.b.c.d.e"}
    refused_login(client, provider, "malformed_token")


def test_no_id_token(client: OidcClient, provider: Provider) -> None:
    provider.token_response_patch = {"id_token": None}
    refused_login(client, provider, "invalid_response")


# -- refusals: the callback ------------------------------------------------------------


def test_state_mismatch(client: OidcClient, provider: Provider) -> None:
    request = client.begin()
    params = provider.authorize(request.url)
    other = client.begin()  # the callback is for another login (login CSRF)
    assert_refused("state_mismatch", lambda: client.finish(other, params))
    assert provider.token_requests == []


def test_state_missing(client: OidcClient, provider: Provider) -> None:
    request = client.begin()
    params = provider.authorize(request.url)
    del params["state"]
    assert_refused("state_mismatch", lambda: client.finish(request, params))


def test_replayed_state(client: OidcClient, provider: Provider) -> None:
    request = client.begin()
    params = provider.authorize(request.url)
    client.finish(request, params)
    assert_refused("state_replayed", lambda: client.finish(request, params))
    assert len(provider.token_requests) == 1


def test_expired_auth_request(client: OidcClient, provider: Provider, clock: Clock) -> None:
    request = client.begin()
    params = provider.authorize(request.url)
    clock.now += 601
    assert_refused("state_expired", lambda: client.finish(request, params))


def test_missing_code(client: OidcClient, provider: Provider) -> None:
    request = client.begin()
    params = provider.authorize(request.url)
    del params["code"]
    assert_refused("missing_code", lambda: client.finish(request, params))


def test_access_denied(client: OidcClient, provider: Provider) -> None:
    request = client.begin()
    params = provider.authorize(request.url, approve=False)
    error = assert_refused("provider_error", lambda: client.finish(request, params))
    assert error.provider_error == "access_denied"
    assert error.http_status == 401
    assert provider.token_requests == []


def test_callback_from_another_issuer(client: OidcClient, provider: Provider) -> None:
    """RFC 9207: the mix-up attack, a code from another provider."""
    request = client.begin()
    params = {**provider.authorize(request.url), "iss": "https://evil.test"}
    assert_refused("wrong_issuer", lambda: client.finish(request, params))


def test_callback_iss_required_when_advertised(client: OidcClient, provider: Provider) -> None:
    provider.discovery_extra = {"authorization_response_iss_parameter_supported": True}
    request = client.begin()
    params = provider.authorize(request.url)
    del params["iss"]
    assert_refused("wrong_issuer", lambda: client.finish(request, params))


# -- refusals: the provider's endpoints ------------------------------------------------


def test_token_endpoint_500(client: OidcClient, provider: Provider) -> None:
    provider.token_status = 500
    error = refused_login(client, provider, "provider_unreachable")
    assert error.http_status == 502


def test_token_endpoint_unreachable(client: OidcClient, provider: Provider) -> None:
    provider.token_unreachable = True
    refused_login(client, provider, "provider_unreachable")


def test_token_endpoint_refuses_the_code(client: OidcClient, provider: Provider) -> None:
    request = client.begin()
    params = {**provider.authorize(request.url), "code": "not-a-code"}
    error = assert_refused("provider_error", lambda: client.finish(request, params))
    assert error.provider_error == "invalid_grant"


def test_token_endpoint_refuses_a_wrong_secret(provider: Provider, clock: Clock) -> None:
    http = httpx.Client(transport=httpx.MockTransport(provider.handle))
    with OidcClient(ISSUER, CLIENT_ID, "wrong", REDIRECT, http=http, clock=clock) as c:
        error = refused_login(c, provider, "provider_error")
    assert error.provider_error == "invalid_client"


def test_userinfo_sub_mismatch(client: OidcClient, provider: Provider) -> None:
    provider.userinfo_patch = {"sub": "someone-else"}
    refused_login(client, provider, "subject_mismatch")


def test_discovery_unreachable(clock: Clock) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    http = httpx.Client(transport=httpx.MockTransport(down))
    with OidcClient(ISSUER, CLIENT_ID, CLIENT_SECRET, REDIRECT, http=http, clock=clock) as c:
        error = assert_refused("provider_unreachable", c.begin)
    assert isinstance(error, DrimboxError)


def test_discovery_over_plain_http_is_refused(provider: Provider, clock: Clock) -> None:
    provider.discovery_extra = {"token_endpoint": "http://psc.test/token"}
    with make_client(provider, clock) as c:
        assert_refused("invalid_metadata", c.begin)


def test_jwks_unreachable(client: OidcClient, provider: Provider) -> None:
    provider.published = []
    original = provider.handle

    def no_jwks(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/certs"):
            return httpx.Response(503)
        return original(request)

    provider.handle = no_jwks  # type: ignore[method-assign]
    with make_client(provider, Clock()) as c:
        refused_login(c, provider, "provider_unreachable")


# -- configuration ---------------------------------------------------------------------


@pytest.mark.parametrize("algs", [("HS256",), ("RS256", "none"), ()])
def test_forbidden_algorithms_cannot_be_configured(algs: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match=r"algorithms|empty"):
        OidcClient(ISSUER, CLIENT_ID, CLIENT_SECRET, REDIRECT, allowed_algs=algs)


def test_issuer_must_be_https_except_on_loopback() -> None:
    with pytest.raises(ValueError, match="https"):
        OidcClient("http://psc.test/realm", CLIENT_ID, CLIENT_SECRET, REDIRECT)
    OidcClient("http://127.0.0.1:8080", CLIENT_ID, CLIENT_SECRET, REDIRECT).close()
    OidcClient("http://idp:8080", CLIENT_ID, CLIENT_SECRET, REDIRECT, allow_http=True).close()


def test_auth_request_is_plain_data(client: OidcClient) -> None:
    request = client.begin()
    assert isinstance(request, AuthRequest)
    with pytest.raises(AttributeError):
        request.state = "x"  # type: ignore[misc]
