"""ITI-41 Provide and Register Document Set-b requests of a DRIMbox Source (ITI TF-2b 3.41,
ebRIM 3.0), with the French imaging metadata of the DMP (digest B.5, ANS ``XDS.xml``).

One exam is one submission set holding the KOS (uniqueId = its SOP Instance UID) and, when
the box publishes it too, the CDA report; a replacement adds an RPLC association from the new
KOS to the entryUUID of the one it replaces. Documents travel as MTOM/XOP parts.

Signing: the XAdES signature document of the submission set (IHE DSG, digest B.8) is built
by the trust layer, which owns the keys; this builder accepts its bytes ready-made and adds
the entry, the ``HasMember`` and the ``signs`` associations, so nothing here changes when
signing arrives.

Also here: the ITI-57 status updates (deprecate, depublish) and the SOAP 1.2 / WS-Addressing
envelope every client request shares.
"""

from __future__ import annotations

import hashlib
import io
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from lxml import etree
from pydicom import dcmread

from drimbox.adapters.documents import cda
from drimbox.adapters.xds import ebrim as s
from drimbox.adapters.xds import metadata_codes as mc
from drimbox.adapters.xds import mtom
from drimbox.adapters.xds.ebrim import LCM, RIM, XDSB, q
from drimbox.adapters.xds.soap import SOAP_NS, WSA_NS
from drimbox.domain import xds
from drimbox.domain.manifest import ImagingManifest, new_uid
from drimbox.domain.report import Professional, ReportMessage, Structure
from drimbox.domain.xds import Author, Code

ITI41_ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ITI57_ACTION = "urn:ihe:iti:2010:UpdateDocumentSet"
SUBMISSION_SET = "SubmissionSet01"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_ANONYMOUS = f"{WSA_NS}/anonymous"
_HL7_DELIMITERS = re.compile(r"[\^&~\\|]")
_FRACTION = re.compile(r"\.[0-9]+")


# --- inputs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmissionSource:
    """What the publishing box says about itself in every submission set."""

    source_id: str
    """OID of this DRIMbox (XDSSubmissionSet.sourceId)."""
    healthcare_facility_type: Code
    """The site's sector of activity (JDV 1.2.250.1.71.4.2.4), when the CDA gives none."""
    practice_setting: Code
    """The site's practice setting (JDV 1.2.250.1.213.1.1.4.9), when the CDA gives none."""
    content_type: Code = mc.SAMPLE_CONTENT_TYPE
    author: Author | None = None
    """Author (RPPS professional + structure) used when no report names the radiologist."""


@dataclass(frozen=True, slots=True)
class ExamSubmission:
    """One exam to publish: its manifest and KOS, and optionally the report and signature."""

    manifest: ImagingManifest
    kos: bytes
    report: ReportMessage | None = None
    replaces: str = ""
    """entryUUID of the KOS this one replaces (RPLC); empty for a first publication."""
    report_replaces: str = ""
    """entryUUID of the report this one replaces (RPLC)."""
    signature: bytes | None = None
    """The XAdES document signing the submission set, when the trust layer made one."""
    submitted: datetime | None = None
    publish_report: bool = True
    """False when the site's RIS publishes the report itself: the report then only supplies
    the KOS metadata (authors, codes), as for an IOCM-driven replacement."""


class SubmissionSigner(Protocol):
    """Makes the signature document of a submission set (IHE DSG), given every unique id."""

    def __call__(
        self, signature_unique_id: str, submission_set_unique_id: str,
        documents: Sequence[tuple[str, bytes]],
    ) -> bytes: ...  # fmt: skip


@dataclass(frozen=True, slots=True)
class Attachment:
    cid: str
    media_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ProvideAndRegisterRequest:
    """The ``ProvideAndRegisterDocumentSetRequest`` element and its MTOM parts."""

    body: etree._Element
    attachments: tuple[Attachment, ...]
    submission_set_unique_id: str
    kos_unique_id: str
    report_unique_id: str = ""
    signature_unique_id: str = ""


# --- what the documents say -----------------------------------------------------------------


@dataclass(slots=True)
class _Doc:
    """One DocumentEntry to write."""

    symbol: str
    data: bytes
    mime: str
    unique_id: str
    class_code: Code
    type_code: Code
    format_code: Code
    title: str
    creation_time: str
    confidentiality: tuple[Code, ...] = (mc.NORMAL,)
    events: tuple[Code, ...] = ()
    language: str = mc.LANGUAGE
    description: str = ""
    service_start: str = ""
    service_stop: str = ""


