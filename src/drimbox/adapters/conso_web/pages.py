"""The Conso's pages (French) and JSON API: a patient's imaging history, reports, import
into the site's PACS, download as a DICOM ZIP. Every call acts for the professional of the
session; an exam is reachable only once their history listing showed it."""

from __future__ import annotations

import hmac
import html
import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

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

from drimbox.adapters.audit.recorder import AccessRecorder, patient_ins, professional
from drimbox.adapters.conso_web.auth import SessionAuth
from drimbox.adapters.conso_web.contextual import (
    ContextualCall,
    ContextualCalls,
    identity_banner,
    read_form,
)
from drimbox.adapters.conso_web.patient_auth import origin_of
from drimbox.adapters.conso_web.proxy import ConsoProxy
from drimbox.adapters.dicomweb.errors import HttpProblem
from drimbox.adapters.documents.report_html import report_html, report_pdf
from drimbox.adapters.export.dicomdir_zip import write_exam_zip
from drimbox.adapters.export.localize import LocalIdentity, localize_bytes
from drimbox.adapters.viewer.ohif import COMPARE_PROTOCOL
from drimbox.adapters.xds.client import RegistryRejected
from drimbox.domain.audit import Action, Outcome
from drimbox.domain.errors import DrimboxError, InvalidInput, NotFound
from drimbox.domain.identifiers import INS_OIDS, Ins
from drimbox.domain.timeline import (
    NOT_IMAGING,
    SimilarExam,
    TimelineFilter,
    filter_exams,
    french_day,
    imaging_kinds,
    modality_label,
    newest_first,
    parse_day,
    parse_study_date,
    region_label,
    region_parts,
    similar_recent,
)
from drimbox.services.conso.history import Exam, HistoryService, IndexReader
from drimbox.services.conso.importer import Importer
from drimbox.services.conso.sessions import Session

log = logging.getLogger(__name__)
audit = logging.getLogger("drimbox.audit")

