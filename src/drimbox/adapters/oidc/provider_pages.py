"""The pages ``drimbox idp`` shows a browser (French): the login page, where one picks the
person to log in as, the error page and the logout page. Every value is HTML-escaped."""

from __future__ import annotations

from html import escape

from starlette.responses import HTMLResponse

from drimbox.adapters.oidc.people import People

# no script at all; the page may not be framed (clickjacking of the login buttons)
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; color: #1e1e1e;
       padding: 0 1rem; }
h1 { font-size: 1.4rem; color: #000091; }
h2 { font-size: 1.1rem; margin-top: 1.5rem; }
.warning { background: #fff4e5; border-left: 4px solid #b34000; padding: .5rem 1rem; }
ul { list-style: none; padding: 0; }
li { margin: .4rem 0; }
button { width: 100%; text-align: left; padding: .6rem .8rem; font-size: 1rem; cursor: pointer;
         background: #f5f5fe; border: 1px solid #000091; border-radius: 4px; }
button:hover { background: #e3e3fd; }
small { color: #555; }
code { background: #eee; padding: 0 .2rem; }
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    html = (
        '<!DOCTYPE html>\n<html lang="fr"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


def login_page(client_id: str, people: People, action: str, ticket: str) -> HTMLResponse:
    """One form: each person is a submit button posting its id with the one-time ticket."""
    professionals = "".join(
        f'<li><button type="submit" name="person" value="{escape(p.id)}">'
        f"<strong>{escape(p.label())}</strong> — {escape(p.title)}<br>"
        f"<small>{escape(p.structure.name)} · RPPS {escape(p.rpps)}</small></button></li>"
        for p in people.professionals
    )
    patients = "".join(
        f'<li><button type="submit" name="person" value="{escape(p.id)}">'
        f"<strong>{escape(p.label())}</strong><br>"
        f"<small>{'née' if p.gender == 'female' else 'né'} le {p.birthdate:%d/%m/%Y}"
        f" · INS {escape(p.ins)}</small>"
        "</button></li>"
        for p in people.patients
    )
    sections = ""
    if any(p.password for p in people.everyone()):
        sections += (
            "<p><label>Mot de passe (si la personne en a un) : "
            '<input type="password" name="password" autocomplete="current-password">'
            "</label></p>"
        )
    if professionals:
        sections += f"<h2>Professionnels</h2><ul>{professionals}</ul>"
    if patients:
        sections += f"<h2>Patients</h2><ul>{patients}</ul>"
    body = (
        "<h1>Connexion</h1>"
        '<p class="warning">Fournisseur d\'identité de <strong>développement</strong> : '
        "aucune authentification réelle, on choisit qui l'on est.</p>"
        f"<p>L'application <code>{escape(client_id)}</code> demande à vous identifier. "
        "Choisissez la personne avec laquelle vous connecter :</p>"
        f'<form method="post" action="{escape(action)}">'
        f'<input type="hidden" name="ticket" value="{escape(ticket)}">{sections}</form>'
    )
    return _page("Connexion — fournisseur d'identité de développement", body)


def error_page(title: str, message: str, detail: str = "", status: int = 400) -> HTMLResponse:
    extra = f"<p><small>{escape(detail)}</small></p>" if detail else ""
    body = f"<h1>{escape(title)}</h1><p>{escape(message)}</p>{extra}"
    return _page(title, body, status)


def logged_out_page() -> HTMLResponse:
    body = "<h1>Déconnexion</h1><p>Vous êtes déconnecté.</p>"
    return _page("Déconnexion", body)
