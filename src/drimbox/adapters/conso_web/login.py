"""Logging professionals in with OpenID Connect (Pro Santé Connect; ``drimbox idp`` in
development): authorization code + PKCE, the ID token checked against the provider's keys
(``adapters.oidc.relying_party``); the session then holds the access token the box forwards
to Source boxes on the professional's behalf."""

from __future__ import annotations

import html
import logging
import secrets
import threading
import time
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from drimbox.adapters.conso_web.auth import COOKIE, SessionAuth
from drimbox.adapters.oidc.relying_party import AuthRequest, OidcClient, OidcError

log = logging.getLogger(__name__)
audit = logging.getLogger("drimbox.audit")

LOGIN_COOKIE = "drimbox_login"
_PENDING_MAX = 10_000


def _safe_next(value: str | None) -> str:
    """Only a path of this site: never an open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/conso/"
    return value


class OidcLogin:
    def __init__(self, client: OidcClient, auth: SessionAuth) -> None:
        self.client = client
        self.auth = auth
        self._pending: dict[str, tuple[AuthRequest, str, float]] = {}
        self._lock = threading.Lock()

    def routes(self, prefix: str = "/conso") -> list[Route]:
        return [
            Route(prefix + "/login", self.login, methods=["GET"]),
            Route(prefix + "/callback", self.callback, methods=["GET"]),
            Route(prefix + "/logout", self.logout, methods=["POST"]),
        ]

    async def login(self, request: Request) -> Response:
        try:
            pending = await run_in_threadpool(self.client.begin)
        except OidcError as exc:
            log.error("identity provider unavailable: %s", exc)
            return _page(502, "Pro Santé Connect est indisponible, réessayez plus tard.")
        key = secrets.token_urlsafe(24)
        now = time.time()
        with self._lock:
            self._pending = {k: v for k, v in self._pending.items() if v[2] > now - 900}
            if len(self._pending) >= _PENDING_MAX:
                return _page(503, "Trop de connexions en cours, réessayez dans un instant.")
            self._pending[key] = (pending, _safe_next(request.query_params.get("next")), now)
        response = RedirectResponse(pending.url, status_code=302)
        response.set_cookie(LOGIN_COOKIE, key, httponly=True, samesite="lax",
                            secure=self.auth.secure_cookie, path="/conso", max_age=900)  # fmt: skip
        return response

    async def callback(self, request: Request) -> Response:
        key = request.cookies.get(LOGIN_COOKIE, "")
        with self._lock:
            found = self._pending.pop(key, None)  # one use, whatever the outcome
        if found is None:
            return _page(400, "Connexion expirée ou inconnue : recommencez.")
        pending, next_path, _ = found
        params: dict[str, Any] = dict(request.query_params)
        try:
            login = await run_in_threadpool(self.client.finish, pending, params)
        except OidcError as exc:
            log.warning("login refused: %s (%s)", exc.reason, exc)
            audit.info("login refused: %s", exc.reason, extra={"event": "login",
                                                                "outcome": "refused"})  # fmt: skip
            return _page(exc.http_status, "La connexion a été refusée.")
        claims = login.claims
        subject = str(claims.get("SubjectNameID") or claims.get("preferred_username")
                      or login.subject)  # fmt: skip
        expires = login.access_token_expires_at or time.time() + 300
        session = self.auth.store.open(subject, login.access_token, expires)
        session.claims = dict(claims)
        audit.info("login of %s", subject, extra={"event": "login", "who": subject,
                                                   "outcome": "success"})  # fmt: skip
        response = RedirectResponse(next_path, status_code=303)
        response.delete_cookie(LOGIN_COOKIE, path="/conso")
        # lax: the landing after the provider's redirect is a cross-site navigation
        response.set_cookie(COOKIE, session.id, httponly=True, samesite="lax",
                            secure=self.auth.secure_cookie, path="/")  # fmt: skip
        return response

    async def logout(self, request: Request) -> Response:
        self.auth.store.close(request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/conso/", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response


def _page(status: int, message: str) -> HTMLResponse:
    return HTMLResponse(
        '<!doctype html><html lang="fr"><meta charset="utf-8"><title>Connexion</title>'
        f'<p>{html.escape(message)}</p><p><a href="/conso/login">Se connecter</a></p></html>',
        status_code=status,
    )
