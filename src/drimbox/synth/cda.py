"""The imaging report: a CDA R2 level 1 document (CI-SIS IMG-CR-IMG) with a PDF body.

The header mirrors the ANS reference samples (PFI.01 ``CR_K.xml``): CI-SIS templateIds, LOINC
18748-4 document code, INS and IPP in ``recordTarget``, RPPS-identified author and legal
authenticator with their structure, order and accession number in ``inFulfillmentOf``, the
StudyInstanceUID as ``documentationOf/serviceEvent/id/@root``, and the PDF base64-encoded in
``nonXMLBody``. A corrected report keeps the ``setId``, increments ``versionNumber`` and points
to the version it replaces with ``relatedDocument typeCode="RPLC"``.
"""

from __future__ import annotations

import base64
import textwrap
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from lxml import etree

from drimbox.synth.sites import (
    RADIOLOGY_SPECIALTY,
    RPPS_ROOT,
    SPECIALTY_CODE_SYSTEM,
    STRUCTURE_ROOT,
    Physician,
    Site,
)
from drimbox.synth.studies import MODALITY_NAMES, Exam

CDA_NS = "urn:hl7-org:v3"
PS3_20_NS = "urn:dicom-org:ps3-20"
LOINC = "2.16.840.1.113883.6.1"
SNOMED = "2.16.840.1.113883.6.96"
DCM = "1.2.840.10008.2.16.4"
REPORT_CODE = ("18748-4", "CR d'imagerie médicale")
TEMPLATE_IDS = (
    "2.16.840.1.113883.2.8.2.1",  # HL7 France
    "1.2.250.1.213.1.1.1.1",  # CI-SIS
    "1.3.6.1.4.1.19376.1.2.20",  # IHE XDS-SD: CDA R2 level 1 (unstructured body)
)
_GENDER = {"F": "Féminin", "M": "Masculin"}


def _last_sunday(year: int, month: int) -> date:
    last = (date(year, month + 1, 1) if month < 12 else date(year + 1, 1, 1)) - timedelta(days=1)
    return last - timedelta(days=(last.weekday() + 1) % 7)


def paris_offset(local: datetime) -> str:
    """UTC offset of a Europe/Paris wall-clock time (EU summer time rule), as ``+HHMM``."""
    summer_start = datetime.combine(_last_sunday(local.year, 3), time(2))
    summer_end = datetime.combine(_last_sunday(local.year, 10), time(3))
    return "+0200" if summer_start <= local < summer_end else "+0100"


def cda_time(local: datetime) -> str:
    return local.strftime("%Y%m%d%H%M%S") + paris_offset(local)


# --- report text and PDF --------------------------------------------------------------------


def _technique(exam: Exam) -> str:
    seed = exam.pixel_seed
    series = ", ".join(s.description for s in exam.series)
    if exam.modality == "CT":
        injected = any(s.contrast for s in exam.series)
        dose = 150 + seed % 650
        agent = "avec" if injected else "sans"
        return (
            f"Acquisition hélicoïdale {agent} injection de produit de contraste iodé. "
            f"Séries : {series}. Produit dose-longueur (PDL) : {dose} mGy.cm."
        )
    if exam.modality == "MR":
        return f"IRM 1,5 T. Séquences : {series}."
    if exam.modality in {"CR", "DX", "MG"}:
        dap = 0.05 + (seed % 40) / 100
        return f"Incidences : {series}. Produit dose-surface (PDS) : {dap:.2f} Gy.cm²."
    if exam.modality == "US":
        return "Échographie par voie abdominale, sonde convexe."
    return "Acquisitions statiques de la loge thyroïdienne, gamma-caméra double tête."


