"""The box's admin page (French) and its JSON API: what was published, what waits, what failed,
and whether the box is healthy.

A site's IT team looks here when an exam is missing from the national history: messages held
for a human (the PACS contradicts the report, images never came) and operations the index
refused, each with its reason, and a button to try again once the cause is fixed. The site
manager finds the figures they report (exams published, consultations, imports), IT the state
of the links (PACS, index), of the image caches and of the signed whitelist, and the recent
errors.

Only loopback clients are served, unless ``box.admin_national_ids`` names professionals: they
are then served from anywhere once their Conso session (cookie) or Pro Santé Connect token
(bearer) says who they are.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from drimbox.domain.errors import PeerUnavailable
from drimbox.services.source.inbox import Inbox
from drimbox.services.source.outbox import Outbox


def _problem(status: int, title: str, detail: str) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": title, "status": status,
                         "detail": detail}, status_code=status,
                        media_type="application/problem+json")  # fmt: skip


# -- who may see it ---------------------------------------------------------------------------


class SessionLookup(Protocol):
    """The Conso's sessions: the professional of a cookie or bearer token, or None."""

    async def current(self, request: Request) -> Any: ...


def is_local(request: Request) -> bool:
    """A client on this machine. A request a reverse proxy forwarded (it says so in
    ``Forwarded``/``X-Forwarded-For``) is not local, whoever sent it: the proxy's own
    loopback address must not open the page to the proxy's clients."""
    if "forwarded" in request.headers or "x-forwarded-for" in request.headers:
        return False
    try:
        return ipaddress.ip_address(request.client.host if request.client else "").is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AdminGate:
    """Who may use the admin: clients on this machine, and the professionals named."""

    admins: frozenset[str] = frozenset()
    """National ids (PSC ``SubjectNameID``) allowed from anywhere; empty: loopback only."""
    sessions: SessionLookup | None = None

    async def refusal(self, request: Request) -> Response | None:
        """Why ``request`` may not use the admin, as a problem response; None if it may."""
        origin = request.headers.get("origin")
        foreign = bool(origin) and urlsplit(origin).netloc != request.headers.get("host")
        if request.method == "POST" and foreign:  # another site's page, an admin's browser
            return _problem(403, "Forbidden", "requête d'un autre site refusée")
        if is_local(request):
            return None
        if not self.admins or self.sessions is None:
            return _problem(403, "Forbidden", "l'administration n'est ouverte qu'au poste "
                            "local de la DRIMbox (box.admin_national_ids est vide)")  # fmt: skip
        session = await self.sessions.current(request)
        if session is None:
            return _problem(403, "Forbidden", "administration réservée aux administrateurs "
                            "déclarés : connectez-vous (/conso/login) ou présentez un "
                            "jeton")  # fmt: skip
        if getattr(session, "patient", None) is not None or str(session.subject) not in self.admins:
            return _problem(403, "Forbidden", f"{session.subject} n'est pas administrateur "
                            "de cette DRIMbox (box.admin_national_ids)")  # fmt: skip
        return None


# -- links --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkState:
    name: str
    label: str
    target: str
    ok: bool
    latency_ms: float | None
    error: str
    checked_at: str


class LinkProbe:
    """One peer's health, checked at most once per ``ttl`` seconds (the page stays fast and
    a reload does not hammer the PACS); concurrent askers share one check."""

    def __init__(
        self, name: str, label: str, target: str, ping: Callable[[], None], ttl: float = 10.0
    ) -> None:
        self.name, self.label, self.target, self.ping, self.ttl = name, label, target, ping, ttl
        self._lock = threading.Lock()
        self._last: tuple[float, LinkState] | None = None

    def state(self) -> LinkState:
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < self.ttl:
                return self._last[1]
            start = time.monotonic()
            error = ""
            try:
                self.ping()
            except Exception as exc:  # any failure is the link's state, shown as is
                error = str(exc) or type(exc).__name__
            elapsed = time.monotonic() - start
            state = LinkState(
                self.name, self.label, self.target, not error,
                None if error else round(elapsed * 1000, 1), error,
                datetime.now(UTC).isoformat(timespec="seconds"),
            )  # fmt: skip
            self._last = (time.monotonic(), state)
            return state


