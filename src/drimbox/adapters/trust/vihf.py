"""The VIHF assertion: the signed SAML 2.0 token every DRIMbox call to the DMP carries.

VIHF v3.0 ("Volet Transport Synchrone pour Client Lourd") puts a SAML 2.0 ``Assertion`` in the
SOAP ``wsse:Security`` header. The box issues and signs it with its IGC-Santé ORG certificate
(``Issuer`` = that certificate's DN) and states who acts (``NameID``, name, roles, structure),
for which patient (``resource-id``) and how the user was authenticated
(``Authentification_Mode``). Shapes follow the official DMP sample (DRIM-M_DATA, Validateur
XDS/XDS.xml): attributes without ``NameFormat``, coded values as HL7 v3 ``CE`` elements,
``Secteur_Activite`` as ``code^OID``.

The signature is an enveloped XML-DSig over the assertion (``Reference URI="#<ID>"``,
enveloped + exc-c14n). The sample signs with RSA-SHA1; we sign, and accept, SHA-2 only.
Verification digests the very element it returns claims from and requires its ID to be unique
in the message, so a valid signature moved elsewhere (signature wrapping) proves nothing.
"""

from __future__ import annotations

import base64
import copy
import hmac
import re
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID
from lxml import etree

from drimbox.adapters.trust.chain import check_signing_usage, describe, verify_chain
from drimbox.adapters.trust.errors import TrustError
from drimbox.adapters.trust.xmldsig import (
    _DIGESTS,
    _SIGNATURES,
    DS_NS,
    ENVELOPED,
    EXC_C14N,
    SignatureError,
    SigningKey,
    _b64,
    _C14n,
    _c14n_of,
    _canonicalize,
    _check_signature_value,
    _detach,
    _key_info_certificates,
    _one,
    _sign,
    parse_untrusted_xml,
)

SAML_NS = "urn:oasis:names:tc:SAML:2.0:assertion"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
HL7_NS = "urn:hl7-org:v3"
WSSE_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU_NS = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
_SOAP_NAMESPACES = (
    "http://www.w3.org/2003/05/soap-envelope",
    "http://schemas.xmlsoap.org/soap/envelope/",
)

X509_SUBJECT_NAME = "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"
TLS_CLIENT = "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient"
# the DMP's marker for a user authenticated by the web application (mode INDIRECTE_RENFORCEE)
APP_BROWSER_AUTH = "APP_BROWSER_AUTH"
VIHF_VERSION = "3.0"
RESOURCE_URN = "urn:dmp"
INS_NIR_OID = "1.2.250.1.213.1.4.10"
PURPOSE_SYSTEM = "1.2.250.1.213.1.1.4.248"

VERSION = "VIHF_Version"
SECTOR = "Secteur_Activite"
RESOURCE = "Ressource_URN"
SUBJECT_NAME = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
STRUCTURE = "Identifiant_Structure"
LPS_ID = "LPS_ID"
LPS_NAME = "LPS_Nom"
LPS_HOMOLOGATION = "LPS_ID_HOMOLOGATION_DMP"
LPS_VERSION = "LPS_Version"
PATIENT = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
MODE = "Authentification_Mode"
PURPOSE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
CONFIDENTIALITY = "urn:oasis:names:tc:xspa:1.0:resource:patient:hl7:confidentiality-code"

_SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
_EXCLUSIVE = _C14n(True, None)
# SAML IDs are xs:ID; the DMP sample's start with a digit, so only the charset is enforced
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# codeSystemName as the sample writes it; others are left empty, as the sample does for roles
_CODE_SYSTEM_NAMES = {PURPOSE_SYSTEM: "mode acces VIHF 1.0"}
# the attributes ID resolvers (SAML, XML-DSig, WS-Security, ebRIM) look elements up by
_ID_ATTRIBUTES = ("ID", "Id", "id", f"{{{WSU_NS}}}Id")
_HL7_DEFAULT: Any = {None: HL7_NS}  # default namespace; lxml-stubs only type prefixed maps


class VihfError(TrustError):
    """The VIHF assertion is refused; ``reason`` says which check failed."""