def report_text(exam: Exam, *, version: int = 1, authored: datetime | None = None) -> str:
    """The French plain-text report; version > 1 adds a rectification notice."""
    t, p = exam.exam_type, exam.patient
    results, conclusion = t.findings[exam.pixel_seed % len(t.findings)]
    indication = t.indications[(exam.pixel_seed >> 8) % len(t.indications)]
    born = "née" if p.sex == "F" else "né"
    validated = authored or exam.end
    lines = [
        f"{exam.site.name} - Service d'imagerie médicale",
        f"{exam.site.street}, {exam.site.postal_code} {exam.site.city}",
        "",
        f"Patient : {p.birth_family} {p.first_given}, {born} le {p.birth_date:%d/%m/%Y}"
        f" - INS {p.ins.value} - IPP {exam.ipp}",
        f"Examen : {t.description} du {exam.start:%d/%m/%Y} - N° {exam.accession}",
        f"Médecin demandeur : Dr {exam.referring.given} {exam.referring.family}",
        "",
        f"Indication : {indication}",
        f"Technique : {_technique(exam)}",
        f"Résultats : {results}",
        f"Conclusion : {conclusion}",
    ]
    if version > 1:
        lines += [
            "",
            f"Compte rendu rectifié (version {version}) : la conclusion a été précisée "
            "après relecture ; ce document remplace la version précédente.",
        ]
    lines += [
        "",
        f"Compte rendu validé le {validated:%d/%m/%Y à %H:%M} par "
        f"Dr {exam.radiologist.given} {exam.radiologist.family}, radiologue "
        f"(RPPS {exam.radiologist.rpps}).",
    ]
    return "\n".join(lines) + "\n"


def _pdf_string(text: str) -> bytes:
    """A PDF literal string in WinAnsi; non-ASCII bytes as octal escapes (file stays ASCII)."""
    out = bytearray(b"(")
    for byte in text.encode("cp1252", errors="replace"):
        if byte in b"\\()":
            out += b"\\" + bytes([byte])
        elif 32 <= byte < 127:
            out.append(byte)
        else:
            out += f"\\{byte:03o}".encode("ascii")
    return bytes(out + b")")


def render_pdf(title: str, text: str, created: datetime) -> bytes:
    """A small, valid PDF 1.4 (A4, Helvetica) showing ``title`` and the wrapped ``text``."""
    lines: list[str] = []
    for paragraph in text.splitlines():
        lines += textwrap.wrap(paragraph, 95) or [""]
    per_page = 48
    offset = paris_offset(created)
    pages = [lines[i : i + per_page] for i in range(0, len(lines), per_page)] or [[]]

    # Objects: 1 catalog, 2 pages, 3 Helvetica, 4 Helvetica-Bold, 5 info, then page + content.
    page_ids = [6 + 2 * i for i in range(len(pages))]
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids ["
        + b" ".join(f"{pid} 0 R".encode() for pid in page_ids)
        + f"] /Count {len(pages)} >>".encode(),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        4: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold"
        b" /Encoding /WinAnsiEncoding >>",
        5: b"<< /Title "
        + _pdf_string(title)
        + b" /Producer (drimbox synth) /CreationDate "
        + _pdf_string(f"D:{created:%Y%m%d%H%M%S}{offset[:3]}'{offset[3:]}'")
        + b" >>",
    }
    for n, (pid, page_lines) in enumerate(zip(page_ids, pages, strict=True)):
        content = bytearray(b"BT /F2 14 Tf 56 790 Td " + _pdf_string(title) + b" Tj ET\n")
        content += b"BT /F1 10 Tf 14 TL 56 760 Td\n"
        for line in page_lines:
            content += _pdf_string(line) + b" Tj T*\n"
        content += b"ET\n"
        content += b"BT /F1 8 Tf 500 30 Td " + _pdf_string(f"{n + 1}/{len(pages)}") + b" Tj ET\n"
        objects[pid] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842]"
            b" /Resources << /Font << /F1 3 0 R /F2 4 0 R >> >>"
            + f" /Contents {pid + 1} 0 R >>".encode()
        )
        objects[pid + 1] = (
            f"<< /Length {len(content)} >>\nstream\n".encode() + bytes(content) + b"endstream"
        )

    pdf = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = len(pdf)
        pdf += f"{number} 0 obj\n".encode() + objects[number] + b"\nendobj\n"
    xref_at = len(pdf)
    size = max(objects) + 1
    pdf += f"xref\n0 {size}\n0000000000 65535 f \n".encode()
    for number in range(1, size):
        pdf += f"{offsets[number]:010d} 00000 n \n".encode()
    pdf += f"trailer\n<< /Size {size} /Root 1 0 R /Info 5 0 R >>\n".encode()
    pdf += f"startxref\n{xref_at}\n%%EOF\n".encode()
    return bytes(pdf)


# --- CDA ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportDocument:
    """One version of the report of one exam, as sent by the RIS."""

    exam: Exam
    document_id: str
    """CDA ``id/@root`` (also TXA-12 in MDM messages)."""
    set_id: str
    version: int
    replaces: str | None
    """Document id of the version this one replaces (version > 1)."""
    authored: datetime
    text: str
    pdf: bytes
    xml: bytes


