"""An independent XDS client for the index tests: SOAP/MTOM messages written as plain text
templates and responses read with the standard library's MIME parser, so that the tests
never use the server's own ebRIM or MTOM code."""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from xml.sax.saxutils import escape, quoteattr

import httpx
from lxml import etree

from drimbox.domain.identifiers import nir_key

INS_OID = "1.2.250.1.213.1.4.10"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "rs": "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0",
    "rim": RIM,
    "query": "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0",
    "xdsb": "urn:ihe:iti:xds-b:2007",
    "xop": "http://www.w3.org/2004/08/xop/include",
}
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_BY_REFERENCE = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"
FIND_SUBMISSION_SETS = "urn:uuid:f26abbcb-ac74-4422-8a30-edb644bbc1a9"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
GET_ASSOCIATIONS = "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155"
GET_RELATED = "urn:uuid:d90e5407-b356-4d91-a89f-873917b4b0e6"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
DELETED = "urn:asip:ci-sis:2010:StatusType:Deleted"
RPPS_AUTHOR = "899700367909^DOC0036790^KIT^^^^^^&1.2.250.1.71.4.2.1&ISO^D^^^IDNPS"
INSTITUTION = "CABINET^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^499700367909006"


def new_ins(rng: random.Random | None = None) -> str:
    """A valid test INS in registry form ``NIR+key^^^&OID&ISO^NH``."""
    rng = rng or random.Random()
    nir = f"{rng.choice('12')}{rng.randint(30, 99):02d}{rng.randint(1, 12):02d}"
    nir += f"{rng.randint(1, 95):02d}{rng.randint(1, 999):03d}{rng.randint(1, 999):03d}"
    return f"{nir}{nir_key(nir)}^^^&{INS_OID}&ISO^NH"


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def _slot(name: str, *values: str) -> str:
    items = "".join(f"<Value>{escape(v)}</Value>" for v in values)
    return f'<Slot name="{name}"><ValueList>{items}</ValueList></Slot>'


def _classification(scheme: str, obj: str, code: str, coding: str, name: str = "") -> str:
    return (
        f'<Classification classificationScheme="{scheme}" classifiedObject="{obj}" '
        f'id="{uuid.uuid4()}" nodeRepresentation={quoteattr(code)}>'
        f"{_slot('codingScheme', coding)}"
        f"<Name><LocalizedString value={quoteattr(name or code)}/></Name></Classification>"
    )


def _external(scheme: str, obj: str, value: str, name: str) -> str:
    return (
        f'<ExternalIdentifier id="{uuid.uuid4()}" identificationScheme="{scheme}" '
        f'registryObject="{obj}" value={quoteattr(value)}>'
        f'<Name><LocalizedString value="{name}"/></Name></ExternalIdentifier>'
    )