class AuthMode(StrEnum):
    DIRECTE = "DIRECTE"  # the professional's own card (CPS)
    INDIRECTE = "INDIRECTE"  # the box acts with its ORG certificate (Source publishing)
    INDIRECTE_RENFORCEE = "INDIRECTE_RENFORCEE"  # user authenticated by Pro Santé Connect


@dataclass(frozen=True, slots=True)
class CodedValue:
    code: str
    system: str
    display: str = ""


NORMAL_ACCESS = CodedValue("normal", PURPOSE_SYSTEM, "Acces normal")


@dataclass(frozen=True, slots=True)
class VihfClaims:
    subject_id: str  # NameID: national id of the professional (or the patient / system)
    subject_name: str  # "Given FAMILY"
    roles: tuple[CodedValue, ...]  # profession, specialty
    structure_id: str  # Identifiant_Structure
    sector: CodedValue | None  # Secteur_Activite
    patient_id: str  # resource-id, INS^^^&OID&ISO^NH ("" when the call is not about one patient)
    mode: AuthMode
    purpose: CodedValue  # NORMAL_ACCESS unless break-glass
    lps_id: str
    lps_name: str
    lps_version: str
    lps_homologation: str
    confidentiality: tuple[CodedValue, ...] = ()


@dataclass(frozen=True, slots=True)
class VerifiedAssertion:
    claims: VihfClaims
    issuer_dn: str
    signer: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # signer first, ending at the trust anchor
    not_before: datetime
    not_on_or_after: datetime
    assertion_id: str


def patient_resource_id(ins: str, oid: str = INS_NIR_OID) -> str:
    """The ``resource-id`` of a patient: ``INS^^^&OID&ISO^NH`` (HL7 v2 CX)."""
    return f"{ins}^^^&{oid}&ISO^NH"


def _saml(name: str) -> str:
    return f"{{{SAML_NS}}}{name}"


def _ds(name: str) -> str:
    return f"{{{DS_NS}}}{name}"


# -- building --------------------------------------------------------------------------------


def build_assertion(
    claims: VihfClaims,
    *,
    key: SigningKey,
    chain: Sequence[x509.Certificate],
    issued_at: datetime,
    lifetime: timedelta = timedelta(minutes=5),
    assertion_id: str | None = None,
) -> etree._Element:
    """A signed ``saml2:Assertion``; ``chain`` starts with the ORG certificate of ``key``."""
    _check_claims(claims)
    if not chain:
        raise ValueError("the signing chain is empty")
    if lifetime <= timedelta(0):
        raise ValueError("the assertion lifetime must be positive")
    identifier = assertion_id or f"_{uuid.uuid4()}"  # xs:ID may not start with a digit
    issued = _utc(issued_at)
    assertion = etree.Element(
        _saml("Assertion"),
        nsmap={"saml2": SAML_NS, "xsi": XSI_NS},
        ID=identifier,
        IssueInstant=_iso(issued),
        Version="2.0",
    )
    issuer = etree.SubElement(assertion, _saml("Issuer"), Format=X509_SUBJECT_NAME)
    issuer.text = dn_string(chain[0].subject)
    subject = etree.SubElement(assertion, _saml("Subject"))
    etree.SubElement(subject, _saml("NameID")).text = claims.subject_id
    etree.SubElement(
        assertion,
        _saml("Conditions"),
        NotBefore=_iso(issued),
        NotOnOrAfter=_iso(issued + lifetime),
    )
    statement = etree.SubElement(assertion, _saml("AuthnStatement"), AuthnInstant=_iso(issued))
    context = etree.SubElement(statement, _saml("AuthnContext"))
    etree.SubElement(context, _saml("AuthnContextClassRef")).text = TLS_CLIENT
    if claims.mode is AuthMode.INDIRECTE_RENFORCEE:
        etree.SubElement(context, _saml("AuthnContextDecl")).text = APP_BROWSER_AUTH
    _add_attributes(etree.SubElement(assertion, _saml("AttributeStatement")), claims)
    sign_assertion(assertion, key=key, chain=chain)
    return assertion