def _el(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, f"{{{CDA_NS}}}{tag}", attrs)
    if text is not None:
        element.text = text
    return element


def _addr(parent: etree._Element, street: str, postal: str, city: str) -> None:
    addr = _el(parent, "addr")
    _el(addr, "streetAddressLine", street)
    _el(addr, "postalCode", postal)
    _el(addr, "city", city)


def _organization(parent: etree._Element, tag: str, site: Site, *, setting: bool) -> None:
    org = _el(parent, tag)
    _el(org, "id", root=STRUCTURE_ROOT, extension=site.structure_id)
    _el(org, "name", site.name)
    _addr(org, site.street, site.postal_code, site.city)
    if setting:
        code, display = site.practice_setting
        _el(org, "standardIndustryClassCode", code=code, displayName=display,
            codeSystem="1.2.250.1.213.1.1.4.9")  # fmt: skip


def _professional(parent: etree._Element, tag: str, doctor: Physician, site: Site) -> None:
    entity = _el(parent, tag)
    _el(entity, "id", root=RPPS_ROOT, extension=doctor.idnat)
    code, display = RADIOLOGY_SPECIALTY
    _el(entity, "code", code=code, displayName=display, codeSystem=SPECIALTY_CODE_SYSTEM)
    _addr(entity, site.street, site.postal_code, site.city)
    person = _el(entity, "assignedPerson")
    name = _el(person, "name")
    _el(name, "given", doctor.given)
    _el(name, "family", doctor.family)
    _el(name, "suffix", "DR")
    _organization(entity, "representedOrganization", site, setting=True)


def _record_target(root: etree._Element, exam: Exam) -> None:
    patient, site = exam.patient, exam.site
    role = _el(_el(root, "recordTarget"), "patientRole")
    _el(role, "id", root=patient.ins.oid, extension=patient.ins.value)
    _el(role, "id", root=site.ipp_oid, extension=exam.ipp)
    a = patient.address
    _addr(role, a.street, a.postal_code, a.city)
    person = _el(role, "patient", classCode="PSN")
    name = _el(person, "name")
    _el(name, "family", patient.birth_family, qualifier="BR")
    _el(name, "given", patient.first_given, qualifier="BR")
    _el(name, "given", " ".join(patient.given_names))
    _el(name, "family", patient.used_family or patient.birth_family, qualifier="CL")
    _el(name, "given", patient.first_given, qualifier="CL")
    _el(person, "administrativeGenderCode", code=patient.sex, displayName=_GENDER[patient.sex],
        codeSystem="2.16.840.1.113883.5.1")  # fmt: skip
    _el(person, "birthTime", value=patient.birth_date.strftime("%Y%m%d"))
    place_addr = _el(_el(_el(person, "birthplace"), "place"), "addr")
    _el(place_addr, "county", patient.birthplace_code)
    _el(place_addr, "city", patient.birthplace_name)


def _service_event(root: etree._Element, exam: Exam) -> None:
    event = _el(_el(root, "documentationOf"), "serviceEvent", classCode="ACT")
    _el(event, "id", root=exam.study_uid)
    t = exam.exam_type
    code = _el(event, "code", code=t.loinc[0], displayName=t.loinc[1], codeSystem=LOINC,
               codeSystemName="LOINC")  # fmt: skip
    modality = _el(code, "translation", code=exam.modality,
                   displayName=MODALITY_NAMES[exam.modality], codeSystem=DCM,
                   codeSystemName="DCM")  # fmt: skip
    _el(_el(modality, "qualifier"), "name", code="121139", displayName="Modalité d'imagerie",
        codeSystem=DCM, codeSystemName="DCM")  # fmt: skip
    region = _el(code, "translation", code=t.region[0], displayName=t.region[1],
                 codeSystem=SNOMED, codeSystemName="SNOMED CT")  # fmt: skip
    _el(_el(region, "qualifier"), "name", code="39111-0", displayName="localisation anatomique",
        codeSystem=LOINC, codeSystemName="LOINC")  # fmt: skip
    when = _el(event, "effectiveTime")
    _el(when, "low", value=cda_time(exam.start))
    _el(when, "high", value=cda_time(exam.end))
    performer = _el(event, "performer", typeCode="PRF")
    _professional(performer, "assignedEntity", exam.radiologist, exam.site)


