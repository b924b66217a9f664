"""What the Source's publication service needs from the outside world (adapters inject them).

Error contract for every port: :class:`~drimbox.domain.errors.PeerUnavailable` means "try
again later"; any other :class:`~drimbox.domain.errors.DrimboxError` is a permanent refusal
that retrying as is will not fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from drimbox.domain.manifest import ExamInventory, ImagingManifest
from drimbox.domain.report import ReportMessage


class ExamFinder(Protocol):
    """Everything the site's PACS holds for one exam (C-FIND or QIDO-RS).

    Raises NotFound when the PACS has no such study (yet), Conflict when an accession matches
    several studies.
    """

    def __call__(self, study_uid: str, accession: str) -> ExamInventory: ...


class ManifestCodec(Protocol):
    """DICOM encoding of manifests (KOS) and reading of IOCM rejection notes."""

    def encode(self, manifest: ImagingManifest) -> bytes: ...

    def decode(self, data: bytes) -> ImagingManifest: ...

    def describe(self, manifest: ImagingManifest) -> str:
        """The Key Object Description text (French, for humans)."""
        ...

    def rejected(self, note: bytes) -> frozenset[str]:
        """SOP Instance UIDs an IOCM rejection note rejects (InvalidInput if it is not one)."""
        ...


@dataclass(frozen=True, slots=True)
class Submission:
    """One manifest (and maybe its report) to register in the index."""

    patient_id: str
    """XDS patient id ``INS^^^&OID&ISO^NH``."""
    kos_uid: str
    kos: bytes
    report: ReportMessage | None
    """Supplies the metadata (authors, codes); its CDA is published when ``publish_report``."""
    publish_report: bool
    replaces_kos_uids: tuple[str, ...] = ()
    """uniqueIds of manifests this one may replace, best first: the first the index holds as
    Approved gets the RPLC association."""
    replaces_report_uids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Registered:
    """What the index holds after :meth:`IndexGateway.publish`."""

    kos: bool
    report: bool
    """True when the report of the submission is in the index (sent now or already there)."""


class IndexGateway(Protocol):
    """The national index as the Source uses it (ITI-41, ITI-18 GetDocuments, ITI-57)."""

    def publish(self, submission: Submission) -> Registered:
        """Register the submission; idempotent: a manifest already in the index is not
        sent again, so a retry after a lost answer never makes a duplicate."""
        ...

    def depublish(
        self, patient_id: str, unique_ids: Sequence[str], report: ReportMessage | None = None
    ) -> None:
        """Status Deleted for every listed document the index still shows (idempotent);
        ``report`` is the one the publication came from (who the box acts for)."""
        ...
