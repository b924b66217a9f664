"""The box's admin page (French) and its JSON API: what was published, what waits, what failed.

A site's IT team looks here when an exam is missing from the national history: messages held
for a human (the PACS contradicts the report, images never came) and operations the index
refused, each with its reason, and a button to try again once the cause is fixed.
"""

from __future__ import annotations

import html
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from drimbox.services.source.inbox import Inbox
from drimbox.services.source.outbox import Outbox


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": title, "status": status,
                         "detail": detail}, status_code=status,
                        media_type="application/problem+json")  # fmt: skip


def status_document(inbox: Inbox, outbox: Outbox) -> dict[str, Any]:
    return {
        "messages": inbox.counts(),
        "operations": outbox.counts(),
        "held": [
            {"id": e.id, "control_id": e.control_id, "patient": e.patient, "event": e.event,
             "study_uid": e.study_uid, "received_at": e.received_at, "reason": e.last_error}
            for e in inbox.held()
        ],
        "failed": [
            {"id": o.id, "action": o.action.value, "patient": o.patient,
             "study_uid": o.study_uid, "kos_uid": o.kos_uid, "reason": o.last_error,
             "attempts": o.attempts}
            for o in outbox.operations("failed")
        ],
        "waiting": [
            {"id": o.id, "action": o.action.value, "study_uid": o.study_uid,
             "attempts": o.attempts, "reason": o.last_error}
            for o in outbox.operations("pending")
        ],
        "publications": [
            {"study_uid": p.study_uid, "patient": p.patient, "kos_uid": p.kos_uid,
             "state": p.state.value, "updated_at": p.updated_at, "reason": p.last_error}
            for p in outbox.publications()
        ],
    }  # fmt: skip


_STATES = {
    "queued": "en attente d'envoi",
    "published": "publié",
    "failed": "refusé par l'index",
    "depublishing": "dépublication en cours",
    "deleted": "dépublié",
}


def _rows(items: list[dict[str, Any]], keys: list[str], action: str = "") -> str:
    if not items:
        return "<p>Aucun.</p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys) + ("<th></th>" if action else "")
    body = []
    for item in items:
        cells = "".join(f"<td>{html.escape(str(item.get(k) or ''))}</td>" for k in keys)
        if action:
            url = action.format(id=int(item["id"]))
            cells += (f'<td><form method="post" action="{url}"><button>Réessayer</button>'
                      "</form></td>")  # fmt: skip
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _page(doc: dict[str, Any]) -> str:
    pubs = [dict(p, state=_STATES.get(p["state"], p["state"])) for p in doc["publications"]]
    return f"""<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><title>DRIMbox — administration</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#1b1b1b}}
table{{border-collapse:collapse;margin-bottom:1.5rem}}td,th{{border:1px solid #ccc;
padding:.3rem .6rem;font-size:.9rem;text-align:left}}th{{background:#eef}}</style></head>
<body><h1>DRIMbox — publications</h1>
<h2>Messages en attente d'une intervention</h2>
{
        _rows(
            doc["held"],
            ["control_id", "patient", "study_uid", "received_at", "reason"],
            "/admin/messages/{id}/release",
        )
    }
<h2>Envois refusés par l'index</h2>
{_rows(doc["failed"], ["action", "patient", "study_uid", "reason"], "/admin/operations/{id}/retry")}
<h2>Envois en attente</h2>
{_rows(doc["waiting"], ["action", "study_uid", "attempts", "reason"])}
<h2>Examens publiés</h2>
{_rows(pubs, ["study_uid", "patient", "state", "updated_at", "reason"])}
</body></html>"""


def admin_routes(inbox: Inbox, outbox: Outbox, wake: Any) -> list[Route]:
    async def page(request: Request) -> Response:
        return HTMLResponse(_page(status_document(inbox, outbox)))

    async def status(request: Request) -> Response:
        return JSONResponse(status_document(inbox, outbox))

    def _id(request: Request) -> int | None:
        text = request.path_params["id"]
        return int(text) if text.isdigit() and len(text) < 18 else None

    async def release(request: Request) -> Response:
        entry_id = _id(request)
        if entry_id is None or not inbox.release(entry_id):
            return _problem(404, "Not Found", "no held message with this id")
        wake()
        return _after(request)

    async def retry(request: Request) -> Response:
        op_id = _id(request)
        if op_id is None or not outbox.retry_failed(op_id):
            return _problem(404, "Not Found", "no failed operation with this id")
        wake()
        return _after(request)

    def _after(request: Request) -> Response:
        if "text/html" in request.headers.get("accept", ""):
            return Response(status_code=303, headers={"location": "/admin"})
        return Response(status_code=204)

    return [
        Route("/admin", page),
        Route("/api/admin/status", status),
        Route("/admin/messages/{id}/release", release, methods=["POST"]),
        Route("/admin/operations/{id}/retry", retry, methods=["POST"]),
    ]
