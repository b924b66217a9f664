"""The DMP's VIHF assertion: build, sign, parse, verify; the official sample; attacks."""

from __future__ import annotations

import base64
import copy
import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from lxml import etree

from drimbox.adapters.trust import pki
from drimbox.adapters.trust.errors import TrustError
from drimbox.adapters.trust.vihf import (
    CONFIDENTIALITY,
    HL7_NS,
    NORMAL_ACCESS,
    SAML_NS,
    WSSE_NS,
    XSI_NS,
    AuthMode,
    CodedValue,
    VerifiedAssertion,
    VihfClaims,
    VihfError,
    build_assertion,
    dn_string,
    find_assertion,
    parse_assertion,
    parse_dn,
    patient_resource_id,
    read_claims,
    security_header,
    sign_assertion,
    verify_assertion,
)
from drimbox.adapters.trust.xmldsig import DS_NS, EXC_C14N, _sign

SAMPLE = (
    Path(__file__).parents[3] / "shared/drim-m/data/Echantillons validateurs/Validateur XDS/XDS.xml"
)
SOAP_NS = "http://www.w3.org/2003/05/soap-envelope"
NOW = datetime(2025, 6, 2, 10, 0, tzinfo=UTC)

CLAIMS = VihfClaims(
    subject_id="899700367909",
    subject_name="Alain PAT-SIX",
    roles=(
        CodedValue("10", "1.2.250.1.71.1.2.7", "Medecin"),
        CodedValue("SM26", "1.2.250.1.71.4.2.5", "Qualifie en Medecine Generale (SM)"),
    ),
    structure_id="499700367909006",
    sector=CodedValue("SA07", "1.2.250.1.71.4.2.4"),
    patient_id=patient_resource_id("162018885045327"),
    mode=AuthMode.INDIRECTE,
    purpose=NORMAL_ACCESS,
    lps_id="drimbox-dev-0001",
    lps_name="drimbox",
    lps_version="0.1.0",
    lps_homologation="DMP-HOMOL-TEST",
)


def _saml(name: str) -> str:
    return f"{{{SAML_NS}}}{name}"


def _ds(name: str) -> str:
    return f"{{{DS_NS}}}{name}"


@pytest.fixture(scope="module")
def ca() -> pki.DevCA:
    return pki.create_ca("ec", now=NOW - timedelta(days=1))[0]


@pytest.fixture(scope="module")
def signer(ca: pki.DevCA) -> pki.Issued:
    return pki.issue(ca, "DRIMbox", kind="signing", not_before=NOW - timedelta(days=1))


def _build(
    signer: pki.Issued,
    claims: VihfClaims = CLAIMS,
    *,
    issued_at: datetime = NOW,
    assertion_id: str | None = None,
) -> etree._Element:
    return build_assertion(
        claims,
        key=signer.key,
        chain=signer.chain,
        issued_at=issued_at,
        assertion_id=assertion_id,
    )


def _envelope(assertion: etree._Element) -> bytes:
    """The assertion as it travels: in wsse:Security of a SOAP 1.2 header, serialized."""
    envelope = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"soap": SOAP_NS})
    header = etree.SubElement(envelope, f"{{{SOAP_NS}}}Header")
    header.append(security_header(assertion))
    etree.SubElement(envelope, f"{{{SOAP_NS}}}Body")
    return etree.tostring(envelope, xml_declaration=True, encoding="UTF-8")


def _verify(
    assertion: etree._Element, anchor: x509.Certificate, now: datetime = NOW
) -> VerifiedAssertion:
    return verify_assertion(assertion, now=now, trust_anchors=[anchor])


def _refusal(assertion: etree._Element, anchor: x509.Certificate, now: datetime = NOW) -> VihfError:
    with pytest.raises(VihfError) as caught:
        _verify(assertion, anchor, now)
    return caught.value


def _attribute(assertion: etree._Element, name: str) -> etree._Element:
    (found,) = [a for a in assertion.iter(_saml("Attribute")) if a.get("Name") == name]
    return found


def _resign(assertion: etree._Element, signer: pki.Issued) -> etree._Element:
    """Re-sign after an edit: what a legitimate but faulty issuer would produce."""
    signature = assertion.find(_ds("Signature"))
    assert signature is not None
    assertion.remove(signature)
    sign_assertion(assertion, key=signer.key, chain=signer.chain)
    return assertion


