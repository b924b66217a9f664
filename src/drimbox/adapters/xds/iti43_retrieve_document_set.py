"""ITI-43 Retrieve Document Set (ITI TF-2b 3.43): documents go back as MTOM parts."""

from __future__ import annotations

import uuid

from lxml import etree

from drimbox.adapters.xds import ebrim, mtom
from drimbox.adapters.xds.context import Call, Reply, XdsServices
from drimbox.adapters.xds.ebrim import NS, XDSB, q
from drimbox.adapters.xds.errors import registry_errors
from drimbox.domain.xds import AccessDenied, ErrorCode, XdsError

ACTION = "urn:ihe:iti:2007:RetrieveDocumentSet"
RESPONSE_ACTION = "urn:ihe:iti:2007:RetrieveDocumentSetResponse"


def _requests(body: etree._Element) -> list[tuple[str, str]]:
    if body.tag != q(XDSB, "RetrieveDocumentSetRequest"):
        raise XdsError(ErrorCode.REPOSITORY, f"unexpected body {etree.QName(body).localname}")
    wanted = [
        (
            (r.findtext("xdsb:RepositoryUniqueId", "", NS) or "").strip(),
            (r.findtext("xdsb:DocumentUniqueId", "", NS) or "").strip(),
        )
        for r in body.findall("xdsb:DocumentRequest", NS)
    ]
    if not wanted:
        raise XdsError(ErrorCode.REPOSITORY, "no DocumentRequest")
    return wanted


def _document_response(parent: etree._Element, repo: str, uid: str, mime: str, cid: str) -> None:
    item = etree.SubElement(parent, q(XDSB, "DocumentResponse"))
    etree.SubElement(item, q(XDSB, "RepositoryUniqueId")).text = repo
    etree.SubElement(item, q(XDSB, "DocumentUniqueId")).text = uid
    etree.SubElement(item, q(XDSB, "mimeType")).text = mime
    mtom.include(etree.SubElement(item, q(XDSB, "Document")), cid)


def handle(services: XdsServices, call: Call) -> Reply:
    resp = etree.Element(q(XDSB, "RetrieveDocumentSetResponse"), nsmap={"xdsb": XDSB})
    status = etree.SubElement(resp, q(ebrim.RS, "RegistryResponse"), nsmap={"rs": ebrim.RS})
    errors: list[XdsError] = []
    parts: list[tuple[str, str, bytes]] = []
    for repo, uid in _requests(call.body):
        try:
            found = services.query.retrieve(repo, uid, call.caller)
        except (XdsError, AccessDenied) as exc:
            errors += registry_errors(exc, ErrorCode.REPOSITORY, call.message_id)
            continue
        cid = f"{uuid.uuid4()}@drimbox"
        _document_response(resp, repo, uid, found.entry.mime_type, cid)
        parts.append((cid, found.entry.mime_type, found.content))
    if errors:
        status.append(ebrim.error_list(errors))
    status.set(
        "status", ebrim.PARTIAL if parts and errors else ebrim.FAILURE if errors else ebrim.SUCCESS
    )
    return Reply(resp, parts)


def failure(exc: BaseException, call: Call) -> Reply:
    resp = etree.Element(q(XDSB, "RetrieveDocumentSetResponse"), nsmap={"xdsb": XDSB})
    resp.append(
        ebrim.registry_response(registry_errors(exc, ErrorCode.REPOSITORY, call.message_id))
    )
    return Reply(resp)
