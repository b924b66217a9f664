"""MTOM/XOP packaging (W3C XOP 1.0, SOAP MTOM): multipart/related with an
``application/xop+xml`` root part whose ``xop:Include`` elements point at binary parts.

Plain ``application/soap+xml`` requests (documents inline in base64) are accepted too, as
ITI TF-2x V.3.3 allows; responses that carry documents are always MTOM.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from email.message import Message

from lxml import etree

from drimbox.adapters.multipart import MultipartError, split_parts
from drimbox.adapters.xds.soap import SOAP_MEDIA, SoapFault

XOP_NS = "http://www.w3.org/2004/08/xop/include"
XOP_MEDIA = "application/xop+xml"


@dataclass(frozen=True, slots=True)
class Package:
    """The SOAP part, the transport ``action`` parameter and the attachments by Content-ID."""

    root: bytes
    action: str
    attachments: dict[str, bytes]
    multipart: bool = False


def _params(content_type: str) -> tuple[str, dict[str, str]]:
    msg = Message()
    msg["content-type"] = content_type
    params = {str(k).lower(): str(v) for k, v in msg.get_params(failobj=[])[1:]}
    return msg.get_content_type(), params


def _strip_cid(value: str) -> str:
    value = value.strip()
    if value.lower().startswith("cid:"):
        value = value[4:]
    return value.strip("<>").strip()


def _split(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    try:
        return [(headers, bytes(data)) for headers, data in split_parts(body, boundary)]
    except MultipartError as exc:
        raise SoapFault(str(exc)) from None


def unpack(content_type: str, body: bytes) -> Package:
    """Split a request into its SOAP part and its attachments."""
    media, params = _params(content_type)
    if media == SOAP_MEDIA:
        return Package(body, params.get("action", ""), {})
    if media != "multipart/related" or "boundary" not in params:
        raise SoapFault(f"expected {SOAP_MEDIA} or multipart/related, got {media}")
    parts = _split(body, params["boundary"])
    if not parts:
        raise SoapFault("empty multipart body")
    start = _strip_cid(params.get("start", ""))
    root_index = 0
    for i, (headers, _) in enumerate(parts):
        if start and _strip_cid(headers.get("content-id", "")) == start:
            root_index = i
    attachments = {
        _strip_cid(h.get("content-id", "")): _decode(h, data)
        for i, (h, data) in enumerate(parts)
        if i != root_index
    }
    action = params.get("action", "") or _params(parts[root_index][0].get("content-type", ""))[
        1
    ].get("action", "")
    return Package(parts[root_index][1], action, attachments, multipart=True)


def _decode(headers: dict[str, str], data: bytes) -> bytes:
    # some senders (the ANS demonstrator among them) base64 their parts
    if headers.get("content-transfer-encoding", "").lower() == "base64":
        try:
            return base64.b64decode(data, validate=False)
        except binascii.Error:
            raise SoapFault("a base64 part is not valid base64") from None
    return data


def document_bytes(element: etree._Element, attachments: dict[str, bytes]) -> bytes:
    """Content of an element holding either an ``xop:Include`` or inline base64."""
    include = element.find(f"{{{XOP_NS}}}Include")
    if include is not None:
        cid = _strip_cid(include.get("href", ""))
        if cid not in attachments:
            raise KeyError(cid)
        return attachments[cid]
    try:
        return base64.b64decode("".join((element.text or "").split()), validate=True)
    except binascii.Error:
        raise SoapFault("a Document element holds invalid base64") from None


def include(element: etree._Element, cid: str) -> None:
    etree.SubElement(element, f"{{{XOP_NS}}}Include", nsmap={"xop": XOP_NS}).set(
        "href", f"cid:{cid}"
    )


def pack(root: bytes, action: str, attachments: list[tuple[str, str, bytes]]) -> tuple[str, bytes]:
    """(Content-Type, body) of an MTOM message; attachments are (cid, media type, bytes)."""
    boundary = f"MIMEBoundary_{secrets.token_hex(16)}"
    start = "root.message@drimbox"
    chunks = [
        f"--{boundary}\r\nContent-Type: {XOP_MEDIA}; charset=UTF-8; "
        f'type="{SOAP_MEDIA}"\r\nContent-Transfer-Encoding: binary\r\n'
        f"Content-ID: <{start}>\r\n\r\n".encode("ascii"),
        root,
    ]
    for cid, media, data in attachments:
        head = (
            f"\r\n--{boundary}\r\nContent-Type: {media}\r\n"
            f"Content-Transfer-Encoding: binary\r\nContent-ID: <{cid}>\r\n\r\n"
        )
        chunks += [head.encode("ascii"), data]
    chunks.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    content_type = (
        f'multipart/related; boundary="{boundary}"; type="{XOP_MEDIA}"; '
        f'start="<{start}>"; start-info="{SOAP_MEDIA}"; action="{action}"'
    )
    return content_type, b"".join(chunks)
