"""ITI-57 Update Document Set (ITI TF-2b 3.57): status changes and metadata versions."""

from __future__ import annotations

from lxml import etree

from drimbox.adapters.xds import ebrim
from drimbox.adapters.xds.context import Call, Reply, XdsServices
from drimbox.adapters.xds.ebrim import NS
from drimbox.adapters.xds.errors import registry_errors
from drimbox.domain.xds import ErrorCode, XdsError

ACTION = "urn:ihe:iti:2010:UpdateDocumentSet"
RESPONSE_ACTION = "urn:ihe:iti:2010:UpdateDocumentSetResponse"


def handle(services: XdsServices, call: Call) -> Reply:
    if call.body.tag != ebrim.q(ebrim.LCM, "SubmitObjectsRequest"):
        raise XdsError(ErrorCode.METADATA, f"unexpected body {etree.QName(call.body).localname}")
    rol = call.body.find("rim:RegistryObjectList", NS)
    if rol is None:
        raise XdsError(ErrorCode.METADATA, "no RegistryObjectList")
    services.update.update(ebrim.parse_submission(rol), call.caller)
    return Reply(ebrim.registry_response([]))


def failure(exc: BaseException, call: Call) -> Reply:
    return Reply(ebrim.registry_response(registry_errors(exc, ErrorCode.REGISTRY, call.message_id)))