@dataclass
class Doc:
    """One document entry to submit (a KOS by default) and its bytes."""

    patient: str
    symbol: str = "Document01"
    content: bytes = field(default_factory=lambda: b"DICM" + uuid.uuid4().bytes * 8)
    unique_id: str = field(default_factory=new_uid)
    study_uid: str = field(default_factory=new_uid)
    accession: str = field(default_factory=lambda: str(random.randint(10**9, 10**10)))
    kind: str = "kos"
    modality: str = "CT"
    confidentiality: tuple[tuple[str, str], ...] = (("N", "2.16.840.1.113883.5.25"),)
    creation_time: str = "20240105101500"
    service_start: str = "20240105100000"
    hash: str | None = "auto"
    size: str | None = "auto"
    author: str = RPPS_AUTHOR
    lid: str = ""
    patient_in_entry: str | None = None
    class_code: tuple[str, str] | None = None

    def codes(self) -> dict[str, tuple[str, str]]:
        if self.kind == "kos":
            return {
                "class": self.class_code or ("31", "1.2.250.1.213.1.1.4.1"),
                "type": ("IMG-KOS", "1.2.250.1.213.1.1.4.12"),
                "format": ("1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1"),
            }
        return {
            "class": self.class_code or ("10", "1.2.250.1.213.1.1.4.1"),
            "type": ("18748-4", "2.16.840.1.113883.6.1"),
            "format": ("urn:ihe:iti:xds-sd:pdf:2008", "1.3.6.1.4.1.19376.1.2.3"),
        }

    @property
    def mime(self) -> str:
        return "application/dicom" if self.kind == "kos" else "text/xml"

    def xml(self) -> str:
        s, c = self.symbol, self.codes()
        slots = [
            _slot("creationTime", self.creation_time), _slot("languageCode", "fr-FR"),
            _slot("serviceStartTime", self.service_start),
            _slot("serviceStopTime", self.service_start[:-4] + "3000"),
            _slot("sourcePatientId", self.patient.replace("^NH", "^PI")),
            _slot("sourcePatientInfo", "PID-5|TEST^Patient^^^^^L", "PID-7|19700101", "PID-8|F"),
            _slot("legalAuthenticator", RPPS_AUTHOR),
            _slot("urn:ihe:iti:xds:2013:referenceIdList",
                  f"{self.accession}^^^&1.2.250.1.999.2&ISO^urn:ihe:iti:xds:2013:accession",
                  f"{self.study_uid}^^^&1.2.3.4.5.6&ISO^urn:ihe:iti:xds:2016:studyInstanceUID"),
        ]  # fmt: skip
        if self.hash is not None:
            digest = hashlib.sha1(self.content).hexdigest()
            slots.insert(0, _slot("hash", digest if self.hash == "auto" else self.hash))
        if self.size is not None:
            slots.insert(
                0, _slot("size", str(len(self.content)) if self.size == "auto" else self.size)
            )
        classes = [
            f'<Classification classificationScheme="urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d" '
            f'classifiedObject="{s}" id="{uuid.uuid4()}" nodeRepresentation="">'
            f"{_slot('authorPerson', self.author)}{_slot('authorInstitution', INSTITUTION)}</Classification>",
            _classification("urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a", s, *c["class"]),
            _classification("urn:uuid:f0306f51-975f-434e-a61c-c59651d33983", s, *c["type"]),
            _classification("urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d", s, *c["format"]),
            _classification("urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1", s, "SA07", "1.2.250.1.71.4.2.4"),
            _classification("urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead", s, "AMBULATOIRE", "1.2.250.1.213.1.1.4.9"),
            _classification("urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4", s, self.modality, "1.2.250.1.213.1.1.5.618"),
            _classification("urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4", s, "63337009", "1.2.250.1.213.2.5"),
            *(_classification("urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f", s, code, scheme)
              for code, scheme in self.confidentiality),
        ]  # fmt: skip
        ids = [
            _external("urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427", s,
                      self.patient_in_entry or self.patient, "XDSDocumentEntry.patientId"),
            _external("urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab", s, self.unique_id,
                      "XDSDocumentEntry.uniqueId"),
        ]  # fmt: skip
        lid = f' lid="{self.lid}"' if self.lid else ""
        return (
            f'<ExtrinsicObject id="{s}"{lid} mimeType="{self.mime}" '
            f'objectType="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1">'
            f'{"".join(slots)}<Name><LocalizedString value="{self.kind}"/></Name>'
            f"{''.join(classes)}{''.join(ids)}</ExtrinsicObject>"
        )


def submission_set(patient: str, unique_id: str | None = None) -> str:
    s = "SubmissionSet01"
    return (
        f'<RegistryPackage id="{s}">{_slot("submissionTime", "20240105120000")}'
        f'<Classification classificationScheme="urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d" '
        f'classifiedObject="{s}" id="{uuid.uuid4()}" nodeRepresentation="">'
        f"{_slot('authorPerson', RPPS_AUTHOR)}</Classification>"
        + _classification("urn:uuid:aa543740-bdda-424e-8c96-df4873be8500", s, "04", "1.2.250.1.213.2.2")
        + f'<Classification classificationNode="urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd" '
        f'classifiedObject="{s}" id="{uuid.uuid4()}"/>'
        + _external("urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446", s, patient, "XDSSubmissionSet.patientId")
        + _external("urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832", s, "1.2.250.1.999.1", "XDSSubmissionSet.sourceId")
        + _external("urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8", s,
                    unique_id or new_uid(), "XDSSubmissionSet.uniqueId")
        + "</RegistryPackage>"
    )  # fmt: skip


