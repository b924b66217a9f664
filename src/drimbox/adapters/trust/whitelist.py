"""The national DRIM-M whitelist ("liste blanche"): verify, parse, hold, match hosts.

Format of the ANS list (DRIM-M_DATA, "Liste blanche TEST"): ``ListeBlancheDRIM-M``
(``versionFormat``) with ``DateDeGeneration`` and ``ListeDomaines/Domaine`` entries carrying
``Identifiant``, ``db`` (box address), ``vi`` (viewer address, may be empty), ``Denomination``,
``DNCertificatOperateur``, ``SupportContact``, ``DateMAJ``; then an enveloped XAdES signature
by an IGC-Santé certificate. Nothing is read from the list before its signature and the
signer's chain to the configured anchors have been checked.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID
from lxml import etree

from drimbox.adapters.trust.chain import (
    check_signing_usage,
    check_validity,
    describe,
    verify_chain,
)
from drimbox.adapters.trust.errors import TrustError
from drimbox.adapters.trust.xmldsig import parse_untrusted_xml, verify_enveloped

log = logging.getLogger(__name__)

NS = "https://github.com/ansforge/DRIM-M_DATA"
ROOT_TAG = f"{{{NS}}}ListeBlancheDRIM-M"
FORMAT_VERSION = "1.0.0"
EndpointKind = Literal["box", "viewer"]

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class WhitelistError(TrustError):
    """The list is refused; ``reason`` says which check failed."""


@dataclass(frozen=True)
class WhitelistDomain:
    """One ``Domaine``: a referenced system (a DRIMbox and, optionally, its viewer)."""

    identifier: str
    box: str  # normalized host of ``db``
    viewer: str | None  # normalized host of ``vi``
    name: str  # Denomination: the operator
    operator_dn: str  # DN of the operator's TLS certificate (CN;OU;O;ST;C)
    support_contact: str = ""
    updated_at: datetime | None = None


@dataclass(frozen=True)
class WhitelistEntry:
    host: str
    kind: EndpointKind
    domain: WhitelistDomain


@dataclass(frozen=True)
class ExpectedSigner:
    """Subject fields the signer must have: any IGC-Santé certificate chains to the root,
    so production should pin the ANS list signer (CN ``Liste Blanche DRIM-M``, OU = ANS id)."""

    common_name: str | None = None
    organizational_unit: str | None = None


@dataclass(frozen=True)
class Whitelist:
    version: str
    generated_at: datetime | None
    domains: tuple[WhitelistDomain, ...]
    signer_subject: str
    signing_time: datetime | None

    @property
    def entries(self) -> tuple[WhitelistEntry, ...]:
        out: list[WhitelistEntry] = []
        for domain in self.domains:
            out.append(WhitelistEntry(domain.box, "box", domain))
            if domain.viewer:
                out.append(WhitelistEntry(domain.viewer, "viewer", domain))
        return tuple(out)

    def hosts(self, kind: EndpointKind | None = None) -> frozenset[str]:
        return frozenset(e.host for e in self.entries if kind is None or e.kind == kind)


# -- verification ----------------------------------------------------------------------------


def verify_whitelist(
    data: bytes,
    anchors: Sequence[x509.Certificate],
    at: datetime | None = None,
    expected_signer: ExpectedSigner | None = None,
) -> Whitelist:
    """Verify signature and signer chain at ``at`` (default now), then parse the list."""
    at = at or datetime.now(UTC)
    try:
        root = parse_untrusted_xml(data)
        if root.tag != ROOT_TAG:
            raise WhitelistError(f"not a DRIM-M whitelist (root element {root.tag!r})")
        signature = verify_enveloped(root)
        check_validity(signature.signer, at, "signer")
        check_signing_usage(signature.signer)
        verify_chain(signature.signer, signature.certificates, anchors, at)
        _check_signer(signature.signer, expected_signer)
        return _parse(root, describe(signature.signer), signature.signing_time)
    except WhitelistError:
        raise
    except TrustError as exc:
        raise WhitelistError(str(exc), exc.reason) from exc
    except ValueError as exc:  # cryptography parses certificate fields lazily
        raise WhitelistError(f"malformed certificate in the signature: {exc}") from exc


def _check_signer(signer: x509.Certificate, expected: ExpectedSigner | None) -> None:
    if expected is None:
        return
    wanted = [
        (NameOID.COMMON_NAME, expected.common_name),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, expected.organizational_unit),
    ]
    for oid, value in wanted:
        if value is not None and value not in _attribute_values(signer.subject, oid):
            raise WhitelistError(f"unexpected list signer {describe(signer)!r}", "signer")


def _attribute_values(name: x509.Name, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in name.get_attributes_for_oid(oid)]


# -- parsing (after verification only) -------------------------------------------------------


def _parse(root: etree._Element, signer: str, signing_time: datetime | None) -> Whitelist:
    version = root.get("versionFormat", "")
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise WhitelistError(f"unsupported whitelist format version {version!r}", "unsupported")
    lists = root.findall(f"{{{NS}}}ListeDomaines")
    if len(lists) != 1:
        raise WhitelistError("expected exactly one ListeDomaines")
    domains = tuple(_domain(element) for element in lists[0].findall(f"{{{NS}}}Domaine"))
    generated = _datetime(_child_text(root, "DateDeGeneration"), "DateDeGeneration")
    return Whitelist(version, generated, domains, signer, signing_time)


def _domain(element: etree._Element) -> WhitelistDomain:
    identifier = _child_text(element, "Identifiant")
    box = host_of(_child_text(element, "db"))
    if box is None:
        raise WhitelistError(f"domain {identifier!r}: missing or invalid db address")
    viewer_text = _child_text(element, "vi")
    viewer = host_of(viewer_text) if viewer_text else None
    if viewer_text and viewer is None:
        raise WhitelistError(f"domain {identifier!r}: invalid vi address {viewer_text!r}")
    return WhitelistDomain(
        identifier=identifier,
        box=box,
        viewer=viewer,
        name=_child_text(element, "Denomination"),
        operator_dn=_child_text(element, "DNCertificatOperateur"),
        support_contact=_child_text(element, "SupportContact"),
        updated_at=_datetime(_child_text(element, "DateMAJ"), "DateMAJ"),
    )


def _child_text(parent: etree._Element, name: str) -> str:
    found = parent.findall(f"{{{NS}}}{name}")
    if len(found) > 1 or (found and len(found[0])):
        raise WhitelistError(f"more than one {name}, or {name} with child elements")
    return (found[0].text or "").strip() if found else ""


def _datetime(text: str, field: str) -> datetime | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise WhitelistError(f"invalid {field} {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- host matching ---------------------------------------------------------------------------


def host_of(url_or_host: str) -> str | None:
    """The normalized host of a URL or ``host[:port]``, or None when it is not a clean one.

    Lower case, no trailing dot, IPv6 compressed, port dropped. Userinfo, backslashes,
    whitespace and non-ASCII names are refused: parsers disagree on them (SSRF tricks).
    """
    text = url_or_host.strip()
    if not text or "@" in text or "\\" in text or not text.isascii():
        return None
    if any(c.isspace() or not c.isprintable() for c in text):
        return None
    literal = _ip(text)
    if literal is not None:
        return literal
    try:
        host = urlsplit(text if "://" in text else f"//{text}").hostname
    except ValueError:
        return None
    if not host:
        return None
    host = host.rstrip(".")
    return _ip(host) or (host if _is_hostname(host) else None)


def _ip(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _is_hostname(host: str) -> bool:
    labels = host.split(".")
    # a numeric last label is not a DNS name; resolvers may read "127.1" as an address
    if len(host) > 253 or labels[-1].isdigit():
        return False
    return all(_LABEL.match(label) for label in labels)


class WhitelistHolder:
    """The last valid list; a refresh replaces it only when the new one verifies."""

    def __init__(
        self,
        anchors: Sequence[x509.Certificate],
        expected_signer: ExpectedSigner | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._anchors = list(anchors)
        self._expected_signer = expected_signer
        self._clock = clock
        self._lock = threading.Lock()
        self._current: Whitelist | None = None
        self._hosts: dict[EndpointKind | None, frozenset[str]] = {}
        self.last_error: WhitelistError | None = None

    @property
    def current(self) -> Whitelist | None:
        return self._current

    def refresh(self, source: bytes | Path) -> bool:
        """Verify ``source`` (bytes or a file); True when it became the current list."""
        try:
            data = source.read_bytes() if isinstance(source, Path) else source
            new = verify_whitelist(data, self._anchors, self._clock(), self._expected_signer)
            with self._lock:
                self._install(new)
        except OSError as exc:
            return self._refuse(WhitelistError(f"cannot read whitelist: {exc}", "malformed"))
        except WhitelistError as exc:
            return self._refuse(exc)
        self.last_error = None
        log.info(
            "whitelist updated: %d domains, signed by %s", len(new.domains), new.signer_subject
        )
        return True

    def _install(self, new: Whitelist) -> None:
        old = self._current
        if old and old.generated_at and new.generated_at and new.generated_at < old.generated_at:
            # a validly signed but older list must not roll back removals
            raise WhitelistError(
                f"list generated {new.generated_at.isoformat()} is older than the current one",
                "rollback",
            )
        self._current = new
        self._hosts = {kind: new.hosts(kind) for kind in (None, "box", "viewer")}

    def _refuse(self, error: WhitelistError) -> bool:
        self.last_error = error
        log.warning("whitelist refused (%s), keeping the previous one: %s", error.reason, error)
        return False

    def is_allowed(self, url_or_host: str, kind: EndpointKind | None = None) -> bool:
        """Exact host match, case-insensitive, port ignored; False while no list is loaded."""
        host = host_of(url_or_host)
        return host is not None and host in self._hosts.get(kind, frozenset())


# -- building (development PKI, tests, demo; signing is pki.sign_whitelist) -----------------


def build_whitelist(domains: Sequence[WhitelistDomain], generated_at: datetime) -> etree._Element:
    """An unsigned list in the ANS format."""
    nsmap: Any = {None: NS}  # default namespace; lxml-stubs only type prefixed maps
    root = etree.Element(ROOT_TAG, nsmap=nsmap, versionFormat=FORMAT_VERSION)
    etree.SubElement(root, f"{{{NS}}}DateDeGeneration").text = _iso(generated_at)
    listing = etree.SubElement(root, f"{{{NS}}}ListeDomaines")
    for domain in domains:
        element = etree.SubElement(listing, f"{{{NS}}}Domaine")
        fields = [
            ("Identifiant", domain.identifier),
            ("db", domain.box),
            ("vi", domain.viewer or ""),
            ("Denomination", domain.name),
            ("DNCertificatOperateur", domain.operator_dn),
            ("SupportContact", domain.support_contact),
            ("DateMAJ", _iso(domain.updated_at or generated_at)),
        ]
        for name, value in fields:
            etree.SubElement(element, f"{{{NS}}}{name}").text = value
    etree.indent(root, space="    ")
    return root


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
