"""The patient's side of the box (the role of "Mon espace santé" for imaging): log in (OpenID
Connect, the patients' provider), see one's exams from the national index with their reports,
view the images in the same OHIF viewer (through a DICOMweb root of the patients' own),
download an exam, hide an exam from professionals (and undo), oppose access by professionals,
and read who accessed the record: at this box (its access trail) and at the national index
(its access log).

The INS comes from the provider's claims, never from the request; patient sessions are kept
apart from professionals' (``patient_auth``). Every call to the index carries the patient's
own token, so the index's rules decide and log with their identity; every reading here is
recorded in this box's trail as the patient's.
"""

from __future__ import annotations

import html
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from drimbox.adapters.audit.patient import patient_actor
from drimbox.adapters.audit.recorder import AccessRecorder
from drimbox.adapters.conso_web.contextual import read_form
from drimbox.adapters.conso_web.exam_zip import exam_zip, zip_name
from drimbox.adapters.conso_web.patient_auth import PatientSessions
from drimbox.adapters.conso_web.proxy import ConsoProxy
from drimbox.adapters.dicomweb.errors import HttpProblem
from drimbox.adapters.documents.report_html import report_html, report_pdf
from drimbox.adapters.oidc.relying_party import AuthRequest, OidcClient, OidcError
from drimbox.domain.audit import Action
from drimbox.domain.errors import DrimboxError, InvalidInput, NotFound
from drimbox.domain.identifiers import Ins, is_valid_uid
from drimbox.services.conso.patient_record import (
    IndexAccess,
    IndexRefused,
    PatientExam,
    PatientRecord,
)
from drimbox.services.conso.sessions import Session

