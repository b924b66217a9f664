"""The error tree of the trust layer."""

from __future__ import annotations


class TrustError(Exception):
    """A trust check failed. ``reason`` is a stable code for logs and tests; the message says why.

    Reasons: ``unsigned``, ``tampered``, ``malformed``, ``dtd``, ``unsupported``, ``untrusted``,
    ``expired``, ``not-yet-valid``, ``usage``, ``signer``, ``rollback``.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason
