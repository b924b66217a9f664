"""The RIS messages that carry a validated report: HL7 v2 ORU^R01 and MDM^T02 (CI-SIS profile).

Shapes follow the ANS DRIM-M test messages (``ORU_R01 K``, ``MDM_T02 L``, ``CR_G1_MAJ``,
``CR_I_Depublication``): MSH-21 ``2.1^CISIS_CDA_HL7_V2``, INS then IPP in PID-3, the CDA
base64-encoded in OBX-5 (ED, ``^TEXT^XML^Base64^<data>``), the sending structure in a PRT
segment, then the DMP/MSSanté metadata OBX segments. ORU messages are version 2.5; MDM messages
are 2.6 as in the ANS samples (TXA and PRT come from that version).

=============  =====================  ===================  ========================
event          ORC-1 (ORU and MDM)    MDM trigger          OBR-25 / OBX-11 (ORU)
=============  =====================  ===================  ========================
new report     ``NW``                 ``T02``              ``F`` / ``F``
correction     ``RO`` (replacement)   ``T10`` + TXA-13     ``C`` / ``C``
cancellation   ``CA``                 ``T04``              ``X`` / ``F``
=============  =====================  ===================  ========================

The ANS correction sample for ORU still says ``NW``/``F``; ``RO`` and ``C`` are the HL7 codes
for a replacement and a corrected result, and the CDA itself (same setId, higher version,
``relatedDocument RPLC``) is what a receiver must rely on.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Literal

from drimbox.synth.cda import REPORT_CODE, ReportDocument, paris_offset
from drimbox.synth.sites import RPPS_ROOT, STRUCTURE_ROOT, Physician, Site

MessageKind = Literal["ORU", "MDM"]
Event = Literal["new", "correction", "cancel"]

INS_AUTHORITY = "ASIP-SANTE-INS-NIR"
PROFILE = "2.1^CISIS_CDA_HL7_V2"
RECEIVING_APPLICATION = "DRIMBOX"

_ORC_CONTROL: dict[Event, str] = {"new": "NW", "correction": "RO", "cancel": "CA"}
_MDM_TRIGGER: dict[Event, str] = {"new": "T02", "correction": "T10", "cancel": "T04"}
_RESULT_STATUS: dict[Event, str] = {"new": "F", "correction": "C", "cancel": "X"}
_SERVICE_SECTION = {"CT": "CT", "MR": "NMR", "US": "RUS", "NM": "NMS"}
# CI-SIS DMP/MSSanté routing metadata: visible to the patient, published in the DMP only.
_DMP_METADATA = (
    ("MASQUE_PS", "Masqué aux professionnels de Santé", "N"),
    ("INVISIBLE_PATIENT", "Document Non Visible par le patient", "N"),
    ("INVISIBLE_REP_LEGAUX", "Non visible par les représentants Légaux du patient", "N"),
    ("CONNEXION_SECRETE", "Connexion Secrete", "N"),
    ("MODIF_CONF_CODE", "Modification Confidentiality Code", "N"),
    ("DESTDMP", "Destinataire DMP", "Y"),
    ("DESTMSSANTEPS",
     "Destinataire (Professionnel de Santé, organisation ou BAL applicative)", "N"),
    ("DESTMSSANTEPAT", "Destinataire Patient", "N"),
    ("ACK_RECEPTION", "Accusé de réception", "N"),
    ("ACK_LECTURE_MSS", "Accusé de lecture", "N"),
)  # fmt: skip

_ESCAPES = (
    ("\\", "\\E\\"),  # first, so the escapes below are not escaped again
    ("|", "\\F\\"),
    ("^", "\\S\\"),
    ("&", "\\T\\"),
    ("~", "\\R\\"),
    ("\r", "\\X0D\\"),
    ("\n", "\\X0A\\"),
)


def escape(text: str) -> str:
    """Escape HL7 delimiters in free text (names, descriptions) for ``|^~\\&``."""
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return text


def hl7_time(local: datetime) -> str:
    return local.strftime("%Y%m%d%H%M%S")


def _ei(identifier: str, namespace: str, oid: str) -> str:
    """Entity identifier: ``id^namespace^OID^ISO``."""
    return f"{escape(identifier)}^{escape(namespace)}^{oid}^ISO"


def _xcn(doctor: Physician) -> str:
    """A professional as XCN: national id (``8`` + RPPS), names, issuer, ``RPPS`` type."""
    return (
        f"{doctor.idnat}^{escape(doctor.family)}^{escape(doctor.given)}^^^DR^^^"
        f"ASIP-SANTE-PS&{RPPS_ROOT}&ISO^D^^^RPPS"
    )


def _interpreter(doctor: Physician) -> str:
    """OBR-32 (NDL): the CNN of the radiologist, as sub-components."""
    return (
        f"{doctor.idnat}&{escape(doctor.family)}&{escape(doctor.given)}&&&DR&&&"
        f"ASIP-SANTE-PS&{RPPS_ROOT}&ISO"
    )


def _structure(site: Site) -> str:
    """The structure as XON, identified like the CDA ``representedOrganization``."""
    return f"{escape(site.name)}^^^^^ASIP-SANTE-ST&{STRUCTURE_ROOT}&ISO^FINEG^^^{site.structure_id}"


def _pid(report: ReportDocument) -> str:
    exam = report.exam
    patient, site = exam.patient, exam.site
    ids = (
        f"{patient.ins.value}^^^{INS_AUTHORITY}&{patient.ins.oid}&ISO^INS"
        f"~{escape(exam.ipp)}^^^{escape(site.short)}&{site.ipp_oid}&ISO^PI"
    )
    names = (
        f"{escape(patient.birth_family)}^{escape(patient.first_given)}"
        f"^{escape(' '.join(patient.given_names))}^^^^L"
        f"~{escape(patient.used_family or patient.birth_family)}^^^^^^D"
    )
    a = patient.address
    addresses = (
        f"^^^^^^BDL^^{patient.birthplace_code}"
        f"~{escape(a.street)}^^{escape(a.city)}^^{a.postal_code}^FRA^H"
    )
    fields = [
        "PID", "", "", ids, "", names, "", patient.birth_date.strftime("%Y%m%d"), patient.sex,
        "", "", addresses, *[""] * 19, "N", "VALI",
    ]  # fmt: skip
    return "|".join(fields)


def _obr(report: ReportDocument, event: Event) -> str:
    exam = report.exam
    site = exam.site
    fields = [""] * 33
    fields[0] = "OBR"
    fields[1] = "1"
    fields[2] = _ei(exam.order_number, site.ris_application, site.order_oid)
    fields[3] = _ei(exam.accession, site.ris_application, site.accession_oid)
    fields[4] = f"{REPORT_CODE[0]}^{escape(REPORT_CODE[1])}^LN"
    fields[7] = hl7_time(exam.start)
    fields[8] = hl7_time(exam.end)
    fields[16] = _xcn(exam.referring)
    fields[18] = escape(exam.accession)
    fields[19] = escape(exam.study_id)
    fields[22] = hl7_time(report.authored)
    fields[24] = _SERVICE_SECTION.get(exam.modality, "RAD")
    fields[25] = _RESULT_STATUS[event]
    fields[32] = _interpreter(exam.radiologist)
    return "|".join(fields)


def _txa(report: ReportDocument, event: Event) -> str:
    exam = report.exam
    site = exam.site
    fields = [""] * 23
    fields[0] = "TXA"
    fields[1] = "1"
    fields[2] = REPORT_CODE[0]
    fields[3] = "TEXT"
    fields[4] = hl7_time(report.authored)
    fields[12] = report.document_id
    fields[13] = report.replaces or ""
    fields[14] = _ei(exam.order_number, site.ris_application, site.order_oid)
    fields[15] = _ei(exam.accession, site.ris_application, site.accession_oid)
    fields[17] = "AU"  # authenticated
    fields[19] = "CA" if event == "cancel" else "AV"
    fields[21] = "Rectification du compte rendu" if event == "correction" else ""
    fields[22] = f"{exam.radiologist.idnat}^{escape(exam.radiologist.family)}^" + escape(
        exam.radiologist.given
    )
    return "|".join(fields)


def build_message(
    report: ReportDocument,
    kind: MessageKind,
    event: Event,
    *,
    control_id: str,
    sent: datetime,
) -> str:
    """One HL7 message, segments separated by ``\\r`` (and a final ``\\r``)."""
    if event == "correction" and report.replaces is None:
        raise ValueError("a correction message needs a report version that replaces another")
    exam = report.exam
    site = exam.site
    if kind == "ORU":
        message_type, version = "ORU^R01^ORU_R01", "2.5"
    else:
        message_type, version = f"MDM^{_MDM_TRIGGER[event]}^MDM_T02", "2.6"
    segments = [
        "|".join([
            "MSH", "^~\\&", escape(site.ris_application), escape(site.short),
            RECEIVING_APPLICATION, escape(site.short), hl7_time(sent) + paris_offset(sent), "",
            message_type, escape(control_id), "P", version, "", "", "", "", "FRA",
            "UNICODE UTF-8", "", "", PROFILE,
        ])
    ]  # fmt: skip
    if kind == "MDM":
        segments.append(f"EVN||{hl7_time(sent)}|||{_xcn(exam.radiologist)}|{hl7_time(sent)}")
    segments.append(_pid(report))
    visit = f"{escape(exam.visit_number)}^^^{escape(site.short)}&{site.visit_oid}&ISO^VN"
    segments.append("|".join(["PV1", "1", "O", "IMAGERIE", *[""] * 15, visit]))
    order_status = "CA" if event == "cancel" else "CM"
    segments.append(
        "|".join([
            "ORC", _ORC_CONTROL[event],
            _ei(exam.order_number, site.ris_application, site.order_oid),
            _ei(exam.accession, site.ris_application, site.accession_oid), "", order_status,
        ])
    )  # fmt: skip
    segments.append(_obr(report, event))
    if kind == "MDM":
        segments.append(_txa(report, event))
    cda = base64.b64encode(report.xml).decode("ascii")
    obx_status = "C" if event == "correction" else "F"
    code = f"{REPORT_CODE[0]}^{escape(REPORT_CODE[1])}^LN"
    segments.append(f"OBX|1|ED|{code}||^TEXT^XML^Base64^{cda}||||||{obx_status}")
    segments.append(
        f"PRT||UC||SB^Send by^participation|{_xcn(exam.radiologist)}|||{_structure(site)}"
    )
    coded = "CE" if kind == "ORU" else "CWE"
    for n, (key, label, value) in enumerate(_DMP_METADATA, start=2):
        segments.append(
            f"OBX|{n}|{coded}|{key}^{escape(label)}^MetaDMPMSS||"
            f"{value}^^expandedYes-NoIndicator||||||F"
        )
    return "\r".join(segments) + "\r"


def new_report_message(
    report: ReportDocument, kind: MessageKind, *, control_id: str, sent: datetime
) -> str:
    """The message a RIS sends when the radiologist validates the first version."""
    return build_message(report, kind, "new", control_id=control_id, sent=sent)


def corrected_report_message(
    report: ReportDocument, kind: MessageKind, *, control_id: str, sent: datetime
) -> str:
    """The message for a new version of the report of the same exam (``report.replaces`` set)."""
    return build_message(report, kind, "correction", control_id=control_id, sent=sent)


def cancellation_message(
    report: ReportDocument, kind: MessageKind, *, control_id: str, sent: datetime
) -> str:
    """The message that withdraws ``report`` (ORC-1 ``CA``): the exam must be depublished."""
    return build_message(report, kind, "cancel", control_id=control_id, sent=sent)