def _check_claims(claims: VihfClaims) -> None:
    # never build what verify_assertion would refuse
    required = {
        "subject_id": claims.subject_id,
        "subject_name": claims.subject_name,
        "structure_id": claims.structure_id,
        "lps_id": claims.lps_id,
        "lps_name": claims.lps_name,
        "lps_version": claims.lps_version,
        "lps_homologation": claims.lps_homologation,
        "purpose": claims.purpose.code,
    }
    missing = [name for name, value in required.items() if not value.strip()]
    if not claims.roles:
        missing.append("roles")
    if missing:
        raise ValueError(f"VIHF claims without {', '.join(missing)}")


def _add_attributes(statement: etree._Element, claims: VihfClaims) -> None:
    # the sample's order; values are plain text unless coded
    _text_attribute(statement, VERSION, VIHF_VERSION)
    if claims.sector is not None:
        _text_attribute(statement, SECTOR, f"{claims.sector.code}^{claims.sector.system}")
    _text_attribute(statement, RESOURCE, RESOURCE_URN)
    _text_attribute(statement, SUBJECT_NAME, claims.subject_name)
    _text_attribute(statement, STRUCTURE, claims.structure_id)
    _text_attribute(statement, LPS_ID, claims.lps_id)
    _text_attribute(statement, LPS_NAME, claims.lps_name)
    _text_attribute(statement, LPS_HOMOLOGATION, claims.lps_homologation)
    _text_attribute(statement, LPS_VERSION, claims.lps_version)
    if claims.patient_id:
        _text_attribute(statement, PATIENT, claims.patient_id)
    _text_attribute(statement, MODE, claims.mode.value)
    _coded_attribute(statement, PURPOSE, "PurposeOfUse", (claims.purpose,))
    _coded_attribute(statement, ROLE, "Role", claims.roles)
    if claims.confidentiality:
        _coded_attribute(statement, CONFIDENTIALITY, "ConfidentialityCode", claims.confidentiality)


def _text_attribute(statement: etree._Element, name: str, value: str) -> None:
    attribute = etree.SubElement(statement, _saml("Attribute"), Name=name)
    etree.SubElement(attribute, _saml("AttributeValue")).text = value


def _coded_attribute(
    statement: etree._Element, name: str, element: str, values: Sequence[CodedValue]
) -> None:
    attribute = etree.SubElement(statement, _saml("Attribute"), Name=name)
    for value in values:
        holder = etree.SubElement(attribute, _saml("AttributeValue"))
        # HL7 v3 CE in the default namespace, so that xsi:type="CE" resolves to hl7:CE
        coded = etree.SubElement(holder, f"{{{HL7_NS}}}{element}", nsmap=_HL7_DEFAULT)
        coded.set("code", value.code)
        coded.set("codeSystem", value.system)
        coded.set("codeSystemName", _CODE_SYSTEM_NAMES.get(value.system, ""))
        coded.set("displayName", value.display)
        coded.set(f"{{{XSI_NS}}}type", "CE")


def sign_assertion(
    assertion: etree._Element, *, key: SigningKey, chain: Sequence[x509.Certificate]
) -> None:
    """Insert the enveloped signature after ``Issuer`` (SAML schema order) into ``assertion``."""
    identifier = assertion.get("ID") or ""
    if not _ID.fullmatch(identifier):
        raise ValueError(f"invalid assertion ID {identifier!r}")
    if assertion.find(_ds("Signature")) is not None:
        raise ValueError("the assertion is already signed")
    if not len(assertion) or assertion[0].tag != _saml("Issuer"):
        raise ValueError("the assertion must start with its Issuer")
    if not chain or _spki(key.public_key()) != _spki(chain[0].public_key()):
        raise ValueError("the first certificate of the chain is not the signing key's")
    # enveloped transform: the digest is over the assertion without its signature
    digest = hashes.Hash(hashes.SHA256())
    digest.update(_canonicalize(assertion, _EXCLUSIVE))
    signature = etree.Element(_ds("Signature"), nsmap={"ds": DS_NS})
    signed_info = etree.SubElement(signature, _ds("SignedInfo"))
    etree.SubElement(signed_info, _ds("CanonicalizationMethod"), Algorithm=EXC_C14N)
    method = "rsa-sha256" if isinstance(key, rsa.RSAPrivateKey) else "ecdsa-sha256"
    etree.SubElement(
        signed_info,
        _ds("SignatureMethod"),
        Algorithm=f"http://www.w3.org/2001/04/xmldsig-more#{method}",
    )
    reference = etree.SubElement(signed_info, _ds("Reference"), URI=f"#{identifier}")
    transforms = etree.SubElement(reference, _ds("Transforms"))
    for algorithm in (ENVELOPED, EXC_C14N):
        etree.SubElement(transforms, _ds("Transform"), Algorithm=algorithm)
    etree.SubElement(reference, _ds("DigestMethod"), Algorithm=_SHA256)
    etree.SubElement(reference, _ds("DigestValue")).text = _b64encode(digest.finalize())
    value = etree.SubElement(signature, _ds("SignatureValue"))
    x509_data = etree.SubElement(etree.SubElement(signature, _ds("KeyInfo")), _ds("X509Data"))
    for certificate in chain:
        der = certificate.public_bytes(serialization.Encoding.DER)
        etree.SubElement(x509_data, _ds("X509Certificate")).text = _b64encode(der)
    assertion.insert(1, signature)
    value.text = _b64encode(_sign(key, _canonicalize(signed_info, _EXCLUSIVE)))


