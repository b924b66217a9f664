"""The XDS SOAP endpoint: one table from WS-Addressing action to transaction handler.

``/registry`` and ``/repository`` (the DMP's service names) and ``/xds`` all dispatch on
the Action, so a client may post any transaction to any of them.

Caller identity: until the trust layer verifies VIHF assertions and tokens, every SOAP call
runs as the configured default caller (``[index.default_caller]``); no header is read, so a
client cannot claim an identity. Replace ``caller_for`` to plug real authentication in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lxml import etree
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from drimbox.adapters.trust.index_caller import Unauthenticated
from drimbox.adapters.xds import (
    iti18_registry_stored_query,
    iti41_provide_and_register,
    iti43_retrieve_document_set,
    iti57_update_document_set,
    mtom,
    soap,
)
from drimbox.adapters.xds.context import Call, Reply, XdsServices
from drimbox.domain.access import CallerIdentity
from drimbox.domain.errors import PeerUnavailable


@dataclass(frozen=True, slots=True)
class Transaction:
    response_action: str
    handle: Callable[[XdsServices, Call], Reply]
    failure: Callable[[BaseException, Call], Reply]


TRANSACTIONS: dict[str, Transaction] = {
    module.ACTION: Transaction(module.RESPONSE_ACTION, module.handle, module.failure)
    for module in (
        iti41_provide_and_register,
        iti18_registry_stored_query,
        iti43_retrieve_document_set,
        iti57_update_document_set,
    )
}


class BodyTooLarge(Exception):
    pass


async def read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _fault(reason: str, status: int, subcode: str = "") -> Response:
    body = soap.serialize(soap.fault(reason, "Sender" if status < 500 else "Receiver", subcode))
    return Response(body, status, media_type=soap.SOAP_MEDIA)


def _execute(tx: Transaction, services: XdsServices, call: Call) -> Reply:
    try:
        return tx.handle(services, call)
    except Exception as exc:  # every failure is answered in the transaction's own terms
        return tx.failure(exc, call)


def _respond(tx: Transaction, request: soap.SoapRequest, reply: Reply, as_mtom: bool) -> Response:
    body = soap.serialize(soap.envelope(tx.response_action, request.message_id, reply.payload))
    if not (as_mtom or reply.attachments):
        media = f'{soap.SOAP_MEDIA}; charset=UTF-8; action="{tx.response_action}"'
        return Response(body, media_type=media)
    content_type, data = mtom.pack(body, tx.response_action, reply.attachments)
    return Response(data, headers={"content-type": content_type})


class SoapEndpoint:
    def __init__(
        self,
        services: XdsServices,
        caller_for: Callable[[Request, etree._Element | None], CallerIdentity],
        max_body_bytes: int,
    ) -> None:
        self.services = services
        self.caller_for = caller_for
        self.max_body_bytes = max_body_bytes

    async def handle(self, request: Request) -> Response:
        try:
            body = await read_limited(request, self.max_body_bytes)
            package = mtom.unpack(request.headers.get("content-type", ""), body)
            envelope = soap.read_envelope(soap.parse_xml(package.root), package.action)
        except BodyTooLarge:
            return _fault(f"the request exceeds {self.max_body_bytes} bytes", 413)
        except ClientDisconnect:
            return Response(status_code=400)
        except soap.SoapFault as exc:
            return _fault(exc.reason, 400, exc.subcode)
        tx = TRANSACTIONS.get(envelope.action)
        if tx is None:
            return _fault(
                f"action {envelope.action[:200]} is not supported", 400, "wsa:ActionNotSupported"
            )
        try:
            # the VIHF assertion, if any, is in the header: verified before anything is done
            caller = await run_in_threadpool(self.caller_for, request, envelope.header)
        except Unauthenticated as exc:
            return _fault(str(exc), 401, "wsse:FailedAuthentication")
        except PeerUnavailable as exc:
            return _fault(f"cannot authenticate now: {exc}", 503)
        call = Call(envelope.body, package.attachments, caller, envelope.message_id)
        reply = await run_in_threadpool(_execute, tx, self.services, call)
        return _respond(tx, envelope, reply, package.multipart)


def soap_routes(endpoint: SoapEndpoint) -> list[Route]:
    return [
        Route(path, endpoint.handle, methods=["POST"])
        for path in ("/registry", "/repository", "/xds")
    ]