@dataclass(slots=True)
class _Common:
    """Metadata every entry of the submission shares."""

    patient_id: str
    source_patient_id: str
    patient_info: list[str]
    references: list[str]
    authors: tuple[Author, ...]
    legal_authenticator: str
    facility: Code
    practice: Code
    submission_time: str
    replaced: dict[str, str] = field(default_factory=dict)


def utc_dtm(value: str) -> str:
    """An HL7/DICOM date-time (``YYYYMMDDhhmmss[.f][+zzzz]``) as a UTC XDS DTM, or ""."""
    value = _FRACTION.sub("", value.strip())
    if not value or not xds.is_dtm(value):
        return ""
    return xds.dtm_bound(value)


def _hl7(text: str) -> str:
    # names go inside XCN/XON components: their delimiters would shift every field
    return _HL7_DELIMITERS.sub(" ", text).strip()


def professional_xcn(person: Professional) -> str:
    """authorPerson / legalAuthenticator of a professional (national id, RPPS space)."""
    return (
        f"{_hl7(person.national_id)}^{_hl7(person.family)}^{_hl7(person.given)}"
        f"^^^^^^&{xds.RPPS_OID}&ISO^D^^^IDNPS"
    )


def structure_xon(structure: Structure) -> str:
    """authorInstitution of a health structure (national structure id)."""
    return (
        f"{_hl7(structure.name)}^^^^^&{xds.STRUCTURE_OID}&ISO^IDNST^^^{_hl7(structure.national_id)}"
    )


def _cx(value: str, oid: str, kind: str) -> str:
    authority = f"&{oid}&ISO" if oid else ""
    return f"{value}^^^{authority}^{kind}"


@dataclass(frozen=True, slots=True)
class CdaFacts:
    """The CDA header fields the metadata needs beyond what :class:`ReportMessage` keeps."""

    created: str = ""
    service_start: str = ""
    service_stop: str = ""
    facility: Code | None = None
    practice: Code | None = None
    confidentiality: Code | None = None


def _cda_code(root: etree._Element, path: str) -> Code | None:
    found = root.find(path, cda.NS)
    if found is None or not found.get("code"):
        return None
    return Code(found.get("code", ""), found.get("codeSystem", ""), found.get("displayName", ""))


def _cda_time(root: etree._Element, path: str) -> str:
    found = root.find(path, cda.NS)
    return utc_dtm(found.get("value", "")) if found is not None else ""


def read_cda_facts(data: bytes) -> CdaFacts:
    """Times (UTC), facility, practice setting and confidentiality of a CDA report."""
    root = cda.parse_xml(data)
    event = "h:documentationOf/h:serviceEvent"
    return CdaFacts(
        created=_cda_time(root, "h:effectiveTime"),
        service_start=_cda_time(root, f"{event}/h:effectiveTime/h:low"),
        service_stop=_cda_time(root, f"{event}/h:effectiveTime/h:high"),
        facility=_cda_code(
            root, "h:componentOf/h:encompassingEncounter/h:location/h:healthCareFacility/h:code"
        ),
        practice=_cda_code(
            root,
            f"{event}/h:performer/h:assignedEntity/h:representedOrganization"
            "/h:standardIndustryClassCode",
        ),
        confidentiality=_cda_code(root, "h:confidentialityCode"),
    )


def _kos_facts(kos: bytes) -> tuple[str, str]:
    """(SOP Instance UID, creation time in UTC) read from the KOS bytes themselves."""
    ds = dcmread(
        io.BytesIO(kos),
        stop_before_pixels=True,
        specific_tags=[
            "SOPInstanceUID",
            "InstanceCreationDate",
            "InstanceCreationTime",
            "TimezoneOffsetFromUTC",
        ],
    )
    when = f"{ds.get('InstanceCreationDate', '')}{str(ds.get('InstanceCreationTime', ''))[:6]}"
    return str(ds.get("SOPInstanceUID", "")), utc_dtm(
        when + str(ds.get("TimezoneOffsetFromUTC", ""))
    )


