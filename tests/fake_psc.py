"""A fake Pro Santé Connect (Keycloak realm ``esante-wallet``) for tests: it issues opaque
access tokens and answers OAuth 2.0 Token Introspection (RFC 7662) about them.

The protocol is the real one: ``POST .../protocol/openid-connect/token/introspect`` with
``application/x-www-form-urlencoded`` ``token=...`` and the caller's client credentials in
HTTP Basic (RFC 6749 §2.3.1, form-urlencoded parts, as Keycloak reads them). Bad client
credentials get 401 ``invalid_client``; a missing token 400 ``invalid_request``; an unknown,
expired or revoked token ``{"active": false}``; a live one its full claim set.

``FakePsc.answer`` is the protocol core, usable without a server (unit tests wrap it in an
``httpx.MockTransport``); ``running_fake_psc`` serves it with uvicorn on a free port.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, unquote_plus

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.peers import free_port

REALM = "esante-wallet"
REALM_PATH = f"/auth/realms/{REALM}"
INTROSPECT_PATH = f"{REALM_PATH}/protocol/openid-connect/token/introspect"
FORM = "application/x-www-form-urlencoded"


class FakePsc:
    """Tokens issued by this fake and the introspection answers about them; thread-safe."""

    def __init__(
        self,
        client_id: str = "drimbox",
        client_secret: str = "secret",
        *,
        clock: Callable[[], float] = time.time,
        issuer: str = f"http://127.0.0.1{REALM_PATH}",
    ) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.clock = clock
        self.issuer = issuer
        self.base_url: str | None = None  # set while served by running_fake_psc
        self.calls = 0  # introspection requests received, whatever their outcome
        self._tokens: dict[str, dict[str, Any]] = {}
        self._revoked: set[str] = set()
        self._lock = threading.Lock()
        self.app = Starlette(routes=[Route(INTROSPECT_PATH, self._endpoint, methods=["POST"])])

    @property
    def introspection_url(self) -> str:
        if self.base_url is None:
            raise RuntimeError("the fake PSC is not served (use running_fake_psc)")
        return f"{self.base_url}{INTROSPECT_PATH}"

    def issue(
        self,
        subject_name_id: str = "899700218896",
        *,
        lifetime: float = 300,
        acr: str = "eidas1",
        scope: str = "openid scope_all",
        client: str = "drimbox-conso",
    ) -> str:
        """A new opaque access token for professional ``subject_name_id``, issued to OIDC
        client ``client``, valid ``lifetime`` seconds from now (negative: already expired)."""
        token = secrets.token_urlsafe(32)
        now = int(self.clock())
        claims: dict[str, Any] = {
            "exp": now + int(lifetime),
            "iat": now,
            "auth_time": now,
            "jti": str(uuid.uuid4()),
            "iss": self.issuer,
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, f"psc:{subject_name_id}")),
            "typ": "Bearer",
            "azp": client,
            "session_state": str(uuid.uuid4()),
            "acr": acr,
            "scope": scope,
            "SubjectNameID": subject_name_id,
            "preferred_username": subject_name_id,
            "client_id": client,
            "username": subject_name_id,
            "token_type": "Bearer",
        }
        with self._lock:
            self._tokens[token] = claims
        return token

    def revoke(self, token: str) -> None:
        with self._lock:
            self._revoked.add(token)

    def answer(
        self, authorization: str | None, content_type: str | None, body: bytes
    ) -> tuple[int, dict[str, Any]]:
        """Status and JSON body of the introspection endpoint for one request."""
        with self._lock:
            self.calls += 1
        if not self._authenticated(authorization):
            return 401, {
                "error": "invalid_client",
                "error_description": "Invalid client or Invalid client credentials",
            }
        if (content_type or "").split(";")[0].strip().lower() != FORM:
            return 400, {"error": "invalid_request", "error_description": "Invalid content type"}
        try:
            form = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            return 400, {"error": "invalid_request", "error_description": "Malformed form"}
        tokens = form.get("token", [])
        if len(tokens) != 1 or not tokens[0]:
            return 400, {"error": "invalid_request", "error_description": "Token not provided."}
        token = tokens[0]
        with self._lock:
            claims = self._tokens.get(token)
            revoked = token in self._revoked
        if claims is None or revoked or claims["exp"] <= self.clock():
            return 200, {"active": False}
        return 200, {**claims, "active": True}

    def _authenticated(self, authorization: str | None) -> bool:
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        client_id, sep, secret = decoded.partition(":")
        if not sep:
            return False
        return hmac.compare_digest(
            unquote_plus(client_id).encode(), self.client_id.encode()
        ) & hmac.compare_digest(unquote_plus(secret).encode(), self.client_secret.encode())

    async def _endpoint(self, request: Request) -> JSONResponse:
        status, payload = self.answer(
            request.headers.get("authorization"),
            request.headers.get("content-type"),
            await request.body(),
        )
        headers = {"cache-control": "no-store"}
        if status == 401:
            headers["www-authenticate"] = f'Basic realm="{REALM}"'
        return JSONResponse(payload, status_code=status, headers=headers)

    def mock_transport(self) -> httpx.MockTransport:
        """The endpoint without a server, for ``httpx.Client(transport=...)``."""

        def handle(request: httpx.Request) -> httpx.Response:
            if request.method != "POST" or request.url.path != INTROSPECT_PATH:
                return httpx.Response(404 if request.method == "POST" else 405)
            status, payload = self.answer(
                request.headers.get("authorization"),
                request.headers.get("content-type"),
                request.read(),
            )
            return httpx.Response(status, json=payload, headers={"cache-control": "no-store"})

        return httpx.MockTransport(handle)


@contextlib.contextmanager
def running_fake_psc(
    client_id: str = "drimbox", client_secret: str = "secret"
) -> Iterator[FakePsc]:
    """A :class:`FakePsc` served by uvicorn in a background thread on a free loopback port."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    psc = FakePsc(client_id, client_secret, issuer=f"{base}{REALM_PATH}")
    server = uvicorn.Server(
        uvicorn.Config(
            psc.app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
    )
    thread = threading.Thread(target=server.run, name="fake-psc", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError(f"the fake PSC did not start on port {port}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the fake PSC did not start on port {port} within 30 s")
            time.sleep(0.02)
        psc.base_url = base
        yield psc
    finally:
        server.should_exit = True
        thread.join(10)