# -- round trip ------------------------------------------------------------------------------


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_build_and_verify_round_trip(key_type: pki.KeyType) -> None:
    ca, _ = pki.create_ca(key_type, now=NOW - timedelta(days=1))
    signer = pki.issue(
        ca, "DRIMbox", kind="signing", key_type=key_type, not_before=NOW - timedelta(days=1)
    )
    claims = replace(CLAIMS, confidentiality=(CodedValue("N", "2.16.840.1.113883.5.25"),))
    data = _envelope(_build(signer, claims, assertion_id="_vihf-1"))
    assert b"sha1" not in data
    expected_method = "rsa-sha256" if key_type == "rsa" else "ecdsa-sha256"
    assert expected_method.encode() in data

    assertion = parse_assertion(data)
    verified = verify_assertion(assertion, now=NOW + timedelta(minutes=1), trust_anchors=[ca.root])

    assert verified.claims == claims
    assert verified.assertion_id == "_vihf-1"
    assert verified.signer == signer.certificate
    assert verified.chain == (signer.certificate, ca.intermediate, ca.root)
    assert verified.issuer_dn == "CN=DRIMbox, OU=399999999900001, O=drimbox dev, C=FR"
    assert verified.not_before == NOW
    assert verified.not_on_or_after == NOW + timedelta(minutes=5)
    assert read_claims(assertion) == claims


def test_shape_follows_the_official_sample(signer: pki.Issued) -> None:
    assertion = _build(signer)
    assert assertion.get("Version") == "2.0"
    assert assertion.get("IssueInstant") == "2025-06-02T10:00:00.000Z"
    assert [etree.QName(child).localname for child in assertion] == [
        "Issuer",
        "Signature",
        "Subject",
        "Conditions",
        "AuthnStatement",
        "AttributeStatement",
    ]
    issuer = assertion[0]
    assert issuer.get("Format") == "urn:oasis:names:tc:SAML:1.1:nameid-format:X509SubjectName"
    assert issuer.text == dn_string(signer.certificate.subject)
    reference = assertion.find(f"{_ds('Signature')}/{_ds('SignedInfo')}/{_ds('Reference')}")
    assert reference is not None and reference.get("URI") == f"#{assertion.get('ID')}"
    transforms = [t.get("Algorithm") for t in reference.iter(_ds("Transform"))]
    assert transforms == [
        "http://www.w3.org/2000/09/xmldsig#enveloped-signature",
        "http://www.w3.org/2001/10/xml-exc-c14n#",
    ]
    class_ref = assertion.find(f".//{_saml('AuthnContextClassRef')}")
    assert class_ref is not None
    assert class_ref.text == "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient"
    assert assertion.find(f".//{_saml('AuthnContextDecl')}") is None  # INDIRECTE only

    attributes = list(assertion.iter(_saml("Attribute")))
    assert all(a.get("NameFormat") is None for a in attributes)  # as in the sample
    assert _attribute(assertion, "VIHF_Version")[0].text == "3.0"
    assert _attribute(assertion, "Ressource_URN")[0].text == "urn:dmp"
    assert _attribute(assertion, "Secteur_Activite")[0].text == "SA07^1.2.250.1.71.4.2.4"
    resource = _attribute(assertion, "urn:oasis:names:tc:xacml:2.0:resource:resource-id")
    assert resource[0].text == "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH"
    roles = _attribute(assertion, "urn:oasis:names:tc:xacml:2.0:subject:role")
    role = roles[0][0]
    assert role.tag == f"{{{HL7_NS}}}Role"
    assert role.get(f"{{{XSI_NS}}}type") == "CE"
    assert (role.get("code"), role.get("codeSystem"), role.get("displayName")) == (
        "10",
        "1.2.250.1.71.1.2.7",
        "Medecin",
    )
    purpose = _attribute(assertion, "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse")[0][0]
    assert purpose.tag == f"{{{HL7_NS}}}PurposeOfUse"
    assert purpose.get("codeSystemName") == "mode acces VIHF 1.0"
    # no patient: no resource-id; no sector: no Secteur_Activite
    bare = _build(signer, replace(CLAIMS, patient_id="", sector=None))
    names = {a.get("Name") for a in bare.iter(_saml("Attribute"))}
    assert "urn:oasis:names:tc:xacml:2.0:resource:resource-id" not in names
    assert "Secteur_Activite" not in names
    assert CONFIDENTIALITY not in names