def build_cda(
    exam: Exam,
    *,
    document_id: str,
    set_id: str,
    version: int,
    authored: datetime,
    pdf: bytes,
    replaces: str | None = None,
) -> bytes:
    """Serialise the CDA R2 N1 report (UTF-8, with XML declaration)."""
    if version > 1 and replaces is None:
        raise ValueError("a report version > 1 must name the document it replaces")
    site, t = exam.site, exam.exam_type
    # lxml takes None as the default-namespace prefix; lxml-stubs only allows str keys.
    nsmap = {None: CDA_NS, "ps3-20": PS3_20_NS}
    root = etree.Element(f"{{{CDA_NS}}}ClinicalDocument", nsmap=nsmap)  # type: ignore[arg-type]
    _el(root, "realmCode", code="FR")
    _el(root, "typeId", root="2.16.840.1.113883.1.3", extension="POCD_HD000040")
    for template in TEMPLATE_IDS:
        _el(root, "templateId", root=template)
    _el(root, "id", root=document_id)
    code = _el(root, "code", code=REPORT_CODE[0], displayName=REPORT_CODE[1], codeSystem=LOINC,
               codeSystemName="LOINC")  # fmt: skip
    _el(code, "translation", code=t.loinc[0], displayName=t.loinc[1], codeSystem=LOINC,
        codeSystemName="LOINC")  # fmt: skip
    _el(root, "title", f"CR d'imagerie médicale - {t.description}")
    _el(root, "effectiveTime", value=cda_time(authored))
    _el(root, "confidentialityCode", code="N", displayName="Normal",
        codeSystem="2.16.840.1.113883.5.25")  # fmt: skip
    _el(root, "languageCode", code="fr-FR")
    _el(root, "setId", root=set_id)
    _el(root, "versionNumber", value=str(version))
    _record_target(root, exam)

    author = _el(root, "author")
    _el(author, "time", value=cda_time(authored))
    _professional(author, "assignedAuthor", exam.radiologist, site)

    custodian = _el(_el(root, "custodian"), "assignedCustodian")
    _organization(custodian, "representedCustodianOrganization", site, setting=False)

    legal = _el(root, "legalAuthenticator")
    _el(legal, "time", value=cda_time(authored))
    _el(legal, "signatureCode", code="S")
    _professional(legal, "assignedEntity", exam.radiologist, site)

    order = _el(_el(root, "inFulfillmentOf"), "order")
    _el(order, "id", root=site.order_oid, extension=exam.order_number)
    etree.SubElement(order, f"{{{PS3_20_NS}}}accessionNumber",
                     root=site.accession_oid, extension=exam.accession)  # fmt: skip

    _service_event(root, exam)

    if replaces is not None:
        parent = _el(_el(root, "relatedDocument", typeCode="RPLC"), "parentDocument")
        _el(parent, "id", root=replaces)
        _el(parent, "setId", root=set_id)
        _el(parent, "versionNumber", value=str(version - 1))

    encounter = _el(_el(root, "componentOf"), "encompassingEncounter")
    _el(encounter, "code", code="AMB", displayName="Ambulatoire",
        codeSystem="2.16.840.1.113883.5.4")  # fmt: skip
    span = _el(encounter, "effectiveTime")
    _el(span, "low", value=cda_time(exam.start))
    _el(span, "high", value=cda_time(exam.end))
    facility = _el(_el(encounter, "location"), "healthCareFacility")
    facility_code, facility_name = site.facility_code
    _el(facility, "id", root=STRUCTURE_ROOT, extension=site.structure_id)
    _el(facility, "code", code=facility_code, displayName=facility_name,
        codeSystem="1.2.250.1.71.4.2.4")  # fmt: skip
    place = _el(facility, "location")
    _el(place, "name", site.name)
    _addr(place, site.street, site.postal_code, site.city)

    body = _el(_el(root, "component"), "nonXMLBody")
    _el(body, "text", base64.b64encode(pdf).decode("ascii"), mediaType="application/pdf",
        representation="B64")  # fmt: skip
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


def make_report(
    exam: Exam,
    *,
    document_id: str,
    set_id: str,
    authored: datetime,
    version: int = 1,
    replaces: str | None = None,
) -> ReportDocument:
    """Text, PDF and CDA of one report version."""
    text = report_text(exam, version=version, authored=authored)
    title = f"Compte rendu - {exam.exam_type.description}"
    pdf = render_pdf(title, text, authored)
    xml = build_cda(exam, document_id=document_id, set_id=set_id, version=version,
                    authored=authored, pdf=pdf, replaces=replaces)  # fmt: skip
    return ReportDocument(exam, document_id, set_id, version, replaces, authored, text, pdf, xml)