def association(kind: str, source: str, target: str, **slots: str) -> str:
    body = "".join(_slot(k, v) for k, v in slots.items())
    return (
        f'<Association associationType="{kind}" id="urn:uuid:{uuid.uuid4()}" '
        f'sourceObject="{source}" targetObject="{target}">{body}</Association>'
    )


def has_member(target: str) -> str:
    return association("urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember",
                       "SubmissionSet01", target, SubmissionSetStatus="Original")  # fmt: skip


def envelope(action: str, body: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope">'
        '<soap:Header><Action xmlns="http://www.w3.org/2005/08/addressing" '
        f'soap:mustUnderstand="true">{action}</Action>'
        f'<MessageID xmlns="http://www.w3.org/2005/08/addressing">urn:uuid:{uuid.uuid4()}</MessageID>'
        f"</soap:Header><soap:Body>{body}</soap:Body></soap:Envelope>"
    )


def mtom(soap_xml: bytes, parts: list[tuple[str, bytes]], action: str) -> tuple[str, bytes]:
    boundary = f"test-{uuid.uuid4().hex}"
    out = [
        f"--{boundary}\r\nContent-Type: application/xop+xml; charset=UTF-8; "
        f'type="application/soap+xml"\r\nContent-ID: <0.1>\r\n\r\n'.encode(),
        soap_xml,
    ]
    for cid, data in parts:
        out += [f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                f"Content-ID: <{cid}>\r\n\r\n".encode(), data]  # fmt: skip
    out.append(f"\r\n--{boundary}--\r\n".encode())
    ctype = (f'multipart/related; boundary={boundary}; type="application/xop+xml"; '
             f'start="<0.1>"; start-info="application/soap+xml"; action="{action}"')  # fmt: skip
    return ctype, b"".join(out)


ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
ITI43 = "urn:ihe:iti:2007:RetrieveDocumentSet"
ITI57 = "urn:ihe:iti:2010:UpdateDocumentSet"


def provide_and_register(
    patient: str, docs: list[Doc], extra: str = "", ss_uid: str | None = None,
    attach: bool = True,
) -> tuple[str, bytes]:  # fmt: skip
    objects = submission_set(patient, ss_uid) + "".join(d.xml() for d in docs)
    objects += "".join(has_member(d.symbol) for d in docs) + extra
    documents = "".join(
        f'<Document id="{d.symbol}"><xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include" '
        f'href="cid:{d.symbol}@test"/></Document>'
        for d in docs
    )
    body = (
        '<ProvideAndRegisterDocumentSetRequest xmlns="urn:ihe:iti:xds-b:2007">'
        '<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0">'
        f'<RegistryObjectList xmlns="{RIM}">{objects}</RegistryObjectList>'
        f"</lcm:SubmitObjectsRequest>{documents}</ProvideAndRegisterDocumentSetRequest>"
    )
    parts = [(f"{d.symbol}@test", d.content) for d in docs] if attach else []
    return mtom(envelope(ITI41, body).encode(), parts, ITI41)


