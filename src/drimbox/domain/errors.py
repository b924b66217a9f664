"""The error tree shared by every layer; each protocol maps it to its own codes.

DrimboxError
 +-- InvalidInput          the request or object is malformed: reject, never retry as is
 |    +-- InvalidIdentifier  an INS, UID or other identifier fails its check
 +-- NotFound              nothing matches (or the caller may not know it exists)
 +-- Conflict              contradicts what is stored
 +-- PeerUnavailable       a remote system is down or slow: retry later
"""


class DrimboxError(Exception):
    """Base of every error drimbox raises on purpose."""


class InvalidInput(DrimboxError):
    """The input is malformed or incomplete."""


class InvalidIdentifier(InvalidInput, ValueError):
    """An identifier (INS, UID...) fails its syntax or check-digit rule."""


class NotFound(DrimboxError):
    """The requested object does not exist here."""


class Conflict(DrimboxError):
    """The request contradicts what is already stored."""


class PeerUnavailable(DrimboxError):
    """A peer (PACS, index, remote box) cannot be reached now; retryable."""
