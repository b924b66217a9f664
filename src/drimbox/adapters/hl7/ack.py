"""HL7 v2.5 original-mode acknowledgements: the one table from our errors to MSA-1 and ERR-3.

HL7 v2.5 chapter 2 (2.9.2): ``AR`` (reject) when MSH-9 type/event, MSH-11 processing id or
MSH-12 version is not acceptable, or when the message could not be processed for reasons
unrelated to its content (internal error: the sender should retry later); ``AE`` (application
error) when the content is wrong (do not resend as is); ``AA`` once the message is stored.

ERR (v2.5): ERR-2 error location, ERR-3 HL7 error code (table 0357), ERR-4 severity, ERR-5
our application error code, ERR-8 the human-readable reason. MSA-3 (deprecated but still
shown by many RIS) repeats the start of the reason.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from drimbox.adapters.hl7.errors import (
    Hl7Error,
    InconsistentContent,
    InvalidValue,
    MalformedMessage,
    MissingField,
    MissingSegment,
    UnknownCode,
    UnsupportedEvent,
    UnsupportedMessage,
    UnsupportedProcessingId,
    UnsupportedVersion,
)
from drimbox.adapters.hl7.message import Delimiters, Segment

# HL7 table 0357 (message error condition codes), v2.5.
ERROR_CODES = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "207": "Application internal error",
}
# First match wins: subclasses before their parents.
_TABLE: list[tuple[type[BaseException], str, str]] = [
    (MalformedMessage, "AR", "100"),
    (UnsupportedEvent, "AR", "201"),
    (UnsupportedProcessingId, "AR", "202"),
    (UnsupportedVersion, "AR", "203"),
    (UnsupportedMessage, "AR", "200"),
    (MissingSegment, "AE", "100"),
    (MissingField, "AE", "101"),
    (InvalidValue, "AE", "102"),
    (UnknownCode, "AE", "103"),
    # Table 0357 has no code for "HL7 and CDA disagree": 207 plus our ERR-5 code says which.
    (InconsistentContent, "AE", "207"),
    (Hl7Error, "AE", "207"),
    # Anything else is our failure (disk full, bug): not stored, so the sender must retry.
    (BaseException, "AR", "207"),
]
LOCAL_CODES = "99DRB"
"""Coding system of our ERR-5 application error codes (HL7 ``99zzz`` = locally defined)."""
INTERNAL_ERROR = "INTERNAL_ERROR"


def ack_codes(error: BaseException | None) -> tuple[str, str]:
    """(MSA-1, ERR-3 code) for an error, ``("AA", "0")`` for none."""
    if error is None:
        return "AA", "0"
    return next((ack, code) for kind, ack, code in _TABLE if isinstance(error, kind))


def _ack_control_id() -> str:
    return "DRB" + uuid.uuid4().hex[:17]  # MSH-10 is at most 20 characters in v2.5


def _header(msh: Segment | None, now: datetime) -> tuple[Delimiters, list[str]]:
    d = msh.delimiters if msh is not None else Delimiters()

    def raw(n: int) -> str:
        return msh.raw(n) if msh is not None else ""

    trigger = msh.value(9, 2) if msh is not None else ""
    charset = raw(18) if msh is not None and msh.codec != "utf-8" else "UNICODE UTF-8"
    fields = [
        "MSH", d.encoding_characters, raw(5), raw(6), raw(3), raw(4),
        now.strftime("%Y%m%d%H%M%S%z"), "", f"ACK{d.component}{trigger}{d.component}ACK",
        _ack_control_id(), raw(11) or "P", raw(12) or "2.5", "", "", "", "", raw(17), charset,
    ]  # fmt: skip
    return d, fields


def _err(d: Delimiters, error: BaseException, code: str) -> str:
    c = d.component
    location = getattr(error, "location", None)
    erl = ""
    if location is not None:
        # the segment name may come from a malformed line: escape it like any received text
        parts = [d.escape_text(location.segment), str(location.sequence)]
        if location.field:
            parts += [str(location.field), "1"]
            if location.component:
                parts.append(str(location.component))
        erl = c.join(parts)
    app_code = error.code if isinstance(error, Hl7Error) else INTERNAL_ERROR
    reason = error.reason if isinstance(error, Hl7Error) else "internal error, please resend later"
    fields = [
        "ERR", "", erl, f"{code}{c}{ERROR_CODES[code]}{c}HL70357", "E",
        f"{app_code}{c}{c}{LOCAL_CODES}", "", "", d.escape_text(reason),
    ]  # fmt: skip
    return d.field.join(fields)


def build_ack(
    msh: Segment | None, error: BaseException | None = None, *, now: datetime | None = None
) -> bytes:
    """The ACK answering the message whose MSH is ``msh`` (None when MSH was unreadable).

    Sender and receiver are swapped, the delimiters and character set of the inbound
    message are kept so that it can read the answer with the settings it sent with.
    """
    d, header = _header(msh, now or datetime.now().astimezone())
    ack, code = ack_codes(error)
    msa = ["MSA", ack, msh.raw(10) if msh is not None else ""]
    segments = [d.field.join(header)]
    if error is not None:
        reason = error.reason if isinstance(error, Hl7Error) else "internal error"
        msa.append(d.escape_text(reason[:80]))
        segments += [d.field.join(msa), _err(d, error, code)]
    else:
        segments.append(d.field.join(msa))
    codec = msh.codec if msh is not None else "utf-8"
    return ("\r".join(segments) + "\r").encode(codec, errors="replace")
