"""The XAdES signature document of an XDS submission set (IHE DSG), shaped as the DMP expects it.

The shape follows the ANS demonstrator (``XadesSign.java``): a detached ``ds:Signature`` whose
``Id`` is the signature document's uniqueId, signing two things: the ``IHEManifest`` (one
``urn:oid:`` reference for the submission set, then one per document with the digest of its
bytes) and the XAdES SignedProperties (signing time, signing certificate, implied policy).
Unlike the 2015 demonstrator it uses SHA-256 and rsa-sha256 / ecdsa-sha256, never SHA-1, and
exclusive canonicalization.

The XML machinery (algorithm allow-lists, references, canonicalization, signature values) is
``xmldsig.py``'s. Trust in the signer's certificate is not checked here: ``chain.verify_chain``.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

from drimbox.adapters.trust.xmldsig import (
    _DIGESTS,
    DS_NS,
    EXC_C14N,
    SIGNED_PROPERTIES_TYPE,
    XADES_NS,
    SignatureError,
    SigningKey,
    _add_reference,
    _algorithm,
    _b64,
    _C14n,
    _canonicalize,
    _check_reference,
    _check_signature_value,
    _ds,
    _fill_digest,
    _issuer_serial_der,
    _key_info_certificates,
    _one,
    _sign,
    _signer,
    _signing_time,
    _xades,
    parse_untrusted_xml,
)

MANIFEST_TYPE = "http://www.w3.org/2000/09/xmldsig#Manifest"
MANIFEST_ID = "IHEManifest"
SIGNED_PROPERTIES_ID = "S0-SignedProperties"  # the demonstrator's Id
PURPOSE_ID = "purposeOfSignature"
# ASTM E1762 "Source" signature: the author of the content vouches for the submission
PURPOSE_SOURCE = "1.2.840.10065.1.12.1.14"
SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
# The submission set has no bytes to digest. The demonstrator (tested against the DMP) puts one
# zero byte ("AA==") in its reference; we do the same, and the verifier ignores that digest.
SUBMISSION_SET_DIGEST = b"\x00"
_URN_OID = "urn:oid:"
_OID = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+")


@dataclass(frozen=True, slots=True)
class SignedDocument:
    unique_id: str  # XDS uniqueId (OID or 2.25 UID)
    data: bytes


@dataclass(frozen=True, slots=True)
class VerifiedSubmissionSignature:
    signature_id: str
    submission_set_unique_id: str  # what the signature covers: the caller compares it
    document_unique_ids: tuple[str, ...]  # in manifest order
    signer: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # all of KeyInfo, as carried (untrusted)
    signing_time: datetime | None


# -- signing ---------------------------------------------------------------------------------


def sign_submission_set(
    *,
    signature_id: str,
    submission_set_unique_id: str,
    documents: Sequence[SignedDocument],
    key: SigningKey,
    chain: Sequence[x509.Certificate],
    signing_time: datetime,
) -> bytes:
    """The UTF-8 XML of the signature document over ``documents`` of the submission set."""
    _check_signing_inputs(signature_id, submission_set_unique_id, documents, key, chain)
    signature = etree.Element(_ds("Signature"), nsmap={"ds": DS_NS}, Id=signature_id)
    signed_info = etree.SubElement(signature, _ds("SignedInfo"))
    etree.SubElement(signed_info, _ds("CanonicalizationMethod"), Algorithm=EXC_C14N)
    method = "rsa-sha256" if isinstance(key, rsa.RSAPrivateKey) else "ecdsa-sha256"
    etree.SubElement(
        signed_info,
        _ds("SignatureMethod"),
        Algorithm=f"http://www.w3.org/2001/04/xmldsig-more#{method}",
    )
    references = [
        _add_reference(signed_info, False, Type=MANIFEST_TYPE, URI=f"#{MANIFEST_ID}"),
        _add_reference(
            signed_info, False, Type=SIGNED_PROPERTIES_TYPE, URI=f"#{SIGNED_PROPERTIES_ID}"
        ),
    ]
    value = etree.SubElement(signature, _ds("SignatureValue"))
    x509_data = etree.SubElement(etree.SubElement(signature, _ds("KeyInfo")), _ds("X509Data"))
    for certificate in chain:
        der = certificate.public_bytes(serialization.Encoding.DER)
        etree.SubElement(x509_data, _ds("X509Certificate")).text = base64.b64encode(der).decode()
    _add_qualifying_properties(signature, signature_id, chain[0], signing_time)
    _add_purpose(signature, signature_id)
    _add_manifest(signature, submission_set_unique_id, documents)
    for reference in references:
        _fill_digest(signature, signature, reference)
    data = _canonicalize(signed_info, _C14n(True, None))
    value.text = base64.b64encode(_sign(key, data)).decode()
    return etree.tostring(signature, xml_declaration=True, encoding="UTF-8")


def _check_signing_inputs(
    signature_id: str,
    submission_set_unique_id: str,
    documents: Sequence[SignedDocument],
    key: SigningKey,
    chain: Sequence[x509.Certificate],
) -> None:
    uids = [signature_id, submission_set_unique_id, *(d.unique_id for d in documents)]
    for uid in uids:
        if not _OID.fullmatch(uid):
            raise ValueError(f"not an OID uniqueId: {uid!r}")
    if not documents:
        raise ValueError("a submission set signature needs at least one document")
    if len(set(uids)) != len(uids):
        raise ValueError("the signature, submission set and document uniqueIds must differ")
    if not chain:
        raise ValueError("the certificate chain is empty")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if chain[0].public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        raise ValueError("the signing key does not match the first certificate of the chain")


def _add_qualifying_properties(
    signature: etree._Element, signature_id: str, signer: x509.Certificate, signing_time: datetime
) -> None:
    obj = etree.SubElement(signature, _ds("Object"))
    qualifying = etree.SubElement(
        obj, _xades("QualifyingProperties"), nsmap={"xades": XADES_NS}, Target=f"#{signature_id}"
    )
    props = etree.SubElement(qualifying, _xades("SignedProperties"), Id=SIGNED_PROPERTIES_ID)
    sig_props = etree.SubElement(props, _xades("SignedSignatureProperties"))
    when = signing_time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    etree.SubElement(sig_props, _xades("SigningTime")).text = when
    # SigningCertificate (not V2), as IHE DSG and the demonstrator: a TS 101 903 v1.3.2 schema
    # knows no V2, and EN 319 132 verifiers still accept this form
    cert = etree.SubElement(
        etree.SubElement(sig_props, _xades("SigningCertificate")), _xades("Cert")
    )
    cert_digest = etree.SubElement(cert, _xades("CertDigest"))
    etree.SubElement(cert_digest, _ds("DigestMethod"), Algorithm=SHA256)
    fingerprint = base64.b64encode(signer.fingerprint(hashes.SHA256())).decode()
    etree.SubElement(cert_digest, _ds("DigestValue")).text = fingerprint
    issuer_serial = etree.SubElement(cert, _xades("IssuerSerial"))
    etree.SubElement(issuer_serial, _ds("X509IssuerName")).text = signer.issuer.rfc4514_string()
    etree.SubElement(issuer_serial, _ds("X509SerialNumber")).text = str(signer.serial_number)
    policy = etree.SubElement(sig_props, _xades("SignaturePolicyIdentifier"))
    etree.SubElement(policy, _xades("SignaturePolicyImplied"))


def _add_purpose(signature: etree._Element, signature_id: str) -> None:
    properties = etree.SubElement(
        etree.SubElement(signature, _ds("Object")), _ds("SignatureProperties")
    )
    etree.SubElement(
        properties, _ds("SignatureProperty"), Id=PURPOSE_ID, Target=f"#{signature_id}"
    ).text = PURPOSE_SOURCE


def _add_manifest(
    signature: etree._Element, submission_set_unique_id: str, documents: Sequence[SignedDocument]
) -> None:
    manifest = etree.SubElement(etree.SubElement(signature, _ds("Object")), _ds("Manifest"))
    manifest.set("Id", MANIFEST_ID)
    entries = [(submission_set_unique_id, SUBMISSION_SET_DIGEST)]
    entries += [(d.unique_id, _sha256(d.data)) for d in documents]
    # no transforms: a document is digested as the exact bytes registered in XDS (KOS, CDA...)
    for uid, digest in entries:
        reference = etree.SubElement(manifest, _ds("Reference"), URI=f"{_URN_OID}{uid}")
        etree.SubElement(reference, _ds("DigestMethod"), Algorithm=SHA256)
        etree.SubElement(reference, _ds("DigestValue")).text = base64.b64encode(digest).decode()


def _sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


# -- verification ----------------------------------------------------------------------------


def verify_submission_signature(
    data: bytes, documents: Mapping[str, bytes] | None = None
) -> VerifiedSubmissionSignature:
    """Check a submission set signature document; with ``documents``, also their bytes.

    ``documents`` maps uniqueId to bytes; when given it must be exactly the signed documents,
    each matching its manifest digest. Without it the document digests are left unchecked.
    """
    signature = parse_untrusted_xml(data)
    if signature.tag != _ds("Signature"):
        raise SignatureError("the document element is not a ds:Signature", "unsigned")
    signature_id = signature.get("Id") or ""
    if not signature_id:
        raise SignatureError("the ds:Signature has no Id (the signature document's uniqueId)")
    signed_info = _one(signature, _ds("SignedInfo"))
    manifest, signed_properties = _signed_targets(signature, signed_info)
    certificates = _key_info_certificates(signature)
    signer = _signing_certificate(certificates, signed_properties)
    _check_signature_value(signer, signature, signed_info)
    _check_qualifying_target(signed_properties, signature_id)
    _check_purpose(signature, signature_id)
    submission_set_uid, digests = _manifest_references(manifest)
    if documents is not None:
        _check_documents(digests, documents)
    return VerifiedSubmissionSignature(
        signature_id=signature_id,
        submission_set_unique_id=submission_set_uid,
        document_unique_ids=tuple(digests),
        signer=signer,
        chain=certificates,
        signing_time=_signing_time(signed_properties),
    )


def _signed_targets(
    signature: etree._Element, signed_info: etree._Element
) -> tuple[etree._Element, etree._Element]:
    """Check both SignedInfo references; return the manifest and the signed properties.

    Everything read afterwards comes from these digested elements, never from a lookalike
    elsewhere in the document (signature wrapping).
    """
    references = signed_info.findall(_ds("Reference"))
    targets: dict[str, etree._Element] = {}
    for reference in references:
        kind, uri = reference.get("Type") or "", reference.get("URI") or ""
        if kind not in (MANIFEST_TYPE, SIGNED_PROPERTIES_TYPE) or kind in targets:
            raise SignatureError(f"unexpected reference {uri!r} of type {kind!r}", "unsupported")
        if not uri.startswith("#"):  # a detached signature signs nothing outside itself
            raise SignatureError(f"unsupported reference URI {uri!r}", "unsupported")
        targets[kind] = _check_reference(signature, signature, reference)
    if len(references) != 2 or len(targets) != 2:
        raise SignatureError("SignedInfo must reference the IHE manifest and the signed properties")
    manifest = targets[MANIFEST_TYPE]
    if manifest.tag != _ds("Manifest") or manifest.get("Id") != MANIFEST_ID:
        raise SignatureError(f"the manifest reference does not point to ds:Manifest {MANIFEST_ID}")
    signed_properties = targets[SIGNED_PROPERTIES_TYPE]
    if signed_properties.tag != _xades("SignedProperties"):
        raise SignatureError("the signed properties reference does not point to SignedProperties")
    return manifest, signed_properties


def _signing_certificate(
    certificates: tuple[x509.Certificate, ...], signed_properties: etree._Element
) -> x509.Certificate:
    # XAdES binds the signer by digest (and issuer/serial) inside the signed properties
    cert = signed_properties.find(f".//{_xades('SigningCertificateV2')}/{_xades('Cert')}")
    if cert is None:
        cert = signed_properties.find(f".//{_xades('SigningCertificate')}/{_xades('Cert')}")
    if cert is None:
        raise SignatureError("the signed properties do not name the signing certificate")
    signer = _signer(certificates, signed_properties)
    _check_issuer_serial(cert, signer)
    return signer


def _check_issuer_serial(cert: etree._Element, signer: x509.Certificate) -> None:
    v2 = cert.find(_xades("IssuerSerialV2"))
    if v2 is not None:
        if not hmac.compare_digest(_b64(v2.text), _issuer_serial_der(signer)):
            raise SignatureError("IssuerSerialV2 does not match the signing certificate")
        return
    v1 = _one(cert, _xades("IssuerSerial"))
    name_text = _one(v1, _ds("X509IssuerName")).text or ""
    serial_text = (_one(v1, _ds("X509SerialNumber")).text or "").strip()
    try:
        issuer = x509.Name.from_rfc4514_string(name_text)
        serial = int(serial_text)
    except ValueError as exc:
        raise SignatureError(f"invalid IssuerSerial: {exc}") from exc
    if issuer != signer.issuer or serial != signer.serial_number:
        raise SignatureError("IssuerSerial does not match the signing certificate")


def _check_qualifying_target(signed_properties: etree._Element, signature_id: str) -> None:
    qualifying = signed_properties.getparent()
    if (
        qualifying is None
        or qualifying.tag != _xades("QualifyingProperties")
        or qualifying.get("Target") != f"#{signature_id}"
    ):
        raise SignatureError("the XAdES QualifyingProperties do not target this signature")


def _check_purpose(signature: etree._Element, signature_id: str) -> None:
    # not covered by SignedInfo in this profile (IHE DSG, demonstrator): a shape check only
    path = f"{_ds('Object')}/{_ds('SignatureProperties')}/{_ds('SignatureProperty')}"
    found = [p for p in signature.findall(path) if p.get("Id") == PURPOSE_ID]
    if len(found) != 1:
        raise SignatureError(f"expected exactly one SignatureProperty {PURPOSE_ID}")
    purpose = found[0]
    if purpose.get("Target") != f"#{signature_id}":
        raise SignatureError(f"the {PURPOSE_ID} property does not target this signature")
    code = (purpose.text or "").strip()
    if code != PURPOSE_SOURCE:
        raise SignatureError(f"unexpected purpose of signature {code!r}, not {PURPOSE_SOURCE}")


def _manifest_references(
    manifest: etree._Element,
) -> tuple[str, dict[str, tuple[type[hashes.HashAlgorithm], bytes]]]:
    """The submission set uniqueId (first reference) and each document's signed digest."""
    references = manifest.findall(_ds("Reference"))
    if len(references) < 2:
        raise SignatureError("the manifest must reference the submission set and its documents")
    uids = [_reference_uid(r) for r in references]
    if len(set(uids)) != len(uids):
        raise SignatureError("the manifest references a uniqueId twice")
    # the submission set reference's digest is a placeholder (no bytes): deliberately unchecked
    digests: dict[str, tuple[type[hashes.HashAlgorithm], bytes]] = {}
    for uid, reference in zip(uids[1:], references[1:], strict=True):
        hash_type = _algorithm(_one(reference, _ds("DigestMethod")), _DIGESTS)
        digests[uid] = (hash_type, _b64(_one(reference, _ds("DigestValue")).text))
    return uids[0], digests


def _reference_uid(reference: etree._Element) -> str:
    uri = reference.get("URI") or ""
    uid = uri.removeprefix(_URN_OID)
    if uid == uri or not _OID.fullmatch(uid):
        raise SignatureError(f"manifest reference {uri!r} is not a urn:oid: uniqueId")
    if reference.find(_ds("Transforms")) is not None:
        # documents are digested as raw bytes; a transform would change what was signed
        raise SignatureError(f"transforms on manifest reference {uri} are not supported")
    return uid


def _check_documents(
    digests: Mapping[str, tuple[type[hashes.HashAlgorithm], bytes]],
    documents: Mapping[str, bytes],
) -> None:
    for uid in documents:
        if uid not in digests:
            raise SignatureError(f"document {uid} is not in the signed manifest", "unsigned")
    for uid, (hash_type, expected) in digests.items():
        if uid not in documents:
            raise SignatureError(
                f"the signed manifest references document {uid}, which is missing", "tampered"
            )
        digest = hashes.Hash(hash_type())
        digest.update(documents[uid])
        if not hmac.compare_digest(digest.finalize(), expected):
            raise SignatureError(
                f"digest mismatch for document {uid}: its bytes differ from the signed ones",
                "tampered",
            )