def security_header(assertion: etree._Element) -> etree._Element:
    """A WS-Security 1.0 ``wsse:Security`` header holding ``assertion`` (moved, not copied)."""
    security = etree.Element(f"{{{WSSE_NS}}}Security", nsmap={"wsse": WSSE_NS})
    security.append(assertion)
    return security


def dn_string(name: x509.Name) -> str:
    """A DN as the DMP sample writes it: RFC 4514 order and escaping, ``", "`` between RDNs."""
    return ", ".join(rdn.rfc4514_string() for rdn in reversed(name.rdns))


# -- locating and reading --------------------------------------------------------------------


def parse_assertion(data: bytes) -> etree._Element:
    """Parse untrusted bytes (a bare assertion or a SOAP envelope) safely; nothing is verified."""
    try:
        root = parse_untrusted_xml(data)
    except SignatureError as exc:
        raise VihfError(str(exc), exc.reason) from exc
    if root.tag == _saml("Assertion"):
        return root
    assertion = find_assertion(root)
    if assertion is None:
        raise VihfError("no VIHF assertion in the message", "unsigned")
    return assertion


def find_assertion(soap_header: etree._Element) -> etree._Element | None:
    """The assertion of the ``wsse:Security`` header of a SOAP ``Header`` (or ``Envelope``).

    ``None`` when there is none; ``VihfError`` when the header is ambiguous (several Security
    headers or assertions, or an assertion nested deeper): the signed assertion and the one
    read must be the same element, which ambiguity would let an attacker choose.
    """
    header: etree._Element | None = soap_header
    if soap_header.tag in {f"{{{ns}}}Envelope" for ns in _SOAP_NAMESPACES}:
        headers = [soap_header.find(f"{{{ns}}}Header") for ns in _SOAP_NAMESPACES]
        header = next((h for h in headers if h is not None), None)
    if header is None:
        return None
    securities = header.findall(f"{{{WSSE_NS}}}Security")
    if not securities:
        return None
    if len(securities) > 1:
        raise VihfError("more than one wsse:Security header", "tampered")
    assertions = list(securities[0].iter(_saml("Assertion")))
    if not assertions:
        return None
    if len(assertions) > 1 or assertions[0].getparent() is not securities[0]:
        raise VihfError(
            "wsse:Security must hold exactly one saml2:Assertion, as its direct child", "tampered"
        )
    return assertions[0]