def test_renforcee_mode_declares_browser_authentication(signer: pki.Issued, ca: pki.DevCA) -> None:
    claims = replace(CLAIMS, mode=AuthMode.INDIRECTE_RENFORCEE)
    assertion = _build(signer, claims)
    decl = assertion.find(f".//{_saml('AuthnContextDecl')}")
    assert decl is not None and decl.text == "APP_BROWSER_AUTH"
    assert verify_assertion(assertion, now=NOW, trust_anchors=[ca.root]).claims == claims


def test_security_header_uses_ws_security_1_0(signer: pki.Issued) -> None:
    assertion = _build(signer)
    header = security_header(assertion)
    assert header.tag == f"{{{WSSE_NS}}}Security"
    assert header[0] is assertion
    soap_header = etree.Element(f"{{{SOAP_NS}}}Header")
    soap_header.append(header)
    assert find_assertion(soap_header) is assertion
    assert find_assertion(etree.Element(f"{{{SOAP_NS}}}Header")) is None


def test_build_refuses_what_verify_would_refuse(signer: pki.Issued, ca: pki.DevCA) -> None:
    with pytest.raises(ValueError, match="lps_homologation"):
        _build(signer, replace(CLAIMS, lps_homologation=""))
    with pytest.raises(ValueError, match="roles"):
        _build(signer, replace(CLAIMS, roles=()))
    other = pki.issue(ca, "other", kind="signing", not_before=NOW - timedelta(days=1))
    with pytest.raises(ValueError, match="signing key"):
        build_assertion(CLAIMS, key=other.key, chain=signer.chain, issued_at=NOW)


def test_inclusive_namespaces_prefix_list_is_honoured(signer: pki.Issued, ca: pki.DevCA) -> None:
    """Other DMP clients sign with exc-c14n PrefixList ("ds saml #default xsi"): the digest
    then covers in-scope declarations of the SOAP ancestors, which verification must keep."""
    envelope = etree.fromstring(_envelope(_build(signer)))
    assertion = find_assertion(envelope)
    assert assertion is not None
    signature = assertion.find(_ds("Signature"))
    assert signature is not None
    exc_transform = list(signature.iter(_ds("Transform")))[1]
    etree.SubElement(exc_transform, f"{{{EXC_C14N}}}InclusiveNamespaces", PrefixList="soap xsi")
    # digest and sign as such a client would, in the message's context
    twin = find_assertion(copy.deepcopy(envelope))
    assert twin is not None
    twin.remove(twin[1])
    data = etree.tostring(
        twin, method="c14n", exclusive=True, inclusive_ns_prefixes=["soap", "xsi"]
    )
    assert b"xmlns:soap" in data
    digest_value = signature.find(f".//{_ds('DigestValue')}")
    assert digest_value is not None
    digest_value.text = base64.b64encode(hashlib.sha256(data).digest()).decode()
    signed_info = signature[0]
    signed = etree.tostring(signed_info, method="c14n", exclusive=True)
    signature[1].text = base64.b64encode(_sign(signer.key, signed)).decode()

    assert _verify(assertion, ca.root).claims == CLAIMS
    # the same assertion lifted out of its envelope no longer matches its digest
    assert _refusal(copy.deepcopy(assertion), ca.root).reason == "tampered"


# -- the official sample ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample() -> bytes:
    if not SAMPLE.is_file():
        pytest.skip(f"official sample {SAMPLE} is absent")
    return SAMPLE.read_bytes()


