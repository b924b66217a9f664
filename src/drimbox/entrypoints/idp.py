"""``drimbox idp``: the development OpenID provider (Pro Santé Connect and the patients'
provider for demos and tests). See :mod:`drimbox.adapters.oidc.provider`."""

from __future__ import annotations

import logging

import uvicorn
from starlette.applications import Starlette

from drimbox.adapters.oidc.people import BUILT_IN, People, PeopleError
from drimbox.adapters.oidc.provider import OidcProvider
from drimbox.adapters.oidc.provider_keys import KeyFileError, SigningKey
from drimbox.adapters.oidc.provider_server import Client
from drimbox.log import configure_logging
from drimbox.settings import ConfigError, IdpSettings

log = logging.getLogger("drimbox.idp")


def create_provider(settings: IdpSettings) -> OidcProvider:
    """The provider of ``settings``; makes the signing key on first use."""
    try:
        people = People.load(settings.people_file) if settings.people_file else BUILT_IN
        key = SigningKey.load_or_create(settings.data_dir)
    except (PeopleError, KeyFileError) as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"idp.data_dir: {exc}") from None
    clients = [Client(c.client_id, c.client_secret, c.redirect_uris) for c in settings.clients]
    return OidcProvider(
        settings.issuer_url,
        clients,
        people,
        key,
        access_token_lifetime=settings.access_token_lifetime,
        refresh_token_lifetime=settings.refresh_token_lifetime,
    )


def create_idp_app(settings: IdpSettings) -> Starlette:
    return create_provider(settings).app()


def run_idp(settings: IdpSettings) -> int:
    configure_logging(settings.logging.level, settings.logging.json_format)
    provider = create_provider(settings)
    if not settings.clients:
        log.warning("no client registered (idp.clients): every authorization is refused")
    log.info("OpenID provider %s (key id %s)", provider.issuer, provider.key.kid)
    for person in provider.people.everyone():
        log.info("test person %s: %s", person.id, person.label())
    config = uvicorn.Config(
        provider.app(),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
    uvicorn.Server(config).run()
    return 0
