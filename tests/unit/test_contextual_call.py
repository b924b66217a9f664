"""The DRIM-M contextual call's parameters (digest A.3.2): what is accepted, what is refused
with which message."""

from __future__ import annotations

import pytest

from drimbox.adapters.conso_web.contextual import MANDATORY, parse_call
from drimbox.domain.errors import InvalidInput

CALL = {
    "Patient.identifier.value": "285067511602105",
    "Patient.identifier.system": "urn:oid:1.2.250.1.213.1.4.10",
    "Patient.name.family": "MARTIN", "Patient.name.given": "Marie", "Patient.gender": "F",
    "Patient.birthDate": "1985-06-07", "Address.district": "75116",
    "InformationEtOppositionConsultation": "true", "PatientID": "IPP-0042",
    "PatientIDIssuer": "HOPITAL-B&1.2.250.1.999.42&ISO",
}  # fmt: skip


def test_a_complete_call_is_read() -> None:
    call = parse_call([*CALL.items(), ("Modality", "CT")])
    assert (call.ins.value, call.ins.oid) == ("285067511602105", "1.2.250.1.213.1.4.10")
    assert call.local_id == "IPP-0042" and call.filters == {"Modality": "CT"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"Unknown": "x"}, "paramètre inconnu"),
        ({"Modality": ""}, "sans valeur"),
        ({"InformationEtOppositionConsultation": "false"}, "informé ou s'oppose"),
        ({"Patient.identifier.value": "285067511602199"}, "INS invalide"),
        ({"Patient.name.family": "A\x00B"}, "valeur invalide"),
        ({"Patient.name.family": "A" * 300}, "valeur invalide"),
    ],
)
def test_a_bad_call_is_refused_with_the_reason(change: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_call(list({**CALL, **change}.items()))


def test_missing_and_repeated_parameters() -> None:
    for name in MANDATORY:
        with pytest.raises(InvalidInput, match=f"manquant.*{name}"):
            parse_call([(k, v) for k, v in CALL.items() if k != name])
    with pytest.raises(InvalidInput, match="répété"):
        parse_call([*CALL.items(), ("PatientID", "other")])
