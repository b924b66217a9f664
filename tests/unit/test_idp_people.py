"""The test people of ``drimbox idp`` and the claims said about them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drimbox.adapters.oidc.people import BUILT_IN, People, PeopleError, Professional, luhn_valid
from drimbox.adapters.trust.vihf import CodedValue
from drimbox.adapters.xds.source_assertion import PHYSICIAN
from drimbox.domain.identifiers import INS_OID_TEST, Ins
from drimbox.synth.sites import GP_SPECIALTY, RADIOLOGY_SPECIALTY


def _pro(person_id: str) -> Professional:
    person = BUILT_IN.find(person_id)
    assert isinstance(person, Professional)
    return person


def test_built_in_people_are_the_documented_ones() -> None:
    assert [p.id for p in BUILT_IN.professionals] == [
        "radiologue", "radiologue-quais", "generaliste", "secretaire",
    ]  # fmt: skip
    assert [p.id for p in BUILT_IN.patients] == ["patiente", "patient"]
    assert BUILT_IN.find("nobody") is None


def test_professional_ids_are_rpps_with_the_leading_8() -> None:
    radiologist = _pro("radiologue")
    assert radiologist.rpps == "99700218896"
    assert radiologist.national_id == "899700218896"
    for person in BUILT_IN.professionals:
        assert luhn_valid(person.rpps) and person.rpps.startswith("997")
        assert luhn_valid(person.structure.finess)
        assert person.structure.identifier == "1" + person.structure.finess


def test_subjects_are_stable_and_match_the_fake_psc_convention() -> None:
    import uuid

    radiologist = _pro("radiologue")
    assert radiologist.subject == str(uuid.uuid5(uuid.NAMESPACE_URL, "psc:899700218896"))
    subjects = [p.subject for p in BUILT_IN.everyone()]
    assert len(set(subjects)) == len(subjects)
    assert BUILT_IN.find_subject(radiologist.subject) == radiologist


def test_radiologists_work_at_two_sites() -> None:
    first, second = _pro("radiologue"), _pro("radiologue-quais")
    assert first.structure.finess != second.structure.finess
    assert first.specialty == second.specialty == "SM44"


def test_psc_claims_of_a_radiologist() -> None:
    claims = _pro("radiologue").claims()
    assert claims["SubjectNameID"] == claims["preferred_username"] == "899700218896"
    ref = claims["SubjectRefPro"]
    assert ref["codeCivilite"] == "MME"
    (exercise,) = ref["exercices"]
    assert exercise["codeProfession"] == "10"
    assert exercise["codeCategorieProfessionnelle"] == "C"
    assert exercise["codeSavoirFaire"] == "SM44"
    (activity,) = exercise["activities"]
    assert activity["raisonSocialeSite"] == claims["SubjectOrganization"]
    assert activity["identifiantStructure"] == "1990000010"


def test_roles_use_the_vihf_code_systems() -> None:
    radiologist = _pro("radiologue")
    roles = []
    for role in radiologist.claims()["SubjectRole"]:
        code, system = role.split("^")
        roles.append(CodedValue(code, system))
    assert (roles[0].code, roles[0].system) == (PHYSICIAN.code, PHYSICIAN.system)
    assert (roles[1].code, roles[1].system) == ("SM44", "1.2.250.1.71.4.2.5")
    # the same specialty codes as the synthetic sites
    assert RADIOLOGY_SPECIALTY[0].endswith("/" + radiologist.specialty)
    assert GP_SPECIALTY[0].endswith("/" + _pro("generaliste").specialty)


def test_secretary_has_no_medical_profession() -> None:
    claims = _pro("secretaire").claims()
    (exercise,) = claims["SubjectRefPro"]["exercices"]
    assert exercise["codeProfession"] == "" and exercise["codeSavoirFaire"] == ""
    assert claims["SubjectRole"] == []
    assert exercise["activities"][0]["raisonSocialeSite"] == _pro("radiologue").structure.name


def test_patients_have_valid_test_ins_and_no_professional_id() -> None:
    for patient in BUILT_IN.patients:
        assert Ins.parse(patient.ins, patient.ins_oid).is_test
        assert patient.ins_oid == INS_OID_TEST == "1.2.250.1.213.1.4.10"
        claims = patient.claims()
        assert {"sub", "given_name", "family_name", "birthdate", "gender", "ins", "ins_oid"} == set(
            claims
        )
        # the NIR says the sex and birth month
        assert claims["gender"] == ("male" if patient.ins[0] == "1" else "female")
        assert patient.ins[3:5] == claims["birthdate"][5:7]


def test_people_file_replaces_the_built_in_list(tmp_path: Path) -> None:
    path = tmp_path / "people.json"
    data = json.loads(BUILT_IN.model_dump_json())
    data["patients"] = data["patients"][:1]
    path.write_text(json.dumps(data))
    people = People.load(path)
    assert [p.id for p in people.patients] == ["patiente"]
    assert people.professionals == BUILT_IN.professionals


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["patients"][0].update(ins="285067511602106"), "key"),
        (lambda d: d["professionals"][0].update(rpps="99700218897"), "Luhn"),
        (lambda d: d["professionals"][1].update(id="radiologue"), "twice"),
        (lambda d: d["professionals"][0].update(mot_de_passe="x"), "mot_de_passe"),
        (lambda d: d["patients"][0].update(ins_oid="1.2.3"), "INS issuer"),
    ],
)
def test_people_file_errors_say_where(tmp_path: Path, mutate: object, message: str) -> None:
    path = tmp_path / "people.json"
    data = json.loads(BUILT_IN.model_dump_json())
    mutate(data)  # type: ignore[operator]
    path.write_text(json.dumps(data))
    with pytest.raises(PeopleError, match=message):
        People.load(path)


def test_missing_people_file(tmp_path: Path) -> None:
    with pytest.raises(PeopleError, match="cannot read"):
        People.load(tmp_path / "none.json")
