"""Keeps the box's copy of the signed whitelist current: loaded at start-up, re-read (file) or
re-downloaded (https, then saved to the file) periodically; a list that does not verify never
replaces the last valid one (``WhitelistHolder``)."""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path

import httpx

from drimbox.adapters.trust.chain import load_trust_anchors
from drimbox.adapters.trust.whitelist import ExpectedSigner, WhitelistHolder

log = logging.getLogger(__name__)

MAX_LIST_BYTES = 16 << 20


class WhitelistRefresher:
    def __init__(
        self,
        holder: WhitelistHolder,
        file: Path | None,
        url: str = "",
        every: float = 3600.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.holder, self.file, self.url, self.every = holder, file, url, every
        self.http = http
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> bool:
        if self.url:
            data = self._download()
            if data is not None and self.holder.refresh(data):
                self._save(data)
                return True
        if self.file is not None and self.file.exists():
            return self.holder.refresh(self.file)
        return False

    def _download(self) -> bytes | None:
        client = self.http or httpx.Client(timeout=30, follow_redirects=False)
        try:
            r = client.get(self.url)
            if r.status_code != 200 or len(r.content) > MAX_LIST_BYTES:
                log.warning("whitelist download from %s: HTTP %d", self.url, r.status_code)
                return None
            return r.content
        except httpx.HTTPError as exc:
            log.warning("whitelist download from %s failed: %s", self.url, exc)
            return None
        finally:
            if self.http is None:
                client.close()

    def _save(self, data: bytes) -> None:
        if self.file is None:
            return
        fd, tmp = tempfile.mkstemp(dir=self.file.parent, prefix=".whitelist-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.file)

    def start(self) -> WhitelistRefresher:
        self.refresh()
        self._thread = threading.Thread(target=self._loop, name="whitelist", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()


def whitelist_holder(
    file: Path | None, url: str, anchors: Path, signer_cn: str, every: float
) -> tuple[WhitelistHolder, WhitelistRefresher]:
    expected = ExpectedSigner(common_name=signer_cn) if signer_cn else None
    holder = WhitelistHolder(load_trust_anchors(anchors), expected)
    refresher = WhitelistRefresher(holder, file, url, every).start()
    if holder.current is None:
        log.error("no valid whitelist (%s): no box is reachable through it", holder.last_error)
    return holder, refresher
