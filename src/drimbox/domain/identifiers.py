"""Identifiers: the national patient identifier (INS) and DICOM UIDs. Pure, no I/O.

The INS ("identifiant national de santé") is the NIR (French social-security number of the
person, 13 characters) followed by a 2-digit check key; its OID says which register issued it
and whether it is a test identity. The key is ``97 - (NIR mod 97)``; Corsican departments
2A/2B are letters, so for the computation 2A becomes 19 (minus 1 000 000) and 2B becomes 18
(minus 2 000 000), as INSEE specifies.

The NIR layout is ``s yy mm dd ccc ooo``: sex (1 man, 2 woman; 3/4 and 7/8 for provisional
numbers), birth year and month, birth department (``99`` abroad) and commune (or country) code,
then the birth order number in that commune and month.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from drimbox.domain.errors import InvalidIdentifier

INS_OID_REAL = "1.2.250.1.213.1.4.8"
"""INS-NIR issued by the national register (real patients)."""
INS_OID_TEST = "1.2.250.1.213.1.4.10"
"""INS-NIR of test identities (ANS test patients, synthetic data)."""
INS_OID_NIA_REAL = "1.2.250.1.213.1.4.9"
"""INS-NIA: provisional number (same layout and key as a NIR)."""
INS_OID_NIA_TEST = "1.2.250.1.213.1.4.11"
"""INS-NIA of test identities."""

INS_OIDS = frozenset({INS_OID_REAL, INS_OID_TEST, INS_OID_NIA_REAL, INS_OID_NIA_TEST})
TEST_INS_OIDS = frozenset({INS_OID_TEST, INS_OID_NIA_TEST})

# s yy mm (dd|2A|2B) ccc ooo ; month is left loose: INSEE uses 20-42 and 50-99 for unknown months.
_NIR_RE = re.compile(r"[1-478][0-9]{4}(?:[0-9]{2}|2A|2B)[0-9]{6}")
_KEY_RE = re.compile(r"[0-9]{2}")
_UID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


def _nir_number(nir13: str) -> int:
    """The integer INSEE takes the key of, with the Corsica substitution."""
    department = nir13[5:7]
    if department == "2A":
        return int(nir13[:5] + "19" + nir13[7:]) - 1_000_000
    if department == "2B":
        return int(nir13[:5] + "18" + nir13[7:]) - 2_000_000
    return int(nir13)


def nir_key(nir13: str) -> str:
    """Return the 2-digit check key of a 13-character NIR (``2A``/``2B`` allowed).

    >>> nir_key("2790351215189")
    '89'
    """
    if _NIR_RE.fullmatch(nir13) is None:
        raise InvalidIdentifier(
            f"NIR {nir13[:20]!r} must be 13 characters: sex digit 1-4/7/8, then digits "
            "(department may be 2A or 2B)"
        )
    return f"{97 - _nir_number(nir13) % 97:02d}"


@dataclass(frozen=True, slots=True)
class Ins:
    """A checked INS: ``value`` is the 15-character NIR + key, ``oid`` its issuer."""

    value: str
    oid: str

    @classmethod
    def parse(cls, value: str, oid: str) -> Ins:
        """Validate ``value`` (13-char NIR followed by its 2-digit key) issued by ``oid``."""
        if oid not in INS_OIDS:
            raise InvalidIdentifier(
                f"OID {oid[:80]!r} is not an INS issuer (expected one of {sorted(INS_OIDS)})"
            )
        if len(value) != 15:
            raise InvalidIdentifier(
                f"INS {value[:20]!r} has {len(value)} characters, expected 15 (NIR 13 + key 2)"
            )
        nir13, key = value[:13], value[13:]
        if _KEY_RE.fullmatch(key) is None:
            raise InvalidIdentifier(f"INS {value!r}: key {key!r} must be 2 digits")
        expected = nir_key(nir13)
        if key != expected:
            raise InvalidIdentifier(f"INS {value!r}: key {key} is wrong, expected {expected}")
        return cls(value, oid)

    @property
    def nir(self) -> str:
        return self.value[:13]

    @property
    def key(self) -> str:
        return self.value[13:]

    @property
    def is_test(self) -> bool:
        return self.oid in TEST_INS_OIDS

    def __str__(self) -> str:
        return self.value


def is_valid_uid(value: str) -> bool:
    """DICOM PS3.5 9.1: dot-separated digit components, no leading zero, 1-64 characters.

    Callers build file paths from UIDs only after this check, so it must reject anything
    that is not strictly a UID (spaces, trailing newline, empty components, "..").
    """
    return isinstance(value, str) and 0 < len(value) <= 64 and _UID_RE.fullmatch(value) is not None
