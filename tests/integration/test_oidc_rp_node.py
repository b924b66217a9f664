"""The relying party against oidc-provider (Node.js, OpenID Certified), the whole login.

``tests/oidc_node/server.mjs`` runs the provider on a free loopback port with one client
(client_secret_basic, PKCE required, acr eidas1, ID tokens in RS256 or ES256); a small
HTTP server of this test is the client's redirect URI. httpx plays the browser: the
authorization request, the provider's login form and consent form, the redirect back. Then
``OidcClient.finish`` must log the right subject in, and ``refresh`` must work.

Needs ``node`` and ``tests/oidc_node/node_modules`` (``npm ci --prefix tests/oidc_node``, done
by scripts/test): skipped without them, except under CI where it fails.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx
import pytest

from drimbox.adapters.oidc.relying_party import Login, OidcClient, OidcError
from tests.peers import free_port, stop, wait_port

NODE_DIR = Path(__file__).resolve().parents[1] / "oidc_node"
NODE = shutil.which("node")
CLIENT_ID = "drimbox-box"
CLIENT_SECRET = "s3cret with spaces & symbols"  # exercises the form-urlencoded Basic header
SUBJECT = "899700218896"


def _require_node() -> str:
    missing = None
    if NODE is None:
        missing = "node is not installed (apt-get install nodejs npm)"
    elif not (NODE_DIR / "node_modules" / "oidc-provider").is_dir():
        missing = "tests/oidc_node/node_modules is missing (npm ci --prefix tests/oidc_node)"
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"oidc-provider interoperability test cannot run under CI: {missing}")
        pytest.skip(missing)
    assert NODE is not None
    return NODE


class Callback:
    """The client's redirect URI: a loopback server recording each query it receives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}/oidc/callback"
        self.received: list[dict[str, str]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/oidc/callback":
                    self.send_error(404)
                    return
                received.append(dict(parse_qsl(parts.query)))
                body = b"back at the box"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclasses.dataclass
class NodeProvider:
    issuer: str
    callback: Callback
    alg: str


@pytest.fixture(scope="module", params=["RS256", "ES256"])
def node_provider(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeProvider]:
    node = _require_node()
    alg = str(request.param)
    callback = Callback()
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "OIDC_PORT": str(port),
        "OIDC_ISSUER": issuer,
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_REDIRECT_URI": callback.uri,
        "OIDC_ID_TOKEN_ALG": alg,
        "OIDC_ACR": "eidas1",
    }
    log = tmp_path_factory.mktemp("oidc_node") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [node, str(NODE_DIR / "server.mjs")],
            cwd=NODE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        try:
            wait_port(port, timeout=30, proc=proc)
        except (RuntimeError, TimeoutError) as error:
            raise RuntimeError(f"{error}\n{log.read_text()}") from error
        yield NodeProvider(issuer, callback, alg)
    finally:
        stop(proc)
        callback.close()


@pytest.fixture
def client(node_provider: NodeProvider) -> Iterator[OidcClient]:
    with OidcClient(
        node_provider.issuer, CLIENT_ID, CLIENT_SECRET, node_provider.callback.uri
    ) as c:
        yield c


def _form_action(page: httpx.Response, name: str) -> str:
    match = re.search(rf'action="(/interaction/[\w-]+/{name})"', page.text)
    assert match, f"no {name} form in {page.url}: {page.text[:500]}"
    return urljoin(str(page.url), match.group(1))


def browse(provider: NodeProvider, url: str, *, approve: bool = True) -> dict[str, str]:
    """What a browser does between ``begin()`` and the callback: the query it lands with."""
    before = len(provider.callback.received)
    with httpx.Client(follow_redirects=True, timeout=10) as browser:
        page = browser.get(url)
        assert page.status_code == 200, page.text
        if not approve:
            page = browser.post(_form_action(page, "abort"))
        else:
            page = browser.post(_form_action(page, "login"), data={"login": SUBJECT})
            assert page.status_code == 200, page.text
            page = browser.post(_form_action(page, "confirm"))
        assert page.status_code == 200, page.text
        assert str(page.url).startswith(provider.callback.uri)
    assert len(provider.callback.received) == before + 1
    return provider.callback.received[-1]


def test_login(client: OidcClient, node_provider: NodeProvider) -> None:
    request = client.begin()
    params = browse(node_provider, request.url)
    assert params["iss"] == node_provider.issuer  # RFC 9207, checked by finish too
    login = client.finish(request, params)
    assert isinstance(login, Login)
    assert login.subject == SUBJECT
    assert login.claims["acr"] == "eidas1"
    assert login.claims["iss"] == node_provider.issuer
    assert login.claims["given_name"] == "KIT"  # from UserInfo
    assert login.claims["SubjectNameID"] == SUBJECT
    assert login.access_token_expires_at is not None
    assert client.jwks.fetches == 1


def test_id_token_signed_with_the_configured_alg(
    client: OidcClient, node_provider: NodeProvider
) -> None:
    request = client.begin()
    login = client.finish(request, browse(node_provider, request.url))
    head = login.id_token.split(".")[0]
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    assert header["alg"] == node_provider.alg
    assert header["kid"] in ("rsa-1", "ec-1")


def test_refresh(client: OidcClient, node_provider: NodeProvider) -> None:
    request = client.begin()
    login = client.finish(request, browse(node_provider, request.url))
    assert login.refresh_token is not None
    refreshed = client.refresh(login)
    assert refreshed.subject == SUBJECT
    assert refreshed.access_token != login.access_token


def test_the_user_cancels(client: OidcClient, node_provider: NodeProvider) -> None:
    request = client.begin()
    params = browse(node_provider, request.url, approve=False)
    with pytest.raises(OidcError) as info:
        client.finish(request, params)
    assert info.value.reason == "provider_error"
    assert info.value.provider_error == "access_denied"


def test_pkce_is_enforced_by_the_provider(client: OidcClient, node_provider: NodeProvider) -> None:
    request = client.begin()
    params = browse(node_provider, request.url)
    wrong = dataclasses.replace(request, code_verifier="x" * 64)
    with pytest.raises(OidcError) as info:
        client.finish(wrong, params)
    assert info.value.reason == "provider_error"
    assert info.value.provider_error == "invalid_grant"


def test_a_callback_for_another_login_is_refused(
    client: OidcClient, node_provider: NodeProvider
) -> None:
    first = client.begin()
    params = browse(node_provider, first.url)
    second = client.begin()
    with pytest.raises(OidcError) as info:
        client.finish(second, params)
    assert info.value.reason == "state_mismatch"
    # the right request still completes: the refusal consumed nothing
    assert client.finish(first, params).subject == SUBJECT
