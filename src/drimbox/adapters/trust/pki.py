"""A development certificate authority shaped like the health PKI (IGC-Santé).

Never for production: keys are unencrypted files. A CA folder holds ``root.crt`` (the trust
anchor to configure), ``root.key``, ``ca.crt`` / ``ca.key`` (the intermediate that issues,
like "AC IGC-SANTE ELEMENTAIRE ORGANISATIONS") and ``chain.pem`` (intermediate + root).
``issue`` writes ``NAME.crt``, ``NAME.key``, ``NAME-chain.pem`` (leaf + intermediate, what a
TLS peer sends) and ``NAME-fullchain.pem`` (+ root, what the ANS whitelist signature carries).

End-entity subjects follow IGC-Santé ORG certificates: C, O = organisation, OU = structure
identifier (FINESS/SIRET-like), CN = host or name.
"""

from __future__ import annotations

import ipaddress
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from lxml import etree

from drimbox.adapters.trust.whitelist import WhitelistDomain, build_whitelist, host_of
from drimbox.adapters.trust.xmldsig import SigningKey, sign_enveloped

KeyType = Literal["ec", "rsa"]
CertKind = Literal["server", "client", "signing"]

ROOT_NAME = "drimbox dev IGC-Santé-like root"
INTERMEDIATE_NAME = "drimbox dev AC ELEMENTAIRE ORGANISATIONS"
DEV_ORGANISATION = "drimbox dev"
DEV_STRUCTURE_ID = "399999999900001"  # synthetic, SIRET-like (type 3): no real structure
_CA_OU = "IGC-SANTE DEV"


@dataclass(frozen=True)
class DevCA:
    root: x509.Certificate
    intermediate: x509.Certificate
    intermediate_key: SigningKey

    @classmethod
    def load(cls, folder: Path) -> DevCA:
        root = x509.load_pem_x509_certificate((folder / "root.crt").read_bytes())
        intermediate = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
        return cls(root, intermediate, load_key(folder / "ca.key"))


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    key: SigningKey
    chain: tuple[x509.Certificate, ...]  # leaf, intermediate, root

    @classmethod
    def load(cls, folder: Path, name: str) -> Issued:
        chain = x509.load_pem_x509_certificates((folder / f"{name}-fullchain.pem").read_bytes())
        return cls(chain[0], load_key(folder / f"{name}.key"), tuple(chain))


def new_key(key_type: KeyType = "ec") -> SigningKey:
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


# -- the CA ----------------------------------------------------------------------------------


def create_ca(key_type: KeyType = "ec", now: datetime | None = None) -> tuple[DevCA, SigningKey]:
    """A root and an intermediate in memory; returns the CA and the root key."""
    now = now or datetime.now(UTC)
    root_key, ca_key = new_key(key_type), new_key(key_type)
    root_name = _ca_name(ROOT_NAME)
    root = _ca_certificate(root_name, root_key, root_name, root_key, now, 3650, None)
    intermediate = _ca_certificate(
        _ca_name(INTERMEDIATE_NAME), ca_key, root_name, root_key, now, 2920, 0
    )
    return DevCA(root, intermediate, ca_key), root_key


