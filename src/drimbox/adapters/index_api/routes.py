"""JSON API of the index for web front ends (patient portal, professional UI).

Routes are listed once in ``ENDPOINTS`` with their OpenAPI description; the routes and
``/api/openapi.json`` are both generated from that table. The caller is resolved like the
SOAP endpoint's (``caller_for``: a bearer token or a VIHF assertion); the access rules decide.

Reads: a patient's history and access log. The patient's own controls (their token only:
the rules refuse anyone else, and log it): hide an exam or a document from professionals or
show it again, and read or set their opposition to access by professionals.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from drimbox.adapters.index_api.history import exams_json, log_json
from drimbox.adapters.trust.index_caller import Unauthenticated
from drimbox.domain import xds
from drimbox.domain.access import ActorKind, CallerIdentity
from drimbox.domain.errors import InvalidInput, PeerUnavailable
from drimbox.domain.identifiers import INS_OID_TEST, is_valid_uid
from drimbox.domain.xds import AccessDenied, ErrorCode, XdsError
from drimbox.services.index.patient import PatientControls
from drimbox.services.index.ports import FindDocumentsQuery
from drimbox.services.index.query import QueryService

CallerFor = Callable[[Request], CallerIdentity]
Work = Callable[[str, CallerIdentity, dict[str, Any]], Any]

_MAX_BODY = 4096


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"title": "error", "status": status, "detail": detail}, status,
                        media_type="application/problem+json")  # fmt: skip


def _patient(request: Request) -> str:
    ins = request.path_params["ins"]
    oid = request.query_params.get("oid", INS_OID_TEST)
    patient = f"{ins}^^^&{oid}&ISO^NH"
    xds.check_ins(patient)
    return patient


def _uid(request: Request, name: str) -> str:
    value = str(request.path_params[name])
    if not is_valid_uid(value):
        raise InvalidInput(f"{name} {value[:80]!r} is not a valid UID")
    return value


async def _body(request: Request, fields: dict[str, type]) -> dict[str, Any]:
    """A small JSON object whose ``fields`` are all present with their type (no others)."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _MAX_BODY:
            raise InvalidInput("request body too large")
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        raise InvalidInput("the body must be a JSON object") from None
    if not isinstance(data, dict) or set(data) - set(fields):
        raise InvalidInput(f"the body must be a JSON object with {', '.join(fields)}")
    for name, kind in fields.items():
        if not isinstance(data.get(name), kind):
            raise InvalidInput(f"{name} must be a {kind.__name__}")
    return data


class IndexApi:
    def __init__(self, query: QueryService, caller_for: CallerFor) -> None:
        self.query = query
        self.caller_for = caller_for
        self.controls = PatientControls(query.ctx)

    async def _guard(
        self, request: Request, work: Work, body: dict[str, type] | None = None
    ) -> Response:
        try:
            patient = _patient(request)
            caller = await run_in_threadpool(self.caller_for, request)
            data = await _body(request, body) if body is not None else {}
            result = await run_in_threadpool(work, patient, caller, data)
        except Unauthenticated as exc:
            return _problem(401, str(exc))
        except PeerUnavailable:
            return _problem(503, "the identity provider cannot be reached")
        except AccessDenied as exc:
            return _problem(403, str(exc))
        except XdsError as exc:
            return _problem(404 if exc.code is ErrorCode.DOCUMENT_UNIQUE_ID else 400, str(exc))
        except InvalidInput as exc:
            return _problem(400, str(exc))
        return JSONResponse(result)

    # -- reads ----------------------------------------------------------------------------

    async def history(self, request: Request) -> Response:
        def work(patient: str, caller: CallerIdentity, _: dict[str, Any]) -> Any:
            query = FindDocumentsQuery(patient, [xds.APPROVED])
            entries = self.query.find_documents(query, caller, "API history")
            # what the patient hid is theirs to know; professionals see only what they may
            own = caller.kind is ActorKind.PATIENT
            return {"patientId": patient, "exams": exams_json(entries, with_hidden=own)}

        return await self._guard(request, work)

    async def access_log(self, request: Request) -> Response:
        def work(patient: str, caller: CallerIdentity, _: dict[str, Any]) -> Any:
            return {
                "patientId": patient,
                "events": log_json(self.query.access_log(patient, caller)),
            }

        return await self._guard(request, work)

    # -- the patient's own controls -------------------------------------------------------

    async def exam_hidden(self, request: Request) -> Response:
        study = request.path_params["study"]

        def work(patient: str, caller: CallerIdentity, body: dict[str, Any]) -> Any:
            _uid(request, "study")
            done = self.controls.hide_exam(caller, patient, study, body["hidden"])
            return {"studyInstanceUid": study, "hidden": body["hidden"], "documents": done}

        return await self._guard(request, work, {"hidden": bool})

    async def document_hidden(self, request: Request) -> Response:
        def work(patient: str, caller: CallerIdentity, body: dict[str, Any]) -> Any:
            unique_id = _uid(request, "uid")
            self.controls.hide_document(caller, unique_id, body["hidden"], patient_id=patient)
            return {"uniqueId": unique_id, "hidden": body["hidden"]}

        return await self._guard(request, work, {"hidden": bool})

    async def opposition(self, request: Request) -> Response:
        def work(patient: str, caller: CallerIdentity, _: dict[str, Any]) -> Any:
            return _opposition_json(self.controls.opposition(caller, patient))

        return await self._guard(request, work)

    async def set_opposition(self, request: Request) -> Response:
        def work(patient: str, caller: CallerIdentity, body: dict[str, Any]) -> Any:
            self.controls.set_opposition(caller, body["opposed"], body["opposesBreakGlass"],
                                         patient_id=patient)  # fmt: skip
            return {"opposed": body["opposed"], "opposesBreakGlass": body["opposesBreakGlass"]}

        return await self._guard(request, work, {"opposed": bool, "opposesBreakGlass": bool})

    def routes(self) -> list[Route]:
        routes = [
            Route(e.path, getattr(self, e.handler), methods=[e.method.upper()]) for e in ENDPOINTS
        ]
        routes.append(Route("/api/openapi.json", _openapi, methods=["GET"]))
        return routes


