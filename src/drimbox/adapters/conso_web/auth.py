"""Who is calling the Conso: a browser session (cookie) or a tool presenting the
professional's Pro Santé Connect token (``Authorization: Bearer``). Either way the token is
checked by introspection once, and the box keeps it to act on the professional's behalf
towards Source boxes. (The OIDC login that opens browser sessions comes with the trust work;
until then ``POST /conso/api/session`` turns a bearer token into a session cookie.)"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from drimbox.adapters.dicomweb.errors import HttpProblem
from drimbox.adapters.trust.introspection import (
    IntrospectionUnavailable,
    TokenRejected,
    bearer_token,
)
from drimbox.services.conso.sessions import Session, SessionStore

COOKIE = "drimbox_session"
_MAX_TOKENS = 50_000


class TokenVerifier(Protocol):
    def verify(self, token: str) -> Any: ...


class SessionAuth:
    def __init__(self, store: SessionStore, verifier: TokenVerifier, secure_cookie: bool) -> None:
        self.store = store
        self.verifier = verifier
        self.secure_cookie = secure_cookie
        self._by_token: dict[str, str] = {}
        self._lock = threading.Lock()

    async def current(self, request: Request) -> Session | None:
        """The session of a browser cookie or bearer token, or None (never raises 401)."""
        try:
            return await self.require(request)
        except HttpProblem as exc:
            if exc.status == 401:
                return None
            raise

    async def require(self, request: Request) -> Session:
        session_id = request.cookies.get(COOKIE)
        if session_id:
            session = self.store.get(session_id)
            if session is not None:
                return session
            if "authorization" not in request.headers:
                raise HttpProblem(401, "your session has expired: log in again")
        return await self._from_token(request)

    async def _from_token(self, request: Request) -> Session:
        try:
            token = bearer_token(request.headers.get("authorization"))
            principal = await run_in_threadpool(self.verifier.verify, token)
        except TokenRejected as exc:
            raise HttpProblem(401, f"authentication failed: {exc}",
                              {"WWW-Authenticate": exc.www_authenticate()}) from None  # fmt: skip
        except IntrospectionUnavailable:
            raise HttpProblem(503, "the identity provider cannot be reached") from None
        key = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            session = self.store.get(self._by_token.get(key, ""))
            if session is None:
                subject = str(getattr(principal, "subject_name_id", "") or principal.subject)
                session = self.store.open(subject, token, float(principal.expires_at))
                if len(self._by_token) >= _MAX_TOKENS:  # drop mappings of ended sessions
                    self._by_token = {k: v for k, v in self._by_token.items()
                                      if self.store.get(v) is not None}  # fmt: skip
                self._by_token[key] = session.id
        return session

    def session_of(self, token: str) -> Session | None:
        """The session a bearer token opened, if any."""
        key = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            return self.store.get(self._by_token.get(key, ""))

    def routes(self, prefix: str) -> list[Route]:
        async def open_session(request: Request) -> Response:
            session = await self._from_token(request)
            response = JSONResponse({"subject": session.subject, "expires_at": session.expires_at})
            response.set_cookie(COOKIE, session.id, httponly=True, samesite="lax",
                                secure=self.secure_cookie, path="/")  # fmt: skip
            return response

        async def close_session(request: Request) -> Response:
            self.store.close(request.cookies.get(COOKIE, ""))
            response = Response(status_code=204)
            response.delete_cookie(COOKIE, path="/")
            return response

        return [
            Route(prefix + "/session", open_session, methods=["POST"]),
            Route(prefix + "/session", close_session, methods=["DELETE"]),
        ]
