"""Synthetic imaging sites: structure identifiers, OIDs, AE titles and radiologists.

Everything here is fictional. Sites get OIDs under ``1.2.250.1.999.<n>``, an arc that no real
French organisation uses and that the ANS demonstrator also uses for test data; never reuse
it for real deployments. Under a site root:

==========  ===========================================
``.1``      IPP issuer (local patient identifiers)
``.2``      accession-number issuer (RIS)
``.3``      placer order numbers (requesting system)
``.4.<k>``  CDA document ids (one per report version)
``.5``      visit numbers (PV1-19)
``.6.<k>``  CDA setIds (one per report, shared by its versions)
==========  ===========================================

FINESS-like structure numbers (9 digits, Luhn key) and RPPS numbers (11 digits, Luhn key) are
random: RPPS start with ``997`` like the ANS test professionals, so the national identifiers
used in CDA and HL7 (``"8" + RPPS``) read ``8997...`` like the ANS samples.
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass

SYNTHETIC_OID_ARC = "1.2.250.1.999"
RPPS_ROOT = "1.2.250.1.71.4.2.1"
"""National identifier of health professionals (``"8" + RPPS``)."""
STRUCTURE_ROOT = "1.2.250.1.71.4.2.2"
"""National identifier of structures (``"1" + FINESS``)."""
RADIOLOGY_SPECIALTY = ("G15_10/SM44", "Médecin - Radio-diagnostic (SM)")
GP_SPECIALTY = ("G15_10/SM26", "Médecin - Qualifié en Médecine Générale (SM)")
SPECIALTY_CODE_SYSTEM = "1.2.250.1.213.1.1.4.5"


def luhn_digit(digits: str) -> str:
    """The Luhn check digit that makes ``digits + result`` valid (RPPS and FINESS keys)."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2 == 0:  # doubled positions, counted from the future check digit
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


@dataclass(frozen=True, slots=True)
class Physician:
    family: str
    given: str
    rpps: str
    """11-digit RPPS number (with its Luhn key)."""

    @property
    def idnat(self) -> str:
        """National PS identifier: ``"8"`` + RPPS (CDA ``id/@extension``, HL7 XCN-1)."""
        return "8" + self.rpps


@dataclass(frozen=True, slots=True)
class Site:
    id: str
    """Slug used for folder names."""
    number: int
    name: str
    short: str
    """Uppercase namespace used for the RIS application name and issuer names."""
    ae_title: str
    finess: str
    street: str
    postal_code: str
    city: str
    facility_code: tuple[str, str]
    """healthCareFacility type (JDV 1.2.250.1.71.4.2.4)."""
    practice_setting: tuple[str, str]
    """standardIndustryClassCode (1.2.250.1.213.1.1.4.9)."""
    radiologists: tuple[Physician, ...]

    @property
    def oid_root(self) -> str:
        return f"{SYNTHETIC_OID_ARC}.{self.number}"

    @property
    def ipp_oid(self) -> str:
        return f"{self.oid_root}.1"

    @property
    def accession_oid(self) -> str:
        return f"{self.oid_root}.2"

    @property
    def order_oid(self) -> str:
        return f"{self.oid_root}.3"

    @property
    def document_oid(self) -> str:
        return f"{self.oid_root}.4"

    @property
    def visit_oid(self) -> str:
        return f"{self.oid_root}.5"

    @property
    def set_oid(self) -> str:
        return f"{self.oid_root}.6"

    @property
    def structure_id(self) -> str:
        """National structure identifier: ``"1"`` + FINESS."""
        return "1" + self.finess

    @property
    def ris_application(self) -> str:
        return f"RIS_{self.short}"[:20]