def c_echo(host: str, port: int, called_aet: str, calling_aet: str, timeout: float) -> None:
    """DICOM verification (C-ECHO); ``PeerUnavailable`` saying what failed."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        raise PeerUnavailable(f"association refusée ou PACS injoignable ({host}:{port})")
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code != 0:
        raise PeerUnavailable("pas de réponse au C-ECHO" if code < 0 else
                              f"C-ECHO en échec (statut 0x{code:04X})")  # fmt: skip


def http_ping(
    url: str, client: Callable[[], httpx.Client | None] = lambda: None, timeout: float = 5.0
) -> Callable[[], None]:
    """A ping by ``GET url`` (2xx expected), with the client ``client`` makes (mutual TLS
    towards the index) or a plain one."""

    def ping() -> None:
        with client() or httpx.Client() as http:
            accept = {"Accept": "application/json, application/dicom+json"}
            try:
                r = http.get(url, timeout=timeout, follow_redirects=False, headers=accept)
            except httpx.HTTPError as exc:
                raise PeerUnavailable(f"{type(exc).__name__}: {exc}") from None
        if not r.is_success:
            raise PeerUnavailable(f"HTTP {r.status_code}")

    return ping


# -- the access trail's counts ------------------------------------------------------------

# Canonical JSON (sorted keys, no spaces): the first "subtype" code is the trail's action; a
# quote inside a string value is escaped, so these cannot match inside free text.
_ACTION = re.compile(rb'"subtype":\[\{"code":"([a-z._]+)"')
_OUTCOME = re.compile(rb'"outcome":"([0-9]+)"')
_COMPLETE = re.compile(rb',"seq":[0-9]+\}$')


class TrailCounter:
    """Records of the access trail by action, successes only (refusals counted apart).

    The file only grows: each call reads on from where the previous one stopped, at most
    ``budget`` bytes, so no request reads a large trail whole; ``complete`` says whether the
    counts have reached its end. Lines a crash cut short are not counted."""

    def __init__(self, path: Path, budget: int = 32 << 20) -> None:
        self.path, self.budget = path, budget
        self._offset = 0
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def counts(self) -> tuple[dict[str, int], bool]:
        with self._lock:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size < self._offset:  # rewritten or truncated (its verification says so)
                self._offset, self._counts = 0, Counter()
            if size > self._offset:
                self._read(min(size, self._offset + self.budget))
            return dict(self._counts), self._offset >= size

    def _read(self, end: int) -> None:
        with self.path.open("rb") as trail:
            trail.seek(self._offset)
            data = trail.read(end - self._offset)
        last = data.rfind(b"\n")
        if last < 0:
            if len(data) >= self.budget:  # one line longer than a read: not a record
                self._offset = end
            return
        for line in data[:last].split(b"\n"):
            action = _ACTION.search(line)
            if action is None or not _COMPLETE.search(line):
                continue
            outcome = _OUTCOME.search(line)
            success = outcome is not None and outcome[1] == b"0"
            self._counts[action[1].decode() if success else "refused"] += 1
        self._offset += last + 1


def import_counts(db_path: Path | None) -> dict[str, int]:
    """Import jobs by state, read from the importer's own database (read-only)."""
    if db_path is None or not db_path.exists():
        return {}
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT state, COUNT(*) FROM import_jobs GROUP BY state").fetchall()
    except sqlite3.Error:
        return {}
    finally:
        db.close()
    return {str(state): int(n) for state, n in rows}


# -- the status document ------------------------------------------------------------------


class CacheFigures(Protocol):
    def stats(self) -> Any: ...


class WhitelistView(Protocol):
    @property
    def current(self) -> Any: ...
    @property
    def last_error(self) -> Any: ...


@dataclass
class BoxHealth:
    """What the admin shows beyond the queues: links, caches, whitelist, counters."""

    probes: Sequence[LinkProbe] = ()
    caches: Mapping[str, CacheFigures] = field(default_factory=dict)
    """"source" (images served to other boxes), "conso" (images consulted here)."""
    whitelist: WhitelistView | None = None
    """The signed whitelist's holder; None when none is configured."""
    trail: TrailCounter | None = None
    imports_db: Path | None = None
    recent: int = 20
    """How many recent errors to show."""


