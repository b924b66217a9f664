"""Certificate path validation against configured trust anchors.

Trust comes only from the anchors (a PEM bundle obtained out of band, in production the
IGC-Santé roots); certificates carried by a message are at most intermediates. Path building,
signatures, validity periods and CA constraints are cryptography's RFC 5280 verifier's work.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.x509 import verification

from drimbox.adapters.trust.errors import TrustError

_E = TypeVar("_E", bound=x509.ExtensionType)


class CertificateError(TrustError):
    """A certificate is expired, misused, or does not chain to a trust anchor."""


def load_trust_anchors(path: Path) -> list[x509.Certificate]:
    try:
        anchors = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateError(f"cannot read trust anchors {path}: {exc}", "untrusted") from exc
    return anchors


def describe(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string()


def check_validity(certificate: x509.Certificate, at: datetime, role: str) -> None:
    """Refuse a certificate outside its validity period, saying which bound was crossed."""
    at = _aware(at)
    if at > certificate.not_valid_after_utc:
        raise CertificateError(
            f"{role} certificate {describe(certificate)!r} expired on "
            f"{certificate.not_valid_after_utc.isoformat()} (validation time {at.isoformat()})",
            "expired",
        )
    if at < certificate.not_valid_before_utc:
        raise CertificateError(
            f"{role} certificate {describe(certificate)!r} is not valid before "
            f"{certificate.not_valid_before_utc.isoformat()} (validation time {at.isoformat()})",
            "not-yet-valid",
        )


def check_signing_usage(certificate: x509.Certificate) -> None:
    """A document signer is an end entity whose key usage allows signatures."""
    extensions = certificate.extensions
    constraints = _extension(extensions, x509.BasicConstraints)
    if constraints is not None and constraints.ca:
        raise CertificateError("the signer certificate is a CA certificate", "usage")
    usage = _extension(extensions, x509.KeyUsage)
    if usage is not None and not (usage.digital_signature or usage.content_commitment):
        raise CertificateError("the signer certificate's key usage forbids signatures", "usage")


def _extension(extensions: x509.Extensions, kind: type[_E]) -> _E | None:
    try:
        return extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def verify_chain(
    leaf: x509.Certificate,
    untrusted: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    at: datetime,
) -> list[x509.Certificate]:
    """Build and check a path from ``leaf`` to one of ``anchors``; return it, leaf first.

    The end entity's extensions are left to the caller (document signers have no TLS EKU);
    CA certificates get the full RFC 5280 / Web PKI profile.
    """
    if not anchors:
        raise CertificateError("no trust anchor configured", "untrusted")
    policy = (
        verification.PolicyBuilder()
        .store(verification.Store(list(anchors)))
        .time(_aware(at))
        .extension_policies(
            ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
            ee_policy=verification.ExtensionPolicy.permit_all(),
        )
    )
    intermediates = [c for c in untrusted if c != leaf]
    try:
        verified = policy.build_client_verifier().verify(leaf, intermediates)
    except verification.VerificationError as exc:
        raise CertificateError(
            f"certificate {describe(leaf)!r} does not chain to a trust anchor: {exc}", "untrusted"
        ) from exc
    return list(verified.chain)


def verify_tls_chain(
    leaf: x509.Certificate,
    untrusted: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    at: datetime,
    server_name: str | None = None,
) -> list[x509.Certificate]:
    """Check a TLS server (``server_name`` given) or client certificate with full EKU rules."""
    builder = verification.PolicyBuilder().store(verification.Store(list(anchors))).time(_aware(at))
    intermediates = [c for c in untrusted if c != leaf]
    try:
        if server_name is not None:
            server = builder.build_server_verifier(x509.DNSName(server_name))
            return list(server.verify(leaf, intermediates))
        return list(builder.build_client_verifier().verify(leaf, intermediates).chain)
    except verification.VerificationError as exc:
        raise CertificateError(f"{describe(leaf)!r}: {exc}", "untrusted") from exc


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)