def _now_dtm(when: datetime | None) -> str:
    return (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H%M%S")


def _patient_info(sub: ExamSubmission) -> list[str]:
    if sub.report is not None:
        p = sub.report.patient
        family, given, birth, sex = p.birth_family, p.first_given, p.birth_date, p.sex
    else:
        mp = sub.manifest.patient
        family, given, birth, sex = mp.family_name, mp.given_name, mp.birth_date, mp.sex
    info = [f"PID-5|{_hl7(family)}^{_hl7(given)}^^^^^L"]
    if birth is not None:
        info.append(f"PID-7|{birth:%Y%m%d}")
    if sex:
        info.append(f"PID-8|{sex}")
    return info


def _references(sub: ExamSubmission) -> list[str]:
    study, report = sub.manifest.study, sub.report
    accession, accession_oid = study.accession, study.accession_oid
    if report is not None and not accession:
        accession, accession_oid = report.accession.value, report.accession.issuer_oid
    refs = [_cx(accession, accession_oid, xds.ACCESSION_REF)] if accession else []
    # a Study Instance UID is globally unique: no assigning authority (CX.4) to invent
    refs.append(f"{study.study_uid}^^^^{xds.STUDY_UID_REF}")
    order = report.placer_order if report is not None else None
    if order is not None:
        refs.append(_cx(order.value, order.issuer_oid, xds.ORDER_REF))
    elif sub.manifest.request is not None and sub.manifest.request.placer_order_number:
        req = sub.manifest.request
        refs.append(_cx(req.placer_order_number, req.placer_order_oid, xds.ORDER_REF))
    return refs


def _authors(sub: ExamSubmission, source: SubmissionSource) -> tuple[tuple[Author, ...], str]:
    """(authors, legalAuthenticator): the radiologist and structure of the report, if any."""
    report = sub.report
    if report is not None and report.radiologist is not None and report.structure is not None:
        person = professional_xcn(report.radiologist)
        return (Author(person, (structure_xon(report.structure),)),), person
    if source.author is None:
        raise ValueError("no author: give a report naming the radiologist, or a source author")
    return (source.author,), ""


def _common(sub: ExamSubmission, source: SubmissionSource, facts: CdaFacts | None) -> _Common:
    patient = sub.manifest.patient
    authors, legal = _authors(sub, source)
    return _Common(
        patient_id=_cx(patient.ins, patient.ins_oid, "NH"),
        source_patient_id=_cx(patient.ins, patient.ins_oid, "PI"),
        patient_info=_patient_info(sub),
        references=_references(sub),
        authors=authors,
        legal_authenticator=legal,
        facility=(facts.facility if facts else None) or source.healthcare_facility_type,
        practice=(facts.practice if facts else None) or source.practice_setting,
        submission_time=_now_dtm(sub.submitted),
    )


def _study_start(manifest: ImagingManifest) -> str:
    study = manifest.study
    if study.date is None:
        return ""
    clock = study.time.strftime("%H%M%S") if study.time is not None else ""
    return utc_dtm(f"{study.date:%Y%m%d}{clock}")


def _kos_doc(sub: ExamSubmission, facts: CdaFacts | None) -> _Doc:
    sop_uid, created = _kos_facts(sub.kos)
    if sop_uid != sub.manifest.sop_instance_uid:
        raise ValueError(
            f"the KOS bytes hold SOP Instance UID {sop_uid}, the manifest "
            f"{sub.manifest.sop_instance_uid}"
        )
    modalities = tuple(mc.modality_code(m) for m in sub.manifest.modalities)
    if not modalities:
        raise ValueError("the manifest has no series modality: the DMP needs one event code")
    return _Doc(
        symbol="DocumentKOS",
        data=sub.kos,
        mime=mc.KOS_MIME,
        unique_id=sop_uid,
        class_code=mc.KOS_CLASS,
        type_code=mc.KOS_TYPE,
        format_code=mc.KOS_FORMAT,
        title=mc.KOS_TITLE,
        description=sub.manifest.description,
        creation_time=created or _now_dtm(sub.submitted),
        confidentiality=_confidentiality(facts),
        events=modalities,
        service_start=(facts.service_start if facts else "") or _study_start(sub.manifest),
        service_stop=facts.service_stop if facts else "",
    )


def _confidentiality(facts: CdaFacts | None) -> tuple[Code, ...]:
    # the KOS is exactly as confidential as the report it illustrates
    code = facts.confidentiality if facts else None
    if code is None or code.scheme != xds.CONFIDENTIALITY_HL7:
        return (mc.NORMAL,)
    return (Code(code.code, code.scheme, code.display or code.code),)


def _report_doc(report: ReportMessage, facts: CdaFacts, kos: _Doc) -> _Doc:
    return _Doc(
        symbol="DocumentReport",
        data=report.cda,
        mime=mc.REPORT_MIME,
        unique_id=report.document.document_id,
        class_code=mc.REPORT_CLASS,
        type_code=mc.REPORT_TYPE,
        format_code=mc.REPORT_FORMAT,
        title=mc.REPORT_TITLE,
        creation_time=facts.created or kos.creation_time,
        confidentiality=kos.confidentiality,
        events=kos.events,
        service_start=kos.service_start,
        service_stop=kos.service_stop,
    )


def _signature_doc(signature: bytes, common: _Common) -> _Doc:
    return _Doc(
        symbol="Signature01",
        data=signature,
        mime=mc.SIGNATURE_MIME,
        unique_id=new_uid(),
        class_code=mc.SIGNATURE_CLASS,
        type_code=mc.SIGNATURE_TYPE,
        format_code=mc.SIGNATURE_FORMAT,
        title="Source",
        creation_time=common.submission_time,
        confidentiality=(mc.NORMAL, mc.MASQUE_PS, mc.INVISIBLE_PATIENT),
        events=(mc.SIGNATURE_EVENT,),
        language=mc.SIGNATURE_LANGUAGE,
        service_start=common.submission_time,
        service_stop=common.submission_time,
    )


# --- ebRIM writing --------------------------------------------------------------------------


class _Writer:
    """Writes ebRIM objects, numbering the ids of classifications and identifiers."""

    def __init__(self) -> None:
        self.count = 0

    def next_id(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    @staticmethod
    def slot(parent: etree._Element, name: str, values: Iterable[str]) -> None:
        el = etree.SubElement(parent, q(RIM, "Slot"), name=name)
        vlist = etree.SubElement(el, q(RIM, "ValueList"))
        for value in values:
            etree.SubElement(vlist, q(RIM, "Value")).text = value

    @staticmethod
    def text(parent: etree._Element, tag: str, value: str) -> None:
        string = etree.SubElement(etree.SubElement(parent, q(RIM, tag)), q(RIM, "LocalizedString"))
        string.set("value", value)
        string.set("charset", "UTF-8")
        string.set(_XML_LANG, mc.LANGUAGE)

    def code(self, parent: etree._Element, scheme: str, code: Code) -> None:
        el = etree.SubElement(parent, q(RIM, "Classification"))
        el.set("id", self.next_id("cl"))
        el.set("classificationScheme", scheme)
        el.set("classifiedObject", parent.get("id", ""))
        el.set("nodeRepresentation", code.code)
        self.slot(el, "codingScheme", [code.scheme])
        self.text(el, "Name", code.display or code.code)

    def author(self, parent: etree._Element, scheme: str, author: Author) -> None:
        el = etree.SubElement(parent, q(RIM, "Classification"))
        el.set("id", self.next_id("cl"))
        el.set("classificationScheme", scheme)
        el.set("classifiedObject", parent.get("id", ""))
        el.set("nodeRepresentation", "")
        if author.person:
            self.slot(el, "authorPerson", [author.person])
        if author.institutions:
            self.slot(el, "authorInstitution", author.institutions)

    def external_id(self, parent: etree._Element, scheme: str, value: str, name: str) -> None:
        el = etree.SubElement(parent, q(RIM, "ExternalIdentifier"))
        el.set("id", self.next_id("ei"))
        el.set("identificationScheme", scheme)
        el.set("registryObject", parent.get("id", ""))
        el.set("value", value)
        self.text(el, "Name", name)


def _doc_slots(w: _Writer, eo: etree._Element, doc: _Doc, common: _Common) -> None:
    w.slot(eo, "hash", [hashlib.sha1(doc.data, usedforsecurity=False).hexdigest().upper()])
    w.slot(eo, "size", [str(len(doc.data))])
    w.slot(eo, "creationTime", [doc.creation_time])
    w.slot(eo, "languageCode", [doc.language])
    if common.legal_authenticator:
        w.slot(eo, "legalAuthenticator", [common.legal_authenticator])
    if doc.service_start:
        w.slot(eo, "serviceStartTime", [doc.service_start])
    if doc.service_stop:
        w.slot(eo, "serviceStopTime", [doc.service_stop])
    w.slot(eo, "sourcePatientId", [common.source_patient_id])
    w.slot(eo, "sourcePatientInfo", common.patient_info)
    w.slot(eo, s.REFERENCE_ID_LIST, common.references)


def _extrinsic(w: _Writer, rol: etree._Element, doc: _Doc, common: _Common) -> None:
    eo = etree.SubElement(rol, q(RIM, "ExtrinsicObject"))
    eo.set("id", doc.symbol)
    eo.set("mimeType", doc.mime)
    eo.set("objectType", s.DE_STABLE)
    _doc_slots(w, eo, doc, common)
    w.text(eo, "Name", doc.title)
    if doc.description:
        w.text(eo, "Description", doc.description)
    for author in common.authors:
        w.author(eo, s.DE_AUTHOR, author)
    w.code(eo, s.DE_CLASS, doc.class_code)
    for code in doc.confidentiality:
        w.code(eo, s.DE_CONFIDENTIALITY, code)
    for code in doc.events:
        w.code(eo, s.DE_EVENT, code)
    w.code(eo, s.DE_FORMAT, doc.format_code)
    w.code(eo, s.DE_HCFT, common.facility)
    w.code(eo, s.DE_PRACTICE, common.practice)
    w.code(eo, s.DE_TYPE, doc.type_code)
    w.external_id(eo, s.DE_PATIENT_ID, common.patient_id, "XDSDocumentEntry.patientId")
    w.external_id(eo, s.DE_UNIQUE_ID, doc.unique_id, "XDSDocumentEntry.uniqueId")


def submission_set(
    w: _Writer,
    rol: etree._Element,
    source: SubmissionSource,
    patient_id: str,
    when: str,
    authors: Sequence[Author] = (),
    unique_id: str | None = None,
) -> str:
    """Write the SubmissionSet RegistryPackage; returns its uniqueId."""
    unique_id = unique_id or new_uid()
    pkg = etree.SubElement(rol, q(RIM, "RegistryPackage"), id=SUBMISSION_SET)
    w.slot(pkg, "submissionTime", [when])
    w.text(pkg, "Name", "Publication DRIMbox")
    for author in authors:
        w.author(pkg, s.SS_AUTHOR, author)
    w.code(pkg, s.SS_CONTENT_TYPE, source.content_type)
    node = etree.SubElement(pkg, q(RIM, "Classification"), id=w.next_id("cl"))
    node.set("classifiedObject", SUBMISSION_SET)
    node.set("classificationNode", s.SS_NODE)
    w.external_id(pkg, s.SS_PATIENT_ID, patient_id, "XDSSubmissionSet.patientId")
    w.external_id(pkg, s.SS_SOURCE_ID, source.source_id, "XDSSubmissionSet.sourceId")
    w.external_id(pkg, s.SS_UNIQUE_ID, unique_id, "XDSSubmissionSet.uniqueId")
    return unique_id


def association(
    rol: etree._Element, kind: str, source: str, target: str, slots: dict[str, str]
) -> None:
    el = etree.SubElement(rol, q(RIM, "Association"))
    el.set("id", f"assoc-{uuid.uuid4().hex[:12]}")
    el.set("associationType", kind)
    el.set("sourceObject", source)
    el.set("targetObject", target)
    for name, value in slots.items():
        _Writer.slot(el, name, [value])


def _registry_object_list(parent: etree._Element) -> etree._Element:
    return etree.SubElement(parent, q(RIM, "RegistryObjectList"))


def _documents(sub: ExamSubmission, common: _Common, facts: CdaFacts | None) -> list[_Doc]:
    kos = _kos_doc(sub, facts)
    docs = [kos]
    if sub.report is not None and facts is not None and sub.publish_report:
        docs.append(_report_doc(sub.report, facts, kos))
    if sub.signature is not None:
        docs.append(_signature_doc(sub.signature, common))
    return docs


def build_provide_and_register(
    sub: ExamSubmission, source: SubmissionSource, signer: SubmissionSigner | None = None
) -> ProvideAndRegisterRequest:
    """The ITI-41 request publishing ``sub`` (raises ValueError on inconsistent input).

    With ``signer`` (and no ready-made ``sub.signature``), the submission set is signed over
    the final unique ids and bytes of its documents.
    """
    facts = read_cda_facts(sub.report.cda) if sub.report is not None else None
    common = _common(sub, source, facts)
    docs = _documents(sub, common, facts)
    ss_unique_id = new_uid()
    if signer is not None and sub.signature is None:
        signature = _signature_doc(b"", common)
        signature.data = signer(
            signature.unique_id, ss_unique_id, [(d.unique_id, d.data) for d in docs]
        )
        docs.append(signature)
    body = etree.Element(
        q(XDSB, "ProvideAndRegisterDocumentSetRequest"),
        nsmap={"xdsb": XDSB, "lcm": LCM, "rim": RIM},
    )
    rol = _registry_object_list(etree.SubElement(body, q(LCM, "SubmitObjectsRequest")))
    w = _Writer()
    ss_uid = submission_set(
        w, rol, source, common.patient_id, common.submission_time, common.authors, ss_unique_id
    )
    for doc in docs:
        _extrinsic(w, rol, doc, common)
    _associations(rol, sub, docs)
    attachments = []
    for doc in docs:
        cid = f"{uuid.uuid4()}@drimbox"
        mtom.include(etree.SubElement(body, q(XDSB, "Document"), id=doc.symbol), cid)
        attachments.append(Attachment(cid, doc.mime, doc.data))
    by_symbol = {d.symbol: d.unique_id for d in docs}
    return ProvideAndRegisterRequest(
        body=body,
        attachments=tuple(attachments),
        submission_set_unique_id=ss_uid,
        kos_unique_id=by_symbol["DocumentKOS"],
        report_unique_id=by_symbol.get("DocumentReport", ""),
        signature_unique_id=by_symbol.get("Signature01", ""),
    )


def _associations(rol: etree._Element, sub: ExamSubmission, docs: list[_Doc]) -> None:
    original = {"SubmissionSetStatus": "Original"}
    for doc in docs:
        association(rol, xds.HAS_MEMBER, SUBMISSION_SET, doc.symbol, original)
    if sub.replaces:
        association(rol, xds.RPLC, "DocumentKOS", sub.replaces, {})
    if sub.report_replaces and any(d.symbol == "DocumentReport" for d in docs):
        association(rol, xds.RPLC, "DocumentReport", sub.report_replaces, {})
    if any(d.symbol == "Signature01" for d in docs):
        association(rol, xds.SIGNS, "Signature01", SUBMISSION_SET, {})


# --- ITI-57 --------------------------------------------------------------------------------


def build_status_update(
    source: SubmissionSource,
    patient_id: str,
    entry_uuid: str,
    original: str,
    new: str,
    when: datetime | None = None,
) -> etree._Element:
    """ITI-57 ``SubmitObjectsRequest`` moving one entry from ``original`` to ``new`` status."""
    body = etree.Element(q(LCM, "SubmitObjectsRequest"), nsmap={"lcm": LCM, "rim": RIM})
    rol = _registry_object_list(body)
    w = _Writer()
    authors = (source.author,) if source.author is not None else ()
    submission_set(w, rol, source, patient_id, _now_dtm(when), authors)
    association(
        rol,
        xds.UPDATE_AVAILABILITY_STATUS,
        SUBMISSION_SET,
        entry_uuid,
        {"OriginalStatus": original, "NewStatus": new},
    )
    return body


# --- SOAP 1.2 + WS-Addressing + MTOM --------------------------------------------------------


def request_envelope(
    action: str, to: str, payload: etree._Element, security: etree._Element | None = None
) -> tuple[str, bytes]:
    """(MessageID, serialized envelope) of a request (WS-Addressing 1.0 SOAP binding), with
    the caller's ``wsse:Security`` header (VIHF assertion) when given."""
    message_id = f"urn:uuid:{uuid.uuid4()}"
    root = etree.Element(q(SOAP_NS, "Envelope"), nsmap={"s": SOAP_NS, "a": WSA_NS})
    header = etree.SubElement(root, q(SOAP_NS, "Header"))
    act = etree.SubElement(header, q(WSA_NS, "Action"))
    act.set(q(SOAP_NS, "mustUnderstand"), "1")
    act.text = action
    etree.SubElement(header, q(WSA_NS, "MessageID")).text = message_id
    etree.SubElement(
        etree.SubElement(header, q(WSA_NS, "ReplyTo")), q(WSA_NS, "Address")
    ).text = _ANONYMOUS
    to_el = etree.SubElement(header, q(WSA_NS, "To"))
    to_el.set(q(SOAP_NS, "mustUnderstand"), "1")
    to_el.text = to
    if security is not None:
        header.append(security)
    etree.SubElement(root, q(SOAP_NS, "Body")).append(payload)
    return message_id, bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def mtom_request(
    action: str,
    to: str,
    payload: etree._Element,
    attachments: Sequence[Attachment] = (),
    security: etree._Element | None = None,
) -> tuple[str, str, bytes]:
    """(MessageID, Content-Type, body) of an MTOM/XOP request (multipart/related)."""
    message_id, envelope = request_envelope(action, to, payload, security)
    parts = [(a.cid, a.media_type, a.data) for a in attachments]
    content_type, body = mtom.pack(envelope, action, parts)
    return message_id, content_type, body
