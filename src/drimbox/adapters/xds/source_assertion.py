"""The VIHF assertion a Source box sends with its index calls (DMP mode INDIRECTE).

The box acts for the report's author: the subject is the radiologist who validated the report
and the structure the one responsible for it (digest B.7; for an IOCM-driven update, the
stored report of the previous submission). The assertion is signed with the structure's
ORG certificate, the same key that signs the submission sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from lxml import etree

from drimbox import __version__
from drimbox.adapters.trust import vihf
from drimbox.adapters.trust.xmldsig import SigningKey
from drimbox.domain.report import ReportMessage

# TRE_G15 profession "Médecin": every report author a Source publishes for is a physician
PHYSICIAN = vihf.CodedValue("10", "1.2.250.1.71.1.2.7", "Médecin")


@dataclass(frozen=True, slots=True)
class SourceIdentity:
    """What the box says about itself and its structure when no report says better."""

    lps_id: str
    """The box's id (its OID)."""
    lps_homologation: str
    """DMP homologation number of the software (a placeholder outside the national network)."""
    structure_id: str
    structure_name: str
    sector: vihf.CodedValue | None


class SourceAssertions:
    def __init__(
        self, identity: SourceIdentity, key: SigningKey, chain: Sequence[x509.Certificate]
    ) -> None:
        self.identity, self.key, self.chain = identity, key, tuple(chain)

    def claims(self, patient_id: str, report: ReportMessage | None) -> vihf.VihfClaims:
        me = self.identity
        person = report.radiologist if report is not None else None
        structure = report.structure if report is not None else None
        return vihf.VihfClaims(
            subject_id=person.national_id if person else me.lps_id,
            subject_name=f"{person.given} {person.family}".strip() if person
            else me.structure_name,
            roles=(PHYSICIAN,),
            structure_id=structure.national_id if structure else me.structure_id,
            sector=me.sector,
            patient_id=patient_id,
            mode=vihf.AuthMode.INDIRECTE,
            purpose=vihf.NORMAL_ACCESS,
            lps_id=me.lps_id,
            lps_name="drimbox",
            lps_version=__version__,
            lps_homologation=me.lps_homologation,
        )  # fmt: skip

    def __call__(self, patient_id: str, report: ReportMessage | None) -> etree._Element:
        assertion = vihf.build_assertion(
            self.claims(patient_id, report), key=self.key, chain=self.chain,
            issued_at=datetime.now(UTC),
        )  # fmt: skip
        return vihf.security_header(assertion)
