"""Headless browser tests: Debian's Chromium (/usr/bin/chromium) driven by Playwright's sync API,
and the OHIF build that scripts/fetch-ohif downloads.

Playwright's own browser download (`playwright install`) is never used. A test asking for a
piece that is missing is skipped with the reason, except under CI (scripts/test installs
chromium and fetches OHIF, so a missing piece there is a failure, not a skip).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"

# --no-sandbox: the tests run as root, where Chromium's sandbox refuses to start.
# WebGL without a GPU: Chromium falls back to SwiftShader (software Vulkan under ANGLE), which
# it allows for WebGL only with --enable-unsafe-swiftshader (Playwright passes it too; said here
# so the flag set stands on its own). --use-angle=swiftshader and --ignore-gpu-blocklist are
# not needed with Debian's Chromium 156 and made the test twice as slow.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--enable-unsafe-swiftshader",
]


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (scripts/test installs it: CI must not skip this)")
    pytest.skip(reason)


def ohif_version() -> str:
    found = re.search(r"^OHIF_VERSION=(\S+)$", (ROOT / "scripts" / "fetch-ohif").read_text(), re.M)
    assert found, "scripts/fetch-ohif pins no OHIF_VERSION"
    return found.group(1)


def ohif_dist() -> Path:
    """The OHIF build folder (index.html at its top), or skip."""
    configured = os.environ.get("DRIMBOX_OHIF_DIR")
    if configured:
        folder = Path(configured)
    else:
        folder = Path.home() / ".cache" / "drimbox" / f"ohif-{ohif_version()}"
    if not (folder / "index.html").is_file():
        _missing(f"no OHIF build in {folder} (run scripts/fetch-ohif)")
    return folder


def require_chromium() -> None:
    if not CHROMIUM.exists():
        _missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")


@contextlib.contextmanager
def chromium_page(width: int = 1280, height: int = 800) -> Iterator[Page]:
    """A fresh page in a headless Chromium that can run WebGL in software."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            yield context.new_page()
        finally:
            browser.close()


def save_artifact(tmp_path: Path, name: str, data: bytes) -> Path:
    """Writes ``data`` into tmp_path, and into tests/artifacts/ when DRIMBOX_ARTIFACTS is set."""
    path = tmp_path / name
    path.write_bytes(data)
    if os.environ.get("DRIMBOX_ARTIFACTS"):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / name).write_bytes(data)
    return path