log = logging.getLogger(__name__)

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
# the index's access-log actions (services/index), by prefix
_INDEX_ACTIONS = (
    ("ITI-41", "a publié un document dans votre dossier"),
    ("ITI-57", "a mis à jour un document de votre dossier"),
    ("ITI-43", "a lu un document de votre dossier"),
    ("ITI-18", "a consulté la liste de vos documents"),
    ("API history", "a consulté la liste de vos examens"),
    ("API access log", "a consulté l'historique des accès"),
    ("hide document", "a masqué un document aux professionnels"),
    ("show document", "a rendu un document de nouveau visible"),
    ("read opposition", "a consulté vos choix d'accès"),
    ("opposition", "a modifié votre opposition à l'accès des professionnels"),
)
_OWN_CHANGES = ("hide document", "show document", "opposition")
_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b;max-width:72rem}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:.4rem;
text-align:left;vertical-align:top}th{background:#f3f4f6}.muted{color:#666;font-size:.85em}
.problem{color:#a40000}.masque{background:#fff3cd;padding:.1rem .4rem;border-radius:.3rem}
.notice{background:#e7f3ff;padding:.5rem}form.inline{display:inline}
a.button,button{padding:.25rem .6rem;margin:.1rem}header{display:flex;gap:1rem;
justify-content:space-between;align-items:center}
"""
_DONE = {
    "masque": "L'examen est désormais masqué aux professionnels de santé.",
    "affiche": "L'examen est de nouveau visible par les professionnels de santé.",
    "opposition": "Vos choix d'accès ont été enregistrés.",
}


@dataclass(frozen=True, slots=True)
class _Listing:
    exams: list[PatientExam]
    problem: str = ""


class PatientPortal:
    def __init__(
        self,
        client: OidcClient,
        recorder: AccessRecorder,
        sessions: PatientSessions,
        *,
        record: PatientRecord | None = None,
        proxy: ConsoProxy | None = None,
        viewer_url: str = "",
        workdir: Path | None = None,
    ) -> None:
        """``record``: the patient's exams from the index (none: only the trail is shown);
        ``proxy``: the patients' DICOMweb root (downloads); ``viewer_url``: the OHIF page
        reading from that root."""
        self.client = client
        self.recorder = recorder
        self.sessions = sessions
        self.record = record
        self.proxy = proxy
        self.viewer_url = viewer_url
        self.workdir = workdir
        self._pending: dict[str, tuple[AuthRequest, float]] = {}
        self._lock = threading.Lock()

    def routes(self, prefix: str = "/patient") -> list[Route]:
        return [
            Route(prefix + "/login", self.login, methods=["GET"]),
            Route(prefix + "/callback", self.callback, methods=["GET"]),
            Route(prefix + "/logout", self.logout, methods=["POST"]),
            Route(prefix + "/", self.page, methods=["GET"]),
            Route(prefix + "/api/trail", self.api_trail, methods=["GET"]),
            Route(prefix + "/api/index-log", self.api_index_log, methods=["GET"]),
            Route(prefix + "/api/exams", self.api_exams, methods=["GET"]),
            Route(prefix + "/api/exams/{study}/zip", self.download_zip, methods=["GET"]),
            Route(prefix + "/reports/{uid}", self.report_page, methods=["GET"]),
            Route(prefix + "/reports/{uid}/pdf", self.report_file, methods=["GET"]),
            Route(prefix + "/exams/{study}/masquer", self.hide, methods=["POST"]),
            Route(prefix + "/exams/{study}/afficher", self.show, methods=["POST"]),
            Route(prefix + "/opposition", self.set_opposition, methods=["POST"]),
        ]

    # -- login ----------------------------------------------------------------------------

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
                            secure=self.sessions.secure_cookie, path="/patient",
                            max_age=900)  # fmt: skip
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
        subject = str(login.claims.get("sub") or login.subject)
        session = self.sessions.store.open(subject, login.access_token, expires)
        session.claims = dict(login.claims)
        session.patient = own
        response = RedirectResponse("/patient/", status_code=303)
        response.delete_cookie(LOGIN_COOKIE, path="/patient")
        self.sessions.set_cookie(response, session)
        return response

    async def logout(self, request: Request) -> Response:
        session = await self.sessions.require(request)
        self.sessions.check_form(request, session, dict(await _form(request)))
        response = _shell("Déconnexion", "<p>Vous êtes déconnecté(e).</p>"
                          '<p><a href="/patient/login">Se reconnecter</a></p>')  # fmt: skip
        self.sessions.clear(request, response)
        return response

    # -- who is asking --------------------------------------------------------------------

    async def _session(self, request: Request) -> tuple[Session, Ins]:
        session = await self.sessions.require(request)
        assert session.patient is not None  # ``require`` returns patients' sessions only
        return session, session.patient

    def _record_access(
        self, session: Session, action: Action, request: Request, *, study_uid: str = "",
        document_id: str = "", detail: str = "", once: bool = False,
    ) -> None:  # fmt: skip
        self.recorder.record(
            patient_actor(session.subject, session.claims), action, session.patient,
            study_uid=study_uid, document_id=document_id, detail=detail,
            client_ip=request.client.host if request.client else "", once_per_window=once,
        )  # fmt: skip

    # -- the exams ------------------------------------------------------------------------

    async def _listing(self, request: Request, session: Session, own: Ins) -> _Listing:
        """The patient's exams, granted to the session (the viewer and downloads need it)."""
        if self.record is None:
            return _Listing([], "La liste de vos examens n'est pas disponible sur ce site.")
        record = self.record
        try:
            exams = await run_in_threadpool(record.exams, own, session.access_token)
        except IndexRefused as exc:
            log.warning("index refused the patient's listing: %s", exc)
            if exc.status == 401:
                return _Listing([], "Votre connexion a expiré : reconnectez-vous.")
            return _Listing([], "L'index national refuse l'accès à vos examens.")
        except DrimboxError as exc:
            log.warning("patient's listing failed: %s", exc)
            return _Listing([], "L'index national ne répond pas : réessayez plus tard.")
        granted = {p.exam.study_uid: p.exam.kos.unique_id for p in exams
                   if p.exam.kos and p.exam.instance_count}  # fmt: skip
        documents = {p.exam.report.unique_id: (p.exam.report.repository, own.value, own.oid)
                     for p in exams if p.exam.report}  # fmt: skip
        self.sessions.store.grant(session, own.value, granted, documents)
        self._record_access(session, Action.HISTORY_LIST, request,
                            detail=f"{len(exams)} examen(s)", once=True)  # fmt: skip
        return _Listing(exams)

    async def api_exams(self, request: Request) -> Response:
        session, own = await self._session(request)
        listing = await self._listing(request, session, own)
        if listing.problem:
            raise HttpProblem(502, listing.problem)
        return JSONResponse({"exams": [self._exam_json(p) for p in listing.exams]})

    def _exam_json(self, p: PatientExam) -> dict[str, Any]:
        e = p.exam
        images = bool(e.instance_count and e.kos)
        return {
            "study_uid": e.study_uid, "date": e.date.isoformat() if e.date else None,
            "description": e.description, "modalities": list(e.modalities),
            "regions": list(e.regions), "site": e.site, "series": e.series_count,
            "instances": e.instance_count, "hidden": p.hidden,
            "kos_uid": e.kos.unique_id if e.kos else None,
            "report_uid": e.report.unique_id if e.report else None,
            "report_url": f"/patient/reports/{quote(e.report.unique_id)}" if e.report else None,
            "viewer_url": (f"{self.viewer_url}?StudyInstanceUIDs={e.study_uid}"
                           if images and self.viewer_url else None),
            "zip_url": f"/patient/api/exams/{e.study_uid}/zip" if images else None,
            "problem": e.problem or None,
        }  # fmt: skip

    # -- reports --------------------------------------------------------------------------

    async def _report(self, request: Request) -> bytes:
        session, own = await self._session(request)
        uid = request.path_params["uid"]
        listed = session.documents.get(uid)
        if listed is None or listed[1:] != (own.value, own.oid) or self.record is None:
            raise NotFound("ce compte rendu ne figure pas dans vos examens : rouvrez la liste")
        record = self.record
        try:
            found = await run_in_threadpool(record.document, session.access_token, listed[0],
                                            uid)  # fmt: skip
        except DrimboxError as exc:
            log.warning("patient's report %s unavailable: %s", uid, exc)
            raise HttpProblem(502, "l'index national ne fournit pas ce compte rendu") from None
        if found is None:
            raise NotFound("l'index national ne fournit plus ce compte rendu")
        self._record_access(session, Action.REPORT_READ, request, document_id=uid)
        return found

    async def report_page(self, request: Request) -> Response:
        cda = await self._report(request)
        pdf = f"{quote(request.path_params['uid'])}/pdf" if report_pdf(cda) else None
        return _shell("Compte rendu", '<p><a href="/patient/">← Mes examens</a></p>'
                      + report_html(cda, pdf_url=pdf))  # fmt: skip

    async def report_file(self, request: Request) -> Response:
        pdf = report_pdf(await self._report(request))
        if pdf is None:
            raise NotFound("ce compte rendu n'a pas de PDF")
        disposition = {"Content-Disposition": "inline; filename=compte-rendu.pdf"}
        return Response(pdf, media_type="application/pdf", headers=disposition)

    # -- download -------------------------------------------------------------------------

    async def download_zip(self, request: Request) -> Response:
        session, own = await self._session(request)
        study = request.path_params["study"]
        kos_uid = session.exams.get(study)
        if kos_uid is None or self.proxy is None or self.workdir is None:
            raise NotFound("cet examen ne figure pas dans vos examens : rouvrez la liste")
        proxy, workdir = self.proxy, self.workdir
        manifest = proxy.book.get(kos_uid)
        if (manifest.patient.ins, manifest.patient.ins_oid) != (own.value, own.oid):
            raise NotFound("cet examen ne figure pas dans vos examens")
        remote = proxy.remote_for(session, manifest, kos_uid)
        readme = (f"Examen {study} de {_name(session) or 'INS ' + own.value}\n"
                  "Exporté par DRIMbox depuis l'espace patient.\n")  # fmt: skip
        path = await run_in_threadpool(exam_zip, proxy.images, manifest, remote, workdir, readme)
        self._record_access(session, Action.IMAGES_DOWNLOAD, request, study_uid=study)
        return FileResponse(path, media_type="application/zip", filename=zip_name(manifest),
                            background=BackgroundTask(path.unlink, missing_ok=True))  # fmt: skip

    # -- the patient's choices ------------------------------------------------------------

    async def hide(self, request: Request) -> Response:
        return await self._set_hidden(request, True)

    async def show(self, request: Request) -> Response:
        return await self._set_hidden(request, False)

    async def _set_hidden(self, request: Request, hidden: bool) -> Response:
        session, own = await self._session(request)
        self.sessions.check_form(request, session, dict(await _form(request)))
        study = request.path_params["study"]
        if not is_valid_uid(study):
            raise HttpProblem(400, "identifiant d'examen invalide")
        if self.record is None:
            raise NotFound("vos examens ne sont pas disponibles sur ce site")
        record = self.record
        await self._index_call(lambda: record.hide_exam(session.access_token, own, study, hidden))
        return RedirectResponse(f"/patient/?fait={'masque' if hidden else 'affiche'}", 303)

    async def set_opposition(self, request: Request) -> Response:
        session, own = await self._session(request)
        form = dict(await _form(request))
        self.sessions.check_form(request, session, form)
        if self.record is None:
            raise NotFound("vos choix ne sont pas disponibles sur ce site")
        record = self.record
        opposed = form.get("opposed") == "oui"
        break_glass = opposed and form.get("opposes_break_glass") == "oui"
        await self._index_call(
            lambda: record.set_opposition(session.access_token, own, opposed, break_glass)
        )
        return RedirectResponse("/patient/?fait=opposition", 303)

    async def _index_call(self, call: Callable[[], Any]) -> Any:
        try:
            return await run_in_threadpool(call)
        except IndexRefused as exc:
            raise HttpProblem(401 if exc.status == 401 else 403,
                              f"l'index national refuse : {exc.detail}") from None  # fmt: skip
        except NotFound:
            raise NotFound("cet examen ne figure pas dans votre dossier") from None
        except DrimboxError as exc:
            log.warning("patient's change at the index failed: %s", exc)
            raise HttpProblem(502, "l'index national ne répond pas, réessayez") from None

    # -- who accessed the record ----------------------------------------------------------

    async def _events(self, request: Request) -> list[dict[str, Any]]:
        session, own = await self._session(request)
        actor = patient_actor(session.subject, session.claims)
        ip = request.client.host if request.client else ""
        auditor = self.recorder.auditor
        return await run_in_threadpool(
            lambda: auditor.patient_trail(actor, own, limit=500, client_ip=ip)
        )

    async def _index_log(self, request: Request) -> tuple[list[IndexAccess], str]:
        session, own = await self._session(request)
        if self.record is None:
            return [], ""
        record = self.record
        try:
            events = await run_in_threadpool(record.access_log, session.access_token, own)
        except DrimboxError as exc:
            log.warning("index access log of a patient unavailable: %s", exc)
            return [], "Le journal des accès de l'index national n'est pas disponible."
        return events, ""

    async def api_trail(self, request: Request) -> Response:
        return JSONResponse({"events": await self._events(request)})

    async def api_index_log(self, request: Request) -> Response:
        events, problem = await self._index_log(request)
        if problem:
            raise HttpProblem(502, problem)
        return JSONResponse({"events": [_index_json(e) for e in events]})

    # -- the page -------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        session = self.sessions.current(request)
        if session is None or session.patient is None:
            return RedirectResponse("/patient/login", status_code=303)
        own = session.patient
        listing = await self._listing(request, session, own)
        opposition = await self._opposition(session, own)
        events = await self._events(request)
        index_events, index_problem = await self._index_log(request)
        done = _DONE.get(request.query_params.get("fait", ""), "")
        body = (
            self._header(session, own)
            + (f'<p class="notice">{html.escape(done)}</p>' if done else "")
            + self._exams_section(listing, session)
            + _opposition_section(opposition, session)
            + _access_section(events, index_events, index_problem, session)
        )
        return _shell("Mon espace imagerie", body)

    async def _opposition(self, session: Session, own: Ins) -> tuple[bool, bool] | None:
        if self.record is None:
            return None
        record = self.record
        try:
            return await run_in_threadpool(record.opposition, session.access_token, own)
        except DrimboxError as exc:
            log.info("opposition of a patient unavailable: %s", exc)
            return None

    @staticmethod
    def _header(session: Session, own: Ins) -> str:
        return (
            f"<header><h1>Mon espace imagerie</h1>"
            f'<form method="post" action="/patient/logout">{_csrf(session)}'
            "<button>Se déconnecter</button></form></header>"
            f"<p>{html.escape(_name(session))} — INS {html.escape(own.value)}</p>"
        )

    def _exams_section(self, listing: _Listing, session: Session) -> str:
        if listing.problem:
            return ('<h2>Mes examens</h2><p class="problem">'
                    f"{html.escape(listing.problem)}</p>")  # fmt: skip
        rows = "".join(self._exam_row(p, session) for p in listing.exams)
        return (
            "<h2>Mes examens</h2><table><tr><th>Date</th><th>Examen</th><th>Modalité</th>"
            "<th>Région</th><th>Lieu</th><th>Compte rendu</th><th>Images</th>"
            "<th>Visibilité</th></tr>"
            + (rows or "<tr><td colspan=8>Aucun examen dans votre dossier.</td></tr>")
            + "</table>"
        )

    def _exam_row(self, p: PatientExam, session: Session) -> str:
        e = p.exam
        study = html.escape(e.study_uid)
        report = '<span class="muted">pas de compte rendu</span>'
        if e.report:
            report = f'<a href="/patient/reports/{quote(e.report.unique_id)}">Lire</a>'
        if e.instance_count and e.kos:
            images = (f'<a class="button" href="{html.escape(self.viewer_url)}?StudyInstanceUIDs='
                      f'{study}">Voir les images</a>' if self.viewer_url else "")  # fmt: skip
            images += f'<a class="button" href="/patient/api/exams/{study}/zip">Télécharger</a>'
        else:
            images = f'<span class="problem">{html.escape(e.problem)}</span>'
        if p.hidden:
            visibility = ('<span class="masque">masqué aux professionnels</span>'
                          + _post(f"/patient/exams/{study}/afficher", session,
                                  "Ne plus masquer"))  # fmt: skip
        else:
            visibility = _post(
                f"/patient/exams/{study}/masquer", session, "Masquer cet examen aux professionnels"
            )
        return (
            f"<tr><td>{e.date.strftime('%d/%m/%Y') if e.date else ''}</td>"
            f"<td>{html.escape(e.description)}<div class='muted'>{e.series_count} série(s), "
            f"{e.instance_count} image(s)</div></td>"
            f"<td>{html.escape(', '.join(e.modalities))}</td>"
            f"<td>{html.escape(', '.join(e.regions))}</td><td>{html.escape(e.site)}</td>"
            f"<td>{report}</td><td>{images}</td><td>{visibility}</td></tr>"
        )


async def _form(request: Request) -> list[tuple[str, str]]:
    try:
        return await read_form(request, limit=4096)
    except InvalidInput as exc:
        raise HttpProblem(400, str(exc)) from None


def _post(action: str, session: Session, label: str) -> str:
    """A one-button form changing something (``action`` is already escaped)."""
    return (f'<form class="inline" method="post" action="{action}">{_csrf(session)}'
            f"<button>{html.escape(label)}</button></form>")  # fmt: skip


def _csrf(session: Session) -> str:
    return f'<input type="hidden" name="csrf" value="{html.escape(session.csrf)}">'


def _name(session: Session) -> str:
    claims = session.claims
    return " ".join(str(claims.get(k, "")) for k in ("given_name", "family_name")).strip()


def _shell(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html lang="fr"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _opposition_section(opposition: tuple[bool, bool] | None, session: Session) -> str:
    head = "<h2>Accès des professionnels à mon dossier</h2>"
    if opposition is None:
        return head + '<p class="problem">Vos choix ne peuvent pas être affichés.</p>'
    opposed, break_glass = opposition
    if opposed:
        state = ("Vous vous opposez à l'accès des professionnels à votre dossier"
                 + (", y compris en urgence." if break_glass else
                    " (sauf en urgence, « bris de glace »)."))  # fmt: skip
        form = (f'<form method="post" action="/patient/opposition">{_csrf(session)}'
                '<input type="hidden" name="opposed" value="non">'
                "<button>Lever mon opposition</button></form>")  # fmt: skip
    else:
        state = "Les professionnels qui vous soignent peuvent consulter votre dossier."
        form = (f'<form method="post" action="/patient/opposition">{_csrf(session)}'
                '<input type="hidden" name="opposed" value="oui">'
                '<label><input type="checkbox" name="opposes_break_glass" value="oui"> '
                "y compris en urgence (bris de glace)</label> "
                "<button>M'opposer à l'accès des professionnels</button></form>")  # fmt: skip
    return head + f"<p>{html.escape(state)}</p>" + form


@dataclass(frozen=True, slots=True)
class _Line:
    at: datetime
    where: str
    who: str
    what: str
    outcome: str


def _when(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _trail_line(event: dict[str, Any], me: str) -> _Line | None:
    """A line of this box's trail; the patient's own readings are left out."""
    who: dict[str, Any] = next((a for a in event.get("agent", []) if a.get("requestor")), {})
    ident = who.get("who", {}).get("identifier", {}).get("value", "")
    if ident == me:
        return None
    name = who.get("name") or ident
    action = _ACTIONS.get(event.get("subtype", [{}])[0].get("code", ""), "a accédé")
    reason = ""
    for purpose in event.get("purposeOfEvent", []):
        reason = purpose.get("text", "") or reason
    detail = f" — motif : {reason}" if reason else ""
    outcome = "refusé" if event.get("outcome") not in ("0", None) else "autorisé"
    return _Line(_when(str(event.get("recorded", ""))), "cette DRIMbox", str(name),
                 action + detail, outcome)  # fmt: skip


def _index_action(action: str) -> str:
    return next((text for prefix, text in _INDEX_ACTIONS if action.startswith(prefix)), action)


def _index_line(event: IndexAccess) -> _Line | None:
    """A line of the index's log; the patient's own readings are left out, their changes
    (hiding, opposition) kept."""
    if event.actor_kind == "patient":
        if not event.action.startswith(_OWN_CHANGES):
            return None
        who = "Vous"
    elif event.actor_kind == "system":
        who = f"DRIMbox (pour {event.actor_name or event.actor_id})"
    else:
        who = event.actor_name or event.actor_id
        if event.profession:
            who += f" (profession {event.profession})"
    what = _index_action(event.action)
    if event.emergency:
        what = f"EN URGENCE : {what}" + (f" — motif : {event.reason}" if event.reason else "")
    outcome = "autorisé" if event.outcome == "granted" else "refusé"
    return _Line(_when(event.at), "index national", who, what, outcome)


def _access_section(
    events: list[dict[str, Any]], index_events: list[IndexAccess], problem: str,
    session: Session,
) -> str:  # fmt: skip
    lines = [line for line in (_trail_line(e, session.subject) for e in events) if line]
    lines += [line for line in map(_index_line, index_events) if line]
    lines.sort(key=lambda line: line.at, reverse=True)
    rows = "".join(
        f"<tr><td>{html.escape(line.at.astimezone(UTC).strftime('%d/%m/%Y %H:%M'))}</td>"
        f"<td>{html.escape(line.where)}</td><td>{html.escape(line.who)}</td>"
        f"<td>{html.escape(line.what)}</td><td>{line.outcome}</td></tr>"
        for line in lines
    )
    return (
        "<h2>Qui a accédé à mon dossier d'imagerie</h2>"
        + (f'<p class="problem">{html.escape(problem)}</p>' if problem else "")
        + "<table><tr><th>Date (UTC)</th><th>Où</th><th>Qui</th><th>Quoi</th><th>Résultat</th>"
        + "</tr>"
        + (rows or "<tr><td colspan=5>Aucun accès enregistré.</td></tr>")
        + "</table>"
        + '<p class="muted">Vos propres consultations ne sont pas listées. Les accès aux '
        "images faits depuis d'autres DRIMbox sont enregistrés par celles-ci.</p>"
    )


def _index_json(event: IndexAccess) -> dict[str, Any]:
    return {
        "at": event.at, "action": event.action, "outcome": event.outcome,
        "actor": {"kind": event.actor_kind, "id": event.actor_id, "name": event.actor_name,
                  "profession": event.profession, "structure": event.structure},
        "emergency": event.emergency, "reason": event.reason,
        "documents": list(event.documents),
    }  # fmt: skip
