"""The OHIF Viewer v3 (npm package ``@ohif/app``, prebuilt ``dist/``) served by the box.

``scripts/fetch-ohif`` puts the pinned build in a folder; :func:`viewer_routes` serves it under a
mount point (``/viewer``) with a generated ``app-config.js`` whose only data source is the
DICOMweb root the box gives (its own proxy, e.g. ``/conso/dicomweb``).

The npm build is made for the server root: its ``index.html`` loads ``/app.bundle.<hash>.js``,
sets ``window.PUBLIC_URL = "/"``, and webpack's public path (where lazy chunks, workers and
codecs' ``.wasm`` are fetched from) is baked as ``__webpack_require__.p = "/"`` in the main
bundle and in each worker bundle; the CSS loads its font from ``url(/...)``. At start-up those
few files are read once and rewritten in memory for the mount; every other file is served from
disk as is.

Viewer URLs (OHIF 3 routes, under the mount):

- one study: ``/viewer/viewer?StudyInstanceUIDs=<uid>``
- two side by side: ``/viewer/viewer?StudyInstanceUIDs=<current>,<prior>
  &hangingProtocolId=@ohif/hpCompare``. OHIF loads every study listed, but only its
  ``@ohif/hpCompare`` hanging protocol lays two out side by side, and the basic viewer mode
  uses it only when the URL names it. It opens on that protocol's first stage, a 2x2 grid: the
  top row holds the first series of each study (current left, prior right), the bottom row
  their second series (empty when a study has one); its 1x2 stage is the next one (key "."),
  and the URL cannot pick it (the stages have no id for `stageId`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Route

log = logging.getLogger(__name__)

DICOMWEB_DATA_SOURCE = "@ohif/extension-default.dataSourcesModule.dicomweb"
SOURCE_NAME = "dicomweb"
COMPARE_PROTOCOL = "@ohif/hpCompare"

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".jsonc": "application/json",
    ".map": "application/json",
    ".webapp": "application/x-web-app-manifest+json",
    ".wasm": "application/wasm",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
    ".ttf": "font/ttf",
    ".otf": "font/otf",
    ".eot": "application/vnd.ms-fontobject",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/x-icon",
    ".xml": "application/xml",
    ".txt": "text/plain; charset=utf-8",
}

# webpack's content hash: app.bundle.0f6159c501addfe9.js, 0ddf166f7a343eda.wasm, a34f...woff2
_HASHED = re.compile(r"(?:^|[.-])[0-9a-f]{16,}\.[a-z0-9]+$")
_PUBLIC_PATH = b'__webpack_require__.p = "/";'
_CSS_ROOT_URL = re.compile(rb"""url\((["']?)/(?!/)""")
_HTML_ROOT_REF = re.compile(r"""((?:href|src|content)=["'])/(?!/)""")
_PUBLIC_URL = re.compile(r"""window\.PUBLIC_URL\s*=\s*["']/["']""")
# index.html's dynamic import() helper: the app imports the microscopy viewer as "/dicom-micro..."
_IMPORT_HELPER = "function browserImportFunction(n){return import(n)}"


def _media_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    if suffix in _MEDIA_TYPES:
        return _MEDIA_TYPES[suffix]
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _cache_control(rel: str) -> str:
    return IMMUTABLE if _HASHED.search(rel.rsplit("/", 1)[-1]) else REVALIDATE


def _normalise_mount(mount: str) -> str:
    if not mount.startswith("/") or "//" in mount or any(c in mount for c in "?#{}\\"):
        raise ValueError(f"the viewer mount must be a plain absolute path, not {mount!r}")
    return mount.rstrip("/")


def _normalise_root(root: str) -> str:
    root = root.strip()
    absolute = root.startswith(("http://", "https://"))
    if not (absolute or (root.startswith("/") and not root.startswith("//"))):
        raise ValueError(f"the DICOMweb root must be server-relative or http(s), not {root!r}")
    return root.rstrip("/")


def viewer_url(
    study_uids: Sequence[str], *, mount: str = "/viewer", compare: bool | None = None
) -> str:
    """The viewer page for one study, or for two side by side (current, then prior).

    ``compare`` (default: when there are two studies or more) names OHIF's two-study hanging
    protocol; without it OHIF loads every study listed but shows only the first one.
    """
    if not study_uids:
        raise ValueError("the viewer needs at least one study")
    uids = quote(",".join(study_uids), safe=",")
    url = f"{_normalise_mount(mount)}/viewer?StudyInstanceUIDs={uids}"
    if compare if compare is not None else len(study_uids) > 1:
        url += f"&hangingProtocolId={quote(COMPARE_PROTOCOL, safe='@/')}"
    return url


def app_config(
    dicomweb_root: str, *, mount: str = "/viewer", name: str = "DRIMbox"
) -> dict[str, Any]:
    """OHIF v3's ``window.config`` with one DICOMweb data source at ``dicomweb_root``."""
    root = _normalise_root(dicomweb_root)
    return {
        "name": name,
        "routerBasename": _normalise_mount(mount) or "/",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": True,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "defaultDataSourceName": SOURCE_NAME,
        "dataSources": [
            {
                "namespace": DICOMWEB_DATA_SOURCE,
                "sourceName": SOURCE_NAME,
                "configuration": {
                    "friendlyName": name,
                    "name": SOURCE_NAME,
                    "qidoRoot": root,
                    "wadoRoot": root,
                    "wadoUriRoot": root,
                    "qidoSupportsIncludeField": False,
                    "imageRendering": "wadors",
                    "thumbnailRendering": "wadors",
                    "enableStudyLazyLoad": True,
                    "supportsFuzzyMatching": False,
                    "supportsWildcard": False,
                    "staticWado": False,
                    # every retrieve is a standard multipart/related one: with a type named
                    # here (video, bulkdata, pdf) OHIF would ask the server for /rendered
                    # resources or bare single-part bodies, which PS3.18 servers need not offer
                    "singlepart": False,
                    "dicomUploadEnabled": False,
                    # BulkDataURIs in metadata are followed (PDF, video, overlays);
                    # relative ones are resolved against the study
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    # Accept: multipart/related; type=application/octet-stream (no quotes)
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }


def app_config_js(dicomweb_root: str, *, mount: str = "/viewer", name: str = "DRIMbox") -> str:
    config = json.dumps(app_config(dicomweb_root, mount=mount, name=name), indent=2)
    return f"/** Generated by drimbox for OHIF v3. */\nwindow.config = {config};\n"


@dataclass(frozen=True)
class _Blob:
    body: bytes
    media_type: str
    cache_control: str
    etag: str


def _blob(rel: str, body: bytes, cache_control: str | None = None) -> _Blob:
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return _Blob(body, _media_type(rel), cache_control or _cache_control(rel), etag)


def _rewrite_index(html: str, public_url: str) -> str:
    base = public_url.rstrip("/")
    html, n = _PUBLIC_URL.subn(f'window.PUBLIC_URL="{public_url}"', html)
    if n == 0:
        log.warning("OHIF index.html sets no window.PUBLIC_URL; the viewer may not load")
    html = _HTML_ROOT_REF.sub(lambda m: m.group(1) + public_url, html)
    if base:
        prefix = json.dumps(base)
        html = html.replace(
            _IMPORT_HELPER,
            "function browserImportFunction(n){return import(typeof n=='string'&&n[0]=='/'"
            f"&&n[1]!='/'&&n.indexOf({prefix}+'/')!=0?{prefix}+n:n)}}",
        )
    # components loaded as-is (the microscopy viewer) come from PUBLIC_LIB_URL, else from './'
    lib = json.dumps(public_url + "${component}/")
    return html.replace(
        "<head>", f"<head><script>window.PUBLIC_LIB_URL=window.PUBLIC_LIB_URL||{lib}</script>", 1
    )


def _rewritten_assets(dist: Path, public_url: str) -> dict[str, _Blob]:
    """The few files of the build that name the server root, rewritten for ``public_url``."""
    out: dict[str, _Blob] = {}
    index = (dist / "index.html").read_text(encoding="utf-8")
    out["index.html"] = _blob(
        "index.html", _rewrite_index(index, public_url).encode("utf-8"), REVALIDATE
    )
    if public_url == "/":
        return out
    new_path = b'__webpack_require__.p = "' + public_url.encode() + b'";'
    found_public_path = False
    for path in sorted(dist.glob("*.js")):
        data = path.read_bytes()
        if _PUBLIC_PATH in data:
            found_public_path = True
            out[path.name] = _blob(path.name, data.replace(_PUBLIC_PATH, new_path))
    for path in sorted(dist.glob("*.css")):
        data = path.read_bytes()
        rewritten = _CSS_ROOT_URL.sub(lambda m: b"url(" + m.group(1) + public_url.encode(), data)
        if rewritten != data:
            out[path.name] = _blob(path.name, rewritten)
    if not found_public_path:
        log.warning("no OHIF bundle sets webpack's public path to '/'; lazy chunks may 404")
    return out


class _OhifSite:
    def __init__(
        self,
        dist: Path,
        mount: str,
        dicomweb_root: str,
        name: str,
        extra_headers: Mapping[str, str] | None,
    ) -> None:
        self.root = dist.resolve(strict=True)
        if not (self.root / "index.html").is_file():
            raise FileNotFoundError(f"{dist} holds no OHIF build (no index.html)")
        self.prefix = _normalise_mount(mount)
        public_url = self.prefix + "/"
        self.extra = {"X-Content-Type-Options": "nosniff", **(extra_headers or {})}
        self.memory = _rewritten_assets(self.root, public_url)
        config = app_config_js(dicomweb_root, mount=mount, name=name)
        self.memory["app-config.js"] = _blob("app-config.js", config.encode("utf-8"), REVALIDATE)
        self.index = self.memory["index.html"]

    def _send(self, request: Request, blob: _Blob) -> Response:
        headers = {**self.extra, "Cache-Control": blob.cache_control, "ETag": blob.etag}
        if blob.etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        body = b"" if request.method == "HEAD" else blob.body
        response = Response(body, media_type=blob.media_type, headers=headers)
        response.headers["Content-Length"] = str(len(blob.body))
        return response

    def _locate(self, rel: str) -> Path | None:
        """Where ``rel`` points in the dist folder; None when it would leave the folder (dot
        segments, backslashes, empty segments, a symbolic link out) or names a hidden file."""
        parts = rel.removesuffix("/").split("/")
        if "\x00" in rel or "\\" in rel or any(not p or p.startswith(".") for p in parts):
            return None
        try:
            path = self.root.joinpath(*parts).resolve()
        except (OSError, RuntimeError, ValueError):
            return None
        return path if path.is_relative_to(self.root) else None

    async def index_page(self, request: Request) -> Response:
        return self._send(request, self.index)

    async def asset(self, request: Request) -> Response:
        rel: str = request.path_params["path"]
        if rel == "":
            return self._send(request, self.index)
        blob = self.memory.get(rel)
        if blob is not None:
            return self._send(request, blob)
        path = self._locate(rel)
        if path is not None and path.is_file():
            return self._send_file(request, rel, path)
        if path is None or path.exists() or "." in rel.rsplit("/", 1)[-1]:
            # outside the folder, a folder, or a file that is not there: not the SPA's page
            return Response("Not Found", status_code=404, media_type="text/plain")
        return self._send(request, self.index)  # one of OHIF's routes (/viewer, /segmentation…)

    def _send_file(self, request: Request, rel: str, path: Path) -> Response:
        stat = path.stat()
        etag = f'"{stat.st_mtime_ns:x}-{stat.st_size:x}"'
        headers = {**self.extra, "Cache-Control": _cache_control(rel), "ETag": etag}
        if etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return FileResponse(path, media_type=_media_type(rel), headers=headers, stat_result=stat)

    def routes(self) -> list[BaseRoute]:
        methods = ["GET", "HEAD"]
        routes: list[BaseRoute] = []
        if self.prefix:
            routes.append(Route(self.prefix, self.index_page, methods=methods))
        routes.append(Route(self.prefix + "/{path:path}", self.asset, methods=methods))
        return routes


def _etags(header: str) -> set[str]:
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}


def viewer_routes(
    dist: Path,
    *,
    mount: str = "/viewer",
    dicomweb_root: str,
    name: str = "DRIMbox",
    extra_headers: Mapping[str, str] | None = None,
) -> list[BaseRoute]:
    """Routes serving the OHIF build in ``dist`` under ``mount``.

    - ``<mount>/app-config.js``: generated; OHIF's only data source is DICOMweb at
      ``dicomweb_root`` (server-relative like ``/conso/dicomweb``, or absolute http(s));
    - ``<mount>/<file>``: the build's files, confined to ``dist``; hashed assets are cached for
      a year, everything else revalidates (ETag);
    - any other path under the mount whose last segment has no dot: ``index.html`` (OHIF's
      client-side routes); a missing file (last segment with a dot) or a path leaving ``dist``
      is a 404.

    ``extra_headers`` are added to every response (e.g. a Content-Security-Policy, or
    ``Cross-Origin-Opener-Policy``/``Cross-Origin-Embedder-Policy`` to give OHIF
    SharedArrayBuffer). The build is read once here: restart to pick up a new one.
    """
    return _OhifSite(dist, mount, dicomweb_root, name, extra_headers).routes()