def stored_query(
    query_id: str, params: dict[str, list[str]], return_type: str = "LeafClass"
) -> tuple[str, bytes]:
    # one Slot per value: several Slots of one name are ANDed, ('a','b') inside one is ORed
    slots = "".join(
        f'<rim:Slot name="{name}"><rim:ValueList><rim:Value>{escape(v)}</rim:Value>'
        "</rim:ValueList></rim:Slot>"
        for name, values in params.items()
        for v in values
    )
    body = (
        '<query:AdhocQueryRequest xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0" '
        f'xmlns:rim="{RIM}"><query:ResponseOption returnComposedObjects="true" '
        f'returnType="{return_type}"/><rim:AdhocQuery id="{query_id}">{slots}</rim:AdhocQuery>'
        "</query:AdhocQueryRequest>"
    )
    return f'application/soap+xml; charset=UTF-8; action="{ITI18}"', envelope(ITI18, body).encode()


def retrieve(repository: str, unique_ids: list[str]) -> tuple[str, bytes]:
    reqs = "".join(
        f"<DocumentRequest><RepositoryUniqueId>{repository}</RepositoryUniqueId>"
        f"<DocumentUniqueId>{uid}</DocumentUniqueId></DocumentRequest>"
        for uid in unique_ids
    )
    body = f'<RetrieveDocumentSetRequest xmlns="urn:ihe:iti:xds-b:2007">{reqs}</RetrieveDocumentSetRequest>'
    return mtom(envelope(ITI43, body).encode(), [], ITI43)


def update_status(patient: str, entry_uuid: str, original: str, new: str) -> tuple[str, bytes]:
    objects = submission_set(patient) + association(
        "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus", "SubmissionSet01",
        entry_uuid, OriginalStatus=original, NewStatus=new,
    )  # fmt: skip
    return _update(objects)


def update_metadata(patient: str, doc: Doc, previous_version: str) -> tuple[str, bytes]:
    objects = submission_set(patient) + doc.xml() + association(
        "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember", "SubmissionSet01",
        doc.symbol, SubmissionSetStatus="Original", PreviousVersion=previous_version,
    )  # fmt: skip
    return _update(objects)


def _update(objects: str) -> tuple[str, bytes]:
    body = (
        '<lcm:SubmitObjectsRequest xmlns:lcm="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0">'
        f'<RegistryObjectList xmlns="{RIM}">{objects}</RegistryObjectList></lcm:SubmitObjectsRequest>'
    )
    return f'application/soap+xml; action="{ITI57}"', envelope(ITI57, body).encode()


@dataclass
class Answer:
    status_code: int
    root: etree._Element
    parts: dict[str, bytes]

    @property
    def body(self) -> etree._Element:
        return self.root.find("s:Body", NS)[0]  # type: ignore[index]

    def status(self) -> str:
        node = self.body if self.body.get("status") else self.body.find("rs:RegistryResponse", NS)
        return (node.get("status") or "").rsplit(":", 1)[-1]  # type: ignore[union-attr]

    def error_codes(self) -> list[str]:
        return [e.get("errorCode", "") for e in self.body.iter(f"{{{NS['rs']}}}RegistryError")]

    def error_contexts(self) -> list[str]:
        return [e.get("codeContext", "") for e in self.body.iter(f"{{{NS['rs']}}}RegistryError")]

    def extrinsic(self) -> list[etree._Element]:
        return self.body.findall("rim:RegistryObjectList/rim:ExtrinsicObject", NS)


def _read(content_type: str, data: bytes) -> tuple[bytes, dict[str, bytes]]:
    if not content_type.startswith("multipart/"):
        return data, {}
    msg: Message = message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + data)
    parts = msg.get_payload()
    assert isinstance(parts, list)
    root = parts[0].get_payload(decode=True)
    rest = {p["Content-ID"].strip("<>"): p.get_payload(decode=True) for p in parts[1:]}
    return root, rest


def post(
    client: httpx.Client, path: str, message: tuple[str, bytes], token: str | None = None
) -> Answer:
    """``message`` posted by ``client``, as the holder of ``token`` when given."""
    headers = {"content-type": message[0]}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    resp = client.post(path, content=message[1], headers=headers)
    root_bytes, parts = _read(resp.headers.get("content-type", ""), resp.content)
    return Answer(resp.status_code, etree.fromstring(root_bytes), parts)
