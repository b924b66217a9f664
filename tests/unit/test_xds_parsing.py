"""SOAP, MTOM, ebRIM and stored-query parameter parsing, and metadata validation."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from lxml import etree

from drimbox.adapters.xds import ebrim, iti41_provide_and_register, mtom, soap
from drimbox.adapters.xds.iti18_registry_stored_query import (
    find_documents_query,
    read_params,
    split_values,
)
from drimbox.domain import xds
from drimbox.domain.xds import Code, ErrorCode, XdsError
from drimbox.services.index.metadata import check_provide_and_register
from drimbox.services.index.register import check_documents
from tests import xds_messages as m

SAMPLE = (
    Path(__file__).parents[3] / "shared/drim-m/data/Echantillons validateurs/Validateur XDS/XDS.xml"
)


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("'Approved'", ["Approved"]),
        ("('a','b')", ["a", "b"]),
        ("( 'a' , 'b' )", ["a", "b"]),
        ("20240101", ["20240101"]),
        ("('O''Brien')", ["O'Brien"]),
        ("('x,y','z')", ["x,y", "z"]),
    ],
)
def test_split_values(text: str, values: list[str]) -> None:
    assert split_values(text) == values


@pytest.mark.parametrize(
    "doc",
    [
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>',
        b'<!DOCTYPE x SYSTEM "http://example.org/x.dtd"><x/>',
        b'<?xml version="1.0"?>\n<!doctype x><x/>',
        b"<x><![CDATA[ ]]></x><!ENTITY a 'b'>",
    ],
)
def test_doctype_and_entities_refused(doc: bytes) -> None:
    with pytest.raises(soap.SoapFault):
        soap.parse_xml(doc)


def test_envelope_requires_action() -> None:
    root = soap.parse_xml(
        b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><x/></s:Body></s:Envelope>'
    )
    with pytest.raises(soap.SoapFault, match="Action"):
        soap.read_envelope(root)
    assert soap.read_envelope(root, "urn:a").action == "urn:a"


def test_mtom_round_trip_and_base64_parts() -> None:
    ctype, body = mtom.pack(
        b"<root/>", "urn:x", [("a@b", "application/dicom", b"\r\n--x\r\n\x00bin")]
    )
    package = mtom.unpack(ctype, body)
    assert package.root == b"<root/>" and package.attachments == {"a@b": b"\r\n--x\r\n\x00bin"}
    assert package.action == "urn:x" and package.multipart
    raw = (b"--B\r\nContent-Type: application/xop+xml\r\nContent-ID: <r>\r\n\r\n<root/>\r\n"
           b"--B\r\nContent-ID: <d>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.b64encode(b"kos") + b"\r\n--B--\r\n")  # fmt: skip
    package = mtom.unpack('multipart/related; boundary="B"; start="<r>"', raw)
    assert package.root == b"<root/>" and package.attachments == {"d": b"kos"}
    with pytest.raises(soap.SoapFault):
        mtom.unpack("multipart/related; boundary=B", b"--B\r\nContent-ID: <r>\r\n\r\n<root/>")
    with pytest.raises(soap.SoapFault):
        mtom.unpack("text/plain", b"x")


def _parse_sample(message: tuple[str, bytes]) -> xds.Submission:
    package = mtom.unpack(*message)
    envelope = soap.read_envelope(soap.parse_xml(package.root), package.action)
    return iti41_provide_and_register.parse(envelope.body, package.attachments)


def test_reference_sample_parses_and_validates() -> None:
    if not SAMPLE.exists():
        pytest.skip(f"{SAMPLE} is absent")
    sub = _parse_sample(m.mtom(SAMPLE.read_bytes(), [("0.2", b"kos"), ("0.3", b"sig")], m.ITI41))
    kos = next(e for e in sub.entries if e.symbolic_id == "DocumentKOS")
    assert kos.entry_uuid.startswith("urn:uuid:") and sub.documents[kos.entry_uuid] == b"kos"
    assert kos.class_code == Code("31", "1.2.250.1.213.1.1.4.1", "Imagerie médicale")
    assert kos.type_code is not None and kos.type_code.code == "IMG-KOS"
    assert {c.code for c in kos.event_codes} == {"63337009", "MR"}
    assert kos.reference(xds.ACCESSION_REF) == "7252295367250016"
    assert kos.authors[0].institution_ids == ("499700367909006",)
    assert [a.association_type for a in sub.associations].count(xds.HAS_MEMBER) == 2
    signs = next(a for a in sub.associations if a.association_type == xds.SIGNS)
    assert signs.target == sub.submission_set.entry_uuid
    assert check_provide_and_register(sub) == []
    codes = {e.code for e in check_documents(sub)}
    assert codes == {ErrorCode.NON_IDENTICAL_HASH, ErrorCode.NON_IDENTICAL_SIZE}


def _codes_of(doc: m.Doc) -> list[str]:
    sub = _parse_sample(m.provide_and_register(doc.patient, [doc]))
    return [str(e.code) + " " + e.context for e in check_provide_and_register(sub)]


def test_french_imaging_rules() -> None:
    patient = m.new_ins()
    assert _codes_of(m.Doc(patient)) == []
    assert _codes_of(m.Doc(patient, kind="report")) == []
    wrong_class = _codes_of(m.Doc(patient, class_code=("10", "1.2.250.1.213.1.1.4.1")))
    assert wrong_class == ["XDSRegistryMetadataError Document01: classCode must be 31^^1.2.250.1.213.1.1.4.1 "
                           "for this document, got 10^^1.2.250.1.213.1.1.4.1"]  # fmt: skip
    sub = _parse_sample(m.provide_and_register(patient, [m.Doc(patient)]))
    sub.entries[0].event_codes = (Code("63337009", "1.2.250.1.213.2.5"),)
    assert [e.context for e in check_provide_and_register(sub)] == [
        "Document01: eventCodeList needs a modality (1.2.250.1.213.1.1.5.618)"
    ]
    sub.entries[0].reference_ids = ()
    assert len(check_provide_and_register(sub)) == 3  # + accession, + study
    bad_conf = _codes_of(m.Doc(patient, confidentiality=(("SECRET", "2.16.840.1.113883.5.25"),)))
    assert bad_conf and "confidentialityCode" in bad_conf[0]
    no_rpps = _codes_of(m.Doc(patient, author="Dr^X^^^^^^^&1.2.3&ISO"))
    assert no_rpps and "RPPS" in no_rpps[0]
    assert any("XDSUnknownPatientId" in e for e in _codes_of(m.Doc("123^^^&1.2.3&ISO^NH")))


def test_find_documents_parameters() -> None:
    _, body = m.stored_query(m.FIND_DOCUMENTS, {
        "$XDSDocumentEntryPatientId": ["'279035121518989^^^&1.2.250.1.213.1.4.10&ISO'"],
        "$XDSDocumentEntryStatus": ["('Approved','urn:asip:ci-sis:2010:StatusType:Deleted')"],
        "$XDSDocumentEntryEventCodeList": ["('MR^^1.2.250.1.213.1.1.5.618','CT')", "('63337009^^1.2.250.1.213.2.5')"],
        "$XDSDocumentEntryCreationTimeFrom": ["202401"],
    })  # fmt: skip
    adhoc = etree.fromstring(body).find(".//rim:AdhocQuery", m.NS)
    assert adhoc is not None
    query = find_documents_query(read_params(adhoc))
    assert query.patient_id == "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"
    assert query.statuses == [xds.APPROVED, xds.DELETED]
    assert query.event_codes == [[Code("MR", "1.2.250.1.213.1.1.5.618"), Code("CT", "")],
                                 [Code("63337009", "1.2.250.1.213.2.5")]]  # fmt: skip
    assert query.creation_from == "20240101000000"
    with pytest.raises(XdsError) as err:
        find_documents_query({"$XDSDocumentEntryStatus": [["Approved"]]})
    assert err.value.code is ErrorCode.QUERY_PARAM_NUMBER


def test_dtm_bounds() -> None:
    assert xds.dtm_bound("2024") == "20240101000000"
    assert xds.dtm_bound("20210104092200+0100") == "20210104082200"
    assert xds.dtm_bound("202101040030-0100") == "20210104013000"
    for bad in ("20241", "2024-01-01", ""):
        assert not xds.is_dtm(bad)


def test_leaf_entry_overlays_registry_attributes() -> None:
    sub = _parse_sample(m.provide_and_register(m.new_ins(), [m.Doc(m.new_ins())]))
    entry = sub.entries[0]
    entry.status, entry.hash, entry.size, entry.repository_unique_id = (
        xds.DEPRECATED,
        "AB" * 20,
        7,
        "1.2",
    )
    leaf = ebrim.leaf_entry(entry)
    assert leaf.get("status") == xds.DEPRECATED
    assert ebrim.slot(leaf, "hash") == ["AB" * 20] and ebrim.slot(leaf, "repositoryUniqueId") == [
        "1.2"
    ]


def test_association_rules() -> None:
    patient = m.new_ins()
    doc = m.Doc(patient)
    package = mtom.unpack(
        *m.provide_and_register(patient, [doc], m.association(xds.RPLC, "Document01", "Document01"))
    )
    sub = iti41_provide_and_register.parse(
        soap.read_envelope(soap.parse_xml(package.root)).body, package.attachments
    )
    contexts = [e.context for e in check_provide_and_register(sub)]
    assert any("must go from a new document to a registered one" in c for c in contexts)
    sub.associations = [a for a in sub.associations if a.association_type != xds.HAS_MEMBER]
    assert "Document01: not a member of the submission set" in [
        e.context for e in check_provide_and_register(sub)
    ]