_COUNTED = {
    "history_listed": "history.list", "images_viewed": "images.view",
    "reports_read": "report.read", "images_downloaded": "images.download",
    "imports_requested": "images.import", "images_retrieved": "images.retrieve",
    "emergency_access": "emergency.access",
}  # fmt: skip

_RECENT_MESSAGES = """
SELECT 'message', id, received_at, state, last_error, study_uid, event FROM messages
WHERE last_error IS NOT NULL ORDER BY id DESC LIMIT ?"""
_RECENT_OPERATIONS = """
SELECT 'operation', id, COALESCE(done_at, created_at), state, last_error, study_uid, action
FROM outbox WHERE last_error IS NOT NULL ORDER BY id DESC LIMIT ?"""


def recent_errors(inbox: Inbox, limit: int) -> list[dict[str, Any]]:
    """The last failures of messages (inbox) and index operations (outbox), newest first.
    ``at`` is when the message was received or the operation ended (the stores keep the last
    reason of each, not the time of each failure); ``state`` ``done`` means it recovered."""
    with inbox.reading() as db:
        rows = [*db.execute(_RECENT_MESSAGES, (limit,)), *db.execute(_RECENT_OPERATIONS, (limit,))]
    items = [{"kind": r[0], "id": r[1], "at": r[2], "state": r[3], "reason": r[4],
              "study_uid": r[5], "what": r[6]} for r in rows]  # fmt: skip
    items.sort(key=lambda i: str(i["at"]), reverse=True)
    return items[:limit]


def _publication_counts(inbox: Inbox) -> dict[str, int]:
    with inbox.reading() as db:
        rows = db.execute("SELECT state, COUNT(*) FROM publications GROUP BY state").fetchall()
    return {str(state): int(n) for state, n in rows}


def _whitelist(view: WhitelistView | None) -> dict[str, Any]:
    if view is None:
        return {"configured": False, "loaded": False}
    current, error = view.current, view.last_error
    out: dict[str, Any] = {"configured": True, "loaded": current is not None,
                           "last_error": str(error) if error else None}  # fmt: skip
    if current is not None:
        out.update({
            "signer": current.signer_subject,
            "signed_at": current.signing_time.isoformat() if current.signing_time else None,
            "generated_at": current.generated_at.isoformat() if current.generated_at else None,
            "version": current.version, "domains": len(current.domains),
            "hosts": len(current.hosts()),
        })  # fmt: skip
    return out


def _cache(cache: CacheFigures) -> dict[str, Any]:
    s = cache.stats()
    percent = round(100 * s.size_bytes / s.max_bytes, 1) if s.max_bytes else None
    return {"bytes": s.size_bytes, "max_bytes": s.max_bytes, "entries": s.entries,
            "percent": percent}  # fmt: skip