def read_claims(assertion: etree._Element) -> VihfClaims:
    """Read the claims WITHOUT verifying anything (diagnostics, samples): never trust them."""
    _check_plain(assertion)
    attributes = _attributes(assertion)
    mode_text = _single(attributes, MODE)
    if not mode_text:
        raise VihfError(f"missing mandatory VIHF attribute(s): {MODE}")
    try:
        mode = AuthMode(mode_text)
    except ValueError as exc:
        raise VihfError(f"unknown {MODE} {mode_text!r}", "unsupported") from exc
    purposes = _coded(attributes, PURPOSE)
    if not purposes:
        raise VihfError(f"missing mandatory VIHF attribute(s): {PURPOSE}")
    if len(purposes) != 1:
        raise VihfError(f"expected one {PURPOSE} value, found {len(purposes)}")
    sector = _single(attributes, SECTOR)
    return VihfClaims(
        subject_id=_name_id(assertion),
        subject_name=_single(attributes, SUBJECT_NAME),
        roles=_coded(attributes, ROLE),
        structure_id=_single(attributes, STRUCTURE),
        sector=_caret_code(sector, SECTOR) if sector else None,
        patient_id=_single(attributes, PATIENT),
        mode=mode,
        purpose=purposes[0],
        lps_id=_single(attributes, LPS_ID),
        lps_name=_single(attributes, LPS_NAME),
        lps_version=_single(attributes, LPS_VERSION),
        lps_homologation=_single(attributes, LPS_HOMOLOGATION),
        confidentiality=_coded(attributes, CONFIDENTIALITY),
    )


def _check_plain(assertion: etree._Element) -> None:
    if assertion.tag != _saml("Assertion"):
        raise VihfError(f"not a SAML 2.0 assertion: {assertion.tag!r}")
    if assertion.getroottree().docinfo.internalDTD is not None:
        raise VihfError("XML with a DTD or entity declarations is refused", "dtd")
    for node in assertion.iter():
        # exc-c14n drops comments from the digest, so a comment could split a signed value
        # (the SAML comment-truncation attack); entities and PIs have no place here either
        if not isinstance(node.tag, str):
            raise VihfError("comments, entities or processing instructions in the assertion")


def _attributes(assertion: etree._Element) -> dict[str, list[etree._Element]]:
    statements = assertion.findall(_saml("AttributeStatement"))
    if len(statements) != 1:
        raise VihfError("expected exactly one AttributeStatement")
    attributes: dict[str, list[etree._Element]] = {}
    for attribute in statements[0].findall(_saml("Attribute")):
        name = attribute.get("Name", "")
        if name in attributes:
            raise VihfError(f"attribute {name!r} appears twice")
        attributes[name] = attribute.findall(_saml("AttributeValue"))
    return attributes


def _single(attributes: dict[str, list[etree._Element]], name: str) -> str:
    values = attributes.get(name, [])
    if len(values) > 1:
        raise VihfError(f"attribute {name} must have one value")
    return _text(values[0], name) if values else ""


def _text(element: etree._Element, what: str) -> str:
    if len(element):
        raise VihfError(f"{what}: expected a text value")
    return (element.text or "").strip()


def _coded(attributes: dict[str, list[etree._Element]], name: str) -> tuple[CodedValue, ...]:
    return tuple(_coded_value(value, name) for value in attributes.get(name, []))


def _coded_value(value: etree._Element, name: str) -> CodedValue:
    children = list(value)
    if not children:
        return _caret_code(_text(value, name), name)  # tolerated: "code^OID" as for sectors
    coded = children[0]
    code = coded.get("code", "")
    if len(children) != 1 or etree.QName(coded).namespace != HL7_NS or not code:
        raise VihfError(f"attribute {name}: expected one HL7 coded element with a code")
    return CodedValue(code, coded.get("codeSystem", ""), coded.get("displayName", ""))


def _caret_code(text: str, name: str) -> CodedValue:
    code, caret, system = text.partition("^")
    if not caret or not code or not system or "^" in system:
        raise VihfError(f"attribute {name}: expected code^OID, got {text!r}")
    return CodedValue(code, system)


def _name_id(assertion: etree._Element) -> str:
    subjects = assertion.findall(_saml("Subject"))
    name_ids = subjects[0].findall(_saml("NameID")) if len(subjects) == 1 else []
    if len(name_ids) != 1:
        raise VihfError("expected exactly one Subject/NameID")
    return _text(name_ids[0], "NameID")


# -- verification ----------------------------------------------------------------------------


def verify_assertion(
    assertion: etree._Element,
    *,
    now: datetime,
    trust_anchors: Sequence[x509.Certificate],
    clock_skew: timedelta = timedelta(minutes=2),
) -> VerifiedAssertion:
    """Check signature, signer chain, Issuer, validity window and mandatory attributes."""
    try:
        return _verify(assertion, _utc(now), trust_anchors, clock_skew)
    except VihfError:
        raise
    except TrustError as exc:  # SignatureError, CertificateError: one error type for callers
        raise VihfError(str(exc), exc.reason) from exc
    except ValueError as exc:  # malformed certificate extensions
        raise VihfError(f"malformed certificate in the assertion: {exc}") from exc