DEFAULT_INS_OID = "1.2.250.1.213.1.4.10"  # test INS; production NIR 1.2.250.1.213.1.4.8

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1b1b1b;
background:#f6f7f9}main{max-width:1280px;margin:0 auto;padding:1.2rem 1.5rem}
h1{font-size:1.45rem;margin:.2rem 0 .8rem;color:#000091}
.banner{background:#fff;border-left:4px solid #000091;padding:.6rem .9rem;margin:0 0 1rem}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dfe2e8}
th,td{border-bottom:1px solid #e4e6eb;padding:.45rem .5rem;text-align:left;vertical-align:top}
th{background:#eef0f5;font-size:.85rem}tbody tr:hover td{background:#fafbff}
.muted{color:#5f6368;font-size:.85em}.problem{color:#a40000}
a.button,button{display:inline-block;padding:.22rem .6rem;margin:.1rem;border:1px solid #000091;
border-radius:4px;background:#fff;color:#000091;text-decoration:none;font:inherit;
font-size:.85rem;cursor:pointer}a.primary,button.primary{background:#000091;color:#fff}
.badge{display:inline-block;padding:0 .35rem;border-radius:3px;background:#e3e3fd;
color:#000091;font-weight:600;font-size:.8rem}
form.filters{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:flex-end;background:#fff;
border:1px solid #dfe2e8;border-radius:6px;padding:.7rem .9rem;margin:0 0 1rem}
form.filters label{display:flex;flex-direction:column;font-size:.8rem;color:#3a3a3a}
form.filters select,form.filters input{font:inherit;padding:.2rem}
.alert{background:#fff4e5;border:1px solid #f3b25b;border-left:5px solid #e07b00;
border-radius:4px;padding:.5rem .9rem;margin:0 0 1rem}.alert p{margin:.25rem 0}
.note{background:#eef4ff;border-left:4px solid #6a6af4;padding:.4rem .8rem;margin:0 0 1rem}
.count{margin:.4rem 0;color:#3a3a3a}.actions form{display:flex;gap:.2rem;margin-top:.25rem}
.actions input[name=ipp],.actions input[name=ipp_issuer]{font:inherit;font-size:.85rem}
details{display:inline-block;font-size:.85rem}summary{cursor:pointer;color:#000091;
padding:.22rem .4rem}details ul{margin:.3rem 0;padding-left:1.1rem}
"""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html lang="fr"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{_STYLE}</style></head><body><main>{body}</main></body></html>",
        status_code=status,
    )


def _exam_json(exam: Exam, viewer: str, reports: str = "/conso/reports") -> dict[str, Any]:
    return {
        "study_uid": exam.study_uid, "date": exam.date.isoformat() if exam.date else None,
        "description": exam.description, "modalities": list(exam.modalities),
        "regions": list(exam.regions), "site": exam.site, "series": exam.series_count,
        "instances": exam.instance_count, "accession": exam.accession,
        "kos_uid": exam.kos.unique_id if exam.kos else None,
        "report_uid": exam.report.unique_id if exam.report else None,
        "report_url": (f"{reports}/{quote(exam.report.unique_id)}"
                       if exam.report else None),
        "viewer_url": (f"{viewer}?StudyInstanceUIDs={exam.study_uid}"
                       if exam.instance_count else None),
        "problem": exam.problem or None,
    }  # fmt: skip


def _warning_json(warning: SimilarExam[Exam]) -> dict[str, Any]:
    exam = warning.exam
    return {"study_uid": exam.study_uid, "date": exam.date.isoformat() if exam.date else None,
            "modality": warning.modality, "regions": list(warning.regions),
            "days_ago": warning.days_ago, "window_days": warning.window_days,
            "message": warning.message}  # fmt: skip


# -- the timeline's filters ------------------------------------------------------------------

FORM_NAMES = ("modality", "region", "site", "from", "to")
"""The filter form's query parameters (``from``/``to``: AAAA-MM-JJ, inclusive)."""
CALL_NAMES = {"Modality": "modality", "AnatomicRegion": "region",
              "StudyInstanceUID": "study_uid", "AccessionNumber": "accession"}  # fmt: skip
"""The contextual call's filters (``contextual.OPTIONAL``, with ``StudyDate``, a DICOM date
or range), accepted in the query too so that a calling software may link here directly."""


def timeline_filter(
    query: Mapping[str, str], call_filters: Mapping[str, str] | None = None
) -> tuple[TimelineFilter, list[str]]:
    """The filter a request asks for, and notes (French) on what of the call was ignored.

    The contextual call's filters apply on landing only: once the request names any filter
    (the form sends them all, empty ones too), the request alone decides, so the professional
    can widen what the calling software narrowed. ``InvalidInput`` for a malformed date the
    request gave; a malformed date from the calling software is ignored with a note (the
    patient must still open)."""
    own = any(n in query for n in (*FORM_NAMES, *CALL_NAMES, "StudyDate"))
    from_call = bool(call_filters) and not own
    source = call_filters if from_call and call_filters else query
    fields: dict[str, Any] = {f: source[n].strip() for n, f in CALL_NAMES.items() if n in source}
    notes: list[str] = []
    if source.get("StudyDate", "").strip():
        try:
            fields["date_from"], fields["date_to"] = parse_study_date(source["StudyDate"])
        except InvalidInput as exc:
            if not from_call:
                raise
            notes.append(f"Date transmise par le logiciel appelant ignorée ({exc}).")
    if not from_call:
        fields.update({n: query[n].strip() for n in ("modality", "region", "site") if n in query})
        for name, field, what in (("from", "date_from", "date de début"),
                                  ("to", "date_to", "date de fin")):  # fmt: skip
            if name in query:
                text = query[name].strip()
                fields[field] = parse_day(text, what) if text else None
    return TimelineFilter(**fields), notes


@dataclass(frozen=True, slots=True)
class Timeline:
    """A patient's history as one request asked to see it."""

    exams: list[Exam]
    """Everything the index holds for the patient, newest first."""
    shown: list[Exam]
    which: TimelineFilter
    warnings: list[SimilarExam[Exam]]
    notes: list[str]

    @property
    def message(self) -> str:
        if not self.exams:
            return "Aucun examen publié pour ce patient."
        if not self.shown:
            return "Aucun examen ne correspond aux filtres."
        return ""


def _options(values: list[tuple[str, str]], selected: str, everything: str) -> str:
    """``<option>``s of (value, label), the selected value kept even when unknown here."""
    known = dict(values)
    if selected and selected not in known:
        known[selected] = selected
    out = [f'<option value="">{everything}</option>']
    for value, label in known.items():
        chosen = " selected" if value == selected else ""
        out.append(f'<option value="{html.escape(value)}"{chosen}>{html.escape(label)}</option>')
    return "".join(out)


def _kind(exam: Exam) -> str:
    codes = [m for m in exam.modalities if m not in NOT_IMAGING] or list(exam.modalities)
    return " ".join(
        f'<span class="badge" title="{html.escape(modality_label(m))}">{html.escape(m)}</span>'
        for m in codes
    )


def _label(exam: Exam) -> str:
    """ "06/05/2015 — scanner tête (site)": an exam named in a list."""
    kinds = ", ".join(dict.fromkeys(map(modality_label, sorted(imaging_kinds(exam.modalities)))))
    regions = ", ".join(dict.fromkeys(region_label(r) for r in exam.regions if r.strip()))
    when = french_day(exam.date) if exam.date else "date inconnue"
    site = f" ({exam.site})" if exam.site else ""
    return f"{when} — {kinds or ', '.join(exam.modalities)} {regions}".rstrip() + site


MAX_PRIORS = 12


def _comparable(exam: Exam, exams: list[Exam]) -> list[Exam]:
    """Other exams with images to compare ``exam`` with: same kind of imaging or same region
    first (the priors a radiologist looks for), then the others, newest first."""
    kinds, parts = imaging_kinds(exam.modalities), _parts(exam)
    others = [e for e in exams if e.instance_count and e.study_uid != exam.study_uid]
    alike = [e for e in others if imaging_kinds(e.modalities) & kinds or _parts(e) & parts]
    rest = [e for e in others if e not in alike]
    return (alike + rest)[:MAX_PRIORS]


def _parts(exam: Exam) -> frozenset[str]:
    return frozenset().union(*(region_parts(r) for r in exam.regions))


def _filter_form(timeline: Timeline, keep: dict[str, str]) -> str:
    which, exams = timeline.which, timeline.exams
    modalities = sorted({m for e in exams for m in e.modalities if m not in NOT_IMAGING})
    regions = {r: region_label(r) for e in exams for r in e.regions if r.strip()}
    sites = sorted({e.site for e in exams if e.site})
    hidden = {**keep, "StudyInstanceUID": which.study_uid, "AccessionNumber": which.accession}
    fields = "".join(f'<input type="hidden" name="{k}" value="{html.escape(v)}">'
                     for k, v in hidden.items() if v)  # fmt: skip
    asked = []
    if which.study_uid or which.accession:  # a calling software asked for one exam
        asked.append("Examen demandé par le logiciel appelant uniquement.")
    clear = html.escape("?" + urlencode({**keep, "modality": ""}))
    modality_options = [(m, f"{m} — {modality_label(m)}") for m in modalities]
    region_options = sorted(regions.items(), key=lambda kv: kv[1])
    start = which.date_from.isoformat() if which.date_from else ""
    end = which.date_to.isoformat() if which.date_to else ""
    return (
        f'<form class="filters" method="get">{fields}'
        f"<label>Modalité<select name='modality'>"
        f"{_options(modality_options, which.modality, 'Toutes')}"
        f"</select></label><label>Région<select name='region'>"
        f"{_options(region_options, which.region, 'Toutes')}"
        f"</select></label><label>Site<select name='site'>"
        f"{_options([(s, s) for s in sites], which.site, 'Tous')}</select></label>"
        f"<label>Du<input type='date' name='from' value='{start}'></label>"
        f"<label>Au<input type='date' name='to' value='{end}'></label>"
        f"<button class='primary'>Filtrer</button>"
        f"<a class='button' href='{clear}'>Effacer les filtres</a>"
        + "".join(f"<span class='muted'>{a}</span>" for a in asked)
        + "</form>"
    )


def _warnings_html(timeline: Timeline) -> str:
    if not timeline.warnings:
        return ""
    shown = {e.study_uid for e in timeline.shown}
    items = []
    for warning in timeline.warnings:
        text = html.escape(warning.message)
        uid = warning.exam.study_uid
        if uid in shown:
            text += f' — <a href="#examen-{html.escape(uid)}">voir dans la liste</a>'
        items.append(f"<p>⚠ {text}</p>")
    return (
        '<div class="alert" role="alert"><strong>Attention, examen redondant possible</strong>'
        + "".join(items)
        + "</div>"
    )


class ConsoPages:
    def __init__(
        self,
        auth: SessionAuth,
        history: HistoryService,
        index: IndexReader,
        proxy: ConsoProxy,
        importer: Importer,
        *,
        viewer_url: str = "/viewer/viewer",
        workdir: Path,
    ) -> None:
        self.auth, self.history, self.index, self.proxy = auth, history, index, proxy
        self.importer = importer
        self.viewer_url = viewer_url
        self.workdir = workdir
        self.login_url = ""  # set when an OpenID provider is configured
        self.recorder: AccessRecorder | None = None
        self.contextual: ContextualCalls | None = None
        self.today: Callable[[], date] = date.today  # "recent" is counted from this day
        self.prefix = "/conso"

    def routes(self, prefix: str = "/conso") -> list[Route]:
        self.prefix = prefix
        return [
            *self.auth.routes(prefix + "/api"),
            Route(prefix + "/", self.home, methods=["GET"]),
            Route(prefix + "/api/history", self.api_history, methods=["GET"]),
            Route(prefix + "/api/history/emergency", self.api_emergency, methods=["POST"]),
            Route(prefix + "/patients/{ins}/urgence", self.emergency_page, methods=["POST"]),
            Route(prefix + "/patients/{ins}", self.history_page, methods=["GET"]),
            Route(prefix + "/reports/{uid}", self.report_page, methods=["GET"]),
            Route(prefix + "/reports/{uid}/pdf", self.report_file, methods=["GET"]),
            Route(prefix + "/api/exams/{study}/import", self.start_import, methods=["POST"]),
            Route(prefix + "/api/imports/{job}", self.import_status, methods=["GET"]),
            Route(prefix + "/api/exams/{study}/zip", self.download_zip, methods=["GET"]),
        ]

    def _record(
        self, session: Session, action: Action, patient: Ins | None, request: Request, *,
        study_uid: str = "", document_id: str = "", detail: str = "",
        outcome: Outcome = Outcome.SUCCESS, emergency_reason: str = "",
    ) -> None:  # fmt: skip
        if self.recorder is not None:
            ip = request.client.host if request.client else ""
            self.recorder.record(professional(session.subject, session.claims), action, patient,
                                 study_uid=study_uid, document_id=document_id, detail=detail,
                                 client_ip=ip, outcome=outcome,
                                 emergency_reason=emergency_reason)  # fmt: skip

    # -- history --------------------------------------------------------------------------

    async def _history(
        self, request: Request, ins: str, oid: str, emergency_reason: str = ""
    ) -> tuple[Session, list[Exam]]:
        session = await self.auth.require(request)
        try:
            patient = Ins.parse(ins, oid)
        except InvalidInput as exc:
            raise HttpProblem(400, str(exc)) from None
        patient_id = f"{patient.value}^^^&{patient.oid}&ISO^NH"
        try:
            exams = await run_in_threadpool(self.history.history, patient_id,
                                            session.access_token, emergency_reason)  # fmt: skip
        except RegistryRejected as exc:
            self._record(session, Action.HISTORY_LIST, patient, request,
                         detail=f"refusé par l'index: {exc}", outcome=Outcome.REFUSED,
                         emergency_reason=emergency_reason)  # fmt: skip
            raise HttpProblem(403, f"l'index refuse l'accès: {exc}") from None
        except DrimboxError as exc:
            log.warning("history of a patient failed: %s", exc)
            raise HttpProblem(502, "l'index national ne répond pas, réessayez") from None
        granted = {e.study_uid: e.kos.unique_id for e in exams if e.kos and e.instance_count}
        documents = {e.report.unique_id: (e.report.repository, patient.value, patient.oid)
                     for e in exams if e.report}  # fmt: skip
        self.auth.store.grant(session, patient.value, granted, documents)
        self._record(session, Action.EMERGENCY_ACCESS if emergency_reason else Action.HISTORY_LIST,
                     patient, request, detail=f"{len(exams)} examen(s)",
                     emergency_reason=emergency_reason)  # fmt: skip
        return session, exams

    async def _timeline(
        self, request: Request, ins: str, oid: str, which: TimelineFilter, notes: list[str],
        emergency_reason: str = "",
    ) -> Timeline:  # fmt: skip
        """The history filtered, with the similar recent exams (looked for over the whole
        history: a date or site filter must not hide a recent exam)."""
        _, exams = await self._history(request, ins, oid, emergency_reason)
        exams = newest_first(exams)
        warnings = similar_recent(exams, self.today(), which.modality, which.region)
        return Timeline(exams, filter_exams(exams, which), which, warnings, notes)

    async def api_history(self, request: Request) -> Response:
        ins = request.query_params.get("ins", "")
        oid = request.query_params.get("oid", DEFAULT_INS_OID)
        try:
            which, notes = timeline_filter(request.query_params)
        except InvalidInput as exc:
            raise HttpProblem(400, f"filtre invalide : {exc}") from None
        timeline = await self._timeline(request, ins, oid, which, notes)
        return JSONResponse({
            "exams": [_exam_json(e, self.viewer_url, f"{self.prefix}/reports")
                      for e in timeline.shown],
            "total": len(timeline.exams),
            "filters": {"modality": which.modality, "region": which.region, "site": which.site,
                        "from": which.date_from.isoformat() if which.date_from else None,
                        "to": which.date_to.isoformat() if which.date_to else None,
                        "study_uid": which.study_uid, "accession": which.accession},
            "warnings": [_warning_json(w) for w in timeline.warnings],
            "message": timeline.message or None,
        })  # fmt: skip

    async def home(self, request: Request) -> Response:
        body = (
            "<h1>DRIMbox</h1><form method='get' onsubmit=\"location.href='patients/'+"
            "encodeURIComponent(this.ins.value);return false\">"
            "<label>INS du patient <input name='ins' required pattern='[0-9AB]{15}'></label>"
            "<button>Voir l'historique d'imagerie</button></form>"
            + (f"<p><a href='{self.login_url}'>Se connecter avec Pro Santé Connect</a></p>"
               if self.login_url else "")
        )  # fmt: skip
        return _page("DRIMbox", body)

    async def api_emergency(self, request: Request) -> Response:
        """ "Bris de glace": the history in a declared emergency, with its reason (required,
        checked by the index against the patient's choices, flagged in both trails)."""
        try:
            form = await request.json()
        except ValueError:
            raise HttpProblem(400, "corps JSON attendu: ins, oid, reason") from None
        reason = str(form.get("reason", "")).strip() if isinstance(form, dict) else ""
        if not reason:
            raise HttpProblem(400, "l'accès en urgence exige un motif")
        ins, oid = str(form.get("ins", "")), str(form.get("oid", DEFAULT_INS_OID))
        _, exams = await self._history(request, ins, oid, emergency_reason=reason)
        return JSONResponse({"exams": [_exam_json(e, self.viewer_url) for e in exams],
                             "emergency": True})  # fmt: skip

    async def history_page(self, request: Request) -> Response:
        if self.login_url and await self.auth.current(request) is None:
            back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{self.login_url}?next={quote(back)}", 303)
        ins = request.path_params["ins"]
        oid = request.query_params.get("oid", DEFAULT_INS_OID)
        if oid not in INS_OIDS:
            raise HttpProblem(400, "OID d'INS inconnu")
        call = None
        ctx = request.query_params.get("ctx", "")
        if self.contextual is not None and ctx:
            call = self.contextual.get(ctx)
            if call is not None and call.ins.value != ins:
                call = None  # a context for another patient is never applied
        try:
            which, notes = timeline_filter(request.query_params, call.filters if call else None)
        except InvalidInput as exc:
            back = f"?{urlencode({'oid': oid, 'ctx': ctx} if call else {'oid': oid})}"
            return _page("Filtre invalide", f"<h1>Historique d'imagerie</h1><p class='problem'>"
                         f"Filtre invalide : {html.escape(str(exc))}</p><p><a class='button' "
                         f"href='{html.escape(back)}'>Revenir à l'historique</a></p>",
                         status=400)  # fmt: skip
        try:
            timeline = await self._timeline(request, ins, oid, which, notes)
        except HttpProblem as exc:
            if exc.status != 403:
                raise
            return await self._refused_page(request, ins, oid, str(exc.detail))
        return self._timeline_page(timeline, ins, oid, ctx, call)

    async def _refused_page(self, request: Request, ins: str, oid: str, why: str) -> Response:
        """The index refused (the patient opposed access): say so, and offer the declared
        emergency access ("bris de glace") with its mandatory reason."""
        session = await self.auth.require(request)
        action = f"{self.prefix}/patients/{quote(ins)}/urgence"
        body = (
            "<h1>Historique d'imagerie</h1>"
            f"<div class='banner'>Patient INS {html.escape(ins)}</div>"
            "<p class='problem'>Accès refusé : le patient s'est opposé à l'accès des "
            "professionnels à son dossier, ou l'index national refuse cet accès.</p>"
            f"<p class='muted'>{html.escape(why)}</p>"
            "<h2>Accès en urgence (bris de glace)</h2>"
            "<p>En cas d'urgence, si l'état du patient l'exige, vous pouvez déclarer un accès "
            "en urgence. Il est tracé, signalé au patient, et refusé si le patient s'y est "
            "aussi opposé.</p>"
            f'<form method="post" action="{html.escape(action)}">'
            f'<input type="hidden" name="oid" value="{html.escape(oid)}">'
            f'<input type="hidden" name="csrf" value="{html.escape(session.csrf)}">'
            '<p><label>Motif (obligatoire)<br><textarea name="reason" required minlength="3" '
            'maxlength="500" rows="3" cols="60"></textarea></label></p>'
            "<button>Accéder en urgence</button></form>"
        )
        return _page("Accès refusé", body, status=403)

    async def emergency_page(self, request: Request) -> Response:
        """The history page in a declared emergency: a form of this site (Origin and the
        session's token), the reason required; the index decides."""
        session = await self.auth.require(request)
        fields = dict(await read_form(request))
        origin = request.headers.get("origin") or origin_of(request.headers.get("referer"))
        own = {origin_of(str(request.base_url)), origin_of(self.proxy.users_url)} - {""}
        sent = fields.get("csrf", "")
        if (
            (origin and origin not in own)
            or not sent
            or not hmac.compare_digest(sent.encode(), session.csrf.encode())
        ):
            raise HttpProblem(403, "requête refusée : formulaire expiré, rechargez la page")
        ins = request.path_params["ins"]
        oid = fields.get("oid", DEFAULT_INS_OID)
        reason = " ".join(fields.get("reason", "").split())
        if len(reason) < 3:
            return _page("Motif requis", "<h1>Accès en urgence</h1><p class='problem'>"
                         "L'accès en urgence exige un motif.</p>", status=400)  # fmt: skip
        which, notes = timeline_filter({})
        try:
            timeline = await self._timeline(request, ins, oid, which, notes, reason[:500])
        except HttpProblem as exc:
            if exc.status != 403:
                raise
            return _page("Accès refusé", "<h1>Accès en urgence refusé</h1><p class='problem'>"
                         f"{html.escape(str(exc.detail))}</p>", status=403)  # fmt: skip
        notice = ("<p class='problem'>Accès en urgence déclaré (motif : "
                  f"{html.escape(reason[:500])}) : tracé et signalé au patient.</p>")  # fmt: skip
        return self._timeline_page(timeline, ins, oid, "", None, notice)

    def _timeline_page(
        self, timeline: Timeline, ins: str, oid: str, ctx: str, call: ContextualCall | None,
        notice: str = "",
    ) -> HTMLResponse:  # fmt: skip
        keep = {"oid": oid, **({"ctx": ctx} if call else {})}
        banner = identity_banner(call) if call else (
            f"<div class='banner'>Patient INS {html.escape(ins)}</div>")  # fmt: skip
        shown = timeline.shown
        count = (f"{len(shown)} examen(s) sur {len(timeline.exams)}" if timeline.which.active
                 else f"{len(shown)} examen(s)")  # fmt: skip
        table = (
            "<table><thead><tr><th>Date</th><th>Modalité</th><th>Région</th><th>Site</th>"
            "<th>Examen</th><th>Compte rendu</th><th>Actions</th></tr></thead><tbody>"
            + ("".join(self._row(e, timeline, call) for e in shown)
               or f"<tr><td colspan=7>{html.escape(timeline.message)}</td></tr>")
            + "</tbody></table>"
        )  # fmt: skip
        compare = (
            f'<form id="comparer" method="get" action="{self.viewer_url}">'
            f'<input type="hidden" name="hangingProtocolId" value="{COMPARE_PROTOCOL}">'
            "<button>Comparer les examens cochés</button></form>"
            if any(e.instance_count for e in shown) else ""
        )  # fmt: skip
        body = (
            f"<h1>Historique d'imagerie</h1>{notice}{banner}"
            + _filter_form(timeline, keep)
            + "".join(f"<p class='note'>{html.escape(n)}</p>" for n in timeline.notes)
            + _warnings_html(timeline)
            + f"<p class='count'>{count}</p>{table}{compare}"
        )
        return _page("Historique d'imagerie", body)

    def _viewer(self, *studies: str) -> str:
        url = f"{self.viewer_url}?StudyInstanceUIDs={quote(','.join(studies), safe=',')}"
        if len(studies) > 1:  # OHIF lays two studies side by side only with this protocol
            url += f"&hangingProtocolId={quote(COMPARE_PROTOCOL, safe='@/')}"
        return url

    def _row(self, exam: Exam, timeline: Timeline, call: ContextualCall | None) -> str:
        report = '<span class="muted">pas de compte rendu</span>'
        if exam.report:
            report = f'<a href="../reports/{quote(exam.report.unique_id)}">Compte rendu</a>'
        if exam.instance_count:
            actions = self._actions(exam, timeline, call)
        else:
            actions = f'<span class="problem">{html.escape(exam.problem)}</span>'
        regions = ", ".join(dict.fromkeys(region_label(r) for r in exam.regions if r.strip()))
        accession = (f" — n° d'examen {html.escape(exam.accession)}"
                     if exam.accession else "")  # fmt: skip
        return (
            f'<tr id="examen-{html.escape(exam.study_uid)}">'
            f"<td>{french_day(exam.date) if exam.date else '—'}</td><td>{_kind(exam)}</td>"
            f"<td>{html.escape(regions) or '—'}</td><td>{html.escape(exam.site) or '—'}</td>"
            f"<td>{html.escape(exam.description)}<div class='muted'>{exam.series_count} série(s),"
            f" {exam.instance_count} image(s){accession}</div></td><td>{report}</td>"
            f"<td class='actions'>{actions}</td></tr>"
        )

    def _actions(self, exam: Exam, timeline: Timeline, call: ContextualCall | None) -> str:
        study = html.escape(exam.study_uid)
        ipp = html.escape(call.local_id) if call else ""
        issuer = html.escape(call.local_id_issuer) if call else ""
        priors = _comparable(exam, timeline.exams)
        compare = ""
        if priors:
            links = "".join(
                f'<li><a href="{html.escape(self._viewer(exam.study_uid, p.study_uid))}">'
                f"{html.escape(_label(p))}</a></li>"
                for p in priors
            )
            compare = f"<details><summary>Comparer avec…</summary><ul>{links}</ul></details>"
        return (
            f'<a class="button primary" href="{html.escape(self._viewer(exam.study_uid))}">'
            f"Voir</a>{compare}"
            f'<a class="button" href="../api/exams/{study}/zip">Télécharger</a>'
            f'<label class="muted"><input type="checkbox" form="comparer"'
            f' name="StudyInstanceUIDs" value="{study}"> sélectionner</label>'
            f'<form method="post" action="../api/exams/{study}/import">'
            f'<input name="ipp" placeholder="IPP local" required size="10" value="{ipp}">'
            f'<input name="ipp_issuer" placeholder="émetteur" size="10" value="{issuer}">'
            "<button>Importer dans mon PACS</button></form>"
        )

    # -- reports --------------------------------------------------------------------------

    async def _report(self, request: Request) -> tuple[Session, bytes]:
        session = await self.auth.require(request)
        uid = request.path_params["uid"]
        listed = session.documents.get(uid)
        if listed is None:
            raise NotFound("ce compte rendu n'a pas été listé dans votre session")
        repository, ins, oid = listed
        found = await run_in_threadpool(self._retrieve, session, repository, uid)
        if uid not in found:
            raise NotFound("l'index ne fournit plus ce compte rendu")
        self._record(session, Action.REPORT_READ, patient_ins(ins, oid), request,
                     document_id=uid)  # fmt: skip
        return session, found[uid]

    def _retrieve(self, session: Session, repository: str, uid: str) -> dict[str, bytes]:
        with self.index.on_behalf_of(session.access_token):
            return self.index.retrieve(repository, [uid])

    async def report_page(self, request: Request) -> Response:
        _, cda = await self._report(request)
        pdf = f"{quote(request.path_params['uid'])}/pdf" if report_pdf(cda) else None
        return _page("Compte rendu", report_html(cda, pdf_url=pdf))

    async def report_file(self, request: Request) -> Response:
        _, cda = await self._report(request)
        pdf = report_pdf(cda)
        if pdf is None:
            raise NotFound("ce compte rendu n'a pas de PDF")
        disposition = {"Content-Disposition": "inline; filename=compte-rendu.pdf"}
        return Response(pdf, media_type="application/pdf", headers=disposition)

    # -- import and download --------------------------------------------------------------

    async def _exam_items(self, request: Request) -> tuple[Session, Any, Any, list[Any]]:
        study = request.path_params["study"]
        session = await self.auth.require(request)
        kos_uid = session.exams.get(study)
        if kos_uid is None:
            raise NotFound("cet examen n'a pas été listé dans votre session")
        manifest = self.proxy.book.get(kos_uid)
        remote = self.proxy.remote_for(session, manifest, kos_uid)
        items = [(s.series_uid, i.sop_instance_uid) for s, i in manifest.instances()]
        return session, manifest, remote, items

    async def start_import(self, request: Request) -> Response:
        session, manifest, remote, items = await self._exam_items(request)
        form: Any
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                form = await request.json()
            else:
                form = dict(await read_form(request))
        except (ValueError, InvalidInput) as exc:
            raise HttpProblem(400, f"demande illisible : {exc}") from None
        if not isinstance(form, dict):
            raise HttpProblem(400, "demande illisible")
        ipp = str(form.get("ipp", "")).strip()
        issuer = str(form.get("ipp_issuer", "")).strip()
        if not ipp:
            raise HttpProblem(400, "l'IPP local est obligatoire")
        try:
            who = LocalIdentity(ipp=ipp, ipp_issuer=issuer, ins=manifest.patient.ins,
                                ins_oid=manifest.patient.ins_oid or DEFAULT_INS_OID)  # fmt: skip
        except InvalidInput as exc:
            raise HttpProblem(400, str(exc)) from None

        def localize(data: bytes) -> bytes:
            return bytes(localize_bytes(data, who))

        job = self.importer.start(manifest.study.study_uid, remote.kos_uid, items, ipp,
                                  session.subject, localize, remote)  # fmt: skip
        self._record(session, Action.IMAGES_IMPORT, _ins_of(manifest), request,
                     study_uid=manifest.study.study_uid, detail=f"IPP local {ipp}")  # fmt: skip
        if "text/html" in request.headers.get("accept", ""):
            return _page("Import", f"<p>Import lancé ({job.total} images).</p><p><a href="
                         f'"../../imports/{job.id}">Suivre la progression</a></p>')  # fmt: skip
        return JSONResponse(job.as_dict(), status_code=202,
                            headers={"Location": f"../../imports/{job.id}"})  # fmt: skip

    async def import_status(self, request: Request) -> Response:
        session = await self.auth.require(request)
        try:
            job = self.importer.job(int(request.path_params["job"]))
        except ValueError:
            job = None
        if job is None or job.study_uid not in session.exams:
            raise NotFound("pas d'import de ce numéro dans votre session")
        return JSONResponse(job.as_dict())

    async def download_zip(self, request: Request) -> Response:
        session, manifest, remote, items = await self._exam_items(request)
        study = manifest.study.study_uid
        images = self.proxy.images
        hits, misses = await run_in_threadpool(images.cached, study, items)

        def build() -> Path:
            files = [p for _, p in hits]
            files += [p for _, p in images.arrivals(study, misses, remote)]
            fd, name = tempfile.mkstemp(dir=self.workdir, suffix=".zip")
            readme = (f"Examen {study} du patient INS {manifest.patient.ins}\n"
                      f"Exporté par DRIMbox pour {session.subject}.\n")  # fmt: skip
            try:
                with open(fd, "wb") as handle:
                    write_exam_zip(files, handle, readme=readme, tmp_dir=self.workdir)
            except BaseException:
                Path(name).unlink(missing_ok=True)
                raise
            return Path(name)

        path = await run_in_threadpool(build)
        self._record(session, Action.IMAGES_DOWNLOAD, _ins_of(manifest), request,
                     study_uid=study)  # fmt: skip
        name = f"examen-{(manifest.study.date or '')!s}-{study[-12:]}.zip"
        return FileResponse(path, media_type="application/zip", filename=name,
                            background=BackgroundTask(path.unlink, missing_ok=True))  # fmt: skip


def _ins_of(manifest: Any) -> Ins | None:
    return patient_ins(manifest.patient.ins, manifest.patient.ins_oid)
