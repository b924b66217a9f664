"""``drimbox idp`` end to end in process: the code flow with PKCE through the login form, the
tokens checked against the JWKS, userinfo, introspection (with the box's own RFC 7662
client), revocation, refresh rotation, logout, and every refusal the brief lists."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from authlib.oidc.discovery import OpenIDProviderMetadata
from joserfc import jwt
from joserfc.jwk import KeySet
from starlette.testclient import TestClient

from drimbox.adapters.oidc.people import BUILT_IN
from drimbox.adapters.oidc.provider import BROWSER_COOKIE, OidcProvider
from drimbox.adapters.oidc.provider_keys import SigningKey
from drimbox.adapters.oidc.provider_server import Client
from drimbox.adapters.trust.introspection import TokenIntrospector, TokenRejected

BASE = "http://127.0.0.1:8300"
ISSUER = f"{BASE}/auth/realms/esante-wallet"
CONSO = "drimbox-conso"
CONSO_SECRET = "conso secret+/="  # space and plus: form-urlencoded in Basic auth
CALLBACK = "http://127.0.0.1:8200/conso/oidc/callback"
OTHER_CALLBACK = "http://127.0.0.1:8200/conso/oidc/other"
VIEWER = "viewer"
VIEWER_SECRET = "viewer-secret"
VIEWER_CALLBACK = "http://127.0.0.1:8400/callback"
SOURCE = "drimbox-source"
SOURCE_SECRET = "source-secret"


def clients() -> list[Client]:
    return [
        Client(CONSO, CONSO_SECRET, [CALLBACK, OTHER_CALLBACK]),
        Client(VIEWER, VIEWER_SECRET, [VIEWER_CALLBACK]),
        Client(SOURCE, SOURCE_SECRET, []),
    ]


# -- a relying party for tests (also used by tests/integration/test_idp.py)


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def basic(client_id: str, secret: str) -> httpx.BasicAuth:
    from urllib.parse import quote_plus

    return httpx.BasicAuth(quote_plus(client_id), quote_plus(secret))


@dataclass
class AuthRequest:
    client_id: str = CONSO
    redirect_uri: str = CALLBACK
    state: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    nonce: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    verifier: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    scope: str = "openid scope_all"
    method: str | None = "S256"
    extra: dict[str, str] = field(default_factory=dict)

    def params(self) -> dict[str, str]:
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": self.scope,
            "state": self.state,
            "nonce": self.nonce,
            "acr_values": "eidas1",
        }
        if self.method == "S256":
            params |= {"code_challenge": s256(self.verifier), "code_challenge_method": "S256"}
        elif self.method == "plain":
            params |= {"code_challenge": self.verifier, "code_challenge_method": "plain"}
        return params | self.extra


def auth_url(issuer: str, request: AuthRequest) -> str:
    return f"{issuer}/protocol/openid-connect/auth?{urlencode(request.params())}"


def login_form(page: str) -> tuple[str, str, list[str]]:
    """The login form's action, ticket and the person ids it offers."""
    action = re.search(r'<form method="post" action="([^"]+)"', page)
    ticket = re.search(r'name="ticket" value="([^"]+)"', page)
    assert action and ticket, page
    people = re.findall(r'name="person" value="([^"]+)"', page)
    return unescape(action[1]), unescape(ticket[1]), people


def login(http: httpx.Client, issuer: str, request: AuthRequest, person: str) -> httpx.Response:
    """GET the authorization URL, then POST the login form as ``person``: the provider's
    answer (a redirect to the client when all went well)."""
    page = http.get(auth_url(issuer, request))
    assert page.status_code == 200, page.text
    action, ticket, _ = login_form(page.text)
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(issuer))
    return http.post(f"{origin}{action}", data={"ticket": ticket, "person": person})


