"""The Conso's pages (French) and JSON API: a patient's imaging history, reports, import
into the site's PACS, download as a DICOM ZIP. Every call acts for the professional of the
session; an exam is reachable only once their history listing showed it."""

from __future__ import annotations

import html
import logging
import tempfile
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

from drimbox.adapters.audit.recorder import AccessRecorder, patient_ins, professional
from drimbox.adapters.conso_web.auth import SessionAuth
from drimbox.adapters.conso_web.contextual import ContextualCalls, identity_banner, read_form
from drimbox.adapters.conso_web.proxy import ConsoProxy
from drimbox.adapters.dicomweb.errors import HttpProblem
from drimbox.adapters.documents.report_html import report_html, report_pdf
from drimbox.adapters.export.dicomdir_zip import write_exam_zip
from drimbox.adapters.export.localize import LocalIdentity, localize_bytes
from drimbox.adapters.xds.client import RegistryRejected
from drimbox.domain.audit import Action, Outcome
from drimbox.domain.errors import DrimboxError, InvalidInput, NotFound
from drimbox.domain.identifiers import INS_OIDS, Ins
from drimbox.services.conso.history import Exam, HistoryService, IndexReader
from drimbox.services.conso.importer import Importer
from drimbox.services.conso.sessions import Session

log = logging.getLogger(__name__)
audit = logging.getLogger("drimbox.audit")

DEFAULT_INS_OID = "1.2.250.1.213.1.4.10"  # test INS; production NIR 1.2.250.1.213.1.4.8

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b}
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:.4rem;
text-align:left;vertical-align:top}th{background:#f3f4f6}.muted{color:#666;font-size:.85em}
.problem{color:#a40000}a.button,button{padding:.25rem .6rem;margin:.1rem}
"""


def _page(title: str, body: str) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html lang="fr"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _exam_json(exam: Exam, viewer: str) -> dict[str, Any]:
    return {
        "study_uid": exam.study_uid, "date": exam.date.isoformat() if exam.date else None,
        "description": exam.description, "modalities": list(exam.modalities),
        "regions": list(exam.regions), "site": exam.site, "series": exam.series_count,
        "instances": exam.instance_count, "accession": exam.accession,
        "kos_uid": exam.kos.unique_id if exam.kos else None,
        "report_uid": exam.report.unique_id if exam.report else None,
        "viewer_url": (f"{viewer}?StudyInstanceUIDs={exam.study_uid}"
                       if exam.instance_count else None),
        "problem": exam.problem or None,
    }  # fmt: skip


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

    def routes(self, prefix: str = "/conso") -> list[Route]:
        return [
            *self.auth.routes(prefix + "/api"),
            Route(prefix + "/", self.home, methods=["GET"]),
            Route(prefix + "/api/history", self.api_history, methods=["GET"]),
            Route(prefix + "/api/history/emergency", self.api_emergency, methods=["POST"]),
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

    async def api_history(self, request: Request) -> Response:
        ins = request.query_params.get("ins", "")
        oid = request.query_params.get("oid", DEFAULT_INS_OID)
        _, exams = await self._history(request, ins, oid)
        return JSONResponse({"exams": [_exam_json(e, self.viewer_url) for e in exams]})

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
        if self.contextual is not None and request.query_params.get("ctx"):
            call = self.contextual.get(request.query_params["ctx"])
            if call is not None and call.ins.value != ins:
                call = None  # a context for another patient is never applied
        _, exams = await self._history(request, ins, oid)
        if call is not None:
            exams = _filtered(exams, call.filters)
        ipp = html.escape(call.local_id) if call else ""
        issuer = html.escape(call.local_id_issuer) if call else ""
        rows = []
        for e in exams:
            report = '<span class="muted">pas de compte rendu</span>'
            if e.report:
                report = f'<a href="../reports/{quote(e.report.unique_id)}">Compte rendu</a>'
            if e.instance_count:
                study = html.escape(e.study_uid)
                actions = (
                    f'<a class="button" href="{self.viewer_url}?StudyInstanceUIDs={study}">'
                    f"Voir les images</a>"
                    f'<label><input type="checkbox" name="compare" value="{study}">'
                    f" comparer</label>"
                    f'<a class="button" href="../api/exams/{study}/zip">Télécharger (ZIP)</a>'
                    f'<form method="post" action="../api/exams/{study}/import">'
                    f'<input name="ipp" placeholder="IPP local" required size="10"'
                    f' value="{ipp}">'
                    f'<input name="ipp_issuer" placeholder="émetteur" size="10"'
                    f' value="{issuer}">'
                    f"<button>Importer dans le PACS</button></form>"
                )
            else:
                actions = f'<span class="problem">{html.escape(e.problem)}</span>'
            rows.append(
                f"<tr><td>{e.date.strftime('%d/%m/%Y') if e.date else ''}</td>"
                f"<td>{html.escape(', '.join(e.modalities))}</td>"
                f"<td>{html.escape(', '.join(e.regions))}</td><td>{html.escape(e.site)}</td>"
                f"<td>{html.escape(e.description)}<div class='muted'>{e.series_count} série(s),"
                f" {e.instance_count} image(s)</div></td><td>{report}</td><td>{actions}</td></tr>"
            )
        compare = (
            "<script>function comparer(){const u=[...document.querySelectorAll("
            "'input[name=compare]:checked')].map(c=>c.value);if(u.length)location.href="
            f"'{self.viewer_url}?StudyInstanceUIDs='+u.join(',')}}</script>"
            '<button onclick="comparer()">Comparer les examens cochés</button>'
        )
        banner = identity_banner(call) if call else f"<p>Patient INS {html.escape(ins)}</p>"
        body = (
            f"<h1>Historique d'imagerie</h1>{banner}"
            "<table><tr><th>Date</th><th>Modalité</th><th>Région</th><th>Site</th>"
            "<th>Examen</th><th>Compte rendu</th><th>Actions</th></tr>"
            + ("".join(rows) or "<tr><td colspan=7>Aucun examen publié.</td></tr>")
            + f"</table>{compare if exams else ''}"
        )
        return _page("Historique d'imagerie", body)

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


def _filtered(exams: list[Exam], filters: dict[str, str]) -> list[Exam]:
    """The calling software's filters (contextual call): study, modality, accession."""
    study = filters.get("StudyInstanceUID")
    modality = filters.get("Modality")
    accession = filters.get("AccessionNumber")
    return [e for e in exams
            if (not study or e.study_uid == study)
            and (not modality or modality in e.modalities)
            and (not accession or e.accession == accession)]  # fmt: skip
