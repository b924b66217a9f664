"""TokenIntrospector against the fake PSC served by uvicorn, over real HTTP."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import pytest

from drimbox.adapters.trust.introspection import (
    IntrospectionUnavailable,
    TokenIntrospector,
    TokenRejected,
)
from tests.fake_psc import INTROSPECT_PATH, FakePsc, running_fake_psc
from tests.peers import free_port


@pytest.fixture(scope="module")
def psc() -> Iterator[FakePsc]:
    with running_fake_psc(client_id="drimbox-source", client_secret="s3cret") as fake:
        yield fake


@pytest.fixture
def introspector(psc: FakePsc) -> Iterator[TokenIntrospector]:
    with TokenIntrospector(
        psc.introspection_url, "drimbox-source", "s3cret", timeout=5, required_acr="eidas1"
    ) as i:
        yield i


def test_url_is_keycloaks(psc: FakePsc) -> None:
    assert psc.introspection_url.endswith(
        "/auth/realms/esante-wallet/protocol/openid-connect/token/introspect"
    )
    assert INTROSPECT_PATH in psc.introspection_url


def test_issued_token_verifies(psc: FakePsc, introspector: TokenIntrospector) -> None:
    token = psc.issue("899700218896")
    calls = psc.calls
    principal = introspector.verify(token)
    assert principal.subject_name_id == "899700218896"
    assert principal.acr == "eidas1"
    assert "openid" in principal.scope
    assert principal.claims["iss"] == psc.issuer
    introspector.verify(token)
    assert psc.calls == calls + 1  # the second check came from the cache


def test_revoked_token_is_rejected(psc: FakePsc, introspector: TokenIntrospector) -> None:
    token = psc.issue()
    psc.revoke(token)
    with pytest.raises(TokenRejected, match="not active"):
        introspector.verify(token)


def test_expired_and_unknown_tokens_are_rejected(
    psc: FakePsc, introspector: TokenIntrospector
) -> None:
    with pytest.raises(TokenRejected):
        introspector.verify(psc.issue(lifetime=-60))
    with pytest.raises(TokenRejected):
        introspector.verify("not-a-psc-token")


def test_wrong_client_secret_is_unavailable(psc: FakePsc) -> None:
    with (
        TokenIntrospector(psc.introspection_url, "drimbox-source", "wrong") as introspector,
        pytest.raises(IntrospectionUnavailable, match="client credentials"),
    ):
        introspector.verify(psc.issue())


def test_nothing_listening_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}{INTROSPECT_PATH}"
    with (
        TokenIntrospector(url, "drimbox", "secret", timeout=2) as introspector,
        pytest.raises(IntrospectionUnavailable),
    ):
        introspector.verify("some-token")


def test_fake_speaks_the_protocol(psc: FakePsc) -> None:
    """What the fake does with requests our client would never send."""
    basic = "Basic " + base64.b64encode(b"drimbox-source:s3cret").decode()
    url = psc.introspection_url
    with httpx.Client(timeout=5) as http:
        assert http.post(url, data={"token": "x"}).status_code == 401
        refused = http.post(url, data={"token": "x"}, auth=("drimbox-source", "nope"))
        assert refused.status_code == 401
        assert refused.json()["error"] == "invalid_client"
        assert refused.headers["www-authenticate"].startswith("Basic")
        missing = http.post(url, data={}, headers={"authorization": basic})
        assert missing.status_code == 400
        assert missing.json()["error"] == "invalid_request"
        as_json = http.post(url, json={"token": "x"}, headers={"authorization": basic})
        assert as_json.status_code == 400
        assert http.get(url, headers={"authorization": basic}).status_code == 405
        token = psc.issue("810001234567")
        live = http.post(url, data={"token": token}, headers={"authorization": basic})
        assert live.status_code == 200
        assert live.headers["cache-control"] == "no-store"
        body = live.json()
        assert body["active"] is True
        assert body["SubjectNameID"] == "810001234567"
        assert body["exp"] > body["iat"]
        dead = http.post(url, data={"token": "unknown"}, headers={"authorization": basic})
        assert dead.json() == {"active": False}
