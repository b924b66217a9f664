"""``drimbox idp`` on real ports: the code flow through a real HTTP stack, the box's RFC 7662
client against it, and the ``drimbox idp`` command (a second start keeps the key id)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from drimbox.adapters.trust.introspection import TokenIntrospector, TokenRejected
from drimbox.entrypoints.idp import create_idp_app
from drimbox.settings import IdpSettings
from tests.peers import free_port, serving, stop, wait_port
from tests.unit.test_idp_flow import (
    CALLBACK,
    CONSO,
    CONSO_SECRET,
    OTHER_CALLBACK,
    SOURCE,
    SOURCE_SECRET,
    AuthRequest,
    basic,
    callback,
    code_for,
    exchange,
    login,
    verify_jwt,
)


def _settings(port: int, data_dir: Path) -> IdpSettings:
    return IdpSettings.model_validate(
        {
            "port": port,
            "data_dir": data_dir,
            "clients": [
                {
                    "client_id": CONSO,
                    "client_secret": CONSO_SECRET,
                    "redirect_uris": [CALLBACK, OTHER_CALLBACK],
                },
                {"client_id": SOURCE, "client_secret": SOURCE_SECRET},
            ],
        }
    )


def test_code_flow_and_introspection_over_http(tmp_path: Path) -> None:
    port = free_port()
    settings = _settings(port, tmp_path / "idp")
    issuer = settings.issuer_url
    with serving(create_idp_app(settings), port=port), httpx.Client(timeout=10) as http:
        request = AuthRequest()
        params = callback(login(http, issuer, request, "radiologue-quais"), request)
        assert params["state"] == request.state
        answer = exchange(http, issuer, params["code"], request)
        assert answer.status_code == 200, answer.text
        tokens = answer.json()
        claims = verify_jwt(
            http, issuer, tokens["id_token"], CONSO, nonce=request.nonce, acr="eidas1"
        )
        assert claims["SubjectNameID"] == "899700200001"

        userinfo = http.get(
            f"{issuer}/protocol/openid-connect/userinfo",
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        ).json()
        assert userinfo["SubjectOrganization"] == "Cabinet de radiologie des Quais"

        url = f"{issuer}/protocol/openid-connect/token/introspect"
        with TokenIntrospector(url, SOURCE, SOURCE_SECRET, cache_seconds=0,
                               required_acr="eidas1") as introspector:  # fmt: skip
            principal = introspector.verify(tokens["access_token"])
            assert principal.subject_name_id == "899700200001"
            assert principal.client_id == CONSO
            revoked = http.post(
                f"{issuer}/protocol/openid-connect/revoke",
                data={"token": tokens["access_token"]},
                auth=basic(CONSO, CONSO_SECRET),
            )
            assert revoked.status_code == 200
            with pytest.raises(TokenRejected, match="not active"):
                introspector.verify(tokens["access_token"])

        # a code is good once
        again = AuthRequest()
        code = code_for(http, issuer, again, "generaliste")
        assert exchange(http, issuer, code, again).status_code == 200
        assert exchange(http, issuer, code, again).json()["error"] == "invalid_grant"


def test_idp_command_keeps_its_key_across_restarts(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "drimbox.toml"
    config.write_text(
        "[idp]\n"
        f'[[idp.clients]]\nclient_id = "{CONSO}"\nclient_secret = "s"\n'
        f'redirect_uris = ["{CALLBACK}"]\n'
    )
    data_dir = tmp_path / "idp"
    cmd = [
        sys.executable, "-m", "drimbox", "idp", "--config", str(config), "--port", str(port),
        "--data-dir", str(data_dir),
    ]  # fmt: skip
    base = f"http://127.0.0.1:{port}/auth/realms/esante-wallet"
    kids = []
    log = (tmp_path / "idp.log").open("ab")
    for _ in range(2):
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(port, proc=proc)
            doc = httpx.get(f"{base}/.well-known/openid-configuration", timeout=10).json()
            assert doc["issuer"] == base
            kids.append(httpx.get(doc["jwks_uri"], timeout=10).json()["keys"][0]["kid"])
            page = httpx.get(f"{base}/protocol/openid-connect/auth", timeout=10,
                             params=AuthRequest(client_id=CONSO, redirect_uri=CALLBACK).params())  # fmt: skip
            assert page.status_code == 200 and "LEROY" in page.text
        finally:
            stop(proc)
    assert kids[0] == kids[1]
    assert (data_dir / "idp-signing-key.pem").stat().st_mode & 0o077 == 0
