"""ITI-41 Provide and Register Document Set-b (ITI TF-2b 3.41), repository + registry side."""

from __future__ import annotations

from lxml import etree

from drimbox.adapters.xds import ebrim, mtom
from drimbox.adapters.xds.context import Call, Reply, XdsServices
from drimbox.adapters.xds.ebrim import NS
from drimbox.adapters.xds.errors import registry_errors
from drimbox.domain.xds import ErrorCode, Submission, XdsError

ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
RESPONSE_ACTION = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse"


def parse(body: etree._Element, attachments: dict[str, bytes]) -> Submission:
    if body.tag != ebrim.q(ebrim.XDSB, "ProvideAndRegisterDocumentSetRequest"):
        raise XdsError(ErrorCode.METADATA, f"unexpected body {etree.QName(body).localname}")
    rol = body.find("lcm:SubmitObjectsRequest/rim:RegistryObjectList", NS)
    if rol is None:
        raise XdsError(ErrorCode.METADATA, "no SubmitObjectsRequest/RegistryObjectList")
    # Document/@id refers to the ExtrinsicObject id as sent, before uuids are assigned
    sent = {d.get("id", ""): d for d in body.findall("xdsb:Document", NS)}
    sub = ebrim.parse_submission(rol)
    by_symbol = {e.symbolic_id: e.entry_uuid for e in sub.entries}
    for ident, element in sent.items():
        try:
            data = mtom.document_bytes(element, attachments)
        except KeyError as exc:
            raise XdsError(
                ErrorCode.MISSING_DOCUMENT, f"{ident}: MTOM part {exc.args[0]} is missing", ident
            ) from None
        sub.documents[by_symbol.get(ident, ident)] = data
    return sub


def handle(services: XdsServices, call: Call) -> Reply:
    sub = parse(call.body, call.attachments)
    services.register.provide_and_register(sub, call.caller)
    return Reply(ebrim.registry_response([]))


def failure(exc: BaseException, call: Call) -> Reply:
    errors = registry_errors(exc, ErrorCode.REPOSITORY, call.message_id)
    return Reply(ebrim.registry_response(errors))
