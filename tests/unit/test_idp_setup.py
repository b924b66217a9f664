"""``drimbox idp`` setup: the signing key file, the settings and the command line."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from drimbox.adapters.oidc.provider_keys import KEY_FILE, KeyFileError, SigningKey
from drimbox.entrypoints.cli import build_parser, main
from drimbox.entrypoints.idp import create_idp_app, create_provider
from drimbox.settings import ConfigError, IdpClient, IdpSettings, load_settings


def test_key_is_made_once_private_and_keeps_its_kid(tmp_path: Path) -> None:
    data_dir = tmp_path / "idp"
    first = SigningKey.load_or_create(data_dir)
    path = data_dir / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = SigningKey.load_or_create(data_dir)
    assert again.kid == first.kid
    assert again.jwks() == first.jwks()
    assert [p.name for p in data_dir.iterdir()] == [KEY_FILE]  # no temporary left


def test_key_file_readable_by_others_is_tightened(tmp_path: Path) -> None:
    SigningKey.load_or_create(tmp_path)
    path = tmp_path / KEY_FILE
    path.chmod(0o644)
    SigningKey.load_or_create(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_unusable_key_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_text("not a key")
    (tmp_path / KEY_FILE).chmod(0o600)
    with pytest.raises(KeyFileError, match="not an RSA private key"):
        SigningKey.load_or_create(tmp_path)
    public = SigningKey.generate().public.as_pem(private=False)
    (tmp_path / KEY_FILE).write_bytes(public)
    with pytest.raises(KeyFileError, match="public key"):
        SigningKey.load_or_create(tmp_path)


def test_settings_defaults() -> None:
    settings = IdpSettings()
    assert (settings.host, settings.port) == ("127.0.0.1", 8300)
    assert settings.issuer_url == "http://127.0.0.1:8300/auth/realms/esante-wallet"
    assert settings.access_token_lifetime == 600
    assert settings.clients == [] and settings.people_file is None
    custom = IdpSettings(issuer="https://idp.test/auth/realms/esante-wallet/")
    assert custom.issuer_url == "https://idp.test/auth/realms/esante-wallet"


def test_settings_from_toml_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "drimbox.toml"
    config.write_text(
        "[idp]\nport = 8301\n"
        '[[idp.clients]]\nclient_id = "drimbox-conso"\nclient_secret = "s"\n'
        'redirect_uris = ["http://127.0.0.1:8200/cb"]\n'
    )
    environ = {
        "DRIMBOX_IDP__ACCESS_TOKEN_LIFETIME": "120",
        "DRIMBOX_IDP__PEOPLE_FILE": "/etc/people.json",
    }
    settings = load_settings(IdpSettings, "idp", config, environ=environ)
    assert settings.port == 8301 and settings.access_token_lifetime == 120
    assert settings.people_file == Path("/etc/people.json")
    (client,) = settings.clients
    assert client.client_id == "drimbox-conso"
    assert client.redirect_uris == ["http://127.0.0.1:8200/cb"]
    clients = json.dumps([{"client_id": "box", "client_secret": "x"}])
    from_env = load_settings(IdpSettings, "idp", environ={"DRIMBOX_IDP__CLIENTS": clients})
    assert from_env.clients[0].redirect_uris == []


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"port": 0}, "idp.port"),
        ({"access_token_lifetime": 1}, "idp.access_token_lifetime"),
        ({"issuer": "ftp://x"}, "idp.issuer"),
        ({"clients": [{"client_id": "a", "client_secret": ""}]}, "idp.clients.0.client_secret"),
        (
            {"clients": [{"client_id": "a", "client_secret": "s", "redirect_uris": ["/cb"]}]},
            "idp.clients.0.redirect_uris",
        ),
        (
            {
                "clients": [
                    {
                        "client_id": "a",
                        "client_secret": "s",
                        "redirect_uris": ["https://x.test/cb#frag"],
                    }
                ]
            },
            "idp.clients.0.redirect_uris",
        ),
        (
            {"clients": [{"client_id": "a", "client_secret": "s"}] * 2},
            "idp.clients",
        ),
    ],
)
def test_bad_settings_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(IdpSettings, "idp", overrides=data, environ={})


def test_create_idp_app_serves_the_configured_issuer(tmp_path: Path) -> None:
    settings = IdpSettings(
        issuer="http://127.0.0.1:9999/realms/demo",
        data_dir=tmp_path,
        clients=[IdpClient(client_id="c", client_secret="s", redirect_uris=["http://a.test/cb"])],
    )
    with TestClient(create_idp_app(settings), base_url="http://127.0.0.1:9999") as client:
        doc = client.get("/realms/demo/.well-known/openid-configuration").json()
        assert doc["issuer"] == "http://127.0.0.1:9999/realms/demo"
        assert (
            doc["token_endpoint"]
            == "http://127.0.0.1:9999/realms/demo/protocol/openid-connect/token"
        )
        assert client.get("/health").json() == {"status": "ok"}
    assert create_provider(settings).key.kid == SigningKey.load_or_create(tmp_path).kid


def test_bad_people_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "people.json").write_text("{}")
    settings = IdpSettings(data_dir=tmp_path, people_file=tmp_path / "people.json")
    with pytest.raises(ConfigError, match="no professional and no patient"):
        create_provider(settings)


def test_cli_idp_arguments() -> None:
    args = build_parser().parse_args(
        ["idp", "--host", "0.0.0.0", "--port", "8301", "--issuer", "http://idp:8301/x",
         "--data-dir", "/tmp/idp", "--log-level", "DEBUG"]
    )  # fmt: skip
    assert args.command == "idp"
    assert (args.host, args.port, args.issuer) == ("0.0.0.0", 8301, "http://idp:8301/x")
    assert args.data_dir == Path("/tmp/idp") and args.log_level == "DEBUG"


def test_cli_idp_bad_configuration_exits_2_with_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DRIMBOX_IDP__ACCESS_TOKEN_LIFETIME", "forever")
    assert main(["idp", "--data-dir", str(tmp_path)]) == 2
    assert "idp.access_token_lifetime" in capsys.readouterr().err