def test_official_sample_is_read(sample: bytes) -> None:
    envelope = etree.fromstring(sample)
    header = envelope.find(f"{{{SOAP_NS}}}Header")
    assert header is not None
    assertion = find_assertion(header)
    assert assertion is not None
    assert find_assertion(envelope) is assertion
    assert parse_assertion(sample).get("ID") == "2075641d-5bbc-4d18-84ef-ea1775fd2310"

    claims = read_claims(assertion)
    assert claims.subject_id == "899700367909"
    assert claims.subject_name == "Alain PAT-SIX"
    assert claims.roles == (
        CodedValue("10", "1.2.250.1.71.1.2.7", "Medecin"),
        CodedValue("SM26", "1.2.250.1.71.4.2.5", "Qualifie en Medecine Generale (SM)"),
    )
    assert claims.sector == CodedValue("SA25", "1.2.250.1.71.4.2.4")
    assert claims.patient_id == "162018885045327^^^&1.2.250.1.213.1.4.10&ISO^NH"
    assert claims.mode is AuthMode.INDIRECTE
    assert claims.purpose == NORMAL_ACCESS
    assert claims.structure_id == claims.lps_id == claims.lps_homologation == "XXXXXXX"
    assert claims.confidentiality == ()
    # the Issuer is in Java's DN style, which our comparison understands
    issuer = assertion.find(_saml("Issuer"))
    assert issuer is not None and issuer.text is not None
    rfc4514 = "CN=DRIMbox,OU=499700367909006,O=CABINET M DOC0036790,ST=Paris (75),C=FR"
    assert parse_dn(issuer.text) == parse_dn(rfc4514)


def test_official_sample_signature_is_refused_for_sha1(sample: bytes, ca: pki.DevCA) -> None:
    assertion = parse_assertion(sample)
    error = _refusal(assertion, ca.root, now=datetime(2023, 11, 3, 15, 18, tzinfo=UTC))
    assert error.reason == "unsupported"
    assert "rsa-sha1" in str(error)
    assert isinstance(error, TrustError)


# -- refusals --------------------------------------------------------------------------------


def test_expired_assertion_is_refused(signer: pki.Issued, ca: pki.DevCA) -> None:
    assertion = _build(signer, issued_at=NOW - timedelta(minutes=10))
    error = _refusal(assertion, ca.root)
    assert error.reason == "expired"
    # within the clock skew it is still accepted
    _verify(_build(signer, issued_at=NOW - timedelta(minutes=6)), ca.root)


def test_not_yet_valid_assertion_is_refused(signer: pki.Issued, ca: pki.DevCA) -> None:
    assertion = _build(signer, issued_at=NOW + timedelta(minutes=10))
    assert _refusal(assertion, ca.root).reason == "not-yet-valid"
    _verify(_build(signer, issued_at=NOW + timedelta(minutes=1)), ca.root)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (f"{_saml('Subject')}/{_saml('NameID')}", "899700000000"),
        (f".//{_saml('AttributeValue')}", "2.0"),
        (f"{_saml('Conditions')}", None),
    ],
)
def test_tampered_assertion_is_refused(
    signer: pki.Issued, ca: pki.DevCA, path: str, value: str | None
) -> None:
    assertion = parse_assertion(_envelope(_build(signer)))
    target = assertion.find(path)
    assert target is not None
    if value is None:
        target.set("NotOnOrAfter", "2099-01-01T00:00:00.000Z")
    else:
        target.text = value
    error = _refusal(assertion, ca.root)
    assert error.reason == "tampered"


def test_tampered_role_code_is_refused(signer: pki.Issued, ca: pki.DevCA) -> None:
    assertion = _build(signer)
    role = _attribute(assertion, "urn:oasis:names:tc:xacml:2.0:subject:role")[0][0]
    role.set("code", "21")  # pharmacist instead of physician
    assert _refusal(assertion, ca.root).reason == "tampered"


def test_wrong_trust_anchor_is_refused(signer: pki.Issued) -> None:
    other_ca, _ = pki.create_ca("ec", now=NOW - timedelta(days=1))
    error = _refusal(_build(signer), other_ca.root)
    assert error.reason == "untrusted"


def test_forged_signer_with_its_own_chain_is_refused(ca: pki.DevCA) -> None:
    rogue_ca, _ = pki.create_ca("ec", now=NOW - timedelta(days=1))
    rogue = pki.issue(rogue_ca, "DRIMbox", kind="signing", not_before=NOW - timedelta(days=1))
    assert _refusal(_build(rogue), ca.root).reason == "untrusted"


@pytest.mark.parametrize(
    "name",
    [
        "VIHF_Version",
        "Identifiant_Structure",
        "urn:oasis:names:tc:xspa:1.0:subject:subject-id",
        "urn:oasis:names:tc:xacml:2.0:subject:role",
        "Authentification_Mode",
        "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse",
        "LPS_ID",
        "LPS_Nom",
        "LPS_Version",
        "LPS_ID_HOMOLOGATION_DMP",
    ],
)
def test_missing_mandatory_attribute_is_refused(
    signer: pki.Issued, ca: pki.DevCA, name: str
) -> None:
    assertion = _build(signer)
    attribute = _attribute(assertion, name)
    parent = attribute.getparent()
    assert parent is not None
    parent.remove(attribute)
    error = _refusal(_resign(assertion, signer), ca.root)
    assert error.reason == "malformed"
    assert "missing mandatory" in str(error) and name in str(error)


