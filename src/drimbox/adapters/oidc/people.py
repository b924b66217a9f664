"""The people ``drimbox idp`` lets one log in as, and the claims it says about them.

Professionals get Pro Santé Connect's claims: ``SubjectNameID`` (the national id of the
professional, ``"8"`` + RPPS), ``SubjectRefPro`` (civility and the exercises: profession,
category, specialty, and for each the sites of activity), ``SubjectOrganization`` and
``SubjectRole``, the profession and specialty as ``code^OID`` with the code systems the VIHF
assertions use (TRE_G15 professions ``1.2.250.1.71.1.2.7``, TRE_R38 specialties
``1.2.250.1.71.4.2.5``). Patients get the OpenID standard claims and their INS (``ins``,
``ins_oid``), never ``preferred_username`` nor ``SubjectNameID``: a patient's token must not
pass for a professional's.

Everything here is fictional: RPPS numbers start with ``997`` like the ANS test professionals,
structures use FINESS-like numbers of 9 digits with a Luhn key, and the INS are test INS
(OID ``1.2.250.1.213.1.4.10``) with a correct key. ``people_file`` (JSON, the shape of
:class:`People`) replaces the built-in list.
"""

from __future__ import annotations

import uuid
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from drimbox.domain.errors import InvalidIdentifier
from drimbox.domain.identifiers import INS_OID_TEST, Ins

PROFESSION_SYSTEM = "1.2.250.1.71.1.2.7"
"""TRE_G15 professions (``10`` Médecin), as in VIHF ``Role`` attributes."""
SPECIALTY_SYSTEM = "1.2.250.1.71.4.2.5"
"""TRE_R38 ordinal specialties (``SM44`` radio-diagnostic, ``SM26`` general medicine)."""
PHYSICIAN = "10"
RADIOLOGY = "SM44"
GENERAL_PRACTICE = "SM26"

_SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"


class PeopleError(Exception):
    """The people file cannot be read or is invalid; the message says where."""


def luhn_valid(digits: str) -> bool:
    """True when ``digits`` ends with its Luhn check digit (RPPS, FINESS)."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = int(char)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Structure(_Model):
    """Where a professional works."""

    finess: str = Field(pattern=r"^[0-9]{9}$")
    name: str = Field(min_length=1, max_length=200)
    sector: str = Field(default="SA07", pattern=r"^[A-Z0-9]{1,10}$")
    """``codeSecteurDActivite`` (TRE_R02: SA07 cabinet, SA01 hospital...)."""

    @field_validator("finess")
    @classmethod
    def _v_finess(cls, value: str) -> str:
        if not luhn_valid(value):
            raise ValueError(f"FINESS {value} has a wrong Luhn key")
        return value

    @property
    def identifier(self) -> str:
        """National structure id: ``"1"`` + FINESS (VIHF ``Identifiant_Structure``)."""
        return "1" + self.finess


class Professional(_Model):
    """A health professional (or a structure's staff) as Pro Santé Connect knows them."""

    id: str = Field(pattern=_SLUG)
    """What the login form posts; stable, never shown to relying parties."""
    rpps: str = Field(pattern=r"^[0-9]{11}$")
    civility: Literal["M", "MME"]
    given_name: str = Field(min_length=1, max_length=100)
    family_name: str = Field(min_length=1, max_length=100)
    title: str = Field(min_length=1, max_length=100)
    """What the login page says they are (``Radiologue``)."""
    profession: str = Field(default="", pattern=r"^[0-9]{0,3}$")
    """TRE_G15 code, ``10`` for a physician; empty for non-medical staff."""
    category: str = Field(default="C", pattern=r"^[A-Z]?$")
    """``codeCategorieProfessionnelle`` (C civil, M military, E student)."""
    specialty: str = Field(default="", pattern=r"^[A-Z0-9]{0,10}$")
    """TRE_R38 code (``SM44`` radiology); empty when none."""
    structure: Structure
    password: str = Field(default="", max_length=200)
    """When set, the login form asks for it (the demo's users); kept in clear: test people."""

    @field_validator("rpps")
    @classmethod
    def _v_rpps(cls, value: str) -> str:
        if not luhn_valid(value):
            raise ValueError(f"RPPS {value} has a wrong Luhn key")
        return value

    @property
    def national_id(self) -> str:
        """``SubjectNameID``: ``"8"`` + RPPS."""
        return "8" + self.rpps

    @property
    def subject(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"psc:{self.national_id}"))

    @property
    def roles(self) -> list[str]:
        """``SubjectRole``: profession then specialty, ``code^OID``."""
        roles = [f"{self.profession}^{PROFESSION_SYSTEM}"] if self.profession else []
        if self.specialty:
            roles.append(f"{self.specialty}^{SPECIALTY_SYSTEM}")
        return roles

    def claims(self) -> dict[str, Any]:
        """UserInfo claims, shaped as Pro Santé Connect sends them."""
        physician = self.profession == PHYSICIAN
        exercise = {
            "codeProfession": self.profession,
            "codeCategorieProfessionnelle": self.category if self.profession else "",
            "codeCiviliteDexercice": "DR" if physician else "",
            "nomDexercice": self.family_name,
            "prenomDexercice": self.given_name,
            "codeTypeSavoirFaire": "S" if self.specialty else "",
            "codeSavoirFaire": self.specialty,
            "activities": [
                {
                    "codeModeExercice": "S",
                    "codeSecteurDActivite": self.structure.sector,
                    "raisonSocialeSite": self.structure.name,
                    "identifiantStructure": self.structure.identifier,
                    "numeroFinessSite": self.structure.finess,
                }
            ],
        }
        return {
            "sub": self.subject,
            "SubjectNameID": self.national_id,
            "preferred_username": self.national_id,
            "given_name": self.given_name,
            "family_name": self.family_name,
            "SubjectRefPro": {"codeCivilite": self.civility, "exercices": [exercise]},
            "SubjectOrganization": self.structure.name,
            "SubjectRole": self.roles,
        }

    def label(self) -> str:
        prefix = "Dr " if self.profession == PHYSICIAN else ""
        return f"{prefix}{self.given_name} {self.family_name}"


