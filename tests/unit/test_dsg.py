"""The XAdES signature document of a submission set (IHE DSG): shape, round trip, tampering."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from lxml import etree
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from drimbox.adapters.trust import pki
from drimbox.adapters.trust.chain import CertificateError, verify_chain
from drimbox.adapters.trust.dsg import (
    PURPOSE_SOURCE,
    SignedDocument,
    VerifiedSubmissionSignature,
    sign_submission_set,
    verify_submission_signature,
)
from drimbox.adapters.trust.xmldsig import DS_NS, XADES_NS, SignatureError, SigningKey
from tests.dicom_factory import part10

NS = {"ds": DS_NS, "xades": XADES_NS}
KOS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"
SIGNATURE_UID = "1.2.250.1.999.1.1.1.3"
SET_UID = "1.2.250.1.999.1.1.1.1"
KOS_UID = "1.2.250.1.999.1.1.1.2.1"
REPORT_UID = "2.25.329800735698586629295641978511506172918"
SIGNED_AT = datetime.now(UTC).replace(microsecond=0)


def _kos_bytes() -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = UID(KOS_SOP_CLASS)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = UID(KOS_UID)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.5"
    ds.PatientID, ds.Modality = "IPP77", "KO"
    return part10(ds)


KOS = _kos_bytes()
REPORT = b'<?xml version="1.0" encoding="UTF-8"?>\n<ClinicalDocument xmlns="urn:hl7-org:v3"/>\n'
DOCUMENTS = {KOS_UID: KOS, REPORT_UID: REPORT}


@pytest.fixture(scope="module", params=["ec", "rsa"])
def key_type(request: pytest.FixtureRequest) -> pki.KeyType:
    value: pki.KeyType = request.param
    return value


@pytest.fixture(scope="module")
def ca(key_type: pki.KeyType) -> pki.DevCA:
    # valid from before SIGNED_AT, which is taken at import: a long run creates these later
    return pki.create_ca(key_type, now=SIGNED_AT - timedelta(hours=1))[0]


@pytest.fixture(scope="module")
def signer(ca: pki.DevCA, key_type: pki.KeyType) -> pki.Issued:
    return pki.issue(ca, "DRIMbox source dev", kind="signing", key_type=key_type,
                     not_before=SIGNED_AT - timedelta(hours=1))  # fmt: skip


class Sign(Protocol):
    def __call__(
        self,
        documents: Mapping[str, bytes] = ...,
        submission_set: str = ...,
        key: SigningKey | None = None,
        chain: Sequence[x509.Certificate] | None = None,
    ) -> bytes: ...


@pytest.fixture(scope="module")
def sign(signer: pki.Issued) -> Sign:
    def _sign(
        documents: Mapping[str, bytes] = DOCUMENTS,
        submission_set: str = SET_UID,
        key: SigningKey | None = None,
        chain: Sequence[x509.Certificate] | None = None,
    ) -> bytes:
        return sign_submission_set(
            signature_id=SIGNATURE_UID,
            submission_set_unique_id=submission_set,
            documents=[SignedDocument(uid, data) for uid, data in documents.items()],
            key=signer.key if key is None else key,
            chain=signer.chain if chain is None else chain,
            signing_time=SIGNED_AT,
        )

    return _sign


@pytest.fixture(scope="module")
def signed(sign: Sign) -> bytes:
    return sign()


def _edit(data: bytes, xpath: str, change: Callable[[etree._Element], None]) -> bytes:
    root = etree.fromstring(data)
    found = root.xpath(xpath, namespaces=NS)
    assert isinstance(found, list) and len(found) == 1
    assert isinstance(found[0], etree._Element)
    change(found[0])
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _set_text(text: str) -> Callable[[etree._Element], None]:
    def change(element: etree._Element) -> None:
        element.text = text

    return change


def _refused(data: bytes, documents: dict[str, bytes] | None = None) -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        verify_submission_signature(data, documents)
    return caught.value


# -- round trip and trust --------------------------------------------------------------------


def test_round_trip(signed: bytes, signer: pki.Issued, ca: pki.DevCA) -> None:
    result = verify_submission_signature(signed, DOCUMENTS)
    assert isinstance(result, VerifiedSubmissionSignature)
    assert result.signature_id == SIGNATURE_UID
    assert result.submission_set_unique_id == SET_UID
    assert result.document_unique_ids == (KOS_UID, REPORT_UID)
    assert result.signer == signer.certificate
    assert result.chain == signer.chain
    assert result.signing_time == SIGNED_AT
    # trust is the chain module's job: the carried chain leads to the dev root
    path = verify_chain(result.signer, result.chain, [ca.root], SIGNED_AT)
    assert path == [signer.certificate, ca.intermediate, ca.root]


def test_verifies_without_the_documents(signed: bytes) -> None:
    result = verify_submission_signature(signed)
    assert result.document_unique_ids == (KOS_UID, REPORT_UID)


def test_chain_from_another_pki_is_not_trusted(signed: bytes, key_type: pki.KeyType) -> None:
    result = verify_submission_signature(signed, DOCUMENTS)
    other = pki.create_ca(key_type)[0]
    with pytest.raises(CertificateError):
        verify_chain(result.signer, result.chain, [other.root], SIGNED_AT)


# -- shape -----------------------------------------------------------------------------------


def test_structure_matches_the_dmp_profile(signed: bytes, signer: pki.Issued) -> None:
    root = etree.fromstring(signed)

    def xp(path: str) -> list[str]:
        found = root.xpath(path, namespaces=NS)
        assert isinstance(found, list)
        return [str(x) for x in found]

    assert signed.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert root.tag == f"{{{DS_NS}}}Signature" and root.get("Id") == SIGNATURE_UID
    assert xp("ds:SignedInfo/ds:Reference/@Type") == [
        "http://www.w3.org/2000/09/xmldsig#Manifest",
        "http://uri.etsi.org/01903#SignedProperties",
    ]
    assert xp("ds:SignedInfo/ds:Reference/@URI") == ["#IHEManifest", "#S0-SignedProperties"]
    assert xp("ds:SignedInfo/ds:SignatureMethod/@Algorithm")[0].endswith("-sha256")
    assert set(xp("//ds:DigestMethod/@Algorithm")) == {"http://www.w3.org/2001/04/xmlenc#sha256"}
    assert b"sha1" not in signed.lower()

    purpose = "ds:Object/ds:SignatureProperties/ds:SignatureProperty"
    assert xp(f"{purpose}/@Id") == ["purposeOfSignature"]
    assert xp(f"{purpose}/@Target") == [f"#{SIGNATURE_UID}"]
    assert xp(f"{purpose}/text()") == [PURPOSE_SOURCE] == ["1.2.840.10065.1.12.1.14"]

    manifest = "ds:Object/ds:Manifest[@Id='IHEManifest']"
    assert xp(f"{manifest}/ds:Reference/@URI") == [
        f"urn:oid:{SET_UID}",
        f"urn:oid:{KOS_UID}",
        f"urn:oid:{REPORT_UID}",
    ]
    digests = xp(f"{manifest}/ds:Reference/ds:DigestValue/text()")
    assert digests == [
        "AA==",  # the submission set has no bytes: the demonstrator's placeholder
        base64.b64encode(hashlib.sha256(KOS).digest()).decode(),
        base64.b64encode(hashlib.sha256(REPORT).digest()).decode(),
    ]

    qualifying = "ds:Object/xades:QualifyingProperties"
    assert xp(f"{qualifying}/@Target") == [f"#{SIGNATURE_UID}"]
    signed_sig = f"{qualifying}/xades:SignedProperties[@Id='S0-SignedProperties']"
    signed_sig += "/xades:SignedSignatureProperties"
    assert xp(f"{signed_sig}/xades:SigningTime/text()") == [
        SIGNED_AT.strftime("%Y-%m-%dT%H:%M:%SZ")
    ]
    cert = f"{signed_sig}/xades:SigningCertificate/xades:Cert"
    fingerprint = hashlib.sha256(signer.certificate.public_bytes(serialization.Encoding.DER))
    assert xp(f"{cert}/xades:CertDigest/ds:DigestValue/text()") == [
        base64.b64encode(fingerprint.digest()).decode()
    ]
    assert xp(f"{cert}/xades:IssuerSerial/ds:X509SerialNumber/text()") == [
        str(signer.certificate.serial_number)
    ]
    assert xp(f"{cert}/xades:IssuerSerial/ds:X509IssuerName/text()") == [
        signer.certificate.issuer.rfc4514_string()
    ]
    assert (
        len(xp(f"{signed_sig}/xades:SignaturePolicyIdentifier/xades:SignaturePolicyImplied")) == 1
    )
    assert len(xp("ds:KeyInfo/ds:X509Data/ds:X509Certificate")) == 3


# -- tampering and mismatches ----------------------------------------------------------------


def test_tampered_document_bytes_name_the_document(signed: bytes) -> None:
    error = _refused(signed, {KOS_UID: KOS, REPORT_UID: REPORT.replace(b"v3", b"v4")})
    assert error.reason == "tampered"
    assert REPORT_UID in str(error) and KOS_UID not in str(error)


def test_tampered_signing_time_is_refused(signed: bytes) -> None:
    later = (SIGNED_AT + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    tampered = _edit(signed, "//xades:SigningTime", _set_text(later))
    error = _refused(tampered, DOCUMENTS)
    assert error.reason == "tampered" and "S0-SignedProperties" in str(error)


def _set_uri(uri: str) -> Callable[[etree._Element], None]:
    def change(element: etree._Element) -> None:
        element.set("URI", uri)

    return change


@pytest.mark.parametrize(
    ("xpath", "change"),
    [
        # a document digest rewritten to match substituted bytes
        (
            "ds:Object/ds:Manifest/ds:Reference[2]/ds:DigestValue",
            _set_text(base64.b64encode(hashlib.sha256(b"other").digest()).decode()),
        ),
        # the signature moved to another submission set
        ("ds:Object/ds:Manifest/ds:Reference[1]", _set_uri("urn:oid:1.2.250.1.999.9")),
    ],
)
def test_tampered_manifest_is_refused(
    signed: bytes, xpath: str, change: Callable[[etree._Element], None]
) -> None:
    error = _refused(_edit(signed, xpath, change))
    assert error.reason == "tampered" and "#IHEManifest" in str(error)


def test_tampered_signature_value_is_refused(signed: bytes) -> None:
    def flip(element: etree._Element) -> None:
        value = bytearray(base64.b64decode(element.text or ""))
        value[len(value) // 2] ^= 1
        element.text = base64.b64encode(bytes(value)).decode()

    error = _refused(_edit(signed, "ds:SignatureValue", flip), DOCUMENTS)
    assert error.reason == "tampered" and "signature value" in str(error)


def test_other_signer_certificate_is_refused(signed: bytes, ca: pki.DevCA) -> None:
    other = pki.issue(ca, "someone else", kind="signing")
    der = base64.b64encode(other.certificate.public_bytes(serialization.Encoding.DER)).decode()
    tampered = _edit(signed, "ds:KeyInfo/ds:X509Data/ds:X509Certificate[1]", _set_text(der))
    assert "signing certificate" in str(_refused(tampered, DOCUMENTS))


def test_signature_over_another_submission_set_reports_its_uid(sign: Sign) -> None:
    other_set = "1.2.250.1.999.1.1.1.77"
    result = verify_submission_signature(sign(submission_set=other_set), DOCUMENTS)
    # the verifier says what is signed; the caller compares it with the set it received
    assert result.submission_set_unique_id == other_set != SET_UID


def test_document_missing_from_the_manifest_is_refused(sign: Sign) -> None:
    only_kos = sign(documents={KOS_UID: KOS})
    error = _refused(only_kos, DOCUMENTS)
    assert error.reason == "unsigned" and REPORT_UID in str(error)


def test_signed_document_missing_from_the_submission_is_refused(signed: bytes) -> None:
    error = _refused(signed, {KOS_UID: KOS})
    assert error.reason == "tampered" and REPORT_UID in str(error)


def test_wrong_purpose_is_refused(signed: bytes) -> None:
    tampered = _edit(signed, "//ds:SignatureProperty", _set_text("1.2.840.10065.1.12.1.1"))
    assert "purpose" in str(_refused(tampered, DOCUMENTS))


def test_extra_signed_info_reference_is_refused(signed: bytes) -> None:
    def duplicate(element: etree._Element) -> None:
        parent = element.getparent()
        assert parent is not None
        parent.append(etree.fromstring(etree.tostring(element)))

    tampered = _edit(signed, "ds:SignedInfo/ds:Reference[1]", duplicate)
    assert _refused(tampered).reason == "unsupported"


# -- XML hardening ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "prolog",
    [
        b'<!DOCTYPE ds:Signature SYSTEM "http://example.invalid/x.dtd">',
        b'<!DOCTYPE ds:Signature [<!ENTITY uid "1.2.3">]>',
    ],
)
def test_doctype_is_refused(signed: bytes, prolog: bytes) -> None:
    declaration, body = signed.split(b"\n", 1)
    error = _refused(declaration + b"\n" + prolog + body, DOCUMENTS)
    assert error.reason == "dtd"


def test_other_documents_are_refused() -> None:
    assert _refused(b"<a/>").reason == "unsigned"
    assert _refused(b"not xml").reason == "malformed"


# -- signing inputs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"submission_set": "urn:uuid:1234"}, "not an OID"),
        ({"documents": {}}, "at least one document"),
        ({"documents": {SET_UID: KOS}}, "must differ"),
        ({"chain": ()}, "chain is empty"),
    ],
)
def test_signing_refuses_bad_inputs(sign: Sign, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sign(**kw)


def test_signing_refuses_a_key_that_is_not_the_certificate(sign: Sign) -> None:
    with pytest.raises(ValueError, match="does not match"):
        sign(key=pki.new_key("ec"))