def test_unsupported_vihf_version_and_mode_are_refused(signer: pki.Issued, ca: pki.DevCA) -> None:
    assertion = _build(signer)
    _attribute(assertion, "VIHF_Version")[0].text = "2.0"
    assert _refusal(_resign(assertion, signer), ca.root).reason == "unsupported"
    assertion = _build(signer)
    _attribute(assertion, "Authentification_Mode")[0].text = "ANONYME"
    assert _refusal(_resign(assertion, signer), ca.root).reason == "unsupported"


def test_missing_conditions_is_refused(signer: pki.Issued, ca: pki.DevCA) -> None:
    assertion = _build(signer)
    conditions = assertion.find(_saml("Conditions"))
    assert conditions is not None
    assertion.remove(conditions)
    error = _refusal(_resign(assertion, signer), ca.root)
    assert "Conditions" in str(error)


def test_issuer_must_be_the_signer(signer: pki.Issued, ca: pki.DevCA) -> None:
    assertion = _build(signer)
    assertion[0].text = "CN=DRIMbox, OU=499700367909006, O=CABINET M DOC0036790, C=FR"
    error = _refusal(_resign(assertion, signer), ca.root)
    assert error.reason == "signer"
    # the same DN in other spellings (no spaces, case) is the signer
    assertion = _build(signer)
    assertion[0].text = "cn=DRIMbox,ou=399999999900001,o=DRIMBOX DEV,c=FR"
    _verify(_resign(assertion, signer), ca.root)


def test_sha1_digest_is_refused(signer: pki.Issued, ca: pki.DevCA) -> None:
    assertion = _build(signer)
    method = assertion.find(f".//{_ds('DigestMethod')}")
    assert method is not None
    method.set("Algorithm", "http://www.w3.org/2000/09/xmldsig#sha1")
    error = _refusal(assertion, ca.root)
    assert error.reason == "unsupported" and "sha1" in str(error)


def test_reference_to_another_id_is_refused(signer: pki.Issued, ca: pki.DevCA) -> None:
    assertion = _build(signer)
    assertion.set("ID", "_another")
    error = _refusal(assertion, ca.root)
    assert error.reason == "tampered" and "_another" in str(error)


def test_unsigned_assertion_is_refused(signer: pki.Issued, ca: pki.DevCA) -> None:
    assertion = _build(signer)
    signature = assertion.find(_ds("Signature"))
    assert signature is not None
    assertion.remove(signature)
    assert _refusal(assertion, ca.root).reason == "unsigned"


def test_comment_inside_a_signed_value_is_refused(signer: pki.Issued, ca: pki.DevCA) -> None:
    # "8997<!---->00367909" would canonicalize like the signed text yet read as "8997"
    assertion = _build(signer)
    data = etree.tostring(assertion).replace(b">899700367909<", b">8997<!---->00367909<")
    unsafe = etree.fromstring(data)  # a caller that parsed without dropping comments
    error = _refusal(unsafe, ca.root)
    assert "comments" in str(error)
    with pytest.raises(VihfError):
        read_claims(unsafe)
    # the safe parser drops comments, so the signed value is read whole
    verified = verify_assertion(parse_assertion(data), now=NOW, trust_anchors=[ca.root])
    assert verified.claims.subject_id == "899700367909"


# -- signature wrapping ----------------------------------------------------------------------


def _forge(signed: etree._Element) -> etree._Element:
    forged = copy.deepcopy(signed)
    subject_name = _attribute(forged, "urn:oasis:names:tc:xspa:1.0:subject:subject-id")
    subject_name[0].text = "Mallory ATTACKER"
    _attribute(forged, "urn:oasis:names:tc:xacml:2.0:resource:resource-id")[
        0
    ].text = patient_resource_id("299999999999999")
    return forged


