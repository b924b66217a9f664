"""Which Source boxes the Conso may call. A KOS comes from the national index, but its
Retrieve URL is data: the box fetches only from a Source whose base URL is allowed (the
signed whitelist of boxes, or a configured list), and builds the request URL itself from
that base and checked UIDs, never from the rest of the document's URL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from drimbox.domain.errors import DrimboxError


class SourceNotAllowed(DrimboxError):
    """A Retrieve URL outside the allowed Source boxes (HTTP 403 to the user)."""


@dataclass(frozen=True, slots=True)
class _Base:
    scheme: str
    host: str
    port: int
    path: str
    url: str


def _port(scheme: str, port: int | None) -> int:
    return port if port is not None else (443 if scheme == "https" else 80)


class AllowedSources:
    """Configured Source bases, plus (``listed``) hosts of the signed whitelist of boxes: a
    listed host is called over https only, at the WADO root its Retrieve URL names."""

    def __init__(self, bases: list[str], listed: Callable[[str], bool] | None = None) -> None:
        self._listed = listed
        self._bases: list[_Base] = []
        for base in bases:
            u = urlsplit(base.strip())
            if u.scheme not in ("http", "https") or not u.hostname or u.username or u.query:
                raise ValueError(f"not a Source base URL: {base!r}")
            path = u.path.rstrip("/")
            self._bases.append(
                _Base(u.scheme, u.hostname.lower(), _port(u.scheme, u.port), path,
                      f"{u.scheme}://{u.netloc.lower()}{path}")
            )  # fmt: skip

    def base_for(self, retrieve_url: str) -> str:
        """The allowed base a KOS Retrieve URL (``{base}/studies/...``) lies under."""
        try:
            u = urlsplit(retrieve_url.strip())
            port = _port(u.scheme, u.port)
        except ValueError:
            raise SourceNotAllowed("malformed Retrieve URL") from None
        if u.username or u.password or u.fragment or not u.hostname:
            raise SourceNotAllowed("malformed Retrieve URL")
        host = u.hostname.lower()
        for b in self._bases:
            if (u.scheme, host, port) == (b.scheme, b.host, b.port) and u.path.startswith(
                b.path + "/studies/"
            ):
                return b.url
        if self._listed is not None and u.scheme == "https" and self._listed(host):
            root = u.path.split("/studies/", 1)[0] if "/studies/" in u.path else None
            if root is not None and ".." not in root.split("/"):
                return f"https://{u.netloc.lower()}{root}"
        raise SourceNotAllowed(f"the Source box {host}:{port} is not in the list of allowed boxes")
