"""PSC token introspection (RFC 7662): claim checks, error mapping, cache, header parsing."""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from drimbox.adapters.trust.introspection import (
    IntrospectionUnavailable,
    Principal,
    TokenIntrospector,
    TokenRejected,
    bearer_token,
)
from drimbox.domain.errors import DrimboxError, PeerUnavailable
from tests.fake_psc import INTROSPECT_PATH, FakePsc

URL = f"https://psc.test{INTROSPECT_PATH}"
NOW = 1_900_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def psc(clock: Clock) -> FakePsc:
    return FakePsc("drimbox", "s3cret", clock=clock)


def make(transport: httpx.BaseTransport, clock: Clock, **kwargs: Any) -> TokenIntrospector:
    return TokenIntrospector(
        URL, "drimbox", "s3cret", clock=clock, client=httpx.Client(transport=transport), **kwargs
    )


@pytest.fixture
def introspector(psc: FakePsc, clock: Clock) -> Iterator[TokenIntrospector]:
    with make(psc.mock_transport(), clock) as i:
        yield i


class Scripted:
    """A transport answering ``respond(request)`` and counting calls."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response]) -> None:
        self.calls = 0
        self.requests: list[httpx.Request] = []
        self._respond = respond

    def transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            self.calls += 1
            request.read()
            self.requests.append(request)
            return self._respond(request)

        return httpx.MockTransport(handle)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "active": True,
        "exp": int(NOW) + 300,
        "iat": int(NOW),
        "sub": "f6b2c1d0-0000-4000-8000-000000000001",
        "typ": "Bearer",
        "azp": "drimbox-conso",
        "acr": "eidas1",
        "scope": "openid scope_all",
        "SubjectNameID": "899700218896",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def answering(payload: object, status: int = 200) -> Scripted:
    return Scripted(lambda _request: httpx.Response(status, json=payload))


# -- bearer_token


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc.def-ghi_", "abc.def-ghi_"), ("bearer x", "x"), ("BEARER a/b+c==", "a/b+c==")],
)
def test_bearer_token_parses(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", [None, "", "   "])
def test_bearer_token_missing(header: str | None) -> None:
    with pytest.raises(TokenRejected, match="missing bearer token") as info:
        bearer_token(header)
    assert info.value.error is None
    assert info.value.www_authenticate() == 'Bearer realm="drimbox"'


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Bearer a b", "Bearer  a", " Bearer a", "Bearer\ta", "Basic YTpi",
     "Bearertoken", "Token abc"],
)  # fmt: skip
def test_bearer_token_malformed(header: str) -> None:
    with pytest.raises(TokenRejected, match="malformed Authorization header") as info:
        bearer_token(header)
    assert info.value.error == "invalid_request"


def test_errors_fit_the_tree() -> None:
    assert issubclass(TokenRejected, DrimboxError)
    assert issubclass(IntrospectionUnavailable, PeerUnavailable)
    exc = TokenRejected("token expired")
    assert str(exc) == exc.reason == "token expired"
    assert exc.www_authenticate("box") == (
        'Bearer realm="box", error="invalid_token", error_description="token expired"'
    )


# -- the request


def test_request_follows_rfc7662(clock: Clock) -> None:
    server = answering(claims())
    with make(server.transport(), clock) as introspector:
        introspector.verify("tok.en-1")
    (request,) = server.requests
    assert request.method == "POST"
    assert str(request.url) == URL
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.content.decode()) == {
        "token": ["tok.en-1"],
        "token_type_hint": ["access_token"],
    }
    scheme, encoded = request.headers["authorization"].split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded) == b"drimbox:s3cret"


def test_client_credentials_are_form_urlencoded(clock: Clock) -> None:
    """RFC 6749 §2.3.1, what Keycloak decodes: ``a:b c`` is sent as ``a%3Ab+c``."""
    server = answering(claims())
    transport = server.transport()
    introspector = TokenIntrospector(
        URL, "box:1", "p@ss word", clock=clock, client=httpx.Client(transport=transport)
    )
    introspector.verify("t")
    encoded = server.requests[0].headers["authorization"].split(" ")[1]
    assert base64.b64decode(encoded) == b"box%3A1:p%40ss+word"


# -- verdicts


def test_active_token_gives_the_principal(psc: FakePsc, introspector: TokenIntrospector) -> None:
    token = psc.issue("810002345678", scope="openid scope_all", lifetime=120)
    principal = introspector.verify(token)
    assert isinstance(principal, Principal)
    assert principal.subject_name_id == "810002345678"
    assert principal.subject == principal.claims["sub"]
    assert principal.client_id == "drimbox-conso"
    assert principal.scope == frozenset({"openid", "scope_all"})
    assert principal.acr == "eidas1"
    assert principal.expires_at == NOW + 120
    assert principal.claims["active"] is True
    with pytest.raises(TypeError):
        principal.claims["sub"] = "someone else"  # type: ignore[index]


@pytest.mark.parametrize(
    "token", ["", "x" * (8 * 1024 + 1), "abc def", "abc\x00", "abc\n", "jeton-é", "a\u202eb"]
)
def test_bad_tokens_are_rejected_without_a_call(
    token: str, psc: FakePsc, introspector: TokenIntrospector
) -> None:
    with pytest.raises(TokenRejected):
        introspector.verify(token)
    assert psc.calls == 0


def test_token_of_8_kib_is_accepted(clock: Clock) -> None:
    server = answering(claims())
    with make(server.transport(), clock) as introspector:
        introspector.verify("x" * 8 * 1024)
    assert server.calls == 1


def test_unknown_revoked_and_expired_tokens_are_rejected(
    psc: FakePsc, clock: Clock, introspector: TokenIntrospector
) -> None:
    with pytest.raises(TokenRejected, match="not active"):
        introspector.verify("never-issued")
    revoked = psc.issue()
    psc.revoke(revoked)
    with pytest.raises(TokenRejected, match="not active"):
        introspector.verify(revoked)
    expired = psc.issue(lifetime=-1)
    with pytest.raises(TokenRejected, match="not active"):
        introspector.verify(expired)
    assert psc.calls == 3
    assert introspector.cache_size == 0


@pytest.mark.parametrize("active", [False, "true", 1, None, [True], {"value": True}])
def test_active_must_be_exactly_true(active: object, clock: Clock) -> None:
    payload = claims()
    payload["active"] = active
    with (
        make(answering(payload).transport(), clock) as introspector,
        pytest.raises(TokenRejected, match="not active"),
    ):
        introspector.verify("t")


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": None}, "no expiry"),
        ({"exp": "1900000300"}, "invalid exp"),
        ({"exp": True}, "invalid exp"),
        ({"exp": int(NOW) - 31}, "expired"),
        ({"exp": int(NOW) - 30}, "expired"),
        ({"iat": int(NOW) + 31}, "iat is in the future"),
        ({"iat": "yesterday"}, "invalid iat"),
        ({"nbf": int(NOW) + 60}, "nbf is in the future"),
        ({"sub": None}, "no subject"),
        ({"sub": ""}, "no subject"),
        ({"sub": 42}, "invalid sub"),
        ({"typ": "Refresh"}, "not an access token"),
        ({"typ": "ID"}, "not an access token"),
        ({"SubjectNameID": None}, "no professional identifier"),
        ({"scope": ["openid"]}, "invalid scope"),
    ],
)
def test_claims_are_checked(overrides: dict[str, Any], reason: str, clock: Clock) -> None:
    server = answering(claims(**overrides))
    with make(server.transport(), clock) as introspector:
        with pytest.raises(TokenRejected, match=reason):
            introspector.verify("t")
        assert introspector.cache_size == 0


def test_nan_expiry_is_rejected(clock: Clock) -> None:
    body = b'{"active": true, "exp": NaN, "sub": "s", "SubjectNameID": "1"}'
    server = Scripted(lambda _r: httpx.Response(200, content=body))
    with (
        make(server.transport(), clock) as introspector,
        pytest.raises(TokenRejected, match="invalid exp"),
    ):
        introspector.verify("t")


def test_clock_skew_is_tolerated(clock: Clock) -> None:
    payload = claims(exp=int(NOW) - 10, iat=int(NOW) + 20)
    with make(answering(payload).transport(), clock) as introspector:
        principal = introspector.verify("t")
        assert principal.expires_at == NOW - 10
        assert introspector.cache_size == 0  # already past exp: not worth caching


def test_optional_claims_have_defaults(clock: Clock) -> None:
    payload = claims(iat=None, typ=None, azp=None, acr=None, scope=None, SubjectNameID=None,
                     preferred_username="899700218896", client_id="viewer")  # fmt: skip
    with make(answering(payload).transport(), clock) as introspector:
        principal = introspector.verify("t")
    assert principal.subject_name_id == "899700218896"
    assert principal.client_id == "viewer"
    assert principal.scope == frozenset()
    assert principal.acr == ""


def test_required_acr(psc: FakePsc, clock: Clock) -> None:
    with make(psc.mock_transport(), clock, required_acr="eidas1") as introspector:
        assert introspector.verify(psc.issue(acr="eidas1")).acr == "eidas1"
        with pytest.raises(TokenRejected, match="insufficient authentication level") as info:
            introspector.verify(psc.issue(acr="eidas0"))
    assert info.value.error == "insufficient_user_authentication"


# -- the endpoint fails


@pytest.mark.parametrize("status", [401, 403])
def test_refused_client_credentials_are_our_problem(
    status: int, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    server = answering({"error": "invalid_client"}, status)
    with (
        make(server.transport(), clock) as introspector,
        caplog.at_level(logging.ERROR),
        pytest.raises(IntrospectionUnavailable, match=f"client credentials.*{status}"),
    ):
        introspector.verify("t")
    assert any(
        r.levelno == logging.ERROR and "client credentials" in r.getMessage()
        for r in caplog.records
    )


def test_wrong_secret_against_the_fake(psc: FakePsc, clock: Clock) -> None:
    introspector = TokenIntrospector(
        URL, "drimbox", "wrong", clock=clock, client=httpx.Client(transport=psc.mock_transport())
    )
    with pytest.raises(IntrospectionUnavailable):
        introspector.verify(psc.issue())


@pytest.mark.parametrize("status", [400, 404, 500, 502, 503, 504])
def test_other_statuses_are_unavailable(status: int, clock: Clock) -> None:
    with (
        make(answering({"active": True}, status).transport(), clock) as introspector,
        pytest.raises(IntrospectionUnavailable, match=str(status)),
    ):
        introspector.verify("t")


@pytest.mark.parametrize(
    "body", [b"<html>Bad gateway</html>", b"", b"\xff\xfe", b"[true]", b'"active"', b"null", b"1"]
)
def test_garbage_answers_are_unavailable(body: bytes, clock: Clock) -> None:
    server = Scripted(lambda _r: httpx.Response(200, content=body))
    with make(server.transport(), clock) as introspector, pytest.raises(IntrospectionUnavailable):
        introspector.verify("t")


def test_oversized_answer_is_unavailable(clock: Clock) -> None:
    body = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    server = Scripted(lambda _r: httpx.Response(200, content=body))
    with (
        make(server.transport(), clock) as introspector,
        pytest.raises(IntrospectionUnavailable, match="too large"),
    ):
        introspector.verify("t")


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectTimeout("slow"), httpx.ReadTimeout("slow"), httpx.ConnectError("refused"),
     httpx.RemoteProtocolError("reset")],
)  # fmt: skip
def test_network_failures_are_unavailable(error: httpx.HTTPError, clock: Clock) -> None:
    def fail(_request: httpx.Request) -> httpx.Response:
        raise error

    with make(httpx.MockTransport(fail), clock) as introspector:
        with pytest.raises(IntrospectionUnavailable) as info:
            introspector.verify("t")
        assert info.value.__cause__ is error
        assert introspector.cache_size == 0


def test_timeout_is_passed_on_each_request(clock: Clock) -> None:
    seen: list[object] = []

    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return httpx.Response(200, json=claims())

    with make(Scripted(respond).transport(), clock, timeout=1.5) as introspector:
        introspector.verify("t")
    assert seen == [{"connect": 1.5, "read": 1.5, "write": 1.5, "pool": 1.5}]


def test_token_never_in_logs(clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    token = "very-secret-token"
    with (
        make(answering(claims(exp=1)).transport(), clock) as introspector,
        caplog.at_level(logging.DEBUG),
        pytest.raises(TokenRejected),
    ):
        introspector.verify(token)
    assert caplog.records
    assert all(token not in r.getMessage() for r in caplog.records)


# -- cache


def test_positive_answer_is_cached(psc: FakePsc, introspector: TokenIntrospector) -> None:
    token = psc.issue()
    first = introspector.verify(token)
    assert introspector.verify(token) is first
    assert psc.calls == 1


def test_cache_lasts_cache_seconds(psc: FakePsc, clock: Clock) -> None:
    with make(psc.mock_transport(), clock, cache_seconds=30) as introspector:
        token = psc.issue(lifetime=300)
        introspector.verify(token)
        clock.now += 29
        introspector.verify(token)
        assert psc.calls == 1
        clock.now += 1
        introspector.verify(token)
        assert psc.calls == 2


def test_cache_never_outlives_the_token(psc: FakePsc, clock: Clock) -> None:
    with make(psc.mock_transport(), clock, cache_seconds=60) as introspector:
        token = psc.issue(lifetime=10)
        introspector.verify(token)
        clock.now += 9
        introspector.verify(token)
        assert psc.calls == 1
        clock.now += 1  # exp reached: ask again, and PSC says it is over
        with pytest.raises(TokenRejected, match="not active"):
            introspector.verify(token)
        assert psc.calls == 2
        assert introspector.cache_size == 0


def test_revocation_is_seen_once_the_cache_entry_lapses(psc: FakePsc, clock: Clock) -> None:
    with make(psc.mock_transport(), clock, cache_seconds=30) as introspector:
        token = psc.issue()
        introspector.verify(token)
        psc.revoke(token)
        introspector.verify(token)  # still cached: the documented revocation delay
        clock.now += 30
        with pytest.raises(TokenRejected):
            introspector.verify(token)


def test_negative_answers_and_failures_are_not_cached(clock: Clock) -> None:
    answers = iter([
        httpx.Response(200, json={"active": False}),
        httpx.Response(503),
        httpx.Response(200, json=claims()),
    ])  # fmt: skip
    server = Scripted(lambda _r: next(answers))
    with make(server.transport(), clock) as introspector:
        with pytest.raises(TokenRejected):
            introspector.verify("t")
        with pytest.raises(IntrospectionUnavailable):
            introspector.verify("t")
        introspector.verify("t")
        introspector.verify("t")
    assert server.calls == 3


def test_cache_can_be_disabled(psc: FakePsc, clock: Clock) -> None:
    with make(psc.mock_transport(), clock, cache_seconds=0) as introspector:
        token = psc.issue()
        introspector.verify(token)
        introspector.verify(token)
    assert psc.calls == 2


def test_cache_is_bounded_and_evicts_the_oldest(psc: FakePsc, clock: Clock) -> None:
    with make(psc.mock_transport(), clock, max_entries=3) as introspector:
        tokens = [psc.issue() for _ in range(10)]
        for token in tokens:
            introspector.verify(token)
            assert introspector.cache_size <= 3
        assert psc.calls == 10
        for token in tokens[-3:]:
            introspector.verify(token)
        assert psc.calls == 10
        introspector.verify(tokens[0])
        assert psc.calls == 11


def test_full_cache_drops_expired_entries_first(psc: FakePsc, clock: Clock) -> None:
    with make(psc.mock_transport(), clock, max_entries=3, cache_seconds=30) as introspector:
        short = psc.issue(lifetime=5)
        keep = [psc.issue(), psc.issue()]
        for token in (short, *keep):
            introspector.verify(token)
        clock.now += 6  # ``short`` has lapsed in the cache
        introspector.verify(psc.issue())
        assert introspector.cache_size == 3
        calls = psc.calls
        for token in keep:
            introspector.verify(token)
        assert psc.calls == calls


def test_cache_holds_no_raw_token(psc: FakePsc, introspector: TokenIntrospector) -> None:
    token = psc.issue()
    introspector.verify(token)
    keys = list(introspector._cache)
    assert len(keys) == 1
    assert token not in keys[0]
    assert len(keys[0]) == 64
    assert token not in repr(introspector._cache)


def test_concurrent_verifications_keep_the_cache_sound(psc: FakePsc, clock: Clock) -> None:
    with make(psc.mock_transport(), clock, max_entries=8) as introspector:
        tokens = [psc.issue(f"8997000{i:05d}") for i in range(20)]
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def work(offset: int) -> None:
            try:
                start.wait()
                for round_ in range(30):
                    index = (offset + round_) % len(tokens)
                    principal = introspector.verify(tokens[index])
                    assert principal.subject_name_id == f"8997000{index:05d}"
                    assert introspector.cache_size <= 8
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors
        assert introspector.cache_size <= 8
        for index, token in enumerate(tokens):
            assert introspector.verify(token).subject_name_id == f"8997000{index:05d}"