def test_wrapped_original_under_forged_assertion_is_refused(
    signer: pki.Issued, ca: pki.DevCA
) -> None:
    signed = _build(signer)
    forged = _forge(signed)
    signature = forged.find(_ds("Signature"))
    assert signature is not None
    forged.remove(signature)
    # the genuine signed assertion is hidden inside the forged one (as Advice would be)
    advice = etree.Element(_saml("Advice"))
    forged.insert(1, advice)
    advice.append(signed)
    security = security_header(forged)
    soap_header = etree.Element(f"{{{SOAP_NS}}}Header")
    soap_header.append(security)

    with pytest.raises(VihfError) as caught:
        find_assertion(soap_header)
    assert caught.value.reason == "tampered"
    assert _refusal(forged, ca.root).reason == "tampered"


def test_forged_assertion_with_moved_signature_is_refused(
    signer: pki.Issued, ca: pki.DevCA
) -> None:
    signed = _build(signer)
    forged = _forge(signed)  # keeps a copy of the genuine signature, same ID
    soap_header = etree.Element(f"{{{SOAP_NS}}}Header")
    soap_header.append(security_header(forged))
    # the genuine assertion is moved under another header element, out of wsse:Security
    hiding = etree.SubElement(soap_header, "{urn:example:attacker}Wrapper")
    hiding.append(signed)
    data = etree.tostring(soap_header)

    reparsed = etree.fromstring(data)
    found = find_assertion(reparsed)
    assert found is not None
    assert read_claims(found).subject_name == "Mallory ATTACKER"
    error = _refusal(found, ca.root)
    assert error.reason == "tampered"
    assert "not unique" in str(error)
    # without the duplicate, the forged content still fails its digest
    lone = copy.deepcopy(found)
    assert _refusal(lone, ca.root).reason == "tampered"


def test_signature_elsewhere_than_the_assertion_is_refused(
    signer: pki.Issued, ca: pki.DevCA
) -> None:
    assertion = _build(signer)
    signature = assertion.find(_ds("Signature"))
    assert signature is not None
    subject = assertion.find(_saml("Subject"))
    assert subject is not None
    subject.append(signature)
    assert _refusal(assertion, ca.root).reason == "tampered"


def test_two_assertions_in_the_security_header_are_ambiguous(signer: pki.Issued) -> None:
    security = security_header(_build(signer))
    security.append(_build(signer))
    soap_header = etree.Element(f"{{{SOAP_NS}}}Header")
    soap_header.append(security)
    with pytest.raises(VihfError, match="exactly one"):
        find_assertion(soap_header)


# -- hostile XML -----------------------------------------------------------------------------


def test_doctype_is_refused(signer: pki.Issued, ca: pki.DevCA) -> None:
    body = etree.tostring(_build(signer))
    hostile = b'<!DOCTYPE saml2:Assertion [<!ENTITY x "899700367909">]>' + body
    with pytest.raises(VihfError) as caught:
        parse_assertion(hostile)
    assert caught.value.reason == "dtd"
    with pytest.raises(VihfError) as caught:
        parse_assertion(b'<!DOCTYPE x SYSTEM "http://attacker.example/x.dtd">' + body)
    assert caught.value.reason == "dtd"
    # an element parsed elsewhere with its DTD is refused too
    unsafe = etree.fromstring(hostile)
    assert _refusal(unsafe, ca.root).reason == "dtd"


def test_not_an_assertion_is_refused(ca: pki.DevCA) -> None:
    with pytest.raises(VihfError, match="no VIHF assertion"):
        parse_assertion(b"<a/>")
    assert _refusal(etree.Element("a"), ca.root).reason == "malformed"


# -- DN comparison ---------------------------------------------------------------------------


def test_dn_parsing() -> None:
    java = parse_dn("CN=DRIMbox, OU=499700367909006, O=CABINET M DOC0036790, ST=Paris (75), C=FR")
    dotnet = parse_dn("CN=DRIMbox,OU=499700367909006,O=cabinet m doc0036790,S=Paris (75),C=FR")
    assert java == dotnet
    assert java[0] == frozenset({("2.5.4.6", "fr")})  # ASN.1 order: country first
    assert parse_dn(r"CN=a\, b+OU=x,O=\43abinet") == parse_dn('OU=x+CN="a, b",O=Cabinet')
    assert parse_dn(r"CN=Radiologie \C3\A9lite") == parse_dn("CN=Radiologie élite")
    for malformed in ("", "CN", "CN=a,", "XYZ=1"):
        with pytest.raises(VihfError):
            parse_dn(malformed)
