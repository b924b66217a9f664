"""Our errors as ebXML registry errors (ITI TF-3 4.2.4): the one table for XDS.

Anything unforeseen becomes ``XDSRegistryError`` (queries) or ``XDSRepositoryError``
(submissions and retrievals), logged with the WS-Addressing MessageID for correlation.
"""

from __future__ import annotations

import logging

from drimbox.domain.errors import Conflict, InvalidInput, NotFound, PeerUnavailable
from drimbox.domain.xds import AccessDenied, ErrorCode, XdsError, XdsErrors

log = logging.getLogger(__name__)

_TABLE: list[tuple[type[BaseException], ErrorCode]] = [
    (AccessDenied, ErrorCode.ACCESS_DENIED),
    (NotFound, ErrorCode.DOCUMENT_UNIQUE_ID),
    (Conflict, ErrorCode.REGISTRY),
    (PeerUnavailable, ErrorCode.REPOSITORY),
    (InvalidInput, ErrorCode.METADATA),
]


def registry_errors(
    exc: BaseException, fallback: ErrorCode, message_id: str = ""
) -> list[XdsError]:
    """The RegistryError list that answers ``exc``."""
    if isinstance(exc, XdsErrors):
        return exc.errors
    if isinstance(exc, XdsError):
        return [exc]
    for cls, code in _TABLE:
        if isinstance(exc, cls):
            return [XdsError(code, str(exc))]
    log.error("unexpected error on message %s", message_id or "?", exc_info=exc)
    return [XdsError(fallback, f"internal error; see the log for message {message_id or '?'}")]
