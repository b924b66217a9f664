"""A patient's imaging history as the national index knows it (ITI-18 FindDocuments, then
ITI-43 for the manifests): one entry per exam, newest first, with its report when the index
holds one. The manifests read here are what the viewer proxy later resolves exams with."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import date
from typing import Protocol

from drimbox.domain import xds
from drimbox.domain.errors import DrimboxError, NotFound
from drimbox.domain.manifest import ImagingManifest
from drimbox.services.source.ports import ManifestCodec

log = logging.getLogger(__name__)

REGION_SCHEME = "1.2.250.1.213.1.1.5.695"


@dataclass(frozen=True, slots=True)
class IndexedDocument:
    """What the history needs of a DocumentEntry."""

    unique_id: str
    repository: str
    is_manifest: bool
    is_report: bool
    study_uid: str
    accession: str
    creation_time: str
    """XDS DTM (``YYYYMMDDhhmmss``)."""
    title: str
    event_codes: tuple[xds.Code, ...]


class IndexReader(Protocol):
    def on_behalf_of(
        self, access_token: str, emergency_reason: str = ""
    ) -> AbstractContextManager[None]: ...

    def find(self, patient_id: str) -> list[IndexedDocument]: ...

    def retrieve(self, repository: str, unique_ids: Sequence[str]) -> dict[str, bytes]: ...


@dataclass(frozen=True, slots=True)
class Exam:
    study_uid: str
    date: date | None
    description: str
    modalities: tuple[str, ...]
    regions: tuple[str, ...]
    site: str
    series_count: int
    instance_count: int
    accession: str
    kos: IndexedDocument | None
    report: IndexedDocument | None
    problem: str = ""
    """Why the images cannot be shown (manifest missing or unreadable), for the page."""


class ManifestBook:
    """Manifests read from the index, by KOS uniqueId (bounded, most recent kept)."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._items: OrderedDict[str, ImagingManifest] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, kos_uid: str, manifest: ImagingManifest) -> None:
        with self._lock:
            self._items[kos_uid] = manifest
            self._items.move_to_end(kos_uid)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def get(self, kos_uid: str) -> ImagingManifest:
        with self._lock:
            found = self._items.get(kos_uid)
        if found is None:
            raise NotFound("this exam is not known here: open the patient's history again")
        return found


def _date(exam_date: date | None, creation_time: str) -> date | None:
    if exam_date is not None:
        return exam_date
    try:
        return date(int(creation_time[:4]), int(creation_time[4:6]), int(creation_time[6:8]))
    except (ValueError, IndexError):
        return None


class HistoryService:
    def __init__(self, index: IndexReader, codec: ManifestCodec, book: ManifestBook) -> None:
        self.index, self.codec, self.book = index, codec, book

    def history(self, patient_id: str, access_token: str, emergency_reason: str = "") -> list[Exam]:
        """The exams of ``patient_id`` the professional of ``access_token`` may see: the index
        decides with their own identity (in a declared emergency, with its reason)."""
        with self.index.on_behalf_of(access_token, emergency_reason):
            return self._history(patient_id)

    def _history(self, patient_id: str) -> list[Exam]:
        documents = self.index.find(patient_id)
        by_study: dict[str, dict[str, IndexedDocument]] = {}
        for doc in documents:
            if not doc.study_uid or not (doc.is_manifest or doc.is_report):
                continue
            slot = "kos" if doc.is_manifest else "report"
            current = by_study.setdefault(doc.study_uid, {}).get(slot)
            if current is None or doc.creation_time > current.creation_time:
                by_study[doc.study_uid][slot] = doc
        manifests = self._manifests([d["kos"] for d in by_study.values() if "kos" in d])
        exams = [self._exam(study, docs, manifests) for study, docs in by_study.items()]
        exams.sort(key=lambda e: (e.date or date.min, e.study_uid), reverse=True)
        return exams

    def _manifests(self, kos: list[IndexedDocument]) -> dict[str, ImagingManifest | str]:
        out: dict[str, ImagingManifest | str] = {}
        by_repo: dict[str, list[str]] = {}
        for doc in kos:
            by_repo.setdefault(doc.repository, []).append(doc.unique_id)
        for repo, ids in by_repo.items():
            try:
                found = self.index.retrieve(repo, ids)
            except DrimboxError as exc:
                log.warning("ITI-43 from %s failed: %s", repo, exc)
                out.update({uid: "le manifeste n'a pas pu être récupéré" for uid in ids})
                continue
            for uid in ids:
                data = found.get(uid)
                if data is None:
                    out[uid] = "le manifeste est absent de l'index"
                    continue
                try:
                    manifest = self.codec.decode(data)
                except DrimboxError as exc:
                    log.warning("KOS %s unreadable: %s", uid, exc)
                    out[uid] = "le manifeste est illisible"
                    continue
                self.book.put(uid, manifest)
                out[uid] = manifest
        return out

    @staticmethod
    def _exam(
        study: str, docs: dict[str, IndexedDocument], manifests: dict[str, ImagingManifest | str]
    ) -> Exam:
        kos, report = docs.get("kos"), docs.get("report")
        any_doc = kos or report
        assert any_doc is not None
        codes = [c for d in (kos, report) if d is not None for c in d.event_codes]
        regions = tuple(dict.fromkeys(c.display or c.code for c in codes
                                      if c.scheme == REGION_SCHEME))  # fmt: skip
        code_modalities = tuple(
            dict.fromkeys(c.code for c in codes if c.scheme == xds.MODALITY_SCHEME)
        )
        found = manifests.get(kos.unique_id) if kos is not None else None
        if isinstance(found, ImagingManifest):
            m = found
            return Exam(
                study, _date(m.study.date, any_doc.creation_time),
                m.study.description or m.description or any_doc.title,
                m.modalities or code_modalities,
                regions or tuple(dict.fromkeys(s.body_part for s in m.series if s.body_part)),
                m.institution_name or _host(m), len(m.series), m.instance_count,
                m.study.accession or any_doc.accession, kos, report,
            )  # fmt: skip
        problem = found if isinstance(found, str) else "aucune image publiée pour cet examen"
        return Exam(study, _date(None, any_doc.creation_time), any_doc.title, code_modalities,
                    regions, "", 0, 0, any_doc.accession, kos, report, problem)  # fmt: skip


def _host(m: ImagingManifest) -> str:
    from urllib.parse import urlsplit

    for series in m.series:
        if series.retrieve_url:
            return urlsplit(series.retrieve_url).hostname or ""
    return ""
