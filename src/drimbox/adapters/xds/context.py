"""What an XDS transaction handler receives and returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from lxml import etree

from drimbox.domain.access import CallerIdentity
from drimbox.services.index.query import QueryService
from drimbox.services.index.register import RegisterService
from drimbox.services.index.update import UpdateService


@dataclass(frozen=True, slots=True)
class XdsServices:
    register: RegisterService
    query: QueryService
    update: UpdateService


@dataclass(frozen=True, slots=True)
class Call:
    """One SOAP request, decoded: body element, MTOM attachments, authenticated caller."""

    body: etree._Element
    attachments: dict[str, bytes]
    caller: CallerIdentity
    message_id: str = ""


@dataclass(slots=True)
class Reply:
    payload: etree._Element
    attachments: list[tuple[str, str, bytes]] = field(default_factory=list)
