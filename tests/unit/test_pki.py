"""The development PKI: CA layout, end-entity profiles, chains checked by openssl and cryptography."""

from __future__ import annotations

import shutil
import stat
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from drimbox.adapters.trust import pki
from drimbox.adapters.trust.chain import CertificateError, verify_tls_chain
from drimbox.adapters.trust.whitelist import verify_whitelist
from drimbox.entrypoints.cli import main

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl absent")


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ca")
    pki.init_ca(out)
    return out


@pytest.fixture(scope="module")
def ca(ca_dir: Path) -> pki.DevCA:
    return pki.DevCA.load(ca_dir)


def _openssl_verify(ca_dir: Path, leaf: Path, purpose: str) -> subprocess.CompletedProcess[str]:
    command = ["openssl", "verify", "-CAfile", str(ca_dir / "root.crt")]
    command += ["-untrusted", str(ca_dir / "ca.crt"), "-purpose", purpose, str(leaf)]
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=30)


def test_ca_layout_and_key_modes(ca_dir: Path, ca: pki.DevCA) -> None:
    names = {p.name for p in ca_dir.iterdir()}
    assert names == {"root.crt", "root.key", "ca.crt", "ca.key", "chain.pem"}
    for key in ("root.key", "ca.key"):
        assert stat.S_IMODE((ca_dir / key).stat().st_mode) == 0o600
    assert ca.root.subject == ca.root.issuer
    assert ca.root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == pki.ROOT_NAME
    constraints = ca.intermediate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    with pytest.raises(FileExistsError):
        pki.init_ca(ca_dir)


def test_server_certificate_profile(ca: pki.DevCA) -> None:
    issued = pki.issue(ca, "box", ["box.example.fr", "alt.example.fr"], structure_id="123456789")
    cert = issued.certificate
    subject = cert.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "box.example.fr"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "123456789"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["box.example.fr", "alt.example.fr"]
    ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in ekus
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert issued.chain == (cert, ca.intermediate, ca.root)


def test_tls_chains_verify_with_cryptography(ca: pki.DevCA) -> None:
    now = datetime.now(UTC)
    server = pki.issue(ca, "box", ["box.example.fr"], key_type="rsa")
    chain = verify_tls_chain(
        server.certificate, server.chain[1:2], [ca.root], now, "box.example.fr"
    )
    assert chain[-1] == ca.root
    client = pki.issue(ca, "client", ["client.example.fr"], kind="client")
    verify_tls_chain(client.certificate, [ca.intermediate], [ca.root], now)
    with pytest.raises(CertificateError):  # wrong name
        verify_tls_chain(server.certificate, [ca.intermediate], [ca.root], now, "evil.example.fr")
    with pytest.raises(CertificateError):  # a client certificate cannot serve
        verify_tls_chain(client.certificate, [ca.intermediate], [ca.root], now, "client.example.fr")
    other = pki.create_ca()[0]
    with pytest.raises(CertificateError):  # another CA's root
        verify_tls_chain(server.certificate, [ca.intermediate], [other.root], now, "box.example.fr")


@needs_openssl
@pytest.mark.parametrize(
    ("kind", "purpose"),
    [("server", "sslserver"), ("client", "sslclient"), ("signing", "smimesign")],
)
def test_issued_chains_pass_openssl_verify(
    ca_dir: Path, ca: pki.DevCA, tmp_path: Path, kind: pki.CertKind, purpose: str
) -> None:
    issued = pki.issue(ca, "leaf", ["leaf.example.fr"], kind=kind)
    pki.write_issued(issued, tmp_path, "leaf")
    assert stat.S_IMODE((tmp_path / "leaf.key").stat().st_mode) == 0o600
    result = _openssl_verify(ca_dir, tmp_path / "leaf.crt", purpose)
    assert result.returncode == 0, result.stderr
    other = tmp_path / "other"
    pki.init_ca(other)
    assert _openssl_verify(other, tmp_path / "leaf.crt", purpose).returncode != 0


def test_tls_certificates_need_a_name(ca: pki.DevCA) -> None:
    with pytest.raises(ValueError, match="DNS"):
        pki.issue(ca, "box", [], kind="server")


def test_signed_whitelist_from_saved_signer(ca_dir: Path, ca: pki.DevCA, tmp_path: Path) -> None:
    pki.write_issued(pki.issue(ca, "signer", kind="signing"), tmp_path, "signer")
    signer = pki.Issued.load(tmp_path, "signer")
    signed = pki.sign_whitelist(["box-a.example.fr", "box-b.example.fr"], signer)
    assert signed.startswith(b"<?xml version='1.0' encoding='UTF-8' standalone='no'?>")
    whitelist = verify_whitelist(
        signed, x509.load_pem_x509_certificates((ca_dir / "root.crt").read_bytes())
    )
    assert whitelist.hosts("box") == {"box-a.example.fr", "box-b.example.fr"}


def test_cli_pki_and_whitelist_sign(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir, out = tmp_path / "ca", tmp_path / "out"
    assert main(["pki", "init", "--out", str(ca_dir)]) == 0
    assert main(["pki", "init", "--out", str(ca_dir)]) == 2  # never overwrite a CA
    issue = ["pki", "issue", "--ca", str(ca_dir), "--out", str(out)]
    assert main([*issue, "--name", "box", "--dns", "box.example.fr", "--dns", "b.example.fr"]) == 0
    assert main([*issue, "--name", "signer", "--kind", "signing", "--key-type", "rsa"]) == 0
    assert main([*issue, "--name", "../escape", "--dns", "x.example.fr"]) == 2
    assert main([*issue, "--name", "nodns"]) == 2  # a server certificate needs --dns
    assert {p.name for p in out.iterdir()} >= {"box.crt", "box.key", "box-chain.pem", "signer.key"}
    assert not (tmp_path / "escape.key").exists()

    listing = tmp_path / "list.xml"
    sign = ["whitelist", "sign", "--signer", str(out), "--name", "signer", "--out", str(listing)]
    assert main([*sign, "--host", "box.example.fr", "--host", "other.example.fr"]) == 0
    capsys.readouterr()
    verify = ["whitelist", "verify", str(listing), "--trust-anchors", str(ca_dir / "root.crt")]
    assert main(verify) == 0
    assert capsys.readouterr().out.splitlines() == ["box.example.fr", "other.example.fr"]
    listing.write_bytes(listing.read_bytes().replace(b"other", b"0ther", 1))
    assert main(verify) == 2
    assert "refused (tampered)" in capsys.readouterr().err
