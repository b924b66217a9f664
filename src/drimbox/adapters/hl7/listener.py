"""The RIS-facing HL7 listener: MLLP frames -> checked report -> durable inbox -> ACK.

The AA is built only after :meth:`ReportInbox.accept` returned, i.e. after the message is on
disk: an acknowledged report can never be lost. A refused message gets AE/AR with an ERR
segment and is kept in the inbox's ``rejected/`` folder with its reason.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Collection
from typing import Protocol

from drimbox.adapters.hl7.ack import ack_codes, build_ack
from drimbox.adapters.hl7.errors import Hl7Error, MalformedMessage, MessageTooLarge
from drimbox.adapters.hl7.message import Message, Segment
from drimbox.adapters.hl7.mllp import Frame, MllpServer
from drimbox.adapters.hl7.parse import DEFAULT_PROCESSING_IDS, decode, read_report
from drimbox.domain.report import ReportMessage

log = logging.getLogger(__name__)


class ReportInbox(Protocol):
    """What the listener needs from :class:`drimbox.services.source.inbox.Inbox`."""

    def accept(self, raw: bytes, report: ReportMessage) -> object: ...

    def reject(self, raw: bytes, reason: str, *, ack: str, control_id: str = "") -> object: ...


def _msh_of(prefix: bytes) -> Segment | None:
    """The MSH of a truncated message, if its first line is readable."""
    first_line = prefix.replace(b"\n", b"\r").split(b"\r", 1)[0]
    try:
        return Message.decode(first_line).msh
    except MalformedMessage:
        return None


class ReportReceiver:
    """The frame handler: never raises, always answers an ACK."""

    def __init__(
        self, inbox: ReportInbox, processing_ids: Collection[str] = DEFAULT_PROCESSING_IDS
    ) -> None:
        self.inbox = inbox
        self.processing_ids = processing_ids

    def __call__(self, frame: Frame) -> bytes:
        if frame.too_large:
            msh = _msh_of(frame.data)
            error = MessageTooLarge(f"the message has {frame.size} bytes, more than this "
                                    "listener accepts")  # fmt: skip
            return self._refuse(frame.data, msh, error)
        try:
            message = decode(frame.data)
        except MalformedMessage as exc:  # a later line may be broken while MSH is fine
            return self._refuse(frame.data, _msh_of(frame.data), exc)
        try:
            report = read_report(message, processing_ids=self.processing_ids)
        except Hl7Error as exc:
            return self._refuse(frame.data, message.msh, exc)
        try:
            accepted = self.inbox.accept(frame.data, report)
        except Exception as exc:  # not stored: answer AR so that the RIS sends it again
            log.exception("could not store message %s", report.header.control_id)
            return build_ack(message.msh, exc)
        log.info("accepted %s %s from %s for study %s (%s)", report.header.message_type,
                 report.header.control_id, report.header.sending_application,
                 report.study_uid, accepted)  # fmt: skip
        return build_ack(message.msh)

    def _refuse(self, raw: bytes, msh: Segment | None, error: Hl7Error) -> bytes:
        ack, code = ack_codes(error)
        control_id = msh.value(10) if msh is not None else ""
        log.warning("refused message %r (%s %s %s): %s", control_id, ack, code, error.code,
                    error.reason)  # fmt: skip
        try:
            self.inbox.reject(raw, f"{error.code}: {error.reason}", ack=ack,
                              control_id=control_id)  # fmt: skip
        except Exception:  # keeping it is a courtesy: the ACK matters more
            log.exception("could not keep the refused message %r", control_id)
        return build_ack(msh, error)


def serve_mllp(
    host: str,
    port: int,
    inbox: ReportInbox,
    ssl_context: ssl.SSLContext | None = None,
    *,
    processing_ids: Collection[str] = DEFAULT_PROCESSING_IDS,
    max_message_size: int = 32 << 20,
    idle_timeout: float = 300.0,
) -> MllpServer:
    """Start the listener (port 0 picks a free one); the handle has ``.port`` and ``.stop()``."""
    receiver = ReportReceiver(inbox, processing_ids)
    server = MllpServer(host, port, receiver, ssl_context=ssl_context,
                        max_message_size=max_message_size, idle_timeout=idle_timeout)  # fmt: skip
    return server.start()
