"""The access trail: who touched which patient's data, how, when, with what outcome. Pure data.

Every access to patient data (history listed, report read, images viewed, retrieved between
boxes, downloaded or imported, index queried or fed, emergency access "bris de glace", the
patient reading their own trail) becomes one :class:`AccessRecord`. Adapters store it as a
FHIR ``AuditEvent`` in an append-only, hash-chained trail (see ``adapters/audit``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from drimbox.domain.access import CallerIdentity
from drimbox.domain.errors import Conflict, InvalidInput
from drimbox.domain.identifiers import Ins

PROFESSION_SYSTEM = (
    "https://mos.esante.gouv.fr/NOS/TRE_G15-ProfessionSante/FHIR/TRE-G15-ProfessionSante"
)
"""ANS nomenclature of health professions (TRE_G15), the code PSC gives in ``SubjectRole``."""
SPECIALTY_SYSTEM = (
    "https://mos.esante.gouv.fr/NOS/TRE_R38-SpecialiteOrdinale/FHIR/TRE-R38-SpecialiteOrdinale"
)
"""ANS nomenclature of ordinal specialties (TRE_R38)."""


class Action(StrEnum):
    """What was done with the patient's data (the trail's own vocabulary)."""

    HISTORY_LIST = "history.list"
    """The list of a patient's exams (DRIMbox Conso history, from the index)."""
    REPORT_READ = "report.read"
    IMAGES_VIEW = "images.view"
    """Images displayed in the viewer."""
    IMAGES_RETRIEVE = "images.retrieve"
    """Images sent box to box (recorded by the Source that serves them)."""
    IMAGES_DOWNLOAD = "images.download"
    """Images exported to the user (DICOMDIR zip, media)."""
    IMAGES_IMPORT = "images.import"
    """Images imported into the local PACS."""
    INDEX_QUERY = "index.query"
    INDEX_PUBLISH = "index.publish"
    EMERGENCY_ACCESS = "emergency.access"
    """"Bris de glace": the professional opens the record in an emergency, with a reason."""
    TRAIL_READ = "trail.read"
    """Someone (normally the patient) read a patient's access trail."""
    USER_LOGIN = "user.login"


class Outcome(StrEnum):
    SUCCESS = "success"
    REFUSED = "refused"
    """Denied by the access rules (patient opposition, no right): a minor failure."""
    FAILED = "failed"
    """Broke while serving (peer down, corrupt data): a serious failure."""


class ActorKind(StrEnum):
    """Who acts. A superset of :class:`drimbox.domain.access.ActorKind` (same values)."""

    PROFESSIONAL = "professional"
    PATIENT = "patient"
    BOX = "box"
    """Another DRIMbox calling us (box-to-box retrieval)."""
    SYSTEM = "system"
    """Our own machinery (workers, publication), or a trusted machine acting for someone."""


class TrailCorrupted(Conflict):
    """The stored trail contradicts itself (truncated, rewritten): stop and investigate."""


@dataclass(frozen=True, slots=True)
class Actor:
    """The authenticated party that acted.

    ``id`` is the subject identifier: the PSC ``SubjectNameID`` (national professional id) of
    a professional, the ``sub`` of a patient, the id of a box or of a system component.
    """

    id: str
    kind: ActorKind
    name: str = ""
    id_system: str = ""
    """Issuer of ``id`` as a URI (e.g. ``urn:oid:1.2.250.1.71.4.2.1`` for idNat_PS), if known."""
    role_code: str = ""
    """Profession code (TRE_G15 for professionals, e.g. ``10`` médecin)."""
    role_display: str = ""
    role_system: str = PROFESSION_SYSTEM
    specialty: str = ""
    """Specialty code (TRE_R38, e.g. ``SM44`` radiologie)."""
    specialty_display: str = ""
    structure_id: str = ""
    """The structure (establishment, practice) the actor works for (FINESS, SIRET...)."""
    structure_name: str = ""
    client_id: str = ""
    """The box or client application the actor used."""

    def __post_init__(self) -> None:
        if not self.id.strip():
            raise InvalidInput("an audited actor needs an identifier")

    @classmethod
    def from_caller(cls, caller: CallerIdentity, *, client_id: str = "") -> Actor:
        """The actor of an authenticated :class:`CallerIdentity` (trust layer output)."""
        return cls(
            id=caller.who,
            kind=ActorKind(caller.kind.value),
            role_code=caller.profession,
            role_display=caller.role,
            structure_id=caller.structure,
            client_id=client_id,
        )


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One access to (or attempt on) a patient's data.

    ``at`` must carry a time zone and is kept in UTC. An emergency access ("bris de glace")
    must state its reason; the action ``emergency.access`` is always an emergency. When a
    patient is named, ``patient_ins`` must be a well-formed INS issued by ``patient_oid``.
    """

    actor: Actor
    action: Action
    outcome: Outcome
    at: datetime
    outcome_detail: str = ""
    patient_ins: str = ""
    patient_oid: str = ""
    study_uid: str = ""
    document_id: str = ""
    emergency: bool = False
    emergency_reason: str = ""
    source: str = ""
    """The box or endpoint that served (or was asked for) the data."""
    client_ip: str = ""

    def __post_init__(self) -> None:
        if self.at.tzinfo is None or self.at.utcoffset() is None:
            raise InvalidInput("an access record's time must carry a time zone")
        object.__setattr__(self, "at", self.at.astimezone(UTC))
        object.__setattr__(self, "action", Action(self.action))
        object.__setattr__(self, "outcome", Outcome(self.outcome))
        if self.action is Action.EMERGENCY_ACCESS:
            object.__setattr__(self, "emergency", True)
        if self.emergency and not self.emergency_reason.strip():
            raise InvalidInput("an emergency access (bris de glace) must state its reason")
        if self.emergency_reason and not self.emergency:
            raise InvalidInput("an emergency reason is only for an emergency access")
        if self.patient_ins or self.patient_oid:
            Ins.parse(self.patient_ins, self.patient_oid)

    @property
    def patient(self) -> Ins | None:
        return Ins(self.patient_ins, self.patient_oid) if self.patient_ins else None


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What a full walk of the trail found.

    The chain is trustworthy up to ``broken_seq - 1``. ``torn_lines`` are incomplete writes
    left by a crash (never acknowledged, skipped by the chain); they are not tampering.
    """

    records: int
    """Valid, chained records read."""
    last_seq: int
    last_hash: str
    broken_seq: int | None = None
    """The first position (seq) where the chain breaks, or None when it holds."""
    broken_line: int | None = None
    """1-based line number of that break."""
    problem: str = ""
    torn_lines: tuple[int, ...] = ()
    """1-based line numbers of torn fragments (a crash cut a write short)."""

    @property
    def ok(self) -> bool:
        return self.broken_seq is None
