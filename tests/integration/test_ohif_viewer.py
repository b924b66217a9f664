"""The OHIF viewer served by viewer_routes(): its files under /viewer, the generated
app-config.js, and, in headless Chromium, a CT series from our PACS actually drawn.

The browser test puts a same-origin DICOMweb proxy in front of the PACS (as the box does) and
records every request OHIF sends through it: the list is printed, saved next to the
screenshot, and shown in the failure message with the page's errors.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from PIL import Image
from pydicom import dcmread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from drimbox.adapters.viewer import app_config, viewer_routes, viewer_url
from drimbox.synth.generate import write_ct_study
from tests.browser import chromium_page, ohif_dist, save_artifact
from tests.peers import Pacs, free_port, run_dcmtk

if TYPE_CHECKING:  # playwright is imported only by the browser test (tests.browser skips)
    from playwright.sync_api import Page

PROXY = "/pacs-dicomweb"


@contextlib.contextmanager
def serving(app: Starlette) -> Iterator[str]:
    """``app`` under uvicorn on a free loopback port, in a thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def raw_get(base: str, target: str) -> tuple[int, bytes]:
    """GET with the request target sent as is (httpx would remove the dot segments)."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- the server side, on a small stand-in of the build ---------------------------------------


FAKE_INDEX = (
    '<!doctype html><html lang="en"><head><meta name="msapplication-config" '
    'content="/assets/browserconfig.xml"><script>console.time("s"),window.PUBLIC_URL="/"</script>'
    '<link rel="manifest" href="/manifest.json"><script src="/app-config.js"></script>'
    '<script>function browserImportFunction(n){return import(n)}window.PUBLIC_URL="/"</script>'
    '<script defer src="/app.bundle.0f6159c501addfe9.js"></script>'
    '<link href="/app.bundle.css" rel="stylesheet"></head><body><div id="root"></div></body></html>'
)


@pytest.fixture
def fake_dist(tmp_path: Path) -> Path:
    """The shape of @ohif/app's dist/ (index.html, a bundle, CSS, wasm) beside a secret."""
    dist = tmp_path / "site" / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(FAKE_INDEX)
    (dist / "app-config.js").write_text("window.config = {name: 'upstream'};")
    (dist / "app.bundle.0f6159c501addfe9.js").write_text(
        '__webpack_require__.p = "/";\nconsole.log(1);\n'
    )
    (dist / "app.bundle.css").write_text("@font-face{src:url(/a34f9d1faa5f3315.woff2)}")
    (dist / "a34f9d1faa5f3315.woff2").write_bytes(b"wOF2")
    (dist / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (dist / "1602.css").write_text("body{}")
    (dist / "manifest.json").write_text("{}")
    (dist / "assets" / "favicon.ico").write_bytes(b"\0\0\1\0")
    (tmp_path / "site" / "secret.txt").write_text("do not serve")
    (dist / "escape").symlink_to(tmp_path / "site")
    return dist


@pytest.fixture
def fake_site(fake_dist: Path) -> Iterator[str]:
    app = Starlette(routes=viewer_routes(fake_dist, dicomweb_root="/conso/dicomweb/"))
    with serving(app) as base:
        yield base


def test_app_config_points_at_the_root(fake_site: str) -> None:
    r = httpx.get(fake_site + "/viewer/app-config.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert r.headers["cache-control"] == "no-cache"
    body = r.text
    assert body.startswith("/**") and "window.config = {" in body and "upstream" not in body
    config = json.loads(body.split("window.config = ", 1)[1].rstrip().rstrip(";"))
    assert config["routerBasename"] == "/viewer"
    assert config["showStudyList"] is True
    [source] = config["dataSources"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    assert config["defaultDataSourceName"] == source["sourceName"]
    c = source["configuration"]
    assert c["qidoRoot"] == c["wadoRoot"] == c["wadoUriRoot"] == "/conso/dicomweb"
    assert c["imageRendering"] == c["thumbnailRendering"] == "wadors"
    assert (c["staticWado"], c["singlepart"], c["dicomUploadEnabled"]) == (False, False, False)
    assert (c["supportsFuzzyMatching"], c["supportsWildcard"]) == (False, False)
    assert c["qidoSupportsIncludeField"] is False and c["enableStudyLazyLoad"] is True

    absolute = app_config("https://box.example/conso/dicomweb", mount="/v/")
    assert absolute["routerBasename"] == "/v"
    assert absolute["dataSources"][0]["configuration"]["wadoRoot"] == (
        "https://box.example/conso/dicomweb"
    )
    for bad in ("conso/dicomweb", "//evil.example/dicomweb", "javascript:alert(1)"):
        with pytest.raises(ValueError, match="DICOMweb root"):
            app_config(bad)


def test_index_is_rewritten_for_the_mount(fake_site: str) -> None:
    for path in ("/viewer", "/viewer/", "/viewer/index.html"):
        r = httpx.get(fake_site + path)
        assert r.status_code == 200, path
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache"
    html = r.text
    assert 'window.PUBLIC_URL="/viewer/"' in html and 'PUBLIC_URL="/"' not in html
    assert 'src="/viewer/app.bundle.0f6159c501addfe9.js"' in html
    assert 'href="/viewer/app.bundle.css"' in html and 'src="/viewer/app-config.js"' in html
    assert 'content="/viewer/assets/browserconfig.xml"' in html
    assert '"/viewer"+n' in html  # absolute dynamic imports land under the mount too

    bundle = httpx.get(fake_site + "/viewer/app.bundle.0f6159c501addfe9.js")
    assert '__webpack_require__.p = "/viewer/";' in bundle.text
    assert bundle.headers["cache-control"] == "public, max-age=31536000, immutable"
    css = httpx.get(fake_site + "/viewer/app.bundle.css")
    assert "url(/viewer/a34f9d1faa5f3315.woff2)" in css.text
    assert css.headers["cache-control"] == "no-cache"  # not content-hashed


def test_static_files_types_and_caching(fake_site: str) -> None:
    expected = {
        "0ddf166f7a343eda.wasm": ("application/wasm", "public, max-age=31536000, immutable"),
        "a34f9d1faa5f3315.woff2": ("font/woff2", "public, max-age=31536000, immutable"),
        "1602.css": ("text/css; charset=utf-8", "no-cache"),
        "manifest.json": ("application/json", "no-cache"),
        "assets/favicon.ico": ("image/x-icon", "no-cache"),
    }
    for name, (media, cache) in expected.items():
        r = httpx.get(f"{fake_site}/viewer/{name}")
        assert r.status_code == 200, name
        assert (r.headers["content-type"], r.headers["cache-control"]) == (media, cache), name
        assert r.headers["x-content-type-options"] == "nosniff"
        again = httpx.get(
            f"{fake_site}/viewer/{name}", headers={"If-None-Match": r.headers["etag"]}
        )
        assert again.status_code == 304, name
    head = httpx.head(fake_site + "/viewer/0ddf166f7a343eda.wasm")
    assert head.status_code == 200 and head.headers["content-length"] == "8"


def test_unknown_route_is_the_spa_and_missing_file_is_404(fake_site: str) -> None:
    for path in (
        "/viewer/viewer",
        "/viewer/viewer/",
        "/viewer/viewer/dicomweb",
        "/viewer/segmentation",
    ):
        r = httpx.get(fake_site + path, params={"StudyInstanceUIDs": "1.2.3"})
        assert r.status_code == 200, path
        assert 'window.PUBLIC_URL="/viewer/"' in r.text, path
    assert httpx.get(fake_site + "/viewer/9999.bundle.0123456789abcdef.js").status_code == 404
    assert httpx.get(fake_site + "/viewer/assets/nothing.png").status_code == 404
    assert httpx.get(fake_site + "/viewer/assets").status_code == 404  # a folder
    assert httpx.get(fake_site + "/elsewhere").status_code == 404


def test_paths_stay_inside_the_dist_folder(fake_site: str) -> None:
    for target in (
        "/viewer/../secret.txt",
        "/viewer/../dist/../secret.txt",
        "/viewer/..%2fsecret.txt",
        "/viewer/%2e%2e/secret.txt",
        "/viewer/assets/..%2F..%2Fsecret.txt",
        "/viewer/..%5csecret.txt",
        "/viewer/escape/secret.txt",  # a symbolic link out of the folder
        "/viewer/escape",
        "/viewer/.%2e/.%2e/.%2e/.%2e/etc/passwd",
        "/viewer//etc/passwd",
    ):
        status, body = raw_get(fake_site, target)
        assert status == 404, target
        assert b"do not serve" not in body and b"root:" not in body, target


def test_mount_must_be_a_path(fake_dist: Path) -> None:
    for bad in ("viewer", "/viewer?x", "//viewer"):
        with pytest.raises(ValueError, match="mount"):
            viewer_routes(fake_dist, mount=bad, dicomweb_root="/d")
    with pytest.raises(FileNotFoundError):
        viewer_routes(fake_dist / "assets", dicomweb_root="/d")


def test_viewer_urls() -> None:
    assert viewer_url(["1.2.3"]) == "/viewer/viewer?StudyInstanceUIDs=1.2.3"
    assert viewer_url(["1.2", "3.4"]) == (
        "/viewer/viewer?StudyInstanceUIDs=1.2,3.4&hangingProtocolId=@ohif/hpCompare"
    )
    assert viewer_url(["1.2", "3.4"], compare=False, mount="/v/") == (
        "/v/viewer?StudyInstanceUIDs=1.2,3.4"
    )


# -- the real OHIF build in headless Chromium -------------------------------------------------


@dataclass
class Seen:
    """What OHIF asked the DICOMweb proxy for, and what went wrong in the page."""

    dicomweb: list[tuple[str, str, str, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def report(self) -> str:
        lines = ["DICOMweb requests (method path?query | Accept -> status):"]
        lines += [f"  {m} {p} | {a} -> {s}" for m, p, a, s in self.dicomweb]
        lines += ["page problems:", *(f"  {p}" for p in self.problems)]
        return "\n".join(lines)


def proxy_to(pacs: Pacs, seen: Seen) -> Route:
    """A same-origin DICOMweb root forwarding to the PACS, as the box's proxy will."""
    upstream = httpx.AsyncClient(base_url=pacs.dicomweb, timeout=30)

    async def forward(request: Request) -> Response:
        path = "/" + request.path_params["path"]
        accept = request.headers.get("accept", "")
        r = await upstream.get(
            path, params=list(request.query_params.multi_items()), headers={"Accept": accept}
        )
        body = r.content
        media = r.headers.get("content-type", "application/octet-stream")
        if "json" in media:
            # the PACS writes absolute BulkDataURIs and retrieve URLs with its own address
            body = body.replace(
                pacs.dicomweb.encode(), (str(request.base_url) + PROXY[1:]).encode()
            )
        query = f"?{request.url.query}" if request.url.query else ""
        seen.dicomweb.append((request.method, path + query, accept, r.status_code))
        return Response(body, status_code=r.status_code, headers={"Content-Type": media})

    return Route(PROXY + "/{path:path}", forward, methods=["GET"])


def pixel_spread(png: bytes) -> int:
    """How many distinct grey levels a screenshot holds."""
    colours = Image.open(io.BytesIO(png)).convert("L").getcolors(maxcolors=256 * 256)
    return len(colours or [])


CANVAS_STATS = """
() => {
  const out = [];
  for (const c of document.querySelectorAll('canvas.cornerstone-canvas, .viewport-element canvas')) {
    if (!c.width || !c.height) continue;
    const probe = document.createElement('canvas');
    probe.width = c.width; probe.height = c.height;
    const ctx = probe.getContext('2d');
    ctx.drawImage(c, 0, 0);
    const data = ctx.getImageData(0, 0, c.width, c.height).data;
    const seen = new Set();
    for (let i = 0; i < data.length; i += 4 * 7) seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
    out.push({w: c.width, h: c.height, colours: seen.size});
  }
  return out;
}
"""


def drawn(page: Page, viewports: int, timeout: float = 60) -> list[dict[str, int]]:
    """Waits until ``viewports`` canvases hold an image (more than 16 colours); their stats."""
    stats: list[dict[str, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = page.evaluate(CANVAS_STATS)
        if sum(s["colours"] > 16 for s in stats) >= viewports:
            break
        page.wait_for_timeout(250)
    return stats


def dismiss_overlays(page: Page) -> None:
    """OHIF's first-visit tour and investigational-use banner, so screenshots show the image."""
    from playwright.sync_api import Error as PlaywrightError

    for label in ("Skip all", "Confirm and hide"):
        with contextlib.suppress(PlaywrightError):
            page.get_by_text(label, exact=True).click(timeout=1500)


@pytest.mark.dcmtk
@pytest.mark.timeout(180)
def test_ohif_renders_a_ct_series(pacs: Pacs, tmp_path: Path) -> None:
    dist = ohif_dist()
    heads = []
    for seed in (0, 1):  # two patients' CT studies: one to view, then both side by side
        files = write_ct_study(tmp_path / f"ct{seed}", slices=4, rows=128, columns=128, seed=seed)
        run_dcmtk("storescu", "-aec", pacs.aet, "127.0.0.1", str(pacs.port), *map(str, files))
        heads.append(dcmread(files[0], stop_before_pixels=True))
    study, prior = (str(h.StudyInstanceUID) for h in heads)

    seen = Seen()
    app = Starlette(routes=[proxy_to(pacs, seen), *viewer_routes(dist, dicomweb_root=PROXY)])
    with serving(app) as base, chromium_page() as page:

        def on_response(response: Any) -> None:
            if response.status >= 400:
                seen.problems.append(f"HTTP {response.status} {response.url}")

        def on_console(message: Any) -> None:
            if message.type == "error":
                seen.problems.append(f"console: {message.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda e: seen.problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: seen.problems.append(f"failed: {r.url} {r.failure}"))
        page.on("response", on_response)

        page.goto(base + viewer_url([study]), wait_until="domcontentloaded")
        stats = drawn(page, 1, timeout=90)
        dismiss_overlays(page)
        save_artifact(tmp_path, "ohif-viewer.png", page.screenshot())
        save_artifact(tmp_path, "ohif-dicomweb-requests.txt", seen.report().encode())
        assert any(s["colours"] > 16 for s in stats), (
            f"no viewport canvas drew the image (canvases: {stats})\n{seen.report()}"
        )
        element_shot = page.locator("canvas.cornerstone-canvas").first.screenshot()
        save_artifact(tmp_path, "ohif-viewport.png", element_shot)
        assert pixel_spread(element_shot) > 16, seen.report()

        # two studies side by side: OHIF's compare hanging protocol, named in the URL
        page.goto(base + viewer_url([study, prior]), wait_until="domcontentloaded")
        stats = drawn(page, 2)
        save_artifact(tmp_path, "ohif-compare.png", page.screenshot())
        assert sum(s["colours"] > 16 for s in stats) >= 2, f"{stats}\n{seen.report()}"

        # the study list (QIDO-RS on studies) lists the study
        page.goto(base + "/viewer/", wait_until="domcontentloaded")
        page.get_by_text(str(heads[0].StudyDescription), exact=True).first.wait_for(timeout=30_000)
        save_artifact(tmp_path, "ohif-study-list.png", page.screenshot())

    report = seen.report()
    save_artifact(tmp_path, "ohif-dicomweb-requests.txt", report.encode())
    print(report)
    assert all(status < 400 for *_, status in seen.dicomweb), report
    paths = [p for _, p, _, _ in seen.dicomweb]
    assert any(f"/studies/{study}/series/" in p and p.endswith("/metadata") for p in paths)
    assert any("/frames/" in p for p in paths), report
