"""Identifiers (temporary: replaced by the synth helper's fuller module)."""

import re

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: str) -> bool:
    """PS3.5 9.1: digits and dots, no leading zero in a component, at most 64 characters."""
    return 0 < len(value) <= 64 and _UID_RE.match(value) is not None