def _opposition_json(policy: Any) -> dict[str, bool]:
    return {"opposed": policy.opposed, "opposesBreakGlass": policy.opposes_break_glass}


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: str
    """Name of the :class:`IndexApi` method."""
    summary: str
    ok: str
    body: dict[str, Any] | None = None
    """JSON schema of the request body."""
    extra_params: tuple[dict[str, Any], ...] = ()


_INS_PARAMS = [
    {"name": "ins", "in": "path", "required": True, "description": "INS (NIR + key, 15 chars)",
     "schema": {"type": "string", "pattern": "^[0-9AB]{15}$"}},
    {"name": "oid", "in": "query", "required": False, "description": "INS issuer OID",
     "schema": {"type": "string", "default": INS_OID_TEST}},
]  # fmt: skip
_UID = {"type": "string", "pattern": r"^[0-2](\.(0|[1-9][0-9]*))+$"}
_HIDDEN = {"type": "object", "required": ["hidden"], "additionalProperties": False,
           "properties": {"hidden": {"type": "boolean"}}}  # fmt: skip
_OPPOSITION = {"type": "object", "required": ["opposed", "opposesBreakGlass"],
               "additionalProperties": False,
               "properties": {"opposed": {"type": "boolean"},
                              "opposesBreakGlass": {"type": "boolean"}}}  # fmt: skip
_PATIENT_ONLY = " (the patient's own token only; every change is in the access log)"

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("get", "/api/patients/{ins}/history", "history",
             "Imaging history: exams with their reports and manifests (KOS); for the patient, "
             "which documents they hid (hiddenByPatient)", "exams, most recent first"),
    Endpoint("get", "/api/patients/{ins}/access-log", "access_log",
             "Who read or wrote the patient's record, most recent first", "access-log events"),
    Endpoint("put", "/api/patients/{ins}/exams/{study}/hidden", "exam_hidden",
             "Hide an exam (its manifest and reports) from professionals, or show it again"
             + _PATIENT_ONLY, "the uniqueIds of the documents changed", _HIDDEN,
             ({"name": "study", "in": "path", "required": True,
               "description": "Study Instance UID", "schema": _UID},)),
    Endpoint("put", "/api/patients/{ins}/documents/{uid}/hidden", "document_hidden",
             "Hide one document from professionals, or show it again" + _PATIENT_ONLY,
             "done", _HIDDEN,
             ({"name": "uid", "in": "path", "required": True,
               "description": "document uniqueId", "schema": _UID},)),
    Endpoint("get", "/api/patients/{ins}/opposition", "opposition",
             "The patient's opposition to access by professionals" + _PATIENT_ONLY,
             "opposed, opposesBreakGlass"),
    Endpoint("put", "/api/patients/{ins}/opposition", "set_opposition",
             "Oppose (or stop opposing) access by professionals, break-glass included or not"
             + _PATIENT_ONLY, "the new choices", _OPPOSITION),
)  # fmt: skip

_ERRORS = {
    "400": {"description": "invalid INS, UID or body"},
    "401": {"description": "no credentials, or credentials that do not hold"},
    "403": {"description": "access refused by the access rules"},
    "503": {"description": "the identity provider cannot be reached"},
}


def _operation(e: Endpoint) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": e.summary,
        "parameters": [*_INS_PARAMS, *e.extra_params],
        "security": [{"bearer": []}],
        "responses": {"200": {"description": e.ok}, **_ERRORS},
    }
    if e.body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": e.body}}}  # fmt: skip
        op["responses"]["404"] = {"description": "no such exam or document in this record"}
    return op


def openapi() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for e in ENDPOINTS:
        paths.setdefault(e.path, {})[e.method] = _operation(e)
    return {
        "openapi": "3.1.0",
        "info": {"title": "drimbox index API", "version": "2"},
        "components": {"securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "the user's access token (professional or patient), checked by "
                           "introspection at the identity provider"}}},
        "paths": paths,
    }  # fmt: skip


OPENAPI: dict[str, Any] = openapi()


async def _openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)
