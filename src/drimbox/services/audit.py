"""Recording every access to patient data, and letting the patient read their own trail.

Rule for callers: record *before* answering. If :meth:`AuditTrail.record` raises, the access
must fail too: an access the trail could not keep must not be served. Refusals and failures
are recorded as well (``outcome=Outcome.REFUSED`` / ``Outcome.FAILED``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TypedDict, Unpack

from drimbox.domain.access import AccessMode, CallerIdentity
from drimbox.domain.audit import AccessRecord, Action, Actor, ActorKind, Outcome, VerifyReport
from drimbox.domain.errors import InvalidInput
from drimbox.domain.identifiers import Ins

AuditEventJson = dict[str, Any]
"""A FHIR R4 AuditEvent as JSON."""
Clock = Callable[[], datetime]


class AccessContext(TypedDict, total=False):
    """The keyword context of :meth:`Auditor.emergency_access`."""

    outcome: Outcome
    detail: str
    source: str
    client_ip: str


class Context(AccessContext, total=False):
    """The keyword context every other :class:`Auditor` helper accepts."""

    emergency: bool
    emergency_reason: str


DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def utc_now() -> datetime:
    return datetime.now(UTC)


def check_limit(limit: int) -> int:
    """``limit`` clamped to :data:`MAX_LIMIT`; below 1 is invalid."""
    if limit < 1:
        raise InvalidInput(f"limit must be at least 1, not {limit}")
    return min(limit, MAX_LIMIT)


class AuditTrail(Protocol):
    """Append-only, tamper-evident store of access records."""

    def record(self, record: AccessRecord) -> str:
        """Store ``record`` durably; return the AuditEvent id. Raises if it cannot."""
        ...

    def for_patient(
        self, ins: Ins | str, since: datetime | None = None, limit: int = DEFAULT_LIMIT
    ) -> list[AuditEventJson]:
        """AuditEvents about the patient (an :class:`Ins`, or an INS value under any OID)
        recorded at or after ``since``, newest first, at most ``limit``."""
        ...

    def verify(self) -> VerifyReport:
        """Walk the whole trail and report the first break of the chain, if any."""
        ...


@dataclass
class Auditor:
    """Builds and records the access records of the common cases, stamped by ``clock``.

    Every helper takes the acting :class:`Actor`, the patient's :class:`Ins` (``None`` when
    the request named none or an invalid one), and keyword context: ``outcome``, ``detail``
    (why refused/failed), ``source`` (the box/endpoint that served or was asked),
    ``client_ip``, and ``emergency``/``emergency_reason`` for a break-glass access.
    Each returns the AuditEvent id.
    """

    trail: AuditTrail
    clock: Clock = utc_now

    def record(
        self,
        actor: Actor,
        action: Action,
        patient: Ins | None = None,
        *,
        outcome: Outcome = Outcome.SUCCESS,
        detail: str = "",
        study_uid: str = "",
        document_id: str = "",
        emergency: bool = False,
        emergency_reason: str = "",
        source: str = "",
        client_ip: str = "",
    ) -> str:
        return self.trail.record(
            AccessRecord(
                actor=actor,
                action=action,
                outcome=outcome,
                at=self.clock(),
                outcome_detail=detail,
                patient_ins=patient.value if patient else "",
                patient_oid=patient.oid if patient else "",
                study_uid=study_uid,
                document_id=document_id,
                emergency=emergency or bool(emergency_reason.strip()),
                emergency_reason=emergency_reason.strip(),
                source=source,
                client_ip=client_ip,
            )
        )

    def history_listed(self, actor: Actor, patient: Ins | None, **context: Unpack[Context]) -> str:
        return self.record(actor, Action.HISTORY_LIST, patient, **context)

    def report_read(
        self, actor: Actor, patient: Ins | None, document_id: str, **context: Unpack[Context]
    ) -> str:
        return self.record(actor, Action.REPORT_READ, patient, document_id=document_id, **context)

    def images_viewed(
        self, actor: Actor, patient: Ins | None, study_uid: str, **context: Unpack[Context]
    ) -> str:
        return self.record(actor, Action.IMAGES_VIEW, patient, study_uid=study_uid, **context)

    def images_retrieved(
        self, actor: Actor, patient: Ins | None, study_uid: str, **context: Unpack[Context]
    ) -> str:
        """Another box fetched the study's images from us (recorded by the Source)."""
        return self.record(actor, Action.IMAGES_RETRIEVE, patient, study_uid=study_uid, **context)

    def images_downloaded(
        self, actor: Actor, patient: Ins | None, study_uid: str, **context: Unpack[Context]
    ) -> str:
        return self.record(actor, Action.IMAGES_DOWNLOAD, patient, study_uid=study_uid, **context)

    def images_imported(
        self, actor: Actor, patient: Ins | None, study_uid: str, **context: Unpack[Context]
    ) -> str:
        return self.record(actor, Action.IMAGES_IMPORT, patient, study_uid=study_uid, **context)

    def index_queried(self, actor: Actor, patient: Ins | None, **context: Unpack[Context]) -> str:
        return self.record(actor, Action.INDEX_QUERY, patient, **context)

    def index_published(
        self, actor: Actor, patient: Ins | None, study_uid: str = "", **context: Unpack[Context]
    ) -> str:
        return self.record(actor, Action.INDEX_PUBLISH, patient, study_uid=study_uid, **context)

    def emergency_access(
        self, actor: Actor, patient: Ins | None, reason: str, **context: Unpack[AccessContext]
    ) -> str:
        """The professional broke the glass; ``reason`` is mandatory (InvalidInput if blank)."""
        return self.record(
            actor, Action.EMERGENCY_ACCESS, patient, emergency_reason=reason, **context
        )

    def trail_read(self, actor: Actor, patient: Ins | None, **context: Unpack[Context]) -> str:
        return self.record(actor, Action.TRAIL_READ, patient, **context)

    def patient_trail(
        self,
        actor: Actor,
        own: Ins,
        since: datetime | None = None,
        limit: int = DEFAULT_LIMIT,
        *,
        client_ip: str = "",
    ) -> list[AuditEventJson]:
        """The patient reads their own trail (newest first); the reading is itself recorded.

        ``own`` is the INS the authentication established for this patient (never one taken
        from the request). Only a patient actor may use this; the reading of the trail is
        recorded first, so it appears in the list returned.
        """
        if actor.kind is not ActorKind.PATIENT:
            raise InvalidInput("only the patient reads their own access trail here")
        limit = check_limit(limit)
        self.trail_read(actor, own, client_ip=client_ip)
        return self.trail.for_patient(own, since, limit)


def emergency_of(caller: CallerIdentity) -> Context:
    """Keyword context marking a break-glass caller's access (``**emergency_of(caller)``).

    The actor itself is ``Actor.from_caller(caller)``.
    """
    if caller.access_mode is AccessMode.BREAK_GLASS:
        return {"emergency": True, "emergency_reason": caller.reason}
    return {}
