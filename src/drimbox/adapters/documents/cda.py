"""Read the CI-SIS imaging report (CDA R2 level 1) header fields the Source relies on.

The CDA comes from the network, so it is parsed with a hardened lxml parser: no DTD loading,
no entity expansion, no network access, libxml2's size limits kept (no ``huge_tree``), and
any DOCTYPE refused outright since a CDA never has one.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from drimbox.adapters.hl7.errors import Location, MalformedCda, MissingStudyReference
from drimbox.domain.identifiers import INS_OIDS, is_valid_uid
from drimbox.domain.report import DocumentVersion, LocalIdentifier, Professional, Structure

CDA_NS = "urn:hl7-org:v3"
NS = {"h": CDA_NS, "ps3": "urn:dicom-org:ps3-20"}
RPPS_ROOT = "1.2.250.1.71.4.2.1"
_OBX = Location("OBX", 5, 5)


@dataclass(frozen=True, slots=True)
class CdaHeader:
    """The header fields of one report version."""

    document: DocumentVersion
    patient_ins: list[tuple[str, str]]
    """Every ``recordTarget/patientRole/id`` issued by an INS OID, as (value, oid)."""
    study_uid: str
    accession: LocalIdentifier
    order: LocalIdentifier | None
    author: Professional | None
    structure: Structure | None


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           dtd_validation=False, huge_tree=False, remove_comments=True,
                           remove_pis=True)  # fmt: skip


def parse_xml(data: bytes) -> etree._Element:
    """Parse untrusted XML; raise :class:`MalformedCda` for anything but a plain CDA document."""
    try:
        tree = etree.fromstring(data, _parser()).getroottree()
    except etree.XMLSyntaxError as exc:
        raise MalformedCda(f"the CDA is not well-formed XML: {exc}", _OBX) from None
    # lxml-stubs lack DocInfo.doctype; internalDTD alone misses an external-only DOCTYPE
    doctype: str = getattr(tree.docinfo, "doctype", "")
    if doctype or tree.docinfo.internalDTD is not None:
        raise MalformedCda("the CDA declares a DTD; CDA documents never do", _OBX)
    root = tree.getroot()
    if root.tag != f"{{{CDA_NS}}}ClinicalDocument":
        raise MalformedCda(f"the root element is {root.tag!r}, not an HL7 v3 ClinicalDocument",
                           _OBX)  # fmt: skip
    return root


def _attr(root: etree._Element, path: str, name: str) -> str:
    found = root.find(path, NS)
    return (found.get(name) or "").strip() if found is not None else ""


def _instance_id(element: etree._Element | None) -> str:
    """An HL7 v3 II as one string: ``root`` or ``root^extension``."""
    if element is None:
        return ""
    root, ext = (element.get("root") or "").strip(), (element.get("extension") or "").strip()
    return f"{root}^{ext}" if ext else root


def _document(root: etree._Element) -> DocumentVersion:
    document_id = _instance_id(root.find("h:id", NS))
    set_id = _instance_id(root.find("h:setId", NS))
    if not document_id or not set_id:
        raise MalformedCda("the CDA has no id or no setId", _OBX)
    version = _attr(root, "h:versionNumber", "value") or "1"
    if not version.isdigit() or int(version) < 1:
        raise MalformedCda(f"CDA versionNumber {version[:20]!r} is not a positive integer", _OBX)
    parent = root.find("h:relatedDocument[@typeCode='RPLC']/h:parentDocument/h:id", NS)
    replaces = _instance_id(parent) or None
    return DocumentVersion(document_id, set_id, int(version), replaces)


def _text(element: etree._Element | None, path: str) -> str:
    found = element.find(path, NS) if element is not None else None
    return " ".join((found.text or "").split()) if found is not None else ""


def _professional(entity: etree._Element | None) -> Professional | None:
    if entity is None:
        return None
    ident = entity.find(f"h:id[@root='{RPPS_ROOT}']", NS)
    national_id = (ident.get("extension") or "").strip() if ident is not None else ""
    if not national_id:
        return None
    person = entity.find("h:assignedPerson/h:name", NS)
    return Professional(national_id, _text(person, "h:family"), _text(person, "h:given"))


def _structure(entity: etree._Element | None) -> Structure | None:
    org = entity.find("h:representedOrganization", NS) if entity is not None else None
    ident = org.find("h:id", NS) if org is not None else None
    if ident is None or not (ident.get("extension") or "").strip():
        return None
    return Structure((ident.get("extension") or "").strip(), _text(org, "h:name"))


def _study(root: etree._Element) -> tuple[str, LocalIdentifier, LocalIdentifier | None]:
    study_uid = _attr(root, "h:documentationOf/h:serviceEvent/h:id", "root")
    if not is_valid_uid(study_uid):
        raise MissingStudyReference(
            "the CDA has no valid Study Instance UID in documentationOf/serviceEvent/id/@root"
            + (f" (found {study_uid[:70]!r})" if study_uid else ""), _OBX)  # fmt: skip
    order = root.find("h:inFulfillmentOf/h:order", NS)
    number = order.find("ps3:accessionNumber", NS) if order is not None else None
    value = (number.get("extension") or "").strip() if number is not None else ""
    if number is None or not value:
        raise MissingStudyReference(
            "the CDA has no accession number in inFulfillmentOf/order/accessionNumber", _OBX
        )
    accession = LocalIdentifier(value, (number.get("root") or "").strip())
    order_id = order.find("h:id", NS) if order is not None else None
    placer = None
    if order_id is not None and (order_id.get("extension") or "").strip():
        placer = LocalIdentifier((order_id.get("extension") or "").strip(),
                                 (order_id.get("root") or "").strip())  # fmt: skip
    return study_uid, accession, placer


def read_cda(data: bytes) -> CdaHeader:
    """The header of a CDA report (:class:`MalformedCda`, :class:`MissingStudyReference`)."""
    root = parse_xml(data)
    ins = [
        ((i.get("extension") or "").strip(), (i.get("root") or "").strip())
        for i in root.findall("h:recordTarget/h:patientRole/h:id", NS)
        if (i.get("root") or "").strip() in INS_OIDS
    ]
    study_uid, accession, order = _study(root)
    author = root.find("h:author/h:assignedAuthor", NS)
    # The FAQ picks the structure of the legal authenticator (it selects the DMP certificate);
    # the author's is the fallback when a RIS omits it.
    legal = root.find("h:legalAuthenticator/h:assignedEntity", NS)
    return CdaHeader(
        document=_document(root),
        patient_ins=ins,
        study_uid=study_uid,
        accession=accession,
        order=order,
        author=_professional(author) or _professional(legal),
        structure=_structure(legal) or _structure(author),
    )
