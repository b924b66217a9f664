"""Synthetic French patients with coherent INS traits and per-site IPPs.

Each patient's NIR is built like a real one (sex digit, birth year and month, birthplace
department and commune or country of birth, order number) and gets its correct key; the INS
uses the TEST OID so that no synthetic identity can be mistaken for a real person. Names
follow the INS conventions: upper case, no diacritics, hyphens and apostrophes kept.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from drimbox.domain.identifiers import INS_OID_TEST, Ins, nir_key
from drimbox.synth.sites import Site

Sex = Literal["F", "M"]

REFERENCE_DATE = date(2025, 6, 30)
"""Fixed "today" of the synthetic world: ages and exam dates never depend on the clock."""

FAMILY_NAMES = (
    "MARTIN", "BERNARD", "THOMAS", "PETIT", "ROBERT", "RICHARD", "DURAND", "DUBOIS", "MOREAU",
    "LAURENT", "SIMON", "MICHEL", "LEFEBVRE", "LEROY", "ROUX", "DAVID", "BERTRAND", "MOREL",
    "FOURNIER", "GIRARD", "BONNET", "DUPONT", "LAMBERT", "FONTAINE", "ROUSSEAU", "VINCENT",
    "MULLER", "LEFEVRE", "FAURE", "ANDRE", "MERCIER", "BLANC", "GUERIN", "BOYER", "GARNIER",
    "CHEVALIER", "FRANCOIS", "LEGRAND", "GAUTHIER", "GARCIA", "PERRIN", "ROBIN", "CLEMENT",
    "MORIN", "NICOLAS", "HENRY", "ROUSSEL", "MATHIEU", "GAUTIER", "MASSON", "MARCHAND", "DUVAL",
    "DENIS", "DUMONT", "MARIE", "LEMAIRE", "NOEL", "MEYER", "DUFOUR", "MEUNIER", "BRUN",
    "BLANCHARD",
    "GIRAUD", "JOLY", "RIVIERE", "LUCAS", "BRUNET", "GAILLARD", "BARBIER", "ARNAUD", "MARTINEZ",
    "GERARD", "ROCHE", "RENARD", "SCHMITT", "ROY", "LEROUX", "COLIN", "VIDAL", "CARON", "PICARD",
    "ROGER", "FABRE", "AUBERT", "LEMOINE", "RENAUD", "DUMAS", "LACROIX", "OLIVIER", "PHILIPPE",
    "BOURGEOIS", "PIERRE", "BENOIT", "REY", "LECLERC", "PAYET", "ROLLAND", "LECLERCQ", "GUILLAUME",
    "LECOMTE", "LOPEZ", "JEAN", "DUPUY", "GUILLOT", "HUBERT", "BERGER", "CARPENTIER", "SANCHEZ",
    "D'ALMEIDA", "LE GALL", "MARTIN-DURAND", "N'DIAYE", "FERREIRA", "NGUYEN", "BENALI",
)  # fmt: skip
GIVEN_NAMES: dict[Sex, tuple[str, ...]] = {
    "F": (
        "MARIE", "NATHALIE", "ISABELLE", "SYLVIE", "CATHERINE", "FRANCOISE", "VALERIE", "CHRISTINE",
        "MONIQUE", "SANDRINE", "SOPHIE", "CELINE", "STEPHANIE", "JULIE", "CAROLINE", "AURELIE",
        "CAMILLE", "LEA", "MANON", "CHLOE", "EMMA", "INES", "JEANNE", "HELENE", "ANNE", "LAURE",
        "MARIE-CLAIRE", "ANNE-SOPHIE", "BRIGITTE", "JOSIANE", "DOMINIQUE", "ELODIE", "AMANDINE",
    ),
    "M": (
        "JEAN", "PIERRE", "MICHEL", "ANDRE", "PHILIPPE", "ALAIN", "BERNARD", "CHRISTOPHE",
        "PATRICK",
        "NICOLAS", "DANIEL", "FREDERIC", "LAURENT", "STEPHANE", "DAVID", "ERIC", "JULIEN", "THOMAS",
        "ANTOINE", "LUCAS", "HUGO", "LOUIS", "GABRIEL", "MATHIEU", "FRANCOIS", "GUILLAUME",
        "JEAN-PIERRE", "JEAN-LUC", "PAUL", "YANNICK", "DOMINIQUE", "MAXIME", "ROMAIN",
    ),
}  # fmt: skip

# INSEE code (commune, or 99 + country), name. Paris/Lyon/Marseille use arrondissement codes,
# as in a NIR.
BIRTHPLACES: tuple[tuple[str, str], ...] = (
    ("75115", "PARIS 15E ARRONDISSEMENT"), ("75112", "PARIS 12E ARRONDISSEMENT"),
    ("75118", "PARIS 18E ARRONDISSEMENT"), ("69383", "LYON 3E ARRONDISSEMENT"),
    ("69388", "LYON 8E ARRONDISSEMENT"), ("13208", "MARSEILLE 8E ARRONDISSEMENT"),
    ("33063", "BORDEAUX"), ("31555", "TOULOUSE"), ("44109", "NANTES"), ("67482", "STRASBOURG"),
    ("59350", "LILLE"), ("35238", "RENNES"), ("06088", "NICE"), ("34172", "MONTPELLIER"),
    ("63113", "CLERMONT-FERRAND"), ("63220", "MAZOIRES"), ("21231", "DIJON"), ("76540", "ROUEN"),
    ("87085", "LIMOGES"), ("38185", "GRENOBLE"), ("42218", "SAINT-ETIENNE"), ("51454", "REIMS"),
    ("29019", "BREST"), ("37261", "TOURS"), ("49007", "ANGERS"), ("80021", "AMIENS"),
    ("25056", "BESANCON"), ("57463", "METZ"), ("54395", "NANCY"), ("64445", "PAU"),
    ("66136", "PERPIGNAN"), ("30189", "NIMES"), ("84007", "AVIGNON"), ("2A004", "AJACCIO"),
    ("2B033", "BASTIA"), ("99350", "MAROC"), ("99352", "ALGERIE"), ("99351", "TUNISIE"),
    ("99139", "PORTUGAL"), ("99127", "ITALIE"), ("99134", "ESPAGNE"),
)  # fmt: skip

_STREETS = (
    "rue de la République", "avenue Jean Jaurès", "rue Victor Hugo", "boulevard Pasteur",
    "rue des Écoles", "place de la Mairie", "chemin des Vignes", "rue du Moulin",
    "allée des Acacias", "rue Émile Zola", "avenue de la Gare", "impasse des Lilas",
)  # fmt: skip
_TOWNS = (
    ("69007", "LYON"), ("33000", "BORDEAUX"), ("75011", "PARIS"), ("31000", "TOULOUSE"),
    ("44000", "NANTES"), ("38000", "GRENOBLE"), ("63000", "CLERMONT-FERRAND"),
    ("34000", "MONTPELLIER"),
    ("51100", "REIMS"), ("64100", "BAYONNE"), ("49000", "ANGERS"), ("69310", "PIERRE-BENITE"),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Address:
    street: str
    postal_code: str
    city: str


@dataclass(frozen=True, slots=True)
class Patient:
    ins: Ins
    birth_family: str
    given_names: tuple[str, ...]
    """Birth given names in civil-status order; the first one is an INS trait."""
    used_family: str | None
    """Name in use when it differs from the birth name (e.g. spouse's name)."""
    birth_date: date
    sex: Sex
    birthplace_code: str
    birthplace_name: str
    address: Address
    ipps: tuple[tuple[str, str], ...]
    """(site id, IPP) for every site; a site only uses its own."""

    @property
    def first_given(self) -> str:
        return self.given_names[0]

    def ipp(self, site: Site | str) -> str:
        site_id = site if isinstance(site, str) else site.id
        for key, value in self.ipps:
            if key == site_id:
                return value
        raise KeyError(f"patient {self.ins} has no IPP at site {site_id}")

    def age_on(self, day: date) -> int:
        before_birthday = (day.month, day.day) < (self.birth_date.month, self.birth_date.day)
        return day.year - self.birth_date.year - before_birthday


def build_nir(sex: Sex, birth_date: date, birthplace_code: str, order: int) -> str:
    """The 15-character INS value (NIR + key) for these traits."""
    if not 1 <= order <= 999:
        raise ValueError(f"birth order number {order} is outside 1-999")
    nir13 = (
        ("1" if sex == "M" else "2")
        + f"{birth_date.year % 100:02d}{birth_date.month:02d}"
        + birthplace_code
        + f"{order:03d}"
    )
    return nir13 + nir_key(nir13)


def _birth_date(rng: random.Random) -> date:
    # Imaging patients are mostly older adults: mode at 65, range 18-92.
    age_days = int(rng.triangular(18, 92, 65) * 365.25)
    return REFERENCE_DATE - timedelta(days=age_days)


def _birthplace(rng: random.Random, birth: date) -> tuple[str, str]:
    while True:
        code, name = rng.choice(BIRTHPLACES)
        # 2A/2B exist since 1976; earlier Corsican births carry department 20.
        if code[:2] in {"2A", "2B"} and birth.year < 1976:
            continue
        return code, name


def make_patients(count: int, sites: list[Site], seed: int) -> list[Patient]:
    """``count`` distinct patients, each with an IPP at every site; deterministic for ``seed``."""
    rng = random.Random(f"{seed}:patients")
    patients: list[Patient] = []
    seen_ins: set[str] = set()
    seen_ipp: dict[str, set[str]] = {site.id: set() for site in sites}
    while len(patients) < count:
        sex: Sex = rng.choice(("F", "M"))
        birth = _birth_date(rng)
        place_code, place_name = _birthplace(rng, birth)
        ins_value = build_nir(sex, birth, place_code, rng.randrange(1, 1000))
        if ins_value in seen_ins:
            continue
        seen_ins.add(ins_value)
        family = rng.choice(FAMILY_NAMES)
        given = tuple(rng.sample(GIVEN_NAMES[sex], rng.choice((1, 1, 2, 2, 3))))
        used_family = None
        if sex == "F" and birth.year < 1995 and rng.random() < 0.4:
            used_family = rng.choice([n for n in FAMILY_NAMES if n != family])
        postal, town = rng.choice(_TOWNS)
        address = Address(f"{rng.randrange(1, 120)} {rng.choice(_STREETS)}", postal, town)
        ipps: list[tuple[str, str]] = []
        for site in sites:
            while True:
                ipp = f"{site.number:02d}{rng.randrange(10**7):07d}"
                if ipp not in seen_ipp[site.id]:
                    break
            seen_ipp[site.id].add(ipp)
            ipps.append((site.id, ipp))
        patients.append(
            Patient(
                ins=Ins.parse(ins_value, INS_OID_TEST),
                birth_family=family,
                given_names=given,
                used_family=used_family,
                birth_date=birth,
                sex=sex,
                birthplace_code=place_code,
                birthplace_name=place_name,
                address=address,
                ipps=tuple(ipps),
            )
        )
    return patients
