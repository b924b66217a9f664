"""Who is asking, what the patient decided, and what the access rules answer. Pure data."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class ActorKind(StrEnum):
    PROFESSIONAL = "professional"
    PATIENT = "patient"
    SYSTEM = "system"
    """A trusted machine acting for a professional (a DRIMbox publishing in mode INDIRECTE)."""


class AccessMode(StrEnum):
    NORMAL = "normal"
    BREAK_GLASS = "break-glass"
    """"Bris de glace": emergency access, only with a stated reason, always logged."""


@dataclass(frozen=True, slots=True)
class CallerIdentity:
    """The authenticated caller. The trust layer fills it from tokens (PSC, VIHF)."""

    who: str
    kind: ActorKind
    rpps: str = ""
    profession: str = ""
    structure: str = ""
    role: str = ""
    patient_id: str = ""
    """For a patient caller: their own INS in registry form."""
    access_mode: AccessMode = AccessMode.NORMAL
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PatientPolicy:
    """The patient's choices: opposition to access by professionals (and to break-glass)."""

    patient_id: str
    opposed: bool = False
    opposes_break_glass: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


ALLOW = Decision(True)


@dataclass(frozen=True, slots=True)
class AccessEvent:
    """One line of a patient's access log."""

    patient_id: str
    at: datetime
    action: str
    outcome: str
    caller: CallerIdentity
    documents: tuple[str, ...] = ()
    detail: str = ""
    event_id: str = field(default="")
