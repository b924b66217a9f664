"""Enveloped XMLDSig with XAdES signed properties, the profile the ANS signs its whitelist with.

signxml is not used: the ANS list excludes its signature with an XPath Filter 2.0 transform
(``xmldsig-filter2``, subtract ``/descendant::ds:Signature``), which signxml 5 skips silently,
so its digest would include the signature and never match. This module implements that one
profile on lxml + cryptography, with allow-lists of algorithms and transforms; anything else
is refused rather than interpreted.

It checks the signature and the XML only: trust in the signer's certificate is ``chain.py``'s job.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from lxml import etree

from drimbox.adapters.trust.errors import TrustError

DS_NS = "http://www.w3.org/2000/09/xmldsig#"
XADES_NS = "http://uri.etsi.org/01903/v1.3.2#"
FILTER2_NS = "http://www.w3.org/2002/06/xmldsig-filter2"
EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
C14N_10 = "http://www.w3.org/TR/2001/REC-xml-c14n-20010315"
ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
SIGNED_PROPERTIES_TYPE = "http://uri.etsi.org/01903#SignedProperties"
MAX_XML_BYTES = 16 << 20

_T = TypeVar("_T")

# SHA-1 is deliberately absent: collisions are practical, and the ANS list uses SHA-256.
_DIGESTS: dict[str, type[hashes.HashAlgorithm]] = {
    "http://www.w3.org/2001/04/xmlenc#sha256": hashes.SHA256,
    "http://www.w3.org/2001/04/xmldsig-more#sha384": hashes.SHA384,
    "http://www.w3.org/2001/04/xmlenc#sha512": hashes.SHA512,
}
_SIGNATURES: dict[str, tuple[str, type[hashes.HashAlgorithm]]] = {
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256": ("rsa", hashes.SHA256),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384": ("rsa", hashes.SHA384),
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512": ("rsa", hashes.SHA512),
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256": ("ec", hashes.SHA256),
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384": ("ec", hashes.SHA384),
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512": ("ec", hashes.SHA512),
}
# Filter 2.0 expressions we accept; each selects the ds:Signature elements, nothing else.
_SIGNATURE_XPATHS = frozenset({"/descendant::ds:Signature", "//ds:Signature"})


class SignatureError(TrustError):
    """The XML is unsigned, malformed, or its signature does not verify."""


@dataclass(frozen=True)
class VerifiedSignature:
    signer: x509.Certificate
    certificates: tuple[x509.Certificate, ...]  # all of KeyInfo, as carried (untrusted)
    signing_time: datetime | None  # XAdES SigningTime, only when it is covered by the signature


class _C14n(NamedTuple):
    exclusive: bool
    prefixes: list[str] | None


def _ds(name: str) -> str:
    return f"{{{DS_NS}}}{name}"


def _xades(name: str) -> str:
    return f"{{{XADES_NS}}}{name}"


# -- parsing ---------------------------------------------------------------------------------


def parse_untrusted_xml(data: bytes) -> etree._Element:
    """Parse without DTDs, entity expansion or network access (XXE, billion laughs).

    Comments are dropped: no reference we accept signs them, and a comment slipped into a
    signed text node would otherwise truncate ``.text`` (the SAML comment attack).
    """
    if len(data) > MAX_XML_BYTES:
        raise SignatureError(f"XML document larger than {MAX_XML_BYTES} bytes")
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_comments=True,
    )
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise SignatureError(f"not well-formed XML: {exc}") from exc
    # libxml2 keeps a DTD object for any DOCTYPE, internal subset or external identifier
    if root.getroottree().docinfo.internalDTD is not None:
        raise SignatureError("XML with a DTD or entity declarations is refused", "dtd")
    return root


# -- verification ----------------------------------------------------------------------------


def verify_enveloped(root: etree._Element) -> VerifiedSignature:
    """Check the one enveloped signature of ``root``: it must cover the whole document."""
    signature = _the_signature(root)
    signed_info = _one(signature, _ds("SignedInfo"))
    references = signed_info.findall(_ds("Reference"))
    if sum(1 for r in references if r.get("URI") == "") != 1:
        raise SignatureError('the signature must cover the whole document (one Reference URI="")')
    signed_properties: etree._Element | None = None
    for reference in references:
        target = _check_reference(root, signature, reference)
        if target.tag == _xades("SignedProperties"):
            signed_properties = target
    certificates = _key_info_certificates(signature)
    signer = _signer(certificates, signed_properties)
    _check_signature_value(signer, signature, signed_info)
    return VerifiedSignature(signer, certificates, _signing_time(signed_properties))


def _the_signature(root: etree._Element) -> etree._Element:
    signatures = list(root.iter(_ds("Signature")))
    if not signatures:
        raise SignatureError("the document is not signed (no ds:Signature)", "unsigned")
    if len(signatures) > 1:
        raise SignatureError("more than one ds:Signature in the document")
    if signatures[0].getparent() is not root:
        raise SignatureError("the ds:Signature is not a child of the document element")
    return signatures[0]


def _one(parent: etree._Element, tag: str) -> etree._Element:
    found = parent.findall(tag)
    if len(found) != 1:
        raise SignatureError(f"expected exactly one {etree.QName(tag).localname} element")
    return found[0]


def _algorithm(element: etree._Element, table: dict[str, _T]) -> _T:
    uri = element.get("Algorithm", "")
    if uri not in table:
        raise SignatureError(f"unsupported algorithm {uri!r}", "unsupported")
    return table[uri]


def _check_reference(
    root: etree._Element, signature: etree._Element, reference: etree._Element
) -> etree._Element:
    uri = reference.get("URI")
    transforms = reference.findall(f"{_ds('Transforms')}/{_ds('Transform')}")
    c14n, strips_signature = _transform_plan(transforms)
    if uri == "":
        if not strips_signature:
            raise SignatureError("the document reference does not exclude the signature")
        target, data = root, _canonical_document(root, signature, c14n)
    elif uri is not None and uri.startswith("#") and not strips_signature:
        target = _by_id(signature, uri[1:])
        data = _canonicalize(target, c14n)
    else:
        raise SignatureError(f"unsupported reference URI {uri!r}")
    hash_type = _algorithm(_one(reference, _ds("DigestMethod")), _DIGESTS)
    expected = _b64(_one(reference, _ds("DigestValue")).text)
    digest = hashes.Hash(hash_type())
    digest.update(data)
    if not hmac.compare_digest(digest.finalize(), expected):
        what = "the signed document" if uri == "" else f"reference {uri}"
        raise SignatureError(
            f"digest mismatch for {what}: content was modified after signing", "tampered"
        )
    return target


def _transform_plan(transforms: Sequence[etree._Element]) -> tuple[_C14n, bool]:
    c14n: _C14n | None = None
    strips_signature = False
    for transform in transforms:
        uri = transform.get("Algorithm")
        if c14n is not None:
            raise SignatureError("a transform after canonicalization is not supported")
        if uri == ENVELOPED:
            strips_signature = True
        elif uri == FILTER2_NS:
            _check_filter2(transform)
            strips_signature = True
        elif uri in (EXC_C14N, C14N_10):
            c14n = _c14n_of(transform)
        else:
            raise SignatureError(f"unsupported transform {uri!r}", "unsupported")
    # XMLDSig: a node-set left without explicit canonicalization is serialized with C14N 1.0
    return c14n or _C14n(False, None), strips_signature


def _check_filter2(transform: etree._Element) -> None:
    xpaths = transform.findall(f"{{{FILTER2_NS}}}XPath")
    if not xpaths:
        raise SignatureError("XPath Filter 2.0 transform without XPath")
    for xpath in xpaths:
        # only "subtract the signature" is meaningful for an enveloped signature
        expression = (xpath.text or "").strip()
        if (
            xpath.get("Filter") != "subtract"
            or expression not in _SIGNATURE_XPATHS
            or xpath.nsmap.get("ds") != DS_NS
        ):
            raise SignatureError(f"unsupported XPath filter {expression!r}", "unsupported")


def _c14n_of(method: etree._Element) -> _C14n:
    uri = method.get("Algorithm")
    if uri == C14N_10:
        return _C14n(False, None)
    if uri != EXC_C14N:
        raise SignatureError(f"unsupported canonicalization {uri!r}", "unsupported")
    inclusive = method.find(f"{{{EXC_C14N}}}InclusiveNamespaces")
    prefixes = (inclusive.get("PrefixList") or "").split() if inclusive is not None else None
    return _C14n(True, prefixes or None)


def _canonicalize(node: etree._Element | etree._ElementTree, c14n: _C14n) -> bytes:
    # same-document references exclude comments (XMLDSig 4.4.3.3), whatever the algorithm says
    return etree.tostring(
        node,
        method="c14n",
        exclusive=c14n.exclusive,
        with_comments=False,
        inclusive_ns_prefixes=c14n.prefixes,
    )


def _canonical_document(root: etree._Element, signature: etree._Element, c14n: _C14n) -> bytes:
    document = copy.deepcopy(root.getroottree())
    _detach(document.getroot()[root.index(signature)])
    return _canonicalize(document, c14n)


def _detach(element: etree._Element) -> None:
    # lxml drops an element's tail with it; the tail text is not part of the subtracted subtree
    parent = element.getparent()
    assert parent is not None
    if element.tail:
        previous = element.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)


def _by_id(signature: etree._Element, identifier: str) -> etree._Element:
    # only elements inside our own ds:Object may be referenced by Id (no wrapping elsewhere)
    found = [
        element
        for obj in signature.findall(_ds("Object"))
        for element in obj.iter()
        if element.get("Id") == identifier
    ]
    if len(found) != 1:
        raise SignatureError(f"reference #{identifier} does not name one element of the signature")
    return found[0]


def _b64(text: str | None) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except binascii.Error as exc:
        raise SignatureError("invalid base64 in the signature") from exc


def _key_info_certificates(signature: etree._Element) -> tuple[x509.Certificate, ...]:
    path = f"{_ds('KeyInfo')}/{_ds('X509Data')}/{_ds('X509Certificate')}"
    elements = signature.findall(path)
    if not elements:
        raise SignatureError("the signature carries no X509Certificate")
    try:
        return tuple(x509.load_der_x509_certificate(_b64(e.text)) for e in elements)
    except ValueError as exc:
        raise SignatureError(f"invalid certificate in KeyInfo: {exc}") from exc


def _signer(
    certificates: tuple[x509.Certificate, ...], signed_properties: etree._Element | None
) -> x509.Certificate:
    if signed_properties is None:
        return certificates[0]
    # XAdES binds the signer certificate by digest inside the signed properties
    cert = signed_properties.find(f".//{_xades('SigningCertificateV2')}/{_xades('Cert')}")
    if cert is None:
        cert = signed_properties.find(f".//{_xades('SigningCertificate')}/{_xades('Cert')}")
    if cert is None:
        return certificates[0]
    digest_element = _one(cert, _xades("CertDigest"))
    hash_type = _algorithm(_one(digest_element, _ds("DigestMethod")), _DIGESTS)
    expected = _b64(_one(digest_element, _ds("DigestValue")).text)
    for certificate in certificates:
        if hmac.compare_digest(certificate.fingerprint(hash_type()), expected):
            return certificate
    raise SignatureError("the XAdES signing certificate is not among the KeyInfo certificates")


def _check_signature_value(
    signer: x509.Certificate, signature: etree._Element, signed_info: etree._Element
) -> None:
    key_kind, hash_type = _algorithm(_one(signed_info, _ds("SignatureMethod")), _SIGNATURES)
    c14n = _c14n_of(_one(signed_info, _ds("CanonicalizationMethod")))
    data = _canonicalize(signed_info, c14n)
    value = _b64(_one(signature, _ds("SignatureValue")).text)
    key = signer.public_key()
    try:
        if key_kind == "rsa" and isinstance(key, rsa.RSAPublicKey):
            key.verify(value, data, padding.PKCS1v15(), hash_type())
        elif key_kind == "ec" and isinstance(key, ec.EllipticCurvePublicKey):
            half = len(value) // 2  # XMLDSig ECDSA values are r || s, not DER (RFC 4050)
            r, s = int.from_bytes(value[:half], "big"), int.from_bytes(value[half:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hash_type()))
        else:
            raise SignatureError("the signature algorithm does not match the signer's key")
    except InvalidSignature as exc:
        raise SignatureError(
            "the signature value does not verify with the signer's key", "tampered"
        ) from exc


def _signing_time(signed_properties: etree._Element | None) -> datetime | None:
    if signed_properties is None:
        return None
    element = signed_properties.find(f".//{_xades('SigningTime')}")
    if element is None or not element.text:
        return None
    try:
        value = datetime.fromisoformat(element.text.strip())
    except ValueError as exc:
        raise SignatureError(f"invalid XAdES SigningTime {element.text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# -- signing (development PKI, tests, demo) ----------------------------------------------------


SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def sign_enveloped(
    root: etree._Element,
    key: SigningKey,
    chain: Sequence[x509.Certificate],
    signing_time: datetime,
    signature_id: str,
) -> None:
    """Append to ``root`` a signature shaped like the ANS one (Filter 2.0, exc-c14n, XAdES)."""
    sig_id = f"id-{signature_id}"
    signature = etree.SubElement(root, _ds("Signature"), nsmap={"ds": DS_NS}, Id=sig_id)
    signed_info = etree.SubElement(signature, _ds("SignedInfo"))
    etree.SubElement(signed_info, _ds("CanonicalizationMethod"), Algorithm=EXC_C14N)
    method = "rsa-sha256" if isinstance(key, rsa.RSAPrivateKey) else "ecdsa-sha256"
    etree.SubElement(
        signed_info,
        _ds("SignatureMethod"),
        Algorithm=f"http://www.w3.org/2001/04/xmldsig-more#{method}",
    )
    doc_ref = _add_reference(signed_info, True, Id=f"r-{sig_id}-1", URI="")
    props_ref = _add_reference(
        signed_info, False, Type=SIGNED_PROPERTIES_TYPE, URI=f"#xades-{sig_id}"
    )
    value = etree.SubElement(signature, _ds("SignatureValue"), Id=f"value-{sig_id}")
    x509_data = etree.SubElement(etree.SubElement(signature, _ds("KeyInfo")), _ds("X509Data"))
    for certificate in chain:
        der = certificate.public_bytes(serialization.Encoding.DER)
        etree.SubElement(x509_data, _ds("X509Certificate")).text = base64.b64encode(der).decode()
    _add_qualifying_properties(signature, sig_id, chain[0], signing_time)
    for reference in (doc_ref, props_ref):
        _fill_digest(root, signature, reference)
    data = _canonicalize(signed_info, _C14n(True, None))
    value.text = base64.b64encode(_sign(key, data)).decode()


def _add_reference(
    signed_info: etree._Element, whole_document: bool, **attributes: str
) -> etree._Element:
    reference = etree.SubElement(signed_info, _ds("Reference"), attrib=attributes)
    transforms = etree.SubElement(reference, _ds("Transforms"))
    if whole_document:
        # XPath Filter 2.0 "subtract the signature", exactly as in the ANS list
        transform = etree.SubElement(transforms, _ds("Transform"), Algorithm=FILTER2_NS)
        xpath = etree.SubElement(
            transform, f"{{{FILTER2_NS}}}XPath", nsmap={"dsig-filter2": FILTER2_NS}
        )
        xpath.set("Filter", "subtract")
        xpath.text = "/descendant::ds:Signature"
    etree.SubElement(transforms, _ds("Transform"), Algorithm=EXC_C14N)
    etree.SubElement(
        reference, _ds("DigestMethod"), Algorithm="http://www.w3.org/2001/04/xmlenc#sha256"
    )
    etree.SubElement(reference, _ds("DigestValue"))
    return reference


def _fill_digest(
    root: etree._Element, signature: etree._Element, reference: etree._Element
) -> None:
    c14n, _ = _transform_plan(reference.findall(f"{_ds('Transforms')}/{_ds('Transform')}"))
    uri = reference.get("URI") or ""
    if uri == "":
        data = _canonical_document(root, signature, c14n)
    else:
        data = _canonicalize(_by_id(signature, uri[1:]), c14n)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    _one(reference, _ds("DigestValue")).text = base64.b64encode(digest.finalize()).decode()


def _add_qualifying_properties(
    signature: etree._Element, sig_id: str, signer: x509.Certificate, signing_time: datetime
) -> None:
    obj = etree.SubElement(signature, _ds("Object"))
    qualifying = etree.SubElement(
        obj, _xades("QualifyingProperties"), nsmap={"xades": XADES_NS}, Target=f"#{sig_id}"
    )
    props = etree.SubElement(qualifying, _xades("SignedProperties"), Id=f"xades-{sig_id}")
    sig_props = etree.SubElement(props, _xades("SignedSignatureProperties"))
    when = signing_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    etree.SubElement(sig_props, _xades("SigningTime")).text = when
    cert = etree.SubElement(
        etree.SubElement(sig_props, _xades("SigningCertificateV2")), _xades("Cert")
    )
    cert_digest = etree.SubElement(cert, _xades("CertDigest"))
    etree.SubElement(
        cert_digest, _ds("DigestMethod"), Algorithm="http://www.w3.org/2001/04/xmlenc#sha512"
    )
    fingerprint = signer.fingerprint(hashes.SHA512())
    etree.SubElement(cert_digest, _ds("DigestValue")).text = base64.b64encode(fingerprint).decode()
    issuer_serial = base64.b64encode(_issuer_serial_der(signer)).decode()
    etree.SubElement(cert, _xades("IssuerSerialV2")).text = issuer_serial
    data_props = etree.SubElement(props, _xades("SignedDataObjectProperties"))
    data_format = etree.SubElement(
        data_props, _xades("DataObjectFormat"), ObjectReference=f"#r-{sig_id}-1"
    )
    etree.SubElement(data_format, _xades("MimeType")).text = "text/xml"


def _sign(key: SigningKey, data: bytes) -> bytes:
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    size = (key.curve.key_size + 7) // 8
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(encoded)]) + encoded + content


def _issuer_serial_der(certificate: x509.Certificate) -> bytes:
    # RFC 5035 IssuerSerial: SEQUENCE { GeneralNames { [4] directoryName }, serialNumber }
    serial = certificate.serial_number
    serial_bytes = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
    general_names = _der(0x30, _der(0xA4, certificate.issuer.public_bytes()))
    return _der(0x30, general_names + _der(0x02, serial_bytes))
