"""The Retrieve URL of a KOS series, seen from the Conso: where may we fetch from?

The URL comes from a document published by another site, so it is untrusted input that will
decide which host the Conso calls with the user's bearer token. We accept only the shape
DRIM-M publishes, ``{base}/studies/{study}[/series/{series}]`` over http(s), and refuse what
could make two parties read the same URL differently (userinfo, fragments, queries,
percent-encoding, dot segments, backslashes) instead of trying to normalise it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from drimbox.domain.errors import InvalidInput
from drimbox.domain.identifiers import is_valid_uid

_ALLOWED_SCHEMES = frozenset({"http", "https"})
# printable ASCII without space, quote, angle brackets, backslash, percent, braces, pipe, caret
_SAFE_PATH_RE = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")


@dataclass(frozen=True, slots=True)
class RetrieveTarget:
    """A checked Retrieve URL: the WADO-RS base and the resource it names."""

    base: str
    study_uid: str
    series_uid: str | None = None


def _refuse(url: str, why: str) -> InvalidInput:
    return InvalidInput(f"Retrieve URL {url[:200]!r} refused: {why}")


def _origin(url: str) -> str:
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise _refuse(url, str(exc)) from None
    if parts.scheme.lower() not in _ALLOWED_SCHEMES:
        raise _refuse(url, "only http and https are allowed")
    if "@" in parts.netloc:
        raise _refuse(url, "credentials (userinfo) are not allowed")
    if parts.fragment or "#" in url:
        raise _refuse(url, "a fragment is not allowed")
    if parts.query or "?" in url:
        raise _refuse(url, "a query string is not allowed")
    if not parts.hostname:
        raise _refuse(url, "no host")
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port is not None else "")


def split_retrieve_url(url: str) -> RetrieveTarget:
    """Check ``url`` and split it into base, study and (optional) series."""
    if not isinstance(url, str) or url != url.strip() or any(ord(c) < 0x21 for c in url):
        raise _refuse(str(url), "whitespace or control characters")
    origin = _origin(url)
    path = urlsplit(url).path
    if _SAFE_PATH_RE.fullmatch(path) is None:
        raise _refuse(url, "percent-encoded or unsafe characters in the path")
    segments = path.split("/")[1:]
    if segments and segments[-1] == "":
        segments.pop()  # one trailing slash is harmless
    if any(s in ("", ".", "..") for s in segments):
        raise _refuse(url, "empty or dot segments in the path")
    if "studies" not in segments:
        raise _refuse(url, "no /studies/ segment")
    cut = len(segments) - 1 - segments[::-1].index("studies")
    tail = segments[cut:]
    if len(tail) == 2 and is_valid_uid(tail[1]):
        target = RetrieveTarget("", tail[1])
    elif len(tail) == 4 and tail[2] == "series" and all(map(is_valid_uid, tail[1::2])):
        target = RetrieveTarget("", tail[1], tail[3])
    else:
        raise _refuse(url, "expected .../studies/{uid} or .../studies/{uid}/series/{uid}")
    base = origin + "".join(f"/{s}" for s in segments[:cut])
    return RetrieveTarget(base, target.study_uid, target.series_uid)


def retrieve_base(url: str) -> str:
    """The WADO-RS base of a series or study Retrieve URL (everything before ``/studies/``)."""
    return split_retrieve_url(url).base
