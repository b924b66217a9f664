"""The box's client of the index JSON API (``adapters.index_api.routes``), for a patient's
portal: every call carries the user's own access token, so that the index's rules decide
with their identity. Implements ``services.conso.patient_record.PatientIndex``."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import httpx

from drimbox.domain import xds
from drimbox.domain.errors import NotFound, PeerUnavailable
from drimbox.domain.identifiers import Ins
from drimbox.services.conso.history import IndexedDocument
from drimbox.services.conso.patient_record import IndexAccess, IndexRefused, ListedDocuments

log = logging.getLogger(__name__)


def _code(value: Any) -> xds.Code | None:
    if not isinstance(value, dict) or not value.get("code"):
        return None
    return xds.Code(str(value["code"]), str(value.get("scheme", "")), str(value.get("display", "")))


def listed_documents(answer: Any) -> ListedDocuments:
    """The documents of a ``/history`` answer, as the Conso's history reads them."""
    documents: list[IndexedDocument] = []
    hidden: set[str] = set()
    for exam in answer.get("exams", []) if isinstance(answer, dict) else []:
        study = str(exam.get("studyInstanceUid") or "")
        accession = str(exam.get("accessionNumber") or "")
        for slot in ("manifests", "reports"):
            for entry in exam.get(slot) or []:
                uid = str(entry.get("uniqueId", ""))
                if not uid:
                    continue
                codes = tuple(c for c in map(_code, entry.get("eventCodes") or []) if c)
                documents.append(IndexedDocument(
                    unique_id=uid, repository=str(entry.get("repositoryUniqueId", "")),
                    is_manifest=slot == "manifests", is_report=slot == "reports",
                    study_uid=study, accession=accession,
                    creation_time=str(entry.get("creationTime") or ""),
                    title=str(entry.get("title") or ""), event_codes=codes,
                ))  # fmt: skip
                if entry.get("hiddenByPatient") is True:
                    hidden.add(uid)
    return ListedDocuments(documents, frozenset(hidden))


def access_event(event: dict[str, Any]) -> IndexAccess:
    """One ``/access-log`` event (``adapters.index_api.history.log_json``)."""
    actor = event.get("actor")
    if not isinstance(actor, dict):
        actor = {}
    return IndexAccess(
        at=str(event.get("at", "")), action=str(event.get("action", "")),
        outcome=str(event.get("outcome", "")), actor_kind=str(actor.get("kind", "")),
        actor_id=str(actor.get("id") or ""), actor_name=str(actor.get("name") or ""),
        profession=str(actor.get("profession") or ""),
        structure=str(actor.get("structure") or ""),
        emergency=event.get("accessMode") == "break-glass",
        reason=str(event.get("reason") or ""),
        documents=tuple(str(d) for d in event.get("documents") or []),
    )  # fmt: skip


class IndexApiClient:
    def __init__(
        self, base_url: str, client: httpx.Client | None = None, timeout: float = 30.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._own = client is None
        self._http = client or httpx.Client(timeout=timeout)
        self.timeout = timeout

    def close(self) -> None:
        if self._own:
            self._http.close()

    def _call(self, method: str, token: str, patient: Ins, path: str, body: Any = None) -> Any:
        url = f"{self.base_url}/api/patients/{quote(patient.value)}{path}"
        headers = {"authorization": f"Bearer {token}", "accept": "application/json",
                   "accept-encoding": "identity"}  # fmt: skip
        try:
            resp = self._http.request(method, url, params={"oid": patient.oid}, json=body,
                                      headers=headers, timeout=self.timeout)  # fmt: skip
        except httpx.TransportError as exc:
            raise PeerUnavailable(f"index at {self.base_url} unreachable: {exc!r}") from exc
        if resp.status_code == 404:
            raise NotFound(_detail(resp))
        if resp.status_code in (400, 401, 403):
            raise IndexRefused(resp.status_code, _detail(resp))
        if not resp.is_success:
            raise PeerUnavailable(f"index answered HTTP {resp.status_code} to {path}")
        try:
            return resp.json()
        except ValueError:
            raise PeerUnavailable(f"index answered something else than JSON to {path}") from None

    def documents(self, token: str, patient: Ins) -> ListedDocuments:
        return listed_documents(self._call("GET", token, patient, "/history"))

    def access_log(self, token: str, patient: Ins) -> list[IndexAccess]:
        events = self._call("GET", token, patient, "/access-log").get("events", [])
        return [access_event(e) for e in events if isinstance(e, dict)]

    def opposition(self, token: str, patient: Ins) -> tuple[bool, bool]:
        found = self._call("GET", token, patient, "/opposition")
        return found.get("opposed") is True, found.get("opposesBreakGlass") is True

    def set_opposition(
        self, token: str, patient: Ins, opposed: bool, opposes_break_glass: bool
    ) -> None:
        self._call("PUT", token, patient, "/opposition",
                   {"opposed": opposed, "opposesBreakGlass": opposes_break_glass})  # fmt: skip

    def set_exam_hidden(self, token: str, patient: Ins, study_uid: str, hidden: bool) -> list[str]:
        done = self._call("PUT", token, patient, f"/exams/{quote(study_uid)}/hidden",
                          {"hidden": hidden})  # fmt: skip
        return [str(u) for u in done.get("documents", [])]


def _detail(resp: httpx.Response) -> str:
    try:
        return str(resp.json().get("detail", ""))[:300] or f"HTTP {resp.status_code}"
    except (ValueError, AttributeError):
        return f"HTTP {resp.status_code}"
