"""Patients' sessions on the box, kept apart from professionals': their own store, their own
cookie (``drimbox_patient``, path ``/patient``: never sent to the professional's pages, and a
professional's cookie opens nothing here), opened only by the patients' OpenID login.

Forms that change something (hide an exam, opposition, log out) are protected against
cross-site request forgery twice: the cookie is ``SameSite=Lax`` (a cross-site POST does not
carry it; ``Strict`` would also drop it on the landing after the provider's redirect, which
is a cross-site navigation), and each form carries the session's own token, checked in
constant time, with the request's ``Origin`` (or ``Referer``) when the browser sends one.
"""

from __future__ import annotations

import hmac
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from drimbox.adapters.dicomweb.errors import HttpProblem
from drimbox.services.conso.sessions import Session, SessionStore

COOKIE = "drimbox_patient"
PATH = "/patient"


class PatientSessions:
    """``require`` is what the patients' DICOMweb root (``ConsoProxy``) authenticates with."""

    def __init__(
        self, *, secure_cookie: bool = True, idle_seconds: float = 1800.0, users_url: str = ""
    ) -> None:
        self.store = SessionStore(idle_seconds=idle_seconds)
        self.secure_cookie = secure_cookie
        self.users_url = users_url.rstrip("/")

    def current(self, request: Request) -> Session | None:
        session = self.store.get(request.cookies.get(COOKIE, ""))
        return session if session is not None and session.patient is not None else None

    async def require(self, request: Request) -> Session:
        session = self.current(request)
        if session is None:
            raise HttpProblem(401, "connectez-vous à votre espace patient")
        return session

    def set_cookie(self, response: Response, session: Session) -> None:
        # lax: the landing after the provider's redirect is a cross-site navigation
        response.set_cookie(COOKIE, session.id, httponly=True, samesite="lax",
                            secure=self.secure_cookie, path=PATH)  # fmt: skip

    def clear(self, request: Request, response: Response) -> None:
        self.store.close(request.cookies.get(COOKIE, ""))
        response.delete_cookie(COOKIE, path=PATH)

    def check_form(self, request: Request, session: Session, form: dict[str, str]) -> None:
        """A state-changing form of this site, for this session (403 otherwise)."""
        origin = request.headers.get("origin") or origin_of(request.headers.get("referer"))
        if origin and origin not in self._origins(request):
            raise HttpProblem(403, "requête refusée : elle ne vient pas de cette page")
        sent = form.get("csrf", "")
        if not sent or not hmac.compare_digest(sent.encode(), session.csrf.encode()):
            raise HttpProblem(403, "requête refusée : formulaire expiré, rechargez la page")

    def _origins(self, request: Request) -> set[str]:
        own = {origin_of(str(request.base_url))}
        if self.users_url:
            own.add(origin_of(self.users_url))
        return own - {""}


def origin_of(url: str | None) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return ""
    return f"{parts.scheme}://{parts.netloc}".lower()
