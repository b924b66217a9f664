"""The coded values a DRIMbox Source puts in its XDS metadata for the DMP.

Values come from the ANS validator sample (``Validateur XDS/XDS.xml``, digest B.5) and from
the rules the index enforces (``services/index/metadata.py``); display names are the French
ones of the CI-SIS value sets, as the DMP shows them to professionals and patients.
"""

from __future__ import annotations

from typing import Final

from drimbox.domain import xds
from drimbox.domain.xds import Code

KOS_CLASS: Final = Code("31", xds.CLASS_SCHEME, "Imagerie médicale")
KOS_TYPE: Final = Code("IMG-KOS", xds.TYPE_SCHEME_FR, "Reference d'objets d'un examen d'imagerie")
KOS_FORMAT: Final = Code(
    xds.KOS_SOP_CLASS,
    xds.KOS_FORMAT_SCHEME,
    "Document de Références d'objets d'imagerie selon profil IHE RAD XDS-I",
)
KOS_MIME: Final = "application/dicom"
KOS_TITLE: Final = "Reference d'Objets d'un Examen d'Imagerie"

REPORT_CLASS: Final = Code("10", xds.CLASS_SCHEME, "Compte rendu")
REPORT_TYPE: Final = Code("18748-4", xds.LOINC, "CR d'imagerie médicale")
# CI-SIS level-1 CDA (PDF body): the XDS-SD PDF format code (IHE format code system)
REPORT_FORMAT: Final = Code(
    "urn:ihe:iti:xds-sd:pdf:2008", "1.3.6.1.4.1.19376.1.2.3", "Document à corps non structuré"
)
REPORT_MIME: Final = "text/xml"
REPORT_TITLE: Final = "CR d'imagerie médicale"

# The XAdES submission-set signature (IHE DSG), hidden from professionals and patients
SIGNATURE_CLASS: Final = Code("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "URN", "Digital Signature")
SIGNATURE_TYPE: Final = Code("E1762", "ASTM", "Full Document")
SIGNATURE_FORMAT: Final = Code(
    "http://www.w3.org/2000/09/xmldsig#", "URN", "Default Signature Style"
)
SIGNATURE_EVENT: Final = Code("1.2.840.10065.1.12.1.14", "1.2.840.10065.1.12", "Source")
SIGNATURE_MIME: Final = "text/xml"
SIGNATURE_LANGUAGE: Final = "art"

NORMAL: Final = Code("N", xds.CONFIDENTIALITY_HL7, "Normal")
MASQUE_PS: Final = Code(xds.MASQUE_PS, xds.CONFIDENTIALITY_FR, "Masqué aux professionnels de santé")
INVISIBLE_PATIENT: Final = Code(
    xds.INVISIBLE_PATIENT, xds.CONFIDENTIALITY_FR, "Non visible par le patient"
)
LANGUAGE: Final = "fr-FR"

# The sample's submission-set content type; a site picks its own from JDV_J57
SAMPLE_CONTENT_TYPE: Final = Code("04", "1.2.250.1.213.2.2", "Hospitalisation de jour")
HEALTHCARE_FACILITY_SCHEME: Final = "1.2.250.1.71.4.2.4"
PRACTICE_SETTING_SCHEME: Final = "1.2.250.1.213.1.1.4.9"

# DICOM CID 29 acquisition modalities, as the JDV 1.2.250.1.213.1.1.5.618 names them
MODALITY_NAMES: Final = {
    "CR": "Computed Radiography",
    "CT": "Computed Tomography",
    "DX": "Digital Radiography",
    "MG": "Mammography",
    "MR": "Magnetic Resonance",
    "NM": "Nuclear Medicine",
    "PT": "Positron emission tomography",
    "US": "Ultrasound",
    "XA": "X-Ray Angiography",
    "RF": "Radio Fluoroscopy",
}


def modality_code(modality: str) -> Code:
    return Code(modality, xds.MODALITY_SCHEME, MODALITY_NAMES.get(modality, modality))