def init_ca(out: Path, key_type: KeyType = "ec", now: datetime | None = None) -> DevCA:
    """Create a CA folder; refuses to overwrite an existing CA."""
    if (out / "root.key").exists() or (out / "ca.key").exists():
        raise FileExistsError(f"{out} already holds a CA")
    ca, root_key = create_ca(key_type, now)
    out.mkdir(parents=True, exist_ok=True)
    write_key(out / "root.key", root_key)
    write_key(out / "ca.key", ca.intermediate_key)
    _write_certs(out / "root.crt", [ca.root])
    _write_certs(out / "ca.crt", [ca.intermediate])
    _write_certs(out / "chain.pem", [ca.intermediate, ca.root])
    return ca


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, DEV_ORGANISATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _CA_OU),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_certificate(
    subject: x509.Name,
    key: SigningKey,
    issuer: x509.Name,
    issuer_key: SigningKey,
    now: datetime,
    days: int,
    path_length: int | None,
) -> x509.Certificate:
    usage = _key_usage(key_cert_sign=True, crl_sign=True)
    builder = (
        _base(subject, key, issuer, issuer_key, now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(usage, critical=True)
    )
    return builder.sign(issuer_key, hashes.SHA256())


# -- end entities ----------------------------------------------------------------------------


def issue(
    ca: DevCA,
    name: str,
    dns: Sequence[str] = (),
    kind: CertKind = "server",
    *,
    organisation: str = DEV_ORGANISATION,
    structure_id: str = DEV_STRUCTURE_ID,
    key_type: KeyType = "ec",
    not_before: datetime | None = None,
    days: int = 397,
) -> Issued:
    """An end-entity certificate for a box (``server``/``client``) or a document signer."""
    if kind in ("server", "client") and not dns:
        raise ValueError("TLS certificates need at least one DNS name")
    key = new_key(key_type)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, structure_id),
            x509.NameAttribute(NameOID.COMMON_NAME, dns[0] if dns else name),
        ]
    )
    now = not_before or datetime.now(UTC)
    builder = (
        _base(subject, key, ca.intermediate.subject, ca.intermediate_key, now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_end_entity_usage(kind, key), critical=True)
        .add_extension(x509.ExtendedKeyUsage(_EKUS[kind]), critical=False)
    )
    if dns:
        names = [_alt_name(d) for d in dns]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    certificate = builder.sign(ca.intermediate_key, hashes.SHA256())
    return Issued(certificate, key, (certificate, ca.intermediate, ca.root))


def _alt_name(name: str) -> x509.GeneralName:
    """An IP literal goes in an IP SAN: TLS clients never match an address against DNS names."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


# a box is both TLS server and client of its peers, as IGC-Santé server certificates allow;
# the signer mirrors the ANS list signer (e-mail protection, non-repudiation)
_EKUS: dict[CertKind, list[x509.ObjectIdentifier]] = {
    "server": [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    "client": [ExtendedKeyUsageOID.CLIENT_AUTH],
    "signing": [ExtendedKeyUsageOID.EMAIL_PROTECTION],
}


def _end_entity_usage(kind: CertKind, key: SigningKey) -> x509.KeyUsage:
    if kind == "signing":
        return _key_usage(digital_signature=True, content_commitment=True)
    # RSA key exchange (TLS 1.2 without ECDHE) needs key encipherment; EC keys never do
    return _key_usage(digital_signature=True, key_encipherment=isinstance(key, rsa.RSAPrivateKey))


def write_issued(issued: Issued, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_key(out / f"{name}.key", issued.key)
    _write_certs(out / f"{name}.crt", [issued.certificate])
    _write_certs(out / f"{name}-chain.pem", issued.chain[:2])
    _write_certs(out / f"{name}-fullchain.pem", issued.chain)


# -- signed whitelists -----------------------------------------------------------------------


def sign_whitelist(
    domains: Sequence[str | WhitelistDomain],
    signer: Issued,
    generated_at: datetime | None = None,
) -> bytes:
    """A whitelist in the ANS format, signed like the ANS one, from hosts or full domains."""
    generated_at = generated_at or datetime.now(UTC)
    entries = [
        d if isinstance(d, WhitelistDomain) else _dev_domain(str(i), d)
        for i, d in enumerate(domains, 1)
    ]
    root = build_whitelist(entries, generated_at)
    sign_enveloped(root, signer.key, signer.chain, generated_at, uuid.uuid4().hex)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", standalone=False)


def _dev_domain(identifier: str, host: str) -> WhitelistDomain:
    normalized = host_of(host)
    if normalized is None:
        raise ValueError(f"not a host name: {host!r}")
    dn = f"CN={normalized},OU={DEV_STRUCTURE_ID},O={DEV_ORGANISATION},C=FR"
    return WhitelistDomain(identifier, normalized, None, DEV_ORGANISATION, dn)


# -- helpers ---------------------------------------------------------------------------------


def _base(
    subject: x509.Name,
    key: SigningKey,
    issuer: x509.Name,
    issuer_key: SigningKey,
    now: datetime,
    days: int,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )


def _key_usage(**enabled: bool) -> x509.KeyUsage:
    flags = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    flags.update(enabled)
    return x509.KeyUsage(**flags)


def write_key(path: Path, key: SigningKey) -> None:
    """PEM (PKCS#8, unencrypted) readable by the owner only."""
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), 0o600)  # the file may have existed with a wider mode
        handle.write(data)


def _write_certs(path: Path, certificates: Sequence[x509.Certificate]) -> None:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates))


def load_key(path: Path) -> SigningKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: only RSA and EC keys are supported")
    return key