def callback(response: httpx.Response, request: AuthRequest) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["location"]
    assert location.startswith(request.redirect_uri + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def code_for(http: httpx.Client, issuer: str, request: AuthRequest, person: str) -> str:
    params = callback(login(http, issuer, request, person), request)
    assert params["state"] == request.state
    return params["code"]


def exchange(
    http: httpx.Client,
    issuer: str,
    code: str,
    request: AuthRequest,
    *,
    secret: str = CONSO_SECRET,
    client_id: str | None = None,
    verifier: str | None = None,
    redirect_uri: str | None = None,
) -> httpx.Response:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri or request.redirect_uri,
        "code_verifier": request.verifier if verifier is None else verifier,
    }
    if not form["code_verifier"]:
        del form["code_verifier"]
    return http.post(
        f"{issuer}/protocol/openid-connect/token",
        data=form,
        auth=basic(client_id or request.client_id, secret),
    )


def tokens_for(http: httpx.Client, issuer: str, person: str = "radiologue") -> dict[str, Any]:
    request = AuthRequest()
    answer = exchange(http, issuer, code_for(http, issuer, request, person), request)
    assert answer.status_code == 200, answer.text
    tokens: dict[str, Any] = answer.json()
    tokens["_request"] = request
    return tokens


def verify_jwt(
    http: httpx.Client, issuer: str, token: str, audience: str, **claims: Any
) -> dict[str, Any]:
    """``token``'s claims once its signature (a key of the JWKS), issuer, audience, expiry
    and the given claims are checked."""
    metadata = http.get(f"{issuer}/.well-known/openid-configuration").json()
    keys = KeySet.import_key_set(http.get(metadata["jwks_uri"]).json())
    decoded = jwt.decode(token, keys, algorithms=["RS256"])
    assert decoded.header["kid"] == keys.keys[0].kid
    options: dict[str, Any] = {
        "iss": {"essential": True, "value": issuer},
        "aud": {"essential": True, "value": audience},
        "exp": {"essential": True},
        "iat": {"essential": True},
        "nbf": {"essential": True},
        "sub": {"essential": True},
    }
    options |= {name: {"essential": True, "value": value} for name, value in claims.items()}
    jwt.JWTClaimsRegistry(**options).validate(decoded.claims)
    return dict(decoded.claims)


def introspect(http: httpx.Client, issuer: str, token: str, **extra: str) -> httpx.Response:
    return http.post(
        f"{issuer}/protocol/openid-connect/token/introspect",
        data={"token": token, **extra},
        auth=basic(SOURCE, SOURCE_SECRET),
    )


# -- fixtures


class Clock:
    def __init__(self) -> None:
        import time

        self.offset = 0.0
        self._time = time.time

    def __call__(self) -> float:
        return self._time() + self.offset


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def provider(key: SigningKey, clock: Clock) -> OidcProvider:
    return OidcProvider(ISSUER, clients(), BUILT_IN, key, clock=clock)


@pytest.fixture
def http(provider: OidcProvider) -> Iterator[TestClient]:
    with TestClient(provider.app(), base_url=BASE, follow_redirects=False) as client:
        yield client


@pytest.fixture
def make_browser(provider: OidcProvider) -> Iterator[Callable[[], TestClient]]:
    made: list[TestClient] = []

    def make() -> TestClient:
        client = TestClient(provider.app(), base_url=BASE, follow_redirects=False)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# -- discovery and keys


def test_discovery_is_keycloak_shaped(http: TestClient) -> None:
    doc = http.get("/auth/realms/esante-wallet/.well-known/openid-configuration").json()
    base = f"{ISSUER}/protocol/openid-connect"
    assert doc["issuer"] == ISSUER
    assert doc["authorization_endpoint"] == f"{base}/auth"
    assert doc["token_endpoint"] == f"{base}/token"
    assert doc["jwks_uri"] == f"{base}/certs"
    assert doc["userinfo_endpoint"] == f"{base}/userinfo"
    assert doc["introspection_endpoint"] == f"{base}/token/introspect"
    assert doc["revocation_endpoint"] == f"{base}/revoke"
    assert doc["end_session_endpoint"] == f"{base}/logout"
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["response_types_supported"] == ["code"]
    assert doc["acr_values_supported"] == ["eidas1"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]


