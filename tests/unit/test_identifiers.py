"""INS (NIR + key) parsing and DICOM UID syntax."""

from __future__ import annotations

import pytest

from drimbox.domain.errors import InvalidIdentifier, InvalidInput
from drimbox.domain.identifiers import (
    INS_OID_REAL,
    INS_OID_TEST,
    Ins,
    is_valid_uid,
    nir_key,
)


@pytest.mark.parametrize(
    "value",
    [
        "279035121518989",  # ANS test patient PAT-TROIS DOMINIQUE
        "274075176079430",  # ANS cross-validation patient PAT-HUIT
    ],
)
def test_known_test_ins_are_valid(value: str) -> None:
    ins = Ins.parse(value, INS_OID_TEST)
    assert ins.value == value
    assert ins.nir == value[:13]
    assert ins.key == value[13:]
    assert ins.is_test
    assert str(ins) == value


def test_key_is_97_minus_nir_mod_97() -> None:
    assert nir_key("2790351215189") == "89"
    assert nir_key("1850775056123") == f"{97 - 1850775056123 % 97:02d}"


def test_real_oid_accepted_but_not_test() -> None:
    assert not Ins.parse("279035121518989", INS_OID_REAL).is_test


def test_wrong_key_rejected_with_expected_key_in_message() -> None:
    with pytest.raises(InvalidIdentifier, match="expected 89"):
        Ins.parse("279035121518988", INS_OID_TEST)


@pytest.mark.parametrize(
    "value",
    ["27903512151898", "2790351215189890", "", "27903512151898X", "2790351215189 9"],
)
def test_malformed_values_rejected(value: str) -> None:
    with pytest.raises(InvalidIdentifier):
        Ins.parse(value, INS_OID_TEST)


@pytest.mark.parametrize("sex_digit", ["0", "5", "6", "9"])
def test_impossible_sex_digit_rejected(sex_digit: str) -> None:
    nir = sex_digit + "790351215189"
    with pytest.raises(InvalidIdentifier):
        nir_key(nir)


def test_unknown_oid_rejected() -> None:
    with pytest.raises(InvalidIdentifier, match="not an INS issuer"):
        Ins.parse("279035121518989", "1.2.3.4")


def test_invalid_identifier_is_an_invalid_input_and_a_value_error() -> None:
    with pytest.raises(InvalidInput):
        Ins.parse("1", INS_OID_TEST)
    with pytest.raises(ValueError, match="15"):
        Ins.parse("1", INS_OID_TEST)


@pytest.mark.parametrize(
    ("department", "substitute", "subtract"),
    [("2A", "19", 1_000_000), ("2B", "18", 2_000_000)],
)
def test_corsica_departments(department: str, substitute: str, subtract: int) -> None:
    nir = f"18505{department}004123"
    number = int(nir.replace(department, substitute, 1)) - subtract
    key = f"{97 - number % 97:02d}"
    assert nir_key(nir) == key
    assert Ins.parse(nir + key, INS_OID_TEST).nir == nir
    naive = f"{97 - int(nir.replace(department, substitute, 1)) % 97:02d}"
    assert naive != key  # the subtraction matters
    with pytest.raises(InvalidIdentifier):
        Ins.parse(nir + naive, INS_OID_TEST)


def test_lowercase_corsica_rejected() -> None:
    with pytest.raises(InvalidIdentifier):
        nir_key("18505" + "2a" + "004123")


def test_ins_is_immutable() -> None:
    ins = Ins.parse("279035121518989", INS_OID_TEST)
    with pytest.raises(AttributeError):
        ins.value = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "uid",
    [
        "0",
        "1.2.840.10008.1.2.1",
        "1.2.250.1.213.1.4.10",
        "2.25.329800735698586629295641978511506172918",
        "1.0.2",
        "1." + "2" * 62,  # exactly 64 characters
    ],
)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "",
        ".",
        "1..2",
        ".1.2",
        "1.2.",
        "1.02",
        "01.2",
        "00",
        "1.2a",
        " 1.2",
        "1.2 ",
        "1.2\n",
        "1.2\x00",
        "1.-2",
        "../1.2",
        "1/2",
        "１.２",  # full-width digits are not DICOM digits
        "1." + "2" * 63,  # 65 characters
    ],
)
def test_invalid_uids(uid: str) -> None:
    assert not is_valid_uid(uid)
