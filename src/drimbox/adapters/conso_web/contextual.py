"""The DRIM-M contextual call ("appel contextuel", spec 4.6.1, digest A.3.2): the RIS or the
patient record software POSTs the patient's INS identity traits (form-encoded) and the box
answers with a redirect to its history page for that patient. Unknown, repeated, empty or
missing parameters get a clear page (400), never a stack trace; a patient not informed or
opposed is not consulted. Every call is counted for the site's statistics ("ModelStat":
``Nombre_Appel``, ``Statut_Appel``), success or error, in an append-only file."""

from __future__ import annotations

import html
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from drimbox.domain.errors import InvalidInput
from drimbox.domain.identifiers import Ins

log = logging.getLogger(__name__)

MANDATORY = (
    "Patient.identifier.value", "Patient.identifier.system", "Patient.name.family",
    "Patient.name.given", "Patient.gender", "Patient.birthDate", "Address.district",
    "InformationEtOppositionConsultation", "PatientID", "PatientIDIssuer",
)  # fmt: skip
OPTIONAL = (
    "Situation", "StudyInstanceUID", "Modality", "AccessionNumber", "AccessionNumberIssuer",
    "StudyDate", "AnatomicRegion",
)  # fmt: skip
_YES = {"true", "1", "oui", "yes", "o", "y"}
_MAX_VALUE = 256


@dataclass(frozen=True, slots=True)
class ContextualCall:
    """What the calling software said about the patient and what the professional wants."""

    ins: Ins
    family_name: str
    given_name: str
    gender: str
    birth_date: str
    birth_place: str
    local_id: str
    local_id_issuer: str
    filters: dict[str, str] = field(default_factory=dict)


async def read_form(request: Request, limit: int = 16 * 1024) -> list[tuple[str, str]]:
    """An url-encoded form, size-limited, blank values kept (they are errors here)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InvalidInput("formulaire trop volumineux")
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                         max_num_fields=64)  # fmt: skip
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(f"formulaire illisible : {exc}") from None


def parse_call(form: list[tuple[str, str]]) -> ContextualCall:
    """The call, or ``InvalidInput`` naming what is wrong (French, shown to the user)."""
    seen: dict[str, str] = {}
    for name, value in form:
        if name not in MANDATORY and name not in OPTIONAL:
            raise InvalidInput(f"paramètre inconnu : {name[:60]}")
        if name in seen:
            raise InvalidInput(f"paramètre répété : {name}")
        value = value.strip()
        if not value:
            raise InvalidInput(f"paramètre sans valeur : {name}")
        if len(value) > _MAX_VALUE or any(ord(c) < 32 for c in value):
            raise InvalidInput(f"valeur invalide pour {name}")
        seen[name] = value
    missing = [n for n in MANDATORY if n not in seen]
    if missing:
        raise InvalidInput(f"paramètre(s) obligatoire(s) manquant(s) : {', '.join(missing)}")
    if seen["InformationEtOppositionConsultation"].lower() not in _YES:
        raise InvalidInput("le patient n'a pas été informé ou s'oppose à la consultation")
    system = seen["Patient.identifier.system"].removeprefix("urn:oid:")
    try:
        ins = Ins.parse(seen["Patient.identifier.value"], system)
    except InvalidInput as exc:
        raise InvalidInput(f"INS invalide : {exc}") from None
    return ContextualCall(
        ins, seen["Patient.name.family"], seen["Patient.name.given"], seen["Patient.gender"],
        seen["Patient.birthDate"], seen["Address.district"], seen["PatientID"],
        seen["PatientIDIssuer"], {k: seen[k] for k in OPTIONAL if k in seen},
    )  # fmt: skip


class ContextualCalls:
    def __init__(self, folder: Path, keep: int = 10_000) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.log_file = folder / "contextual-calls.jsonl"
        self._calls: OrderedDict[str, ContextualCall] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def routes(self, prefix: str = "/conso") -> list[Route]:
        return [
            Route(prefix + "/appel-contextuel", self.receive, methods=["POST"]),
            Route(prefix + "/api/stats/appels", self.stats, methods=["GET"]),
        ]

    def get(self, key: str) -> ContextualCall | None:
        with self._lock:
            return self._calls.get(key)

    async def receive(self, request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if ctype != "application/x-www-form-urlencoded":
                raise InvalidInput("un formulaire x-www-form-urlencoded est attendu")
            call = parse_call(await read_form(request))
        except InvalidInput as exc:
            self._count("erreur", str(exc))
            return _error_page(str(exc))
        key = secrets.token_urlsafe(18)
        with self._lock:
            self._calls[key] = call
            while len(self._calls) > self._keep:
                self._calls.popitem(last=False)
        self._count("succes", "")
        query = {"oid": call.ins.oid, "ctx": key}
        return RedirectResponse(
            f"/conso/patients/{quote(call.ins.value)}?{urlencode(query)}", status_code=303
        )

    def _count(self, status: str, reason: str) -> None:
        line = json.dumps({"at": datetime.now(UTC).isoformat(), "Nombre_Appel": 1,
                           "Statut_Appel": status, "motif": reason[:200]},
                          ensure_ascii=False)  # fmt: skip
        with self._lock, self.log_file.open("a", encoding="utf-8") as out:
            out.write(line + "\n")

    async def stats(self, request: Request) -> Response:
        total = {"succes": 0, "erreur": 0}
        with self._lock:
            lines = (
                self.log_file.read_text(encoding="utf-8").splitlines()
                if self.log_file.exists()
                else []
            )
        for line in lines:
            status = json.loads(line).get("Statut_Appel")
            if status in total:
                total[status] += 1
        return JSONResponse({"Nombre_Appel": sum(total.values()), **total,
                             "at": time.time()})  # fmt: skip


def _error_page(message: str) -> HTMLResponse:
    return HTMLResponse(
        '<!doctype html><html lang="fr"><meta charset="utf-8"><title>Appel contextuel</title>'
        f"<h1>Appel contextuel refusé</h1><p>{html.escape(message)}</p></html>",
        status_code=400,
    )


def identity_banner(call: ContextualCall) -> str:
    """The strict INS traits, as the referential asks them displayed by default."""
    sex = {"M": "Masculin", "F": "Féminin", "male": "Masculin", "female": "Féminin"}.get(
        call.gender, call.gender
    )
    return (
        "<div class='banner'><strong>"
        f"{html.escape(call.family_name.upper())} {html.escape(call.given_name)}</strong> — "
        f"né(e) le {html.escape(call.birth_date)} — sexe {html.escape(sex)} — lieu de naissance "
        f"{html.escape(call.birth_place)} — INS {html.escape(call.ins.value)}"
        f" — IPP {html.escape(call.local_id)}</div>"
    )