def status_document(
    inbox: Inbox, outbox: Outbox, health: BoxHealth | None = None,
    links: Sequence[LinkState] = (),
) -> dict[str, Any]:  # fmt: skip
    doc: dict[str, Any] = {
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
    if health is None:
        return doc
    published = _publication_counts(inbox)
    imports = import_counts(health.imports_db)
    trail, complete = health.trail.counts() if health.trail else ({}, True)
    doc.update({
        "links": {s.name: asdict(s) for s in links},
        "queue": {"outbox_pending": doc["operations"].get("pending", 0),
                  "outbox_failed": doc["operations"].get("failed", 0),
                  "inbox_pending": doc["messages"].get("pending", 0),
                  "inbox_held": doc["messages"].get("held", 0)},
        "caches": {name: _cache(c) for name, c in health.caches.items()},
        "whitelist": _whitelist(health.whitelist),
        "recent_errors": recent_errors(inbox, health.recent),
        "counters": {
            "exams_published": published.get("published", 0),
            "publications": published,
            **{name: trail.get(action, 0) for name, action in _COUNTED.items()},
            "refused_accesses": trail.get("refused", 0),
            "imports_done": imports.get("done", 0),
            "imports_failed": imports.get("failed", 0),
            "imports": imports,
            "trail_complete": complete,
        },
    })  # fmt: skip
    return doc


# -- the page -----------------------------------------------------------------------------

_STATES = {
    "queued": "en attente d'envoi",
    "published": "publié",
    "failed": "refusé par l'index",
    "depublishing": "dépublication en cours",
    "deleted": "dépublié",
}
_HEADERS = {
    "control_id": "N° de message", "patient": "Patient", "study_uid": "Examen (Study UID)",
    "received_at": "Reçu le", "reason": "Motif", "action": "Opération",
    "attempts": "Tentatives", "state": "État", "updated_at": "Mis à jour le", "at": "Date",
    "kind": "Origine", "what": "Événement",
}  # fmt: skip
_KINDS = {"message": "message du RIS / PACS", "operation": "envoi à l'index"}
_CACHES = {"source": "Cache des images servies (Source)",
           "conso": "Cache des images consultées (Conso)"}  # fmt: skip
_COUNTER_LABELS = {
    "exams_published": "Examens publiés", "history_listed": "Historiques consultés",
    "images_viewed": "Examens visualisés", "reports_read": "Comptes rendus lus",
    "images_downloaded": "Examens téléchargés", "imports_requested": "Imports demandés",
    "imports_done": "Imports terminés", "imports_failed": "Imports en échec",
    "images_retrieved": "Envois d'images à d'autres DRIMbox",
    "emergency_access": "Accès en urgence (bris de glace)",
    "refused_accesses": "Accès refusés ou en échec",
}  # fmt: skip


def _rows(
    items: list[dict[str, Any]], keys: list[str], action: str = "", empty: str = "Aucun."
) -> str:
    if not items:
        return f"<p>{empty}</p>"
    head = "".join(f"<th>{html.escape(_HEADERS.get(k, k))}</th>" for k in keys)
    head += "<th></th>" if action else ""
    body = []
    for item in items:
        cells = "".join(f"<td>{html.escape(str(item.get(k) or ''))}</td>" for k in keys)
        if action:
            url = action.format(id=int(item["id"]))
            cells += (f'<td><form method="post" action="{url}"><button>Réessayer</button>'
                      "</form></td>")  # fmt: skip
        body.append(f"<tr>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _size(n: int) -> str:
    for unit in ("o", "Ko", "Mo", "Go"):
        if n < 1024 or unit == "Go":
            return f"{n:.0f} {unit}" if unit == "o" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _links_html(links: dict[str, Any]) -> str:
    rows = []
    for s in links.values():
        state = ("<span class='ok'>joignable</span>" if s["ok"]
                 else "<span class='ko'>en panne</span>")  # fmt: skip
        latency = f"{s['latency_ms']} ms" if s["latency_ms"] is not None else ""
        rows.append(f"<tr><td>{html.escape(s['label'])}</td><td>{html.escape(s['target'])}</td>"
                    f"<td>{state}</td><td>{latency}</td><td>{html.escape(s['error'])}</td>"
                    f"<td>{html.escape(s['checked_at'])}</td></tr>")  # fmt: skip
    return ("<table><thead><tr><th>Liaison</th><th>Adresse</th><th>État</th><th>Latence</th>"
            "<th>Erreur</th><th>Vérifié le</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table>")  # fmt: skip


def _health_html(doc: dict[str, Any]) -> str:
    if "links" not in doc:
        return ""
    counters = doc["counters"]
    figures = "".join(f"<tr><td>{label}</td><td>{counters[key]}</td></tr>"
                      for key, label in _COUNTER_LABELS.items())  # fmt: skip
    partial = ("" if counters["trail_complete"] else
               "<p class='muted'>Comptage de la traçabilité en cours : rechargez.</p>")  # fmt: skip
    caches = "".join(
        f"<tr><td>{html.escape(_CACHES.get(name, name))}</td><td>{_size(c['bytes'])} sur "
        f"{_size(c['max_bytes'])} ({c['percent']} %), {c['entries']} image(s)</td></tr>"
        for name, c in doc["caches"].items()
    )
    queue = doc["queue"]
    wl = doc["whitelist"]
    if not wl["configured"]:
        whitelist = "<p>Aucune liste blanche configurée.</p>"
    elif not wl["loaded"]:
        whitelist = (f"<p class='ko'>Aucune liste valide chargée : "
                     f"{html.escape(str(wl['last_error']))}</p>")  # fmt: skip
    else:
        whitelist = (
            f"<p>Signée par {html.escape(wl['signer'])} le {html.escape(str(wl['signed_at']))}"
            f" (générée le {html.escape(str(wl['generated_at']))}), {wl['domains']} domaine(s),"
            f" {wl['hosts']} hôte(s).</p>"
            + (f"<p class='ko'>Dernier rafraîchissement refusé : "
               f"{html.escape(wl['last_error'])}</p>" if wl["last_error"] else "")
        )  # fmt: skip
    errors = [dict(e, kind=_KINDS.get(e["kind"], e["kind"])) for e in doc["recent_errors"]]
    return (
        f"<h2>Liaisons</h2>{_links_html(doc['links'])}"
        f"<h2>Activité</h2><table><tbody>{figures}</tbody></table>{partial}"
        f"<h2>File d'envoi et caches</h2><table><tbody>"
        f"<tr><td>Envois à l'index en attente</td><td>{queue['outbox_pending']}</td></tr>"
        f"<tr><td>Messages du RIS en attente</td><td>{queue['inbox_pending']}</td></tr>"
        f"{caches}</tbody></table>"
        f"<h2>Liste blanche des DRIMbox</h2>{whitelist}"
        f"<h2>Erreurs récentes</h2>"
        + _rows(errors, ["at", "kind", "what", "study_uid", "state", "reason"], empty="Aucune.")
    )


def _page(doc: dict[str, Any]) -> str:
    pubs = [dict(p, state=_STATES.get(p["state"], p["state"])) for p in doc["publications"]]
    return f"""<!doctype html>
<html lang="fr"><head><meta charset="utf-8"><title>DRIMbox — administration</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#1b1b1b}}
table{{border-collapse:collapse;margin-bottom:1.5rem}}td,th{{border:1px solid #ccc;
padding:.3rem .6rem;font-size:.9rem;text-align:left}}th{{background:#eef}}
.ok{{color:#18753c;font-weight:600}}.ko{{color:#ce0500;font-weight:600}}
.muted{{color:#666}}h1{{color:#000091}}</style></head>
<body><h1>DRIMbox — administration</h1>
{_health_html(doc)}
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


Endpoint = Callable[[Request], Awaitable[Response]]


def _guarded(gate: AdminGate, endpoint: Endpoint) -> Endpoint:
    async def checked(request: Request) -> Response:
        return await gate.refusal(request) or await endpoint(request)

    return checked


def _id(request: Request) -> int | None:
    text = request.path_params["id"]
    return int(text) if text.isdigit() and len(text) < 18 else None


def _after(request: Request) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        return Response(status_code=303, headers={"location": "/admin"})
    return Response(status_code=204)


def admin_routes(
    inbox: Inbox, outbox: Outbox, wake: Any, *, health: BoxHealth | None = None,
    gate: AdminGate | None = None,
) -> list[Route]:  # fmt: skip
    """The admin routes; ``gate`` defaults to loopback clients only."""
    guard = gate or AdminGate()

    async def document() -> dict[str, Any]:
        probes = health.probes if health else ()
        # the links are checked side by side: a page waits for the slowest, not their sum
        links = await asyncio.gather(*(run_in_threadpool(p.state) for p in probes))
        return await run_in_threadpool(status_document, inbox, outbox, health, links)

    async def page(request: Request) -> Response:
        return HTMLResponse(_page(await document()))

    async def status(request: Request) -> Response:
        return JSONResponse(await document())

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

    return [
        Route("/admin", _guarded(guard, page)),
        Route("/api/admin/status", _guarded(guard, status)),
        Route("/admin/messages/{id}/release", _guarded(guard, release), methods=["POST"]),
        Route("/admin/operations/{id}/retry", _guarded(guard, retry), methods=["POST"]),
    ]