def test_discovery_validates_as_openid_provider_metadata(key: SigningKey) -> None:
    from authlib.oidc import rpinitiated

    # authlib's validation demands https: serve the same provider under an https issuer
    issuer = "https://idp.test/auth/realms/esante-wallet"
    provider = OidcProvider(issuer, clients(), BUILT_IN, key)
    with TestClient(provider.app(), base_url="https://idp.test") as client:
        doc = client.get("/auth/realms/esante-wallet/.well-known/openid-configuration").json()
    OpenIDProviderMetadata(doc).validate(metadata_classes=[rpinitiated.OpenIDProviderMetadata])


def test_jwks_publishes_one_public_rsa_key_with_a_kid(http: TestClient, key: SigningKey) -> None:
    jwks = http.get("/auth/realms/esante-wallet/protocol/openid-connect/certs").json()
    (jwk,) = jwks["keys"]
    assert jwk["kid"] == key.kid and jwk["kty"] == "RSA" and jwk["alg"] == "RS256"
    assert jwk["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)


# -- the flow


def test_code_flow_with_pkce_issues_verified_tokens(http: TestClient) -> None:
    request = AuthRequest()
    page = http.get(auth_url(ISSUER, request))
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "Connexion" in page.text and "développement" in page.text
    _, _, offered = login_form(page.text)
    assert offered == [p.id for p in BUILT_IN.everyone()]
    for person in BUILT_IN.everyone():
        assert person.family_name in page.text

    params = callback(login(http, ISSUER, request, "radiologue"), request)
    assert params["state"] == request.state
    assert params["iss"] == ISSUER  # RFC 9207
    answer = exchange(http, ISSUER, params["code"], request)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    tokens = answer.json()
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 600
    assert tokens["scope"] == "openid scope_all"
    assert tokens["refresh_token"] and "." not in tokens["refresh_token"]  # opaque

    radiologist = BUILT_IN.find("radiologue")
    assert radiologist is not None
    id_claims = verify_jwt(
        http, ISSUER, tokens["id_token"], CONSO, nonce=request.nonce, acr="eidas1", azp=CONSO
    )
    assert id_claims["aud"] == CONSO
    assert id_claims["sub"] == radiologist.subject
    assert id_claims["nbf"] == id_claims["iat"] <= id_claims["auth_time"] + 1
    assert id_claims["exp"] - id_claims["iat"] == 600
    assert id_claims["SubjectNameID"] == "899700218896"
    assert id_claims["at_hash"]

    access = verify_jwt(http, ISSUER, tokens["access_token"], CONSO, typ="Bearer", azp=CONSO)
    assert access["exp"] - access["iat"] == 600
    assert access["nbf"] == access["iat"]
    assert access["jti"] and access["scope"] == "openid scope_all" and access["acr"] == "eidas1"
    assert access["SubjectNameID"] == "899700218896"
    assert access["preferred_username"] == "899700218896"
    assert access["SubjectRefPro"]["exercices"][0]["codeSavoirFaire"] == "SM44"
    assert access["SubjectRole"] == ["10^1.2.250.1.71.1.2.7", "SM44^1.2.250.1.71.4.2.5"]
    assert access["sid"] == id_claims["sid"] == tokens["session_state"]


def test_acr_is_eidas1_even_when_another_level_is_asked(http: TestClient) -> None:
    request = AuthRequest(extra={"acr_values": "urn:unknown eidas1"})
    answer = exchange(http, ISSUER, code_for(http, ISSUER, request, "generaliste"), request)
    claims = verify_jwt(http, ISSUER, answer.json()["id_token"], CONSO, acr="eidas1")
    assert claims["SubjectRefPro"]["exercices"][0]["codeSavoirFaire"] == "SM26"


def test_client_secret_post_is_accepted(http: TestClient) -> None:
    request = AuthRequest()
    code = code_for(http, ISSUER, request, "radiologue")
    answer = http.post(
        f"{ISSUER}/protocol/openid-connect/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK,
            "code_verifier": request.verifier,
            "client_id": CONSO,
            "client_secret": CONSO_SECRET,
        },
    )
    assert answer.status_code == 200, answer.text


