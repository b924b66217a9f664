"""``drimbox dev-token``: a bearer token for a demo user, obtained the way a browser would.

The authorization code flow with PKCE against the demo's identity provider, as the
registered ``dev-token`` client: the login form is filled with the user's login and
password, the code is read from the redirect (never followed: nothing listens there) and
exchanged at the token endpoint. No back door: a token that works is one the provider issued
to someone who logged in.
"""

from __future__ import annotations

import json
import re
import sys
from html import unescape
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import httpx

from drimbox.adapters.oidc.relying_party import OidcClient, OidcError
from drimbox.entrypoints.demo_network import DEV_TOKEN_REDIRECT


class DevTokenError(Exception):
    pass


def _field(page: str, pattern: str, what: str) -> str:
    found = re.search(pattern, page)
    if found is None:
        raise DevTokenError(f"the provider's login page has no {what}")
    return unescape(found.group(1))


def dev_token(demo: dict[str, Any], secrets: dict[str, str], login: str, password: str) -> str:
    issuer = demo["idp"]["issuer"]
    with (
        httpx.Client(timeout=30, follow_redirects=False) as http,
        OidcClient(
            issuer,
            "dev-token",
            secrets["dev-token"],
            DEV_TOKEN_REDIRECT,
            http=http,
            allow_http=True,
            fetch_userinfo=False,
        ) as client,
    ):
        request = client.begin()
        page = http.get(request.url)
        if page.status_code != 200:
            raise DevTokenError(f"the provider refused the login request ({page.status_code})")
        action = _field(page.text, r'<form method="post" action="([^"]+)"', "form")
        ticket = _field(page.text, r'name="ticket" value="([^"]+)"', "ticket")
        back = http.post(
            urljoin(str(page.url), action),
            data={"ticket": ticket, "person": login, "password": password},
        )
        location = back.headers.get("location", "")
        if back.status_code != 302 or not location.startswith(DEV_TOKEN_REDIRECT):
            reason = re.sub(r"<[^>]+>", " ", back.text)
            raise DevTokenError(f"login refused for {login!r}: {' '.join(reason.split())[:200]}")
        params = dict(parse_qsl(urlsplit(location).query))
        return client.finish(request, params).access_token


def run_dev_token(demo_dir: Path, user: str) -> int:
    try:
        demo = json.loads((demo_dir / "demo.json").read_text())
        secrets = json.loads((demo_dir / "secrets.json").read_text())
    except (OSError, ValueError) as exc:
        print(f"drimbox dev-token: no running demo in {demo_dir} ({exc})", file=sys.stderr)
        return 2
    known = {u["login"]: u for u in demo.get("users", [])}
    if user not in known:
        print(
            f"drimbox dev-token: unknown user {user!r}; known: {', '.join(known)}", file=sys.stderr
        )
        return 2
    try:
        print(dev_token(demo, secrets, user, known[user]["password"]))
    except (DevTokenError, OidcError, httpx.HTTPError) as exc:
        print(f"drimbox dev-token: {exc}", file=sys.stderr)
        return 1
    return 0
