"""What every index service shares: its ports, and the access-log line each call writes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from drimbox.domain.access import AccessEvent, CallerIdentity, Decision, PatientPolicy
from drimbox.domain.xds import AccessDenied
from drimbox.services.index.ports import AccessRules, Clock, IndexStore

GRANTED = "granted"
DENIED = "denied"
FAILED = "failed"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class IndexContext:
    store: IndexStore
    rules: AccessRules
    repository_unique_id: str
    clock: Clock = utc_now

    def event(
        self,
        patient_id: str,
        caller: CallerIdentity,
        action: str,
        outcome: str,
        documents: Iterable[str] = (),
        detail: str = "",
    ) -> AccessEvent:
        return AccessEvent(
            patient_id, self.clock(), action, outcome, caller, tuple(documents), detail
        )

    def log(
        self,
        patient_id: str,
        caller: CallerIdentity,
        action: str,
        outcome: str,
        documents: Iterable[str] = (),
        detail: str = "",
    ) -> None:
        self.store.append_access(self.event(patient_id, caller, action, outcome, documents, detail))

    def require_record(self, caller: CallerIdentity, patient_id: str, action: str) -> PatientPolicy:
        """The patient's policy, once the caller may open this record (else logged, raised)."""
        policy = self.store.patient_policy(patient_id)
        self.require(self.rules.can_read_record(caller, policy), caller, patient_id, action)
        return policy

    def require(
        self, decision: Decision, caller: CallerIdentity, patient_id: str, action: str
    ) -> None:
        if not decision:
            self.log(patient_id, caller, action, DENIED, detail=decision.reason)
            raise AccessDenied(decision.reason)
