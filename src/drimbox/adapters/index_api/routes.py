"""JSON read API of the index for web front ends (patient portal, professional UI).

Routes are listed once in ``ROUTES`` with their OpenAPI description; ``/api/openapi.json``
is generated from that table. The caller is resolved like the SOAP endpoint's (``caller_for``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from drimbox.adapters.index_api.history import exams_json, log_json
from drimbox.adapters.trust.index_caller import Unauthenticated
from drimbox.domain import xds
from drimbox.domain.access import CallerIdentity
from drimbox.domain.errors import InvalidInput, PeerUnavailable
from drimbox.domain.identifiers import INS_OID_TEST
from drimbox.domain.xds import AccessDenied, XdsError
from drimbox.services.index.ports import FindDocumentsQuery
from drimbox.services.index.query import QueryService

CallerFor = Callable[[Request], CallerIdentity]


def _problem(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"title": "error", "status": status, "detail": detail}, status,
                        media_type="application/problem+json")  # fmt: skip


def _patient(request: Request) -> str:
    ins = request.path_params["ins"]
    oid = request.query_params.get("oid", INS_OID_TEST)
    patient = f"{ins}^^^&{oid}&ISO^NH"
    xds.check_ins(patient)
    return patient


class IndexApi:
    def __init__(self, query: QueryService, caller_for: CallerFor) -> None:
        self.query = query
        self.caller_for = caller_for

    async def _guard(
        self, request: Request, work: Callable[[str, CallerIdentity], Any]
    ) -> Response:
        try:
            patient = _patient(request)
            caller = await run_in_threadpool(self.caller_for, request)
            data = await run_in_threadpool(work, patient, caller)
        except Unauthenticated as exc:
            return _problem(401, str(exc))
        except PeerUnavailable:
            return _problem(503, "the identity provider cannot be reached")
        except AccessDenied as exc:
            return _problem(403, str(exc))
        except (XdsError, InvalidInput) as exc:
            return _problem(400, str(exc))
        return JSONResponse(data)

    async def history(self, request: Request) -> Response:
        def work(patient: str, caller: CallerIdentity) -> Any:
            query = FindDocumentsQuery(patient, [xds.APPROVED])
            entries = self.query.find_documents(query, caller, "API history")
            return {"patientId": patient, "exams": exams_json(entries)}

        return await self._guard(request, work)

    async def access_log(self, request: Request) -> Response:
        def work(patient: str, caller: CallerIdentity) -> Any:
            return {
                "patientId": patient,
                "events": log_json(self.query.access_log(patient, caller)),
            }

        return await self._guard(request, work)

    def routes(self) -> list[Route]:
        table: list[tuple[str, Callable[[Request], Awaitable[Response]]]] = [
            ("/api/patients/{ins}/history", self.history),
            ("/api/patients/{ins}/access-log", self.access_log),
        ]
        routes = [Route(path, handler, methods=["GET"]) for path, handler in table]
        routes.append(Route("/api/openapi.json", _openapi, methods=["GET"]))
        return routes


_INS_PARAMS = [
    {"name": "ins", "in": "path", "required": True, "description": "INS (NIR + key, 15 chars)",
     "schema": {"type": "string", "pattern": "^[0-9AB]{15}$"}},
    {"name": "oid", "in": "query", "required": False, "description": "INS issuer OID",
     "schema": {"type": "string", "default": INS_OID_TEST}},
]  # fmt: skip
_ERRORS = {"400": {"description": "invalid INS"}, "403": {"description": "access refused"}}
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "drimbox index API", "version": "1"},
    "paths": {
        "/api/patients/{ins}/history": {"get": {
            "summary": "Imaging history: exams with their reports and manifests (KOS)",
            "parameters": _INS_PARAMS,
            "responses": {"200": {"description": "exams, most recent first"}, **_ERRORS},
        }},
        "/api/patients/{ins}/access-log": {"get": {
            "summary": "Who read or wrote the patient's record, most recent first",
            "parameters": _INS_PARAMS,
            "responses": {"200": {"description": "access-log events"}, **_ERRORS},
        }},
    },
}  # fmt: skip


async def _openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)
