"""Our errors as HTTP problems (RFC 9457): the one table for DICOMweb."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from drimbox.adapters.dicomweb.media_types import NotAcceptable
from drimbox.adapters.dicomweb.multipart import MultipartError
from drimbox.adapters.storage.dicom_index import QueryError
from drimbox.adapters.trust.peer_tls import PeerRefused
from drimbox.domain.errors import Conflict, InvalidInput, NotFound, PeerUnavailable
from drimbox.services.source.images import InstanceUnavailable

log = logging.getLogger(__name__)

_TABLE: list[tuple[type[BaseException], int, str]] = [
    (NotFound, 404, "Not Found"),
    (InstanceUnavailable, 410, "Gone"),
    (PeerUnavailable, 503, "Service Unavailable"),
    (PeerRefused, 403, "Forbidden"),
    (NotAcceptable, 406, "Not Acceptable"),
    (Conflict, 409, "Conflict"),
    (MultipartError, 400, "Bad Request"),
    (QueryError, 400, "Bad Request"),
    (InvalidInput, 400, "Bad Request"),
]


class HttpProblem(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


def problem(
    status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type="application/problem+json",
        headers=headers,
    )


async def handle_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, HttpProblem):
        return problem(exc.status, _title(exc.status), exc.detail, exc.headers)
    for cls, status, title in _TABLE:
        if isinstance(exc, cls):
            return problem(status, title, str(exc))
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "Internal Server Error", "unexpected error; see the server log")


def _title(status: int) -> str:
    from http import HTTPStatus

    return HTTPStatus(status).phrase


# one entry per class we answer on purpose: a handler registered for ``Exception`` only
# (Starlette's server-error path) answers and then re-raises, which makes uvicorn log a
# traceback and drop the keep-alive connection
EXCEPTION_HANDLERS = {
    Exception: handle_error,
    HttpProblem: handle_error,
    **{cls: handle_error for cls, _, _ in _TABLE},
}
