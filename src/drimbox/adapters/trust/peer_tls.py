"""Mutual TLS between boxes: who is calling, from the client certificate of the connection.

uvicorn verifies the chain against the configured trust anchors (``CERT_REQUIRED``) but does
not expose the peer certificate to the application, so its HTTP protocol is extended to put
it in the ASGI scope (``scope["extensions"]["tls"]``, the shape of the ASGI TLS extension).
The application then decides whether that box may call: its certificate's subject must be one
of the allowed boxes (the whitelist of DRIM-M boxes, or a configured list).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from drimbox.domain.errors import DrimboxError


class PeerRefused(DrimboxError):
    """The calling box has no client certificate, or one that is not allowed (HTTP 403)."""


class TlsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus the peer certificate in each request's scope."""

    _peer_der: bytes | None = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        self._peer_der = ssl_object.getpeercert(binary_form=True) if ssl_object else None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._peer_der is not None:
            self.scope["extensions"] = {  # type: ignore[typeddict-unknown-key]
                "tls": {"client_cert_chain": [self._peer_der], "tls_version": None}
            }


@dataclass(frozen=True, slots=True)
class Peer:
    common_name: str
    subject: str
    """RFC 4514 subject, e.g. ``CN=box-b.example,OU=...,O=...,C=FR``."""


def peer_of(scope: Mapping[str, Any]) -> Peer | None:
    chain = scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or []
    if not chain:
        return None
    cert = x509.load_der_x509_certificate(chain[0])
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Peer(str(names[0].value) if names else "", cert.subject.rfc4514_string())


class PeerPolicy:
    """Which boxes may call: by certificate common name (the box's host name, as the
    whitelist lists them). ``None`` = mTLS not configured here (development only)."""

    def __init__(
        self, allowed: Iterable[str] | None, listed: Callable[[str], bool] | None = None
    ) -> None:
        self.allowed = None if allowed is None else {a.lower() for a in allowed}
        self.listed = listed  # the signed whitelist's boxes

    def check(self, scope: Mapping[str, Any]) -> Peer | None:
        if self.allowed is None:
            return None
        peer = peer_of(scope)
        if peer is None:
            raise PeerRefused("a client certificate is required")
        name = peer.common_name.lower()
        if name not in self.allowed and not (self.listed is not None and self.listed(name)):
            raise PeerRefused(f"the box {peer.common_name[:100]} is not in the list of boxes")
        return peer


def server_context(cert: str, key: str, client_cas: str) -> ssl.SSLContext:
    """TLS 1.2+ server context that demands a client certificate chaining to ``client_cas``
    (for clients: httpx takes ``verify=`` and ``cert=`` directly)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_cas)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(cert, key)
    return context


def client_context(cert: str | None, key: str | None, trust_anchors: str | None) -> ssl.SSLContext:
    """What a box presents to, and checks of, the boxes it calls (httpx ``verify=``)."""
    context = ssl.create_default_context(cafile=trust_anchors)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context
