"""The patient as an actor of the access trail: reading their own record is an access too."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from drimbox.domain.audit import Actor, ActorKind


def patient_actor(subject: str, claims: Mapping[str, Any] | None = None,
                  client_id: str = "") -> Actor:  # fmt: skip
    """``subject``: the patient's ``sub`` at their provider (never their INS, which the
    record names already)."""
    claims = claims or {}
    name = " ".join(str(claims.get(k, "")) for k in ("given_name", "family_name")).strip()
    return Actor(id=subject or "inconnu", kind=ActorKind.PATIENT, name=name, client_id=client_id)
