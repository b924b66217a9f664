"""ebRIM 3.0 <-> domain: read XDS metadata (ITI TF-3 4.2.3) and write registry responses.

Reading assigns ``urn:uuid`` identifiers to symbolic ids and keeps, for each object, its
ebRIM XML with those ids rewritten: that text is what LeafClass queries return, so nothing
the submitter sent (slots we do not model, localized names) is lost.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from lxml import etree

from drimbox.domain import xds
from drimbox.domain.xds import Association, Author, Code, DocumentEntry, ErrorCode, XdsError

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
XDSB = "urn:ihe:iti:xds-b:2007"
NS = {"rim": RIM, "rs": RS, "lcm": LCM, "query": QUERY, "xdsb": XDSB}

SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
PARTIAL = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
SEVERITY_ERROR = "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"

# ITI TF-3 4.2.5.2: classification and identification schemes
DE_STABLE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
DE_ON_DEMAND = "urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248"
SS_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
FOLDER_NODE = "urn:uuid:d9d542f3-6cc4-48b6-8870-ea235fbc94c2"
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_EVENT = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
DE_FORMAT = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_HCFT = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_TYPE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
REFERENCE_ID_LIST = "urn:ihe:iti:xds:2013:referenceIdList"
_ID_ATTRS = ("id", "lid", "classifiedObject", "registryObject", "sourceObject", "targetObject")


def q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def slot(el: etree._Element, name: str) -> list[str]:
    for s in el.findall("rim:Slot", NS):
        if s.get("name") == name:
            return [v.text or "" for v in s.findall("rim:ValueList/rim:Value", NS)]
    return []


def set_slot(el: etree._Element, name: str, values: Iterable[str]) -> None:
    for s in el.findall("rim:Slot", NS):
        if s.get("name") == name:
            el.remove(s)
    new = etree.Element(q(RIM, "Slot"), name=name)
    vlist = etree.SubElement(new, q(RIM, "ValueList"))
    for value in values:
        etree.SubElement(vlist, q(RIM, "Value")).text = value
    # slots come first in a RegistryObject (rim.xsd sequence)
    el.insert(len(el.findall("rim:Slot", NS)), new)


def _first(values: list[str]) -> str:
    return values[0].strip() if values else ""


def _name(el: etree._Element) -> str:
    node = el.find("rim:Name/rim:LocalizedString", NS)
    return node.get("value", "") if node is not None else ""


def _codes(el: etree._Element, scheme: str) -> tuple[Code, ...]:
    out = []
    for c in el.findall("rim:Classification", NS):
        if c.get("classificationScheme") == scheme:
            rep = c.get("nodeRepresentation", "")
            out.append(Code(rep, _first(slot(c, "codingScheme")), _name(c)))
    return tuple(out)


def _code(el: etree._Element, scheme: str, label: str) -> Code | None:
    codes = _codes(el, scheme)
    if len(codes) > 1:
        raise XdsError(ErrorCode.METADATA, f"{el.get('id')}: {label} must appear once")
    return codes[0] if codes else None


def _authors(el: etree._Element, scheme: str) -> tuple[Author, ...]:
    return tuple(
        Author(
            _first(slot(c, "authorPerson")),
            tuple(slot(c, "authorInstitution")),
            tuple(slot(c, "authorRole")),
            tuple(slot(c, "authorSpecialty")),
        )
        for c in el.findall("rim:Classification", NS)
        if c.get("classificationScheme") == scheme
    )


def _external_id(el: etree._Element, scheme: str) -> str:
    for e in el.findall("rim:ExternalIdentifier", NS):
        if e.get("identificationScheme") == scheme:
            return e.get("value", "").strip()
    return ""


def assign_uuids(objects: etree._Element) -> dict[str, str]:
    """Give every symbolic id a fresh ``urn:uuid`` and rewrite references to it."""
    mapping: dict[str, str] = {}
    for el in objects.iter():
        ident = el.get("id")
        if ident is not None and not ident.startswith("urn:uuid:"):
            mapping.setdefault(ident, f"urn:uuid:{uuid.uuid4()}")
    for el in objects.iter():
        for attr in _ID_ATTRS:
            value = el.get(attr)
            if value in mapping:
                el.set(attr, mapping[value])
    return mapping


def to_text(el: etree._Element) -> str:
    return str(etree.tostring(el, encoding="unicode"))


def document_entry(el: etree._Element, symbolic: str) -> DocumentEntry:
    """An ExtrinsicObject (already given its entryUUID) as a DocumentEntry."""
    ident = el.get("id", "")
    entry = DocumentEntry(
        entry_uuid=ident,
        unique_id=_external_id(el, DE_UNIQUE_ID),
        patient_id=_external_id(el, DE_PATIENT_ID),
        mime_type=el.get("mimeType", ""),
        symbolic_id=symbolic,
        class_code=_code(el, DE_CLASS, "classCode"),
        type_code=_code(el, DE_TYPE, "typeCode"),
        format_code=_code(el, DE_FORMAT, "formatCode"),
        practice_setting_code=_code(el, DE_PRACTICE, "practiceSettingCode"),
        healthcare_facility_type_code=_code(el, DE_HCFT, "healthcareFacilityTypeCode"),
        confidentiality_codes=_codes(el, DE_CONFIDENTIALITY),
        event_codes=_codes(el, DE_EVENT),
        reference_ids=tuple(v.strip() for v in slot(el, REFERENCE_ID_LIST)),
        authors=_authors(el, DE_AUTHOR),
        creation_time=_first(slot(el, "creationTime")),
        service_start_time=_first(slot(el, "serviceStartTime")),
        service_stop_time=_first(slot(el, "serviceStopTime")),
        source_patient_id=_first(slot(el, "sourcePatientId")),
        legal_authenticator=_first(slot(el, "legalAuthenticator")),
        language_code=_first(slot(el, "languageCode")),
        title=_name(el),
        hash=_first(slot(el, "hash")),
        repository_unique_id=_first(slot(el, "repositoryUniqueId")),
    )
    size = _first(slot(el, "size"))
    if size:
        if not size.isdigit():
            raise XdsError(ErrorCode.METADATA, f"{symbolic}: size {size[:20]!r} is not a number")
        entry.size = int(size)
    return entry


def submission_set(el: etree._Element, symbolic: str) -> xds.SubmissionSet:
    return xds.SubmissionSet(
        entry_uuid=el.get("id", ""),
        unique_id=_external_id(el, SS_UNIQUE_ID),
        patient_id=_external_id(el, SS_PATIENT_ID),
        source_id=_external_id(el, SS_SOURCE_ID),
        submission_time=_first(slot(el, "submissionTime")),
        content_type_code=_code(el, SS_CONTENT_TYPE, "contentTypeCode"),
        authors=_authors(el, SS_AUTHOR),
        symbolic_id=symbolic,
    )


def association(el: etree._Element) -> Association:
    slots = {
        s.get("name", ""): tuple(v.text or "" for v in s.findall("rim:ValueList/rim:Value", NS))
        for s in el.findall("rim:Slot", NS)
    }
    return Association(
        entry_uuid=el.get("id", ""),
        association_type=el.get("associationType", ""),
        source=el.get("sourceObject", ""),
        target=el.get("targetObject", ""),
        slots=slots,
    )


def registry_response(errors: list[XdsError], status: str | None = None) -> etree._Element:
    """``rs:RegistryResponse`` (ITI TF-3 4.2.4): Success, or Failure and its error list."""
    resp = etree.Element(q(RS, "RegistryResponse"), nsmap={"rs": RS})
    resp.set("status", status or (FAILURE if errors else SUCCESS))
    if errors:
        resp.append(error_list(errors))
    return resp


def error_list(errors: list[XdsError]) -> etree._Element:
    lst = etree.Element(q(RS, "RegistryErrorList"), nsmap={"rs": RS})
    lst.set("highestSeverity", SEVERITY_ERROR)
    for err in errors:
        item = etree.SubElement(lst, q(RS, "RegistryError"))
        item.set("errorCode", str(err.code))
        item.set("codeContext", err.context)
        item.set("severity", SEVERITY_ERROR)
        if err.location:
            item.set("location", err.location)
    return lst


def _kind(rol: etree._Element) -> dict[str, str]:
    """RegistryPackage id -> classification node (submission set or folder)."""
    return {
        c.get("classifiedObject", ""): c.get("classificationNode", "")
        for c in rol.iter(q(RIM, "Classification"))
        if c.get("classificationNode")
    }


def parse_submission(rol: etree._Element) -> xds.Submission:
    """The objects of a ``rim:RegistryObjectList`` (ITI-41 or ITI-57) as a Submission."""
    mapping = assign_uuids(rol)
    symbolic = {v: k for k, v in mapping.items()}
    kinds = _kind(rol)
    sets = []
    for pkg in rol.findall("rim:RegistryPackage", NS):
        ident = pkg.get("id", "")
        if kinds.get(ident) != SS_NODE:
            raise XdsError(
                ErrorCode.METADATA,
                f"{symbolic.get(ident, ident)}: only submission sets are supported (no folders)",
            )
        sets.append(pkg)
    if len(sets) != 1:
        raise XdsError(ErrorCode.METADATA, f"expected one submission set, found {len(sets)}")
    ss = submission_set(sets[0], symbolic.get(sets[0].get("id", ""), ""))
    ss.ebrim = to_text(sets[0])
    entries = []
    for eo in rol.findall("rim:ExtrinsicObject", NS):
        entry = document_entry(eo, symbolic.get(eo.get("id", ""), eo.get("id", "")))
        entry.logical_id = eo.get("lid", "") if eo.get("lid") != eo.get("id") else ""
        entry.ebrim = to_text(eo)
        entries.append(entry)
    assocs = []
    for el in rol.findall("rim:Association", NS):
        a = association(el)
        a.ebrim = to_text(el)
        assocs.append(a)
    return xds.Submission(ss, entries, assocs)


def _stored(text: str) -> etree._Element:
    # our own serialization, but parse it as carefully as anything else
    return etree.fromstring(text, etree.XMLParser(resolve_entities=False, no_network=True))


def leaf_entry(entry: DocumentEntry) -> etree._Element:
    """The stored ExtrinsicObject with the registry-owned attributes of today."""
    el = _stored(entry.ebrim)
    el.set("status", entry.status)
    el.set("lid", entry.logical_id or entry.entry_uuid)
    set_slot(el, "hash", [entry.hash])
    set_slot(el, "size", [str(entry.size or 0)])
    set_slot(el, "repositoryUniqueId", [entry.repository_unique_id])
    version = el.find("rim:VersionInfo", NS)
    if version is None:
        version = etree.Element(q(RIM, "VersionInfo"))
        anchor = el.find("rim:Classification", NS)
        if anchor is not None:
            anchor.addprevious(version)
        else:
            el.append(version)
    version.set("versionName", str(entry.version))
    return el


def leaf_status(ebrim: str, status: str) -> etree._Element:
    el = _stored(ebrim)
    el.set("status", status)
    return el


def object_ref(ident: str) -> etree._Element:
    el = etree.Element(q(RIM, "ObjectRef"), nsmap={"rim": RIM})
    el.set("id", ident)
    return el
