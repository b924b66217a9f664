"""SOAP 1.2 envelopes with WS-Addressing (ITI TF-2x appendix V), parsed defensively.

Requests come from the network, so parsing refuses any DOCTYPE (no DTD, no entity: XXE and
"billion laughs" cannot start), never touches the network and keeps lxml's size limits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from lxml import etree

from drimbox.domain.errors import InvalidInput

SOAP_NS = "http://www.w3.org/2003/05/soap-envelope"
WSA_NS = "http://www.w3.org/2005/08/addressing"
NS = {"s": SOAP_NS, "wsa": WSA_NS}
SOAP_MEDIA = "application/soap+xml"


class SoapFault(InvalidInput):
    """The message is not a usable SOAP request: answered with a SOAP Fault (Sender)."""

    def __init__(self, reason: str, subcode: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.subcode = subcode


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_blank_text=False,
    )


def parse_xml(data: bytes) -> etree._Element:
    """Parse untrusted XML; a document type declaration is refused outright."""
    head = data[:4096].lower()
    if b"<!doctype" in head or b"<!entity" in data.lower():
        raise SoapFault("document type declarations and entities are not accepted")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise SoapFault(f"malformed XML: {exc}") from None
    tree = root.getroottree()
    if getattr(tree.docinfo, "doctype", "") or tree.docinfo.internalDTD is not None:
        raise SoapFault("document type declarations and entities are not accepted")
    return root


@dataclass(frozen=True, slots=True)
class SoapRequest:
    action: str
    message_id: str
    body: etree._Element
    header: etree._Element | None


def read_envelope(root: etree._Element, transport_action: str = "") -> SoapRequest:
    """Action, MessageID and first body element of a SOAP 1.2 envelope."""
    if root.tag != f"{{{SOAP_NS}}}Envelope":
        raise SoapFault(f"expected a SOAP 1.2 Envelope, got {etree.QName(root).localname}")
    header = root.find("s:Header", NS)
    body = root.find("s:Body", NS)
    if body is None or len(body) == 0:
        raise SoapFault("the SOAP Body is empty")
    action = transport_action
    message_id = ""
    if header is not None:
        action = (header.findtext("wsa:Action", "", NS) or action).strip()
        message_id = (header.findtext("wsa:MessageID", "", NS) or "").strip()
    if not action:
        raise SoapFault("no WS-Addressing Action", "wsa:MessageAddressingHeaderRequired")
    return SoapRequest(action, message_id, body[0], header)


def envelope(action: str, relates_to: str, payload: etree._Element) -> etree._Element:
    """A response envelope: Action and RelatesTo (WS-Addressing 1.0 core 3.4)."""
    root = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"s": SOAP_NS, "a": WSA_NS})
    header = etree.SubElement(root, f"{{{SOAP_NS}}}Header")
    act = etree.SubElement(header, f"{{{WSA_NS}}}Action")
    act.set(f"{{{SOAP_NS}}}mustUnderstand", "1")
    act.text = action
    etree.SubElement(header, f"{{{WSA_NS}}}MessageID").text = f"urn:uuid:{uuid.uuid4()}"
    if relates_to:
        etree.SubElement(header, f"{{{WSA_NS}}}RelatesTo").text = relates_to
    body = etree.SubElement(root, f"{{{SOAP_NS}}}Body")
    body.append(payload)
    return root


def fault(reason: str, code: str = "Sender", subcode: str = "") -> etree._Element:
    """A SOAP 1.2 Fault envelope (SOAP 1.2 part 1, 5.4)."""
    root = etree.Element(f"{{{SOAP_NS}}}Envelope", nsmap={"s": SOAP_NS, "a": WSA_NS})
    header = etree.SubElement(root, f"{{{SOAP_NS}}}Header")
    etree.SubElement(header, f"{{{WSA_NS}}}Action").text = f"{WSA_NS}/fault"
    body = etree.SubElement(root, f"{{{SOAP_NS}}}Body")
    flt = etree.SubElement(body, f"{{{SOAP_NS}}}Fault")
    code_el = etree.SubElement(flt, f"{{{SOAP_NS}}}Code")
    etree.SubElement(code_el, f"{{{SOAP_NS}}}Value").text = f"s:{code}"
    if subcode:
        sub = etree.SubElement(code_el, f"{{{SOAP_NS}}}Subcode")
        etree.SubElement(sub, f"{{{SOAP_NS}}}Value").text = subcode
    text = etree.SubElement(etree.SubElement(flt, f"{{{SOAP_NS}}}Reason"), f"{{{SOAP_NS}}}Text")
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    text.text = reason
    return root


def serialize(root: etree._Element) -> bytes:
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