class Patient(_Model):
    """A patient, as the patients' provider knows them (INS-qualified identity)."""

    id: str = Field(pattern=_SLUG)
    given_name: str = Field(min_length=1, max_length=100)
    family_name: str = Field(min_length=1, max_length=100)
    birthdate: date
    gender: Literal["female", "male"]
    ins: str
    ins_oid: str = INS_OID_TEST
    password: str = Field(default="", max_length=200)

    @model_validator(mode="after")
    def _v_ins(self) -> Patient:
        try:
            Ins.parse(self.ins, self.ins_oid)
        except InvalidIdentifier as exc:
            raise ValueError(str(exc)) from None
        return self

    @property
    def subject(self) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"patient:{self.ins_oid}:{self.ins}"))

    def claims(self) -> dict[str, Any]:
        return {
            "sub": self.subject,
            "given_name": self.given_name,
            "family_name": self.family_name,
            "birthdate": self.birthdate.isoformat(),
            "gender": self.gender,
            "ins": self.ins,
            "ins_oid": self.ins_oid,
        }

    def label(self) -> str:
        return f"{self.given_name} {self.family_name}"


Person = Professional | Patient


class People(_Model):
    """Everyone one may log in as; ids are unique across both lists."""

    professionals: list[Professional] = Field(default_factory=list)
    patients: list[Patient] = Field(default_factory=list)

    @model_validator(mode="after")
    def _v_unique(self) -> People:
        seen: set[str] = set()
        for person in self.everyone():
            if person.id in seen:
                raise ValueError(f"id {person.id!r} is used twice")
            seen.add(person.id)
        if not seen:
            raise ValueError("no professional and no patient")
        return self

    def everyone(self) -> list[Person]:
        return [*self.professionals, *self.patients]

    def find(self, person_id: str) -> Person | None:
        for person in self.everyone():
            if person.id == person_id:
                return person
        return None

    def find_subject(self, subject: str) -> Person | None:
        for person in self.everyone():
            if person.subject == subject:
                return person
        return None

    @classmethod
    def load(cls, path: Path) -> People:
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as exc:
            raise PeopleError(f"cannot read the people file {path}: {exc}") from None
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(file)'}: {err['msg']}"
                for err in exc.errors()
            )
            raise PeopleError(f"{path}: {problems}") from None


_CIM_PARC = Structure(finess="990000010", name="Centre d'imagerie médicale du Parc")
_QUAIS = Structure(finess="990000028", name="Cabinet de radiologie des Quais")
_PASTEUR = Structure(finess="990000036", name="Cabinet médical Pasteur")

BUILT_IN = People(
    professionals=[
        Professional(
            id="radiologue",
            rpps="99700218896",
            civility="MME",
            given_name="Sophie",
            family_name="LEROY",
            title="Radiologue",
            profession=PHYSICIAN,
            specialty=RADIOLOGY,
            structure=_CIM_PARC,
        ),
        Professional(
            id="radiologue-quais",
            rpps="99700200001",
            civility="M",
            given_name="Antoine",
            family_name="MOREAU",
            title="Radiologue",
            profession=PHYSICIAN,
            specialty=RADIOLOGY,
            structure=_QUAIS,
        ),
        Professional(
            id="generaliste",
            rpps="99700300009",
            civility="M",
            given_name="Paul",
            family_name="BERNARD",
            title="Médecin généraliste",
            profession=PHYSICIAN,
            specialty=GENERAL_PRACTICE,
            structure=_PASTEUR,
        ),
        Professional(
            id="secretaire",
            rpps="99700400007",
            civility="MME",
            given_name="Julie",
            family_name="PETIT",
            title="Secrétaire médicale",
            structure=_CIM_PARC,
        ),
    ],
    patients=[
        Patient(
            id="patiente",
            given_name="Marie",
            family_name="MARTIN",
            birthdate=date(1985, 6, 14),
            gender="female",
            ins="285067511602105",
        ),
        Patient(
            id="patient",
            given_name="Jean",
            family_name="DURAND",
            birthdate=date(1962, 1, 23),
            gender="male",
            ins="162011305504325",
        ),
    ],
)
"""The built-in test people (ids: radiologue, radiologue-quais, generaliste, secretaire,
patiente, patient)."""
