"""Who calls the index: from the user's OAuth bearer token (IHE IUA style, checked by
introspection at the identity provider) or from a signed VIHF assertion in the SOAP
``wsse:Security`` header (DMP compatibility, checked against the configured anchors). The
access rules then decide per patient with that identity; nothing the client merely claims
(a header, a field) is taken as identity."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import unquote

from cryptography import x509
from lxml import etree

from drimbox.adapters.trust.introspection import (
    IntrospectionUnavailable,
    TokenRejected,
    bearer_token,
)
from drimbox.adapters.trust.vihf import AuthMode, VihfError, find_assertion, verify_assertion
from drimbox.domain.access import AccessMode, ActorKind, CallerIdentity
from drimbox.domain.errors import DrimboxError

log = logging.getLogger(__name__)

PROFESSION_SYSTEM = "1.2.250.1.71.1.2.7"  # TRE_G15
BREAK_GLASS_PURPOSES = frozenset({"BRIS_DE_GLACE", "URGENCE", "urgence", "BTG", "ETREAT"})
# with a bearer token, the purpose of use (IHE IUA) and the reason travel as headers
PURPOSE_HEADER = "x-purpose-of-use"
REASON_HEADER = "x-emergency-reason"  # percent-encoded UTF-8


class Unauthenticated(DrimboxError):
    """No credentials, or credentials that do not hold (HTTP 401, SOAP FailedAuthentication)."""


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Any: ...


def _first_exercise(claims: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = claims.get("SubjectRefPro") or {}
    exercises = ref.get("exercices") if isinstance(ref, Mapping) else None
    return exercises[0] if isinstance(exercises, list) and exercises else {}


def caller_from_claims(subject: str, claims: Mapping[str, Any]) -> CallerIdentity:
    """A professional from Pro Santé Connect claims (``SubjectRefPro``)."""
    exercise = _first_exercise(claims)
    activities = exercise.get("activities") or [{}]
    activity = activities[0] if isinstance(activities, list) and activities else {}
    return CallerIdentity(
        who=subject, kind=ActorKind.PROFESSIONAL, rpps=subject,
        profession=str(exercise.get("codeProfession", "")),
        structure=str(activity.get("identifiantStructure", "")),
        role=str(exercise.get("codeSavoirFaire", "")),
    )  # fmt: skip


class IndexAuthenticator:
    def __init__(
        self,
        *,
        tokens: TokenVerifier | None = None,
        vihf_anchors: Sequence[x509.Certificate] = (),
        default: CallerIdentity | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.tokens = tokens
        self.vihf_anchors = list(vihf_anchors)
        self.default = default
        self.clock = clock

    def caller(
        self, headers: Mapping[str, str], soap_header: etree._Element | None = None
    ) -> CallerIdentity:
        authorization = headers.get("authorization")
        if authorization:
            emergency = None
            if headers.get(PURPOSE_HEADER, "").strip().upper() in BREAK_GLASS_PURPOSES:
                emergency = unquote(headers.get(REASON_HEADER, ""))
            return self._from_token(authorization, emergency)
        if soap_header is not None and self.vihf_anchors:
            assertion = _assertion(soap_header)
            if assertion is not None:
                return self._from_vihf(assertion)
        if self.default is not None:
            return self.default
        raise Unauthenticated("credentials required: a bearer token or a signed VIHF assertion")

    def _from_token(self, authorization: str, emergency: str | None = None) -> CallerIdentity:
        if self.tokens is None:
            raise Unauthenticated("bearer tokens are not accepted here (no identity provider)")
        try:
            principal = self.tokens.verify(bearer_token(authorization))
        except TokenRejected as exc:
            raise Unauthenticated(f"token refused: {exc}") from None
        except IntrospectionUnavailable as exc:
            log.error("index: identity provider unavailable: %s", exc)
            raise
        claims = dict(getattr(principal, "claims", {}) or {})
        subject = str(getattr(principal, "subject_name_id", "") or principal.subject)
        caller = caller_from_claims(subject, claims)
        if emergency is not None:
            # the authenticated professional declares an emergency: the rules demand a
            # reason and check the patient's choices; the journal flags the access
            reason = emergency.strip()[:1000]
            caller = dataclasses.replace(caller, access_mode=AccessMode.BREAK_GLASS, reason=reason)
        return caller

    def _from_vihf(self, assertion: etree._Element) -> CallerIdentity:
        try:
            verified = verify_assertion(assertion, now=self.clock(),
                                        trust_anchors=self.vihf_anchors)  # fmt: skip
        except VihfError as exc:
            raise Unauthenticated(f"VIHF assertion refused: {exc}") from None
        c = verified.claims
        profession = next((r.code for r in c.roles if r.system == PROFESSION_SYSTEM), "")
        specialty = next((r.code for r in c.roles if r.system != PROFESSION_SYSTEM), "")
        emergency = c.purpose.code in BREAK_GLASS_PURPOSES
        # INDIRECTE: a box (ORG certificate) submitting for its radiologist: a system caller
        kind = ActorKind.SYSTEM if c.mode is AuthMode.INDIRECTE else ActorKind.PROFESSIONAL
        return CallerIdentity(
            who=c.subject_id, kind=kind, rpps=c.subject_id,
            profession=profession, structure=c.structure_id, role=specialty,
            access_mode=AccessMode.BREAK_GLASS if emergency else AccessMode.NORMAL,
        )  # fmt: skip


def _assertion(soap_header: etree._Element) -> etree._Element | None:
    try:
        return find_assertion(soap_header)
    except VihfError as exc:
        raise Unauthenticated(f"ambiguous WS-Security header: {exc}") from None
