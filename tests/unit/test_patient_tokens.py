"""Patients' tokens: introspection tells a patient from a professional and never lets one
pass for the other; the index makes a patient caller of a patient's token only."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from drimbox.adapters.trust.index_caller import IndexAuthenticator, Unauthenticated
from drimbox.adapters.trust.introspection import TokenIntrospector, TokenRejected
from drimbox.adapters.trust.patient_caller import PatientAwareAuthenticator, with_patients
from drimbox.domain.access import AccessMode, ActorKind, CallerIdentity, PatientPolicy
from drimbox.domain.identifiers import Ins
from drimbox.services.index.access import DmpAccessRules
from tests.unit.test_introspection import NOW, URL, Clock, answering, claims

INS, OID = "285067511602105", "1.2.250.1.213.1.4.10"


def patient_claims(**overrides: Any) -> dict[str, Any]:
    own = {"SubjectNameID": None, "acr": "", "ins": INS, "ins_oid": OID, "given_name": "Marie",
           "family_name": "MARTIN"}  # fmt: skip
    return claims(**{**own, **overrides})


def introspector(payload: object, **kwargs: Any) -> tuple[TokenIntrospector, Any]:
    server = answering(payload)
    client = httpx.Client(transport=server.transport())
    return TokenIntrospector(URL, "box", "s3cret", clock=Clock(), client=client, **kwargs), server


def test_a_patients_token_is_a_patient_only_where_patients_are_expected() -> None:
    tokens, server = introspector(patient_claims(), required_acr="eidas1")
    principal = tokens.verify_identity("t")
    assert principal.is_patient and principal.patient == Ins(INS, OID)
    assert principal.subject_name_id == "" and principal.expires_at == int(NOW) + 300
    # the professionals' door stays shut, from the cache as from the provider
    with pytest.raises(TokenRejected, match="no professional identifier"):
        tokens.verify("t")
    assert tokens.known("t") is None and tokens.known_identity("t") == principal
    assert server.calls == 1


def test_a_professionals_token_is_not_a_patient() -> None:
    tokens, _ = introspector(claims(ins=INS, ins_oid=OID))  # PSC never says "ins"; if it did
    principal = tokens.verify_identity("t")
    assert not principal.is_patient and principal.patient is None
    assert tokens.verify("t") == principal and tokens.known("t") == principal


@pytest.mark.parametrize(
    "overrides",
    [{"ins": "285067511602106"}, {"ins_oid": "1.2.3"}, {"ins_oid": None}, {"ins": 285067511602105}],
)
def test_a_patients_token_needs_a_valid_ins(overrides: dict[str, Any]) -> None:
    tokens, _ = introspector(patient_claims(**overrides))
    with pytest.raises(TokenRejected, match="invalid ins"):
        tokens.verify_identity("t")
    assert tokens.cache_size == 0


def test_the_psc_level_is_required_of_professionals_only() -> None:
    tokens, _ = introspector(claims(acr="eidas0"), required_acr="eidas1")
    with pytest.raises(TokenRejected, match="insufficient"):
        tokens.verify_identity("t")
    tokens, _ = introspector(patient_claims(acr="eidas0"), required_acr="eidas1")
    assert tokens.verify_identity("t").is_patient


class Verifier:
    def __init__(self, tokens: TokenIntrospector) -> None:
        self.tokens = tokens

    def verify(self, token: str) -> Any:
        return self.tokens.verify(token)


def authenticator(payload: object, patients: bool = True) -> Any:
    tokens, _ = introspector(payload)
    inner = IndexAuthenticator(tokens=tokens if patients else Verifier(tokens))
    return with_patients(inner)


def test_the_index_makes_a_patient_caller_of_a_patients_token() -> None:
    auth = authenticator(patient_claims())
    assert isinstance(auth, PatientAwareAuthenticator) and with_patients(auth) is auth
    caller = auth.caller({"authorization": "Bearer t"})
    assert caller.kind is ActorKind.PATIENT and caller.rpps == ""
    assert caller.patient_id == f"{INS}^^^&{OID}&ISO^NH"
    rules = DmpAccessRules()
    assert rules.can_read_record(caller, PatientPolicy(caller.patient_id))
    assert not rules.can_read_record(caller, PatientPolicy(f"162011305504325^^^&{OID}&ISO^NH"))
    # a patient declaring an emergency: the rules refuse it
    urgent = auth.caller({"authorization": "Bearer t", "x-purpose-of-use": "BTG"})
    assert urgent.access_mode is AccessMode.BREAK_GLASS
    assert not rules.check_caller(urgent)


def test_the_index_keeps_professionals_and_refusals_as_they_were() -> None:
    pro = authenticator(claims()).caller({"authorization": "Bearer t"})
    assert isinstance(pro, CallerIdentity) and pro.kind is ActorKind.PROFESSIONAL
    assert pro.rpps == "899700218896"
    with pytest.raises(Unauthenticated, match="not active"):
        authenticator({"active": False}).caller({"authorization": "Bearer t"})
    # a verifier that does not know patients: their token is refused as before
    with pytest.raises(Unauthenticated, match="no professional identifier"):
        authenticator(patient_claims(), patients=False).caller({"authorization": "Bearer t"})
    with pytest.raises(Unauthenticated, match="credentials required"):
        authenticator(patient_claims()).caller({})