# name, short, city, postal code, street, facility, setting
_SITE_CATALOGUE: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("CH Lyon Sud", "CHLYONSUD", "Pierre-Bénite", "69310", "165 chemin du Grand Revoyet", "CH"),
    ("CHU Bordeaux Nord", "CHUBXNORD", "Bordeaux", "33000", "12 rue des Douves", "CH"),
    ("Imagerie Paris Vaugirard", "IMGVAUGIR", "Paris", "75015", "240 rue de Vaugirard", "CAB"),
    ("Clinique des Tilleuls", "CLITILLEU", "Toulouse", "31400", "8 allée des Tilleuls", "CLI"),
    ("Centre de radiologie Ambroise", "CRAMBROIS", "Paris", "75010", "12 rue Ambroise", "CAB"),
    ("CH Nantes Erdre", "CHNANTERD", "Nantes", "44000", "3 quai de l'Erdre", "CH"),
    ("Imagerie du Grésivaudan", "IMGGRESIV", "Grenoble", "38000", "5 avenue Alsace", "CAB"),
    (
        "CHU Clermont Montagne",
        "CHUCLERMT",
        "Clermont-Ferrand",
        "63000",
        "58 rue Montalembert",
        "CH",
    ),
    ("Clinique Saint-Roch", "CLISTROCH", "Montpellier", "34000", "560 avenue du Colonel", "CLI"),
    ("Imagerie de Champagne", "IMGCHAMPA", "Reims", "51100", "45 rue Cognacq", "CAB"),
    ("CH Côte Basque", "CHCOTEBAS", "Bayonne", "64100", "13 avenue Jacques Loëb", "CH"),
    ("Radiologie des Capucins", "RADCAPUCI", "Angers", "49100", "2 rue des Capucins", "CAB"),
)

_FACILITY = {
    "CH": (("SA01", "Etablissement Public de santé"), ("ETABLISSEMENT", "Etablissement de santé")),
    "CLI": (("SA03", "Etablissement Privé Non PSPH"), ("ETABLISSEMENT", "Etablissement de santé")),
    "CAB": (("SA08", "Cabinet de groupe"), ("AMBULATOIRE", "Ambulatoire")),
}

DOCTOR_FAMILY_NAMES = (
    "BERNARD", "DUBOIS", "MOREAU", "LAURENT", "SIMON", "MICHEL", "LEFEBVRE", "LEROY", "ROUX",
    "DAVID", "BERTRAND", "MOREL", "FOURNIER", "GIRARD", "BONNET", "DUPONT", "LAMBERT", "FONTAINE",
    "ROUSSEAU", "VINCENT", "MULLER", "LEFEVRE", "FAURE", "ANDRE", "MERCIER", "BLANC", "GUERIN",
    "BOYER", "GARNIER", "CHEVALIER", "FRANCOIS", "LEGRAND", "GAUTHIER", "PERRIN", "ROBIN",
)  # fmt: skip
DOCTOR_GIVEN_NAMES = (
    "Anne", "Claire", "Hélène", "Isabelle", "Sophie", "Camille", "Julie", "Nathalie", "Céline",
    "Pierre", "Jean", "Nicolas", "Thomas", "Olivier", "François", "Laurent", "Mathieu", "Éric",
    "Antoine", "Julien", "Sandrine", "Valérie", "Guillaume", "Benoît",
)  # fmt: skip


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")


def make_rpps(rng: random.Random) -> str:
    body = "997" + f"{rng.randrange(10**7):07d}"
    return body + luhn_digit(body)


def make_physician(rng: random.Random) -> Physician:
    return Physician(
        family=rng.choice(DOCTOR_FAMILY_NAMES),
        given=rng.choice(DOCTOR_GIVEN_NAMES),
        rpps=make_rpps(rng),
    )


def _make_finess(rng: random.Random, postal_code: str) -> str:
    body = postal_code[:2] + f"{rng.randrange(10**6):06d}"
    return body + luhn_digit(body)


def make_sites(count: int, seed: int) -> list[Site]:
    """``count`` distinct fictional sites, deterministic for ``seed``."""
    if count < 1:
        raise ValueError("at least one site is needed")
    rng = random.Random(f"{seed}:sites")
    order = list(range(len(_SITE_CATALOGUE)))
    rng.shuffle(order)
    sites: list[Site] = []
    used_rpps: set[str] = set()
    for n in range(1, count + 1):
        name, short, city, postal, street, kind = _SITE_CATALOGUE[order[(n - 1) % len(order)]]
        if n > len(_SITE_CATALOGUE):  # more sites than names: number the repeats
            lap = (n - 1) // len(_SITE_CATALOGUE) + 1
            name, short = f"{name} {lap}", f"{short[:7]}{lap:02d}"
        radiologists: list[Physician] = []
        wanted = rng.choice((2, 3))
        while len(radiologists) < wanted:
            doctor = make_physician(rng)
            if doctor.rpps not in used_rpps:
                used_rpps.add(doctor.rpps)
                radiologists.append(doctor)
        facility, setting = _FACILITY[kind]
        sites.append(
            Site(
                id=_slug(name),
                number=n,
                name=name,
                short=short,
                ae_title=short[:16],
                finess=_make_finess(rng, postal),
                street=street,
                postal_code=postal,
                city=city,
                facility_code=facility,
                practice_setting=setting,
                radiologists=tuple(radiologists),
            )
        )
    return sites