def test_userinfo_of_a_radiologist(http: TestClient) -> None:
    tokens = tokens_for(http, ISSUER, "radiologue")
    answer = http.get(
        "/auth/realms/esante-wallet/protocol/openid-connect/userinfo",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert answer.status_code == 200, answer.text
    info = answer.json()
    assert info["SubjectNameID"] == "899700218896"
    assert info["preferred_username"] == "899700218896"
    assert (info["given_name"], info["family_name"]) == ("Sophie", "LEROY")
    assert info["SubjectOrganization"] == "Centre d'imagerie médicale du Parc"
    ref = info["SubjectRefPro"]
    assert ref["codeCivilite"] == "MME"
    (exercise,) = ref["exercices"]
    assert exercise["codeProfession"] == "10"
    assert exercise["codeCategorieProfessionnelle"] == "C"
    assert exercise["codeSavoirFaire"] == "SM44"
    (activity,) = exercise["activities"]
    assert activity["raisonSocialeSite"] == "Centre d'imagerie médicale du Parc"
    assert activity["identifiantStructure"] == "1990000010"
    assert info["SubjectRole"] == ["10^1.2.250.1.71.1.2.7", "SM44^1.2.250.1.71.4.2.5"]
    assert info["sub"] == verify_jwt(http, ISSUER, tokens["id_token"], CONSO)["sub"]


def test_userinfo_of_a_patient_gives_the_ins(http: TestClient) -> None:
    tokens = tokens_for(http, ISSUER, "patiente")
    info = http.post(
        "/auth/realms/esante-wallet/protocol/openid-connect/userinfo",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    ).json()
    assert info["given_name"] == "Marie" and info["family_name"] == "MARTIN"
    assert info["birthdate"] == "1985-06-14" and info["gender"] == "female"
    assert info["ins"] == "285067511602105"
    assert info["ins_oid"] == "1.2.250.1.213.1.4.10"
    assert "SubjectNameID" not in info and "preferred_username" not in info


def test_userinfo_refuses_missing_and_bad_tokens(http: TestClient) -> None:
    url = "/auth/realms/esante-wallet/protocol/openid-connect/userinfo"
    missing = http.get(url)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    forged = http.get(url, headers={"Authorization": "Bearer a.b.c"})
    assert forged.status_code == 401 and forged.json()["error"] == "invalid_token"
    # an ID token is not an access token
    id_token = tokens_for(http, ISSUER)["id_token"]
    assert http.get(url, headers={"Authorization": f"Bearer {id_token}"}).status_code == 401


# -- introspection


def test_introspection_satisfies_the_box_client(http: TestClient) -> None:
    tokens = tokens_for(http, ISSUER, "radiologue")
    url = f"{ISSUER}/protocol/openid-connect/token/introspect"
    with TokenIntrospector(
        url, SOURCE, SOURCE_SECRET, client=http, required_acr="eidas1"
    ) as introspector:
        principal = introspector.verify(tokens["access_token"])
    assert principal.subject_name_id == "899700218896"
    assert principal.client_id == CONSO
    assert principal.acr == "eidas1"
    assert {"openid", "scope_all"} <= principal.scope
    claims = principal.claims
    for name in ("active", "exp", "iat", "sub", "client_id", "azp", "scope", "acr", "typ",
                 "SubjectNameID", "preferred_username"):  # fmt: skip
        assert name in claims, name
    assert claims["typ"] == "Bearer" and claims["username"] == "899700218896"


def test_introspection_answers_inactive_for_unknown_and_expired(
    http: TestClient, clock: Clock
) -> None:
    assert introspect(http, ISSUER, "not-a-token").json() == {"active": False}
    assert introspect(http, ISSUER, "a.b.c").json() == {"active": False}
    tokens = tokens_for(http, ISSUER)
    assert introspect(http, ISSUER, tokens["access_token"]).json()["active"] is True
    clock.offset = 601
    assert introspect(http, ISSUER, tokens["access_token"]).json() == {"active": False}


def test_introspection_needs_client_credentials(http: TestClient) -> None:
    tokens = tokens_for(http, ISSUER)
    url = f"{ISSUER}/protocol/openid-connect/token/introspect"
    anonymous = http.post(url, data={"token": tokens["access_token"]})
    assert anonymous.status_code == 401
    wrong = http.post(url, data={"token": tokens["access_token"]}, auth=basic(SOURCE, "nope"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"


def test_box_client_refuses_patient_and_refresh_tokens(http: TestClient) -> None:
    url = f"{ISSUER}/protocol/openid-connect/token/introspect"
    patient = tokens_for(http, ISSUER, "patient")
    with TokenIntrospector(url, SOURCE, SOURCE_SECRET, client=http) as introspector:
        with pytest.raises(TokenRejected, match="no professional identifier"):
            introspector.verify(patient["access_token"])
        refresh = introspect(http, ISSUER, patient["refresh_token"]).json()
        assert refresh["active"] is True and refresh["typ"] == "Refresh"
        with pytest.raises(TokenRejected, match="not an access token"):
            introspector.verify(patient["refresh_token"])


# -- revocation, refresh, logout


def revoke(http: httpx.Client, token: str, hint: str | None = None) -> httpx.Response:
    data = {"token": token} | ({"token_type_hint": hint} if hint else {})
    return http.post(
        f"{ISSUER}/protocol/openid-connect/revoke", data=data, auth=basic(CONSO, CONSO_SECRET)
    )


def test_revoked_access_token_is_inactive(http: TestClient) -> None:
    tokens = tokens_for(http, ISSUER)
    assert revoke(http, tokens["access_token"], "access_token").status_code == 200
    assert introspect(http, ISSUER, tokens["access_token"]).json() == {"active": False}
    url = f"{ISSUER}/protocol/openid-connect/token/introspect"
    with (
        TokenIntrospector(url, SOURCE, SOURCE_SECRET, client=http) as introspector,
        pytest.raises(TokenRejected, match="not active"),
    ):
        introspector.verify(tokens["access_token"])
    userinfo = http.get(
        "/auth/realms/esante-wallet/protocol/openid-connect/userinfo",
        headers={"Authorization": f"Bearer {tokens['access_token']}"},
    )
    assert userinfo.status_code == 401
    # the refresh token lives on (only the access token was revoked)
    assert introspect(http, ISSUER, tokens["refresh_token"]).json()["active"] is True
    # unknown tokens: 200 all the same (RFC 7009 §2.2)
    assert revoke(http, "unknown").status_code == 200


def test_revoked_refresh_token_ends_the_session(http: TestClient) -> None:
    tokens = tokens_for(http, ISSUER)
    assert revoke(http, tokens["refresh_token"]).status_code == 200
    assert introspect(http, ISSUER, tokens["refresh_token"]).json() == {"active": False}
    assert introspect(http, ISSUER, tokens["access_token"]).json() == {"active": False}
    assert refresh(http, tokens["refresh_token"]).json()["error"] == "invalid_grant"


def test_only_the_owner_may_revoke(http: TestClient) -> None:
    tokens = tokens_for(http, ISSUER)
    answer = http.post(
        f"{ISSUER}/protocol/openid-connect/revoke",
        data={"token": tokens["access_token"]},
        auth=basic(VIEWER, VIEWER_SECRET),
    )
    assert answer.status_code == 400
    assert introspect(http, ISSUER, tokens["access_token"]).json()["active"] is True


def refresh(http: httpx.Client, token: str) -> httpx.Response:
    return http.post(
        f"{ISSUER}/protocol/openid-connect/token",
        data={"grant_type": "refresh_token", "refresh_token": token},
        auth=basic(CONSO, CONSO_SECRET),
    )


def test_refresh_rotates_and_a_replayed_refresh_token_revokes_the_session(
    http: TestClient,
) -> None:
    first = tokens_for(http, ISSUER)
    answer = refresh(http, first["refresh_token"])
    assert answer.status_code == 200, answer.text
    second = answer.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    claims = verify_jwt(http, ISSUER, second["id_token"], CONSO, acr="eidas1")
    assert claims["sub"] == verify_jwt(http, ISSUER, first["id_token"], CONSO)["sub"]
    assert introspect(http, ISSUER, second["access_token"]).json()["active"] is True
    # the first refresh token was used: presenting it again is a theft signal
    replay = refresh(http, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert introspect(http, ISSUER, second["access_token"]).json() == {"active": False}
    assert refresh(http, second["refresh_token"]).status_code == 400


def test_refresh_token_of_another_client_is_refused(http: TestClient) -> None:
    tokens = tokens_for(http, ISSUER)
    answer = http.post(
        f"{ISSUER}/protocol/openid-connect/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=basic(VIEWER, VIEWER_SECRET),
    )
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    assert refresh(http, tokens["refresh_token"]).status_code == 200  # still the owner's


def test_logout_with_id_token_hint_ends_the_session(http: TestClient) -> None:
    tokens = tokens_for(http, ISSUER)
    answer = http.get(
        "/auth/realms/esante-wallet/protocol/openid-connect/logout",
        params={
            "id_token_hint": tokens["id_token"],
            "post_logout_redirect_uri": CALLBACK,
            "state": "bye",
        },
    )
    assert answer.status_code == 302
    assert answer.headers["location"] == f"{CALLBACK}?state=bye"
    assert introspect(http, ISSUER, tokens["access_token"]).json() == {"active": False}
    # an unregistered address: logged out, but no redirection
    page = http.get(
        "/auth/realms/esante-wallet/protocol/openid-connect/logout",
        params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "https://x.test"},
    )
    assert page.status_code == 200 and "location" not in page.headers


# -- refusals at the authorization endpoint


def authorize(http: httpx.Client, request: AuthRequest) -> httpx.Response:
    return http.get(auth_url(ISSUER, request))


def error_redirect(answer: httpx.Response, request: AuthRequest) -> dict[str, str]:
    params = callback(answer, request)
    assert params["state"] == request.state
    assert params["iss"] == ISSUER
    assert "code" not in params
    return params


def test_pkce_missing_is_refused(http: TestClient) -> None:
    request = AuthRequest(method=None)
    params = error_redirect(authorize(http, request), request)
    assert params["error"] == "invalid_request"
    assert "code_challenge" in params["error_description"]


def test_pkce_plain_is_refused(http: TestClient) -> None:
    request = AuthRequest(method="plain")
    params = error_redirect(authorize(http, request), request)
    assert params["error"] == "invalid_request"
    assert "S256" in params["error_description"]


def test_pkce_challenge_without_method_is_refused(http: TestClient) -> None:
    request = AuthRequest(method=None, extra={"code_challenge": s256("x" * 43)})
    assert error_redirect(authorize(http, request), request)["error"] == "invalid_request"


def test_scope_without_openid_is_refused(http: TestClient) -> None:
    request = AuthRequest(scope="scope_all")
    assert error_redirect(authorize(http, request), request)["error"] == "invalid_scope"


def test_prompt_none_answers_login_required(http: TestClient) -> None:
    request = AuthRequest(extra={"prompt": "none"})
    assert error_redirect(authorize(http, request), request)["error"] == "login_required"


def test_other_response_types_are_refused(http: TestClient) -> None:
    request = AuthRequest(extra={"response_type": "token"})
    assert error_redirect(authorize(http, request), request)["error"] in {
        "unsupported_response_type",
        "unauthorized_client",
    }


def test_redirect_uri_mismatch_shows_a_page_and_never_redirects(http: TestClient) -> None:
    for uri in ("https://evil.test/cb", CALLBACK + "/", CALLBACK + "?x=1", CALLBACK.upper()):
        request = AuthRequest(redirect_uri=uri)
        answer = authorize(http, request)
        assert answer.status_code == 400, uri
        assert "location" not in answer.headers
        assert answer.headers["content-type"].startswith("text/html")
        assert "adresse de retour" in answer.text
    # the registered URI of another client is no better
    answer = authorize(http, AuthRequest(redirect_uri=VIEWER_CALLBACK))
    assert answer.status_code == 400 and "location" not in answer.headers


def test_missing_redirect_uri_shows_a_page(http: TestClient) -> None:
    request = AuthRequest()
    params = request.params()
    del params["redirect_uri"]
    answer = http.get(f"{ISSUER}/protocol/openid-connect/auth?{urlencode(params)}")
    assert answer.status_code == 400 and "location" not in answer.headers


def test_unknown_client_shows_a_page(http: TestClient) -> None:
    answer = authorize(http, AuthRequest(client_id="nobody"))
    assert answer.status_code == 400 and "location" not in answer.headers
    assert "pas enregistrée" in answer.text
    # a back-channel client has no redirect URI: no code flow for it
    answer = authorize(http, AuthRequest(client_id=SOURCE))
    assert answer.status_code == 400 and "location" not in answer.headers


def test_repeated_authorization_parameter_is_refused(http: TestClient) -> None:
    request = AuthRequest()
    for name in ("state", "nonce", "code_challenge", "redirect_uri"):
        query = urlencode(request.params()) + f"&{name}=again"
        answer = http.get(f"{ISSUER}/protocol/openid-connect/auth?{query}")
        assert answer.status_code == 400 and "location" not in answer.headers
        assert f"parameter &#x27;{name}&#x27; is repeated" in answer.text


def test_request_objects_are_not_supported(http: TestClient) -> None:
    answer = authorize(http, AuthRequest(extra={"request": "eyJhbGciOiJub25lIn0.e30."}))
    assert answer.status_code == 400 and "request_not_supported" in answer.text


def test_replayed_nonce_is_refused(http: TestClient) -> None:
    first = AuthRequest()
    code_for(http, ISSUER, first, "radiologue")
    again = AuthRequest(nonce=first.nonce)
    assert error_redirect(authorize(http, again), again)["error"] == "invalid_request"


# -- the login form


def test_a_get_never_logs_in(http: TestClient) -> None:
    request = AuthRequest(extra={"person": "radiologue", "ticket": "x"})
    answer = authorize(http, request)
    assert answer.status_code == 200 and "location" not in answer.headers
    assert "<form" in answer.text


def test_login_post_needs_the_ticket_of_this_browser_and_request(
    http: TestClient, make_browser: Callable[[], TestClient]
) -> None:
    request = AuthRequest()
    page = http.get(auth_url(ISSUER, request))
    action, ticket, _ = login_form(page.text)
    assert BROWSER_COOKIE in page.headers["set-cookie"]
    assert "httponly" in page.headers["set-cookie"].lower()

    # no ticket
    assert http.post(action, data={"person": "radiologue"}).status_code == 400
    # a forged one
    assert http.post(action, data={"person": "radiologue", "ticket": "x" * 43}).status_code == 400
    # the right ticket from another browser (a cross-site POST carries no cookie of ours)
    stranger = make_browser()
    answer = stranger.post(action, data={"person": "radiologue", "ticket": ticket})
    assert answer.status_code == 400 and "location" not in answer.headers
    # a ticket is used once, whatever the outcome: the stranger burnt it
    assert http.post(action, data={"person": "radiologue", "ticket": ticket}).status_code == 400

    # a fresh ticket is bound to its authorization request
    page = http.get(auth_url(ISSUER, request))
    action, ticket, _ = login_form(page.text)
    other = AuthRequest()
    other_action = urlsplit(auth_url(ISSUER, other))
    answer = http.post(
        f"{other_action.path}?{other_action.query}", data={"person": "radiologue", "ticket": ticket}
    )
    assert answer.status_code == 400


def test_login_as_an_unknown_person_is_refused(http: TestClient) -> None:
    request = AuthRequest()
    action, ticket, _ = login_form(http.get(auth_url(ISSUER, request)).text)
    answer = http.post(action, data={"person": "nobody", "ticket": ticket})
    assert answer.status_code == 400 and "location" not in answer.headers


def test_two_tabs_of_one_browser_both_log_in(http: TestClient) -> None:
    first, second = AuthRequest(), AuthRequest()
    action1, ticket1, _ = login_form(http.get(auth_url(ISSUER, first)).text)
    action2, ticket2, _ = login_form(http.get(auth_url(ISSUER, second)).text)
    callback(http.post(action2, data={"person": "secretaire", "ticket": ticket2}), second)
    callback(http.post(action1, data={"person": "radiologue", "ticket": ticket1}), first)


# -- refusals at the token endpoint


def test_wrong_code_verifier_is_refused(http: TestClient) -> None:
    request = AuthRequest()
    code = code_for(http, ISSUER, request, "radiologue")
    answer = exchange(http, ISSUER, code, request, verifier=secrets.token_urlsafe(48))
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"
    # and the code is spent
    assert exchange(http, ISSUER, code, request).json()["error"] == "invalid_grant"


def test_missing_code_verifier_is_refused(http: TestClient) -> None:
    request = AuthRequest()
    code = code_for(http, ISSUER, request, "radiologue")
    answer = exchange(http, ISSUER, code, request, verifier="")
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_request"


def test_reused_code_is_refused_and_revokes_its_tokens(http: TestClient) -> None:
    request = AuthRequest()
    code = code_for(http, ISSUER, request, "radiologue")
    first = exchange(http, ISSUER, code, request)
    assert first.status_code == 200
    again = exchange(http, ISSUER, code, request)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    tokens = first.json()
    assert introspect(http, ISSUER, tokens["access_token"]).json() == {"active": False}
    assert refresh(http, tokens["refresh_token"]).status_code == 400


def test_code_of_another_client_is_refused(http: TestClient) -> None:
    request = AuthRequest()
    code = code_for(http, ISSUER, request, "radiologue")
    answer = exchange(http, ISSUER, code, request, client_id=VIEWER, secret=VIEWER_SECRET)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_code_with_another_redirect_uri_is_refused(http: TestClient) -> None:
    request = AuthRequest()
    code = code_for(http, ISSUER, request, "radiologue")
    answer = exchange(http, ISSUER, code, request, redirect_uri=OTHER_CALLBACK)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_expired_code_is_refused(http: TestClient, clock: Clock) -> None:
    request = AuthRequest()
    code = code_for(http, ISSUER, request, "radiologue")
    clock.offset = 61
    answer = exchange(http, ISSUER, code, request)
    assert answer.status_code == 400 and answer.json()["error"] == "invalid_grant"


def test_code_just_before_expiry_is_accepted(http: TestClient, clock: Clock) -> None:
    request = AuthRequest()
    code = code_for(http, ISSUER, request, "radiologue")
    clock.offset = 55
    assert exchange(http, ISSUER, code, request).status_code == 200


def test_wrong_client_secret_is_refused(http: TestClient) -> None:
    request = AuthRequest()
    code = code_for(http, ISSUER, request, "radiologue")
    answer = exchange(http, ISSUER, code, request, secret="wrong")
    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"
    assert answer.headers["www-authenticate"].startswith("Basic")
    # unauthenticated: no client_id in Basic nor in the form
    anonymous = http.post(
        f"{ISSUER}/protocol/openid-connect/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK},
    )
    assert anonymous.status_code == 401


def test_token_endpoint_refuses_malformed_requests(http: TestClient) -> None:
    url = f"{ISSUER}/protocol/openid-connect/token"
    auth = basic(CONSO, CONSO_SECRET)
    as_json = http.post(url, json={"grant_type": "authorization_code"}, auth=auth)
    assert as_json.status_code == 400 and as_json.json()["error"] == "invalid_request"
    repeated = http.post(
        url,
        content="grant_type=authorization_code&code=a&code=b",
        headers={"content-type": "application/x-www-form-urlencoded"},
        auth=auth,
    )
    assert repeated.status_code == 400 and "repeated" in repeated.json()["error_description"]
    password = http.post(url, data={"grant_type": "password", "username": "x"}, auth=auth)
    assert password.status_code == 400 and password.json()["error"] == "unsupported_grant_type"
    huge = http.post(url, data={"grant_type": "x" * 70_000}, auth=auth)
    assert huge.status_code == 400


def test_plain_http_issuer_off_loopback_works_for_containers(
    key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "")  # restored after the test
    issuer = "http://idp:8300/auth/realms/esante-wallet"
    provider = OidcProvider(issuer, clients(), BUILT_IN, key)
    with TestClient(provider.app(), base_url="http://idp:8300", follow_redirects=False) as http:
        request = AuthRequest()
        answer = exchange(http, issuer, code_for(http, issuer, request, "radiologue"), request)
        assert answer.status_code == 200, answer.text
        verify_jwt(http, issuer, answer.json()["id_token"], CONSO, nonce=request.nonce)
