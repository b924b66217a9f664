"""Patients as callers of the index. A bearer token of the patients' provider names the
patient's INS (``ins``, ``ins_oid``, checked by introspection like a professional's token):
the index then sees a ``PATIENT`` caller whose own record is that INS, and the access rules
let them read it (hidden documents included), change their choices, and nothing else.

:class:`PatientAwareAuthenticator` wraps the index's :class:`IndexAuthenticator`: a patient's
token becomes a patient caller, every other credential goes to the wrapped authenticator
unchanged (the professional's token is then answered from the introspection cache).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from lxml import etree

from drimbox.adapters.trust.index_caller import (
    BREAK_GLASS_PURPOSES,
    PURPOSE_HEADER,
    IndexAuthenticator,
    Unauthenticated,
)
from drimbox.adapters.trust.introspection import TokenRejected, bearer_token
from drimbox.domain.access import AccessMode, ActorKind, CallerIdentity
from drimbox.domain.identifiers import Ins

log = logging.getLogger(__name__)


def registry_patient_id(ins: Ins) -> str:
    """The XDS form of an INS (``CX`` with the INS OID as assigning authority)."""
    return f"{ins.value}^^^&{ins.oid}&ISO^NH"


def patient_caller(principal: Any, *, emergency: bool = False) -> CallerIdentity:
    """The caller of a patient's checked token (``Principal.is_patient``)."""
    own: Ins = principal.patient
    return CallerIdentity(
        who=str(principal.subject), kind=ActorKind.PATIENT,
        patient_id=registry_patient_id(own),
        # a patient declaring an emergency is refused by the rules, and that is logged
        access_mode=AccessMode.BREAK_GLASS if emergency else AccessMode.NORMAL,
    )  # fmt: skip


class PatientAwareAuthenticator:
    def __init__(self, inner: IndexAuthenticator) -> None:
        self.inner = inner

    def caller(
        self, headers: Mapping[str, str], soap_header: etree._Element | None = None
    ) -> CallerIdentity:
        authorization = headers.get("authorization")
        verify = getattr(self.inner.tokens, "verify_identity", None)
        if not authorization or verify is None:
            return self.inner.caller(headers, soap_header)
        try:
            principal = verify(bearer_token(authorization))
        except TokenRejected as exc:
            raise Unauthenticated(f"token refused: {exc}") from None
        if not getattr(principal, "is_patient", False):
            return self.inner.caller(headers, soap_header)
        emergency = headers.get(PURPOSE_HEADER, "").strip().upper() in BREAK_GLASS_PURPOSES
        return patient_caller(principal, emergency=emergency)


def with_patients(
    authenticator: IndexAuthenticator | PatientAwareAuthenticator,
) -> PatientAwareAuthenticator:
    """``authenticator`` accepting patients' tokens too (idempotent)."""
    if isinstance(authenticator, PatientAwareAuthenticator):
        return authenticator
    return PatientAwareAuthenticator(authenticator)
