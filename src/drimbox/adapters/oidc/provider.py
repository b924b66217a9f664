"""``drimbox idp``: a development OpenID Connect provider shaped like Pro Santé Connect.

Pro Santé Connect is a Keycloak realm (``esante-wallet``); so is this provider's layout. With
the issuer ``http://127.0.0.1:8300/auth/realms/esante-wallet``:

==========================================  ==============================================
``{issuer}/.well-known/openid-configuration``  discovery (OIDC Discovery 1.0)
``{issuer}/protocol/openid-connect/auth``      authorization: GET shows the login page, the
                                               login form POSTs back to it
``.../token``                                  code and refresh grants (client_secret_basic or
                                               client_secret_post)
``.../certs``                                  JWKS (one RSA key, stable ``kid``)
``.../userinfo``                               claims of a bearer access token (GET or POST)
``.../token/introspect``                       RFC 7662 (any registered client, Basic auth)
``.../revoke``                                 RFC 7009
``.../logout``                                 RP-initiated logout (``id_token_hint``)
==========================================  ==============================================

Only the authorization code flow, with PKCE S256 required; the scope must hold ``openid``;
``redirect_uri`` is required and must equal one registered for the client, else (as for an
unknown client) the browser gets an error page and is never sent to the given address. There
are no passwords: the login page lists the test people; picking one POSTs the person and a
one-time ticket bound to this browser (a cookie) and to this very authorization request, so
neither a GET nor a forged cross-site POST logs anyone in. No single sign-on either: every
authorization request shows the page again.

``acr`` is ``eidas1`` (PSC's level for the CPS and e-CPS), whether ``acr_values`` asks for it
or asks for nothing the provider knows. Every claim is given whatever the scope.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from authlib.common.security import is_secure_transport
from authlib.common.urls import add_params_to_uri
from authlib.oauth2.rfc6749 import InvalidClientError, InvalidRequestError, OAuth2Error
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from drimbox.adapters.oidc.people import People
from drimbox.adapters.oidc.provider_keys import ALG, SigningKey
from drimbox.adapters.oidc.provider_pages import error_page, logged_out_page, login_page
from drimbox.adapters.oidc.provider_server import (
    CLIENT_AUTH_METHODS,
    DEFAULT_ACR,
    GRANT_TYPES,
    SUPPORTED_ACR,
    Client,
    HttpInput,
    ProviderCore,
    Server,
    new_session_id,
    repeated_parameter,
)
from drimbox.adapters.oidc.provider_store import Login, ProviderStore

log = logging.getLogger(__name__)

REALM = "esante-wallet"
REALM_PATH = f"/auth/realms/{REALM}"
OIDC_PATH = "/protocol/openid-connect"
BROWSER_COOKIE = "drimbox_idp_browser"
TICKET_LIFETIME = 600.0
MAX_FORM_BYTES = 64 * 1024
FORM = "application/x-www-form-urlencoded"
_BROWSER_ID_LENGTH = 32
CLAIMS_SUPPORTED = (
    "iss", "sub", "aud", "exp", "iat", "nbf", "auth_time", "nonce", "acr", "azp", "sid",
    "given_name", "family_name", "preferred_username", "SubjectNameID", "SubjectRefPro",
    "SubjectOrganization", "SubjectRole", "birthdate", "gender", "ins", "ins_oid",
)  # fmt: skip


def _canonical(params: Sequence[tuple[str, str]]) -> str:
    """The authorization request a login ticket is bound to, whatever its encoding."""
    return urlencode(sorted(params))


class OidcProvider:
    """The provider's state and its Starlette app (``app()``)."""

    def __init__(
        self,
        issuer: str,
        clients: Sequence[Client],
        people: People,
        key: SigningKey,
        *,
        access_token_lifetime: int = 600,
        refresh_token_lifetime: int = 1800,
        clock: Callable[[], float] = time.time,
    ) -> None:
        issuer = issuer.rstrip("/")
        parts = urlsplit(issuer)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the issuer must be an http(s) URL, got {issuer!r}")
        if parts.query or parts.fragment:
            raise ValueError("the issuer has no query and no fragment (OIDC Discovery §3)")
        by_id = {c.client_id: c for c in clients}
        if len(by_id) != len(clients):
            raise ValueError("two clients have the same client_id")
        self.issuer = issuer
        self.prefix = parts.path
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._secure = parts.scheme == "https"
        self.people = people
        self.key = key
        self.store = ProviderStore(clock)
        self.core = ProviderCore(
            issuer=issuer,
            clients=by_id,
            people=people,
            key=key,
            store=self.store,
            access_token_lifetime=access_token_lifetime,
            refresh_token_lifetime=refresh_token_lifetime,
        )
        self.server = Server(self.core, realm=parts.path.rsplit("/", 1)[-1] or "idp")
        if not is_secure_transport(issuer):
            # authlib refuses OAuth over plain HTTP but on loopback; a development provider
            # on a private network (containers) is the very case where it may be allowed
            log.warning("issuer %s is plain HTTP off loopback: development only", issuer)
            os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"

    def endpoint(self, name: str) -> str:
        """``auth``, ``token``, ``certs``, ``userinfo``, ``token/introspect``, ``revoke``,
        ``logout``: the URL of that endpoint."""
        return f"{self.issuer}{OIDC_PATH}/{name}"

    def metadata(self) -> dict[str, Any]:
        """The discovery document."""
        return {
            "issuer": self.issuer,
            "authorization_endpoint": self.endpoint("auth"),
            "token_endpoint": self.endpoint("token"),
            "introspection_endpoint": self.endpoint("token/introspect"),
            "userinfo_endpoint": self.endpoint("userinfo"),
            "end_session_endpoint": self.endpoint("logout"),
            "jwks_uri": self.endpoint("certs"),
            "revocation_endpoint": self.endpoint("revoke"),
            "grant_types_supported": list(GRANT_TYPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ALG],
            "token_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
            "introspection_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
            "revocation_endpoint_auth_methods_supported": CLIENT_AUTH_METHODS,
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": ["openid", "profile", "scope_all"],
            "acr_values_supported": list(SUPPORTED_ACR),
            "claims_supported": list(CLAIMS_SUPPORTED),
            "claims_parameter_supported": False,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
            "ui_locales_supported": ["fr"],
            "authorization_response_iss_parameter_supported": True,
        }

    def app(self) -> Starlette:
        base = f"{self.prefix}{OIDC_PATH}"
        return Starlette(
            routes=[
                Route(f"{self.prefix}/.well-known/openid-configuration", self._discovery),
                Route(f"{base}/auth", self._authorize, methods=["GET", "POST"]),
                Route(f"{base}/token", self._token, methods=["POST"]),
                Route(f"{base}/certs", self._certs),
                Route(f"{base}/userinfo", self._userinfo, methods=["GET", "POST"]),
                Route(f"{base}/token/introspect", self._introspect, methods=["POST"]),
                Route(f"{base}/revoke", self._revoke, methods=["POST"]),
                Route(f"{base}/logout", self._logout, methods=["GET", "POST"]),
                Route("/health", self._health),
            ]
        )

    # -- plumbing

    def _input(self, request: Request, params: Sequence[tuple[str, str]]) -> HttpInput:
        # authlib refuses plain-HTTP URLs but on loopback: it judges the public URL (the
        # issuer's), not how a reverse proxy or a test client reached us
        return HttpInput(
            request.method, f"{self._origin}{request.url.path}", request.headers, params
        )

    async def _form(self, request: Request) -> list[tuple[str, str]] | str:
        """The urlencoded body's parameters, or why it cannot be read."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != FORM:
            return f"The body must be {FORM}."
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                return "The body is too large."
        try:
            return parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return "The body is not a valid form."

    async def _back_channel(self, request: Request) -> HttpInput | Response:
        form = await self._form(request)
        if isinstance(form, str):
            return self.server.handle_error_response(None, InvalidRequestError(form))  # type: ignore[no-any-return]
        repeated = repeated_parameter(form)
        if repeated is not None:
            error = InvalidRequestError(f"Parameter '{repeated}' is repeated.")
            return self.server.handle_error_response(None, error)  # type: ignore[no-any-return]
        return self._input(request, form)

    # -- endpoints

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _discovery(self, request: Request) -> Response:
        return JSONResponse(self.metadata(), headers={"Cache-Control": "max-age=60"})

    async def _certs(self, request: Request) -> Response:
        return JSONResponse(self.key.jwks(), headers={"Cache-Control": "max-age=60"})

    async def _token(self, request: Request) -> Response:
        http = await self._back_channel(request)
        if isinstance(http, Response):
            return http
        return self.server.create_token_response(http)  # type: ignore[no-any-return]

    async def _introspect(self, request: Request) -> Response:
        http = await self._back_channel(request)
        if isinstance(http, Response):
            return http
        return self.server.create_endpoint_response("introspection", http)  # type: ignore[no-any-return]

    async def _revoke(self, request: Request) -> Response:
        http = await self._back_channel(request)
        if isinstance(http, Response):
            return http
        return self.server.create_endpoint_response("revocation", http)  # type: ignore[no-any-return]

    async def _userinfo(self, request: Request) -> Response:
        return self.server.userinfo(self._input(request, []))

    async def _logout(self, request: Request) -> Response:
        if request.method == "POST":
            form = await self._form(request)
            if isinstance(form, str):
                return error_page("Déconnexion impossible", "Requête invalide.", form)
            params = form
        else:
            params = list(request.query_params.multi_items())
        http = self._input(request, params)
        try:
            validated = self.server.validate_endpoint_request("end_session", http)
        except OAuth2Error as error:
            return error_page(
                "Déconnexion impossible",
                "La demande de déconnexion de l'application est invalide.",
                f"{error.error}: {error.description}",
            )
        response = self.server.create_endpoint_response("end_session", validated)
        return response if response is not None else logged_out_page()

    async def _authorize(self, request: Request) -> Response:
        query = list(request.query_params.multi_items())
        http = self._input(request, query)
        repeated = repeated_parameter(query)
        if repeated is not None:  # RFC 6749 §3.1, OIDC Core §3.1.2.1 parameters alike
            return error_page(
                "Demande de connexion refusée",
                "La demande de connexion de l'application est invalide.",
                f"invalid_request: parameter '{repeated}' is repeated",
            )
        if any(name in ("request", "request_uri") for name, _ in query):
            return error_page(  # OIDC Core §6: request objects are not supported
                "Demande de connexion refusée",
                "La demande de connexion de l'application est invalide.",
                "request_not_supported: request objects are not supported",
            )
        if request.method == "POST":
            return await self._login(request, http)
        try:
            grant = self.server.get_consent_grant(http, end_user=None)
        except OAuth2Error as error:
            return self._authorization_error(http, error)
        browser = request.cookies.get(BROWSER_COOKIE, "")
        if len(browser) != _BROWSER_ID_LENGTH or not browser.isascii():
            browser = secrets.token_urlsafe(24)  # 32 characters
        ticket = secrets.token_urlsafe(32)
        self.store.put_ticket(ticket, browser, _canonical(query), TICKET_LIFETIME)
        action = f"{request.url.path}?{request.url.query}"
        response = login_page(grant.client.get_client_id(), self.people, action, ticket)
        response.set_cookie(
            BROWSER_COOKIE,
            browser,
            path=request.url.path,
            httponly=True,
            samesite="lax",
            secure=self._secure,
        )
        return response

    async def _login(self, request: Request, http: HttpInput) -> Response:
        form = await self._form(request)
        if isinstance(form, str):
            return error_page("Connexion impossible", "Formulaire invalide.", form)
        fields = dict(form)
        if repeated_parameter(form) is not None or not fields.get("ticket"):
            return error_page("Connexion impossible", "Formulaire invalide.")
        browser = request.cookies.get(BROWSER_COOKIE, "")
        if not self.store.take_ticket(fields["ticket"], browser, _canonical(http.params)):
            return error_page(
                "Connexion impossible",
                "Ce formulaire de connexion a expiré ou a déjà servi : "
                "recommencez depuis l'application.",
            )
        try:
            grant = self.server.get_consent_grant(http, end_user=None)
        except OAuth2Error as error:
            return self._authorization_error(http, error)
        person = self.people.find(fields.get("person", ""))
        if person is None:
            return error_page("Connexion impossible", "Personne inconnue.")
        if person.password and not hmac.compare_digest(
            person.password.encode(), fields.get("password", "").encode()
        ):
            log.warning("wrong password for %s at %s", person.id, grant.client.get_client_id())
            return error_page(
                "Connexion impossible",
                "Mot de passe incorrect : recommencez depuis l'application.",
                status=401,
            )
        requested = str(grant.request.payload.data.get("acr_values") or "").split()
        acr = next((value for value in requested if value in SUPPORTED_ACR), DEFAULT_ACR)
        login = Login(person, acr, int(self.store.clock()), new_session_id())
        log.info("%s logged in at %s", person.id, grant.client.get_client_id())
        response = self.server.create_authorization_response(
            grant.request, grant_user=login, grant=grant
        )
        return self._with_issuer(response)

    def _with_issuer(self, response: Response) -> Response:
        """RFC 9207: every authorization response names its issuer (mix-up attacks)."""
        location = response.headers.get("location")
        if location:
            response.headers["location"] = add_params_to_uri(location, {"iss": self.issuer})
        return response

    def _authorization_error(self, http: HttpInput, error: OAuth2Error) -> Response:
        if error.redirect_uri:  # the client and its redirect URI are known good
            return self._with_issuer(self.server.handle_error_response(http, error))
        if isinstance(error, InvalidClientError):
            message = "Cette application n'est pas enregistrée auprès du fournisseur d'identité."
        elif "redirect" in str(error.description).lower():
            message = (
                "L'adresse de retour (redirect_uri) n'est pas enregistrée pour cette "
                "application : la connexion ne peut pas continuer."
            )
        else:
            message = "La demande de connexion de l'application est invalide."
        return error_page(
            "Demande de connexion refusée", message, f"{error.error}: {error.description}"
        )