def _verify(
    assertion: etree._Element,
    now: datetime,
    anchors: Sequence[x509.Certificate],
    skew: timedelta,
) -> VerifiedAssertion:
    _check_plain(assertion)
    identifier = assertion.get("ID") or ""
    if assertion.get("Version") != "2.0" or not identifier:
        raise VihfError("not a SAML 2.0 assertion with an ID")
    signature = _the_signature(assertion)
    signed_info = _one(signature, _ds("SignedInfo"))
    _check_signed_info(signed_info)
    _check_unique_id(assertion, identifier)
    _check_digest(assertion, signature, _the_reference(signed_info, identifier))
    certificates = _key_info_certificates(signature)
    signer = certificates[0]  # KeyInfo lists the signer first, then its intermediates
    _check_signature_value(signer, signature, signed_info)
    path = verify_chain(signer, certificates[1:], anchors, now)
    check_signing_usage(signer)
    issuer_dn = _check_issuer(assertion, signer)
    not_before, not_on_or_after = _check_conditions(assertion, now, skew)
    claims = read_claims(assertion)
    _check_mandatory(_attributes(assertion), claims)
    return VerifiedAssertion(
        claims, issuer_dn, signer, tuple(path), not_before, not_on_or_after, identifier
    )


def _the_signature(assertion: etree._Element) -> etree._Element:
    signatures = list(assertion.iter(_ds("Signature")))
    if not signatures:
        raise VihfError("the assertion is not signed", "unsigned")
    signature = signatures[0]
    if len(signatures) > 1 or signature.getparent() is not assertion:
        raise VihfError("the assertion must carry one ds:Signature, as its own child", "tampered")
    if assertion.index(signature) != 1:
        raise VihfError("the assertion must carry one ds:Signature, right after its Issuer")
    return signature


def _allowed(element: etree._Element, table: Collection[str], what: str) -> None:
    uri = element.get("Algorithm", "")
    if uri not in table:
        raise VihfError(
            f"{what} algorithm {uri!r} is not accepted (SHA-1 and unknown algorithms are "
            "refused; use rsa-sha256 or ecdsa-sha256 with SHA-256 digests)",
            "unsupported",
        )


def _check_signed_info(signed_info: etree._Element) -> None:
    # algorithms first: the refusal then names the algorithm rather than a later symptom
    _allowed(_one(signed_info, _ds("SignatureMethod")), _SIGNATURES, "signature")
    method = _one(signed_info, _ds("CanonicalizationMethod"))
    _allowed(method, {EXC_C14N}, "canonicalization")


def _the_reference(
    signed_info: etree._Element, identifier: str
) -> tuple[etree._Element, _C14n, type[hashes.HashAlgorithm]]:
    references = signed_info.findall(_ds("Reference"))
    if len(references) != 1:
        raise VihfError("the signature must have exactly one Reference, to the assertion")
    reference = references[0]
    if reference.get("URI") != f"#{identifier}":
        raise VihfError(
            f"the signature covers {reference.get('URI')!r}, not this assertion (#{identifier})",
            "tampered",
        )
    transforms = reference.findall(f"{_ds('Transforms')}/{_ds('Transform')}")
    if [t.get("Algorithm") for t in transforms] != [ENVELOPED, EXC_C14N]:
        raise VihfError(
            "the reference transforms must be enveloped-signature then exc-c14n", "unsupported"
        )
    digest_method = _one(reference, _ds("DigestMethod"))
    _allowed(digest_method, _DIGESTS, "digest")
    return reference, _c14n_of(transforms[1]), _DIGESTS[digest_method.get("Algorithm", "")]


def _check_unique_id(assertion: etree._Element, identifier: str) -> None:
    # a second element with the same ID is how wrapping attacks fool ID-based resolvers
    holders = [
        element
        for element in assertion.getroottree().iter()
        if identifier in (element.get(name) for name in _ID_ATTRIBUTES)
    ]
    if len(holders) != 1:
        raise VihfError(f"ID {identifier!r} is not unique in the message", "tampered")


