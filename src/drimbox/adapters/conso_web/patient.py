"""The patient's side of the box: log in (OpenID Connect, the patients' provider) and read
who accessed their imaging record here: history listings, reports, images, downloads,
imports, emergency accesses. The INS comes from the provider's claims, never from the
request; patient sessions are kept apart from professionals' (own store, own cookie)."""

from __future__ import annotations

import html
import logging
import secrets
import threading
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from drimbox.adapters.dicomweb.errors import HttpProblem
from drimbox.adapters.oidc.relying_party import AuthRequest, OidcClient, OidcError
from drimbox.domain.audit import Actor, ActorKind
from drimbox.domain.errors import InvalidInput
from drimbox.domain.identifiers import Ins
from drimbox.services.audit import Auditor
from drimbox.services.conso.sessions import Session, SessionStore

log = logging.getLogger(__name__)

COOKIE = "drimbox_patient"
LOGIN_COOKIE = "drimbox_patient_login"

_ACTIONS = {
    "history.list": "a consulté la liste de vos examens",
    "report.read": "a lu un compte rendu",
    "images.view": "a visualisé des images",
    "images.retrieve": "a récupéré des images (autre DRIMbox)",
    "images.download": "a téléchargé un examen",
    "images.import": "a importé un examen dans son PACS",
    "emergency.access": "a accédé à votre dossier EN URGENCE",
    "trail.read": "a consulté cet historique des accès",
}


class PatientPortal:
    def __init__(self, client: OidcClient, auditor: Auditor, *, secure_cookie: bool = True) -> None:
        self.client = client
        self.auditor = auditor
        self.secure_cookie = secure_cookie
        self.sessions = SessionStore(idle_seconds=1800)
        self._pending: dict[str, tuple[AuthRequest, float]] = {}
        self._lock = threading.Lock()

    def routes(self, prefix: str = "/patient") -> list[Route]:
        return [
            Route(prefix + "/login", self.login, methods=["GET"]),
            Route(prefix + "/callback", self.callback, methods=["GET"]),
            Route(prefix + "/", self.page, methods=["GET"]),
            Route(prefix + "/api/trail", self.api_trail, methods=["GET"]),
        ]

    async def login(self, request: Request) -> Response:
        try:
            pending = await run_in_threadpool(self.client.begin)
        except OidcError:
            return HTMLResponse("<p>Service de connexion indisponible.</p>", status_code=502)
        key = secrets.token_urlsafe(24)
        with self._lock:
            now = time.time()
            self._pending = {k: v for k, v in self._pending.items() if v[1] > now - 900}
            if len(self._pending) >= 10_000:
                return HTMLResponse("<p>Trop de connexions en cours, réessayez.</p>",
                                    status_code=503)  # fmt: skip
            self._pending[key] = (pending, now)
        response = RedirectResponse(pending.url, status_code=302)
        response.set_cookie(LOGIN_COOKIE, key, httponly=True, samesite="lax",
                            secure=self.secure_cookie, path="/patient", max_age=900)  # fmt: skip
        return response

    async def callback(self, request: Request) -> Response:
        with self._lock:
            found = self._pending.pop(request.cookies.get(LOGIN_COOKIE, ""), None)
        if found is None:
            return HTMLResponse("<p>Connexion expirée : recommencez.</p>", status_code=400)
        try:
            login = await run_in_threadpool(self.client.finish, found[0],
                                            dict(request.query_params))  # fmt: skip
            own = Ins.parse(str(login.claims.get("ins", "")),
                            str(login.claims.get("ins_oid", "")))  # fmt: skip
        except OidcError as exc:
            log.warning("patient login refused: %s", exc.reason)
            return HTMLResponse("<p>La connexion a été refusée.</p>", status_code=401)
        except InvalidInput:
            # a professional's identity, or no INS: not a patient of this portal
            return HTMLResponse("<p>Cet espace est réservé aux patients.</p>", status_code=403)
        expires = login.access_token_expires_at or time.time() + 600
        session = self.sessions.open(f"{own.value}|{own.oid}", login.access_token, expires)
        session.claims = dict(login.claims)
        response = RedirectResponse("/patient/", status_code=303)
        response.delete_cookie(LOGIN_COOKIE, path="/patient")
        response.set_cookie(COOKIE, session.id, httponly=True, samesite="lax",
                            secure=self.secure_cookie, path="/patient")  # fmt: skip
        return response

    def _session(self, request: Request) -> tuple[Session, Ins]:
        session = self.sessions.get(request.cookies.get(COOKIE, ""))
        if session is None:
            raise HttpProblem(401, "connectez-vous pour voir l'historique des accès")
        value, oid = session.subject.split("|", 1)
        return session, Ins(value, oid)

    async def _events(self, request: Request) -> list[dict[str, Any]]:
        session, own = self._session(request)
        claims = session.claims
        name = " ".join(str(claims.get(k, "")) for k in ("given_name", "family_name")).strip()
        actor = Actor(id=str(claims.get("sub", own.value)), kind=ActorKind.PATIENT, name=name)
        ip = request.client.host if request.client else ""
        return await run_in_threadpool(
            lambda: self.auditor.patient_trail(actor, own, limit=500, client_ip=ip)
        )

    async def api_trail(self, request: Request) -> Response:
        return JSONResponse({"events": await self._events(request)})

    async def page(self, request: Request) -> Response:
        try:
            events = await self._events(request)
        except HttpProblem:
            return RedirectResponse("/patient/login", status_code=303)
        rows = "".join(_row(e) for e in events)
        return HTMLResponse(
            '<!doctype html><html lang="fr"><meta charset="utf-8"><title>Accès à mon dossier'
            "</title><h1>Qui a accédé à mon dossier d'imagerie</h1><table><tr><th>Date</th>"
            "<th>Qui</th><th>Quoi</th><th>Résultat</th></tr>" + rows + "</table></html>"
        )


def _row(event: dict[str, Any]) -> str:
    who: dict[str, Any] = next((a for a in event.get("agent", []) if a.get("requestor")), {})
    name = who.get("name") or who.get("who", {}).get("identifier", {}).get("value", "")
    action = _ACTIONS.get(event.get("subtype", [{}])[0].get("code", ""), "a accédé")
    outcome = "refusé" if event.get("outcome") not in ("0", None) else "autorisé"
    reason = ""
    for purpose in event.get("purposeOfEvent", []):
        reason = purpose.get("text", "") or reason
    detail = f" — motif : {html.escape(reason)}" if reason else ""
    return (f"<tr><td>{html.escape(str(event.get('recorded', ''))[:19].replace('T', ' '))}</td>"
            f"<td>{html.escape(str(name))}</td><td>{html.escape(action)}{detail}</td>"
            f"<td>{outcome}</td></tr>")  # fmt: skip