def _check_digest(
    assertion: etree._Element,
    signature: etree._Element,
    plan: tuple[etree._Element, _C14n, type[hashes.HashAlgorithm]],
) -> None:
    reference, c14n, hash_type = plan
    twin = _working_copy(assertion, c14n)
    _detach(twin[assertion.index(signature)])  # the enveloped-signature transform
    digest = hashes.Hash(hash_type())
    digest.update(_canonicalize(twin, c14n))
    expected = _b64(_one(reference, _ds("DigestValue")).text)
    if not hmac.compare_digest(digest.finalize(), expected):
        raise VihfError("digest mismatch: the assertion was modified after signing", "tampered")


def _working_copy(assertion: etree._Element, c14n: _C14n) -> etree._Element:
    if not c14n.prefixes:
        # exc-c14n renders only the namespaces visibly used, which a subtree copy keeps
        return copy.deepcopy(assertion)
    # an InclusiveNamespaces PrefixList may render unused in-scope declarations of ancestors,
    # which only a copy of the whole document keeps
    twin = copy.deepcopy(assertion.getroottree()).getroot()
    for index in _index_path(assertion):
        twin = twin[index]
    return twin


def _index_path(element: etree._Element) -> list[int]:
    path: list[int] = []
    node = element
    while (parent := node.getparent()) is not None:
        path.append(parent.index(node))
        node = parent
    return path[::-1]


def _check_issuer(assertion: etree._Element, signer: x509.Certificate) -> str:
    issuer = assertion[0]
    if issuer.tag != _saml("Issuer") or issuer.get("Format") != X509_SUBJECT_NAME:
        raise VihfError("the assertion must start with an X509SubjectName Issuer")
    issuer_dn = _text(issuer, "Issuer")
    if parse_dn(issuer_dn) != _name_key(signer.subject):
        raise VihfError(
            f"Issuer {issuer_dn!r} is not the signer certificate {describe(signer)!r}", "signer"
        )
    return issuer_dn


def _check_conditions(
    assertion: etree._Element, now: datetime, skew: timedelta
) -> tuple[datetime, datetime]:
    conditions = assertion.findall(_saml("Conditions"))
    if len(conditions) != 1:
        raise VihfError("the assertion must have one Conditions (its validity window)")
    not_before = _time(conditions[0], "NotBefore")
    not_on_or_after = _time(conditions[0], "NotOnOrAfter")
    issued = _time(assertion, "IssueInstant")
    if not_on_or_after <= not_before:
        raise VihfError("empty validity window: NotOnOrAfter is not after NotBefore")
    starts = max(not_before, issued)  # an IssueInstant in the future is not valid yet either
    if now + skew < starts:
        raise VihfError(
            f"the assertion is not valid before {starts.isoformat()} "
            f"(now {now.isoformat()}, skew {skew})",
            "not-yet-valid",
        )
    if now - skew >= not_on_or_after:
        raise VihfError(
            f"the assertion expired at {not_on_or_after.isoformat()} "
            f"(now {now.isoformat()}, skew {skew})",
            "expired",
        )
    return not_before, not_on_or_after


def _check_mandatory(attributes: dict[str, list[etree._Element]], claims: VihfClaims) -> None:
    version = _single(attributes, VERSION)
    if version and version != VIHF_VERSION:
        raise VihfError(f"{VERSION} {version!r}: only {VIHF_VERSION} is supported", "unsupported")
    resource = _single(attributes, RESOURCE)
    if resource and resource != RESOURCE_URN:
        raise VihfError(f"{RESOURCE} {resource!r} is not {RESOURCE_URN}")
    present = {
        VERSION: version,
        "NameID": claims.subject_id,
        SUBJECT_NAME: claims.subject_name,
        STRUCTURE: claims.structure_id,
        ROLE: "yes" if claims.roles else "",
        LPS_ID: claims.lps_id,
        LPS_NAME: claims.lps_name,
        LPS_VERSION: claims.lps_version,
        LPS_HOMOLOGATION: claims.lps_homologation,
    }
    missing = [name for name, value in present.items() if not value]
    if missing:
        raise VihfError(f"missing mandatory VIHF attribute(s): {', '.join(missing)}")


# -- helpers ---------------------------------------------------------------------------------


_DN_TYPES = {
    "CN": NameOID.COMMON_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "S": NameOID.STATE_OR_PROVINCE_NAME,  # .NET spelling, seen in DMP integrators' code
    "C": NameOID.COUNTRY_NAME,
    "STREET": NameOID.STREET_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
    "UID": NameOID.USER_ID,
    "E": NameOID.EMAIL_ADDRESS,
    "EMAILADDRESS": NameOID.EMAIL_ADDRESS,
    "SERIALNUMBER": NameOID.SERIAL_NUMBER,
    "SN": NameOID.SURNAME,
    "G": NameOID.GIVEN_NAME,
    "GIVENNAME": NameOID.GIVEN_NAME,
    "T": NameOID.TITLE,
    "TITLE": NameOID.TITLE,
    "ORGANIZATIONIDENTIFIER": NameOID.ORGANIZATION_IDENTIFIER,
}
# one attribute=value and its separator; values are escaped (RFC 4514) or quoted (RFC 1779)
_AVA = re.compile(
    r"\s*((?:OID\.)?[0-9]+(?:\.[0-9]+)+|[A-Za-z][A-Za-z0-9-]*)\s*="
    r'(\s*"(?:[^"\\]|\\.)*"\s*|(?:[^,;+"\\]|\\.)*)'
    r"([,;+]|$)",
    re.DOTALL,
)
_ESCAPE = re.compile(r"\\(?:([0-9A-Fa-f]{2})|(.))", re.DOTALL)
_DnKey = tuple[frozenset[tuple[str, str]], ...]


def parse_dn(text: str) -> _DnKey:
    """A DN string (RFC 4514, or Java's ``"CN=x, OU=y"``) as comparable RDNs, ASN.1 order."""
    rdns: list[frozenset[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    position, separator = 0, ""
    while position < len(text):
        match = _AVA.match(text, position)
        if match is None or match.end() == position:
            raise VihfError(f"malformed DN {text!r}")
        current.append((_dn_type(match[1]), _normalize(_dn_value(match[2]))))
        separator = match[3]
        if separator != "+":
            rdns.append(frozenset(current))
            current = []
        position = match.end()
    if current or not rdns or separator:  # nothing after a trailing separator
        raise VihfError(f"malformed DN {text!r}")
    return tuple(reversed(rdns))


def _dn_type(name: str) -> str:
    upper = name.upper().removeprefix("OID.")
    if upper[0].isdigit():
        return upper
    if upper not in _DN_TYPES:
        raise VihfError(f"unknown DN attribute type {name!r}")
    return _DN_TYPES[upper].dotted_string


def _dn_value(raw: str) -> str:
    stripped = raw.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == '"':
        raw = stripped[1:-1]
    out = bytearray()
    position = 0
    for match in _ESCAPE.finditer(raw):
        out += raw[position : match.start()].encode()
        out += bytes.fromhex(match[1]) if match[1] else match[2].encode()
        position = match.end()
    out += raw[position:].encode()
    try:
        return out.decode()
    except UnicodeDecodeError as exc:
        raise VihfError(f"invalid UTF-8 escape in DN value {raw!r}") from exc


def _normalize(value: str) -> str:
    # DirectoryString matching: case and insignificant spaces are ignored (RFC 4518, simplified)
    return " ".join(value.split()).casefold()


def _name_key(name: x509.Name) -> _DnKey:
    return tuple(
        frozenset((a.oid.dotted_string, _normalize(str(a.value))) for a in rdn) for rdn in name.rdns
    )


def _time(element: etree._Element, attribute: str) -> datetime:
    text = element.get(attribute)
    if not text:
        raise VihfError(f"missing {attribute}")
    try:
        return _utc(datetime.fromisoformat(text.strip()))
    except ValueError as exc:
        raise VihfError(f"invalid {attribute} {text!r}") from exc


def _utc(value: datetime) -> datetime:
    # SAML times are UTC; a naive datetime is taken as UTC, like chain.py does
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def _iso(value: datetime) -> str:
    value = _utc(value)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
