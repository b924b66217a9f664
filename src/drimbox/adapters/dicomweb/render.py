"""Rendered and thumbnail resources (PS3.18 8.3.5): one frame as JPEG or PNG,
through the grayscale pipeline of PS3.3 C.11 (Modality LUT, VOI LUT, polarity)."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array

from drimbox.adapters.dicomweb.media_types import MediaRange, NotAcceptable, parse_accept
from drimbox.domain.errors import InvalidInput, NotFound

JPEG = "image/jpeg"
PNG = "image/png"
SUPPORTED = (JPEG, PNG)  # preference order for wildcards
THUMBNAIL_VIEWPORT = (128, 128)
MAX_VIEWPORT = 8192  # per side: bounds the memory a request can make us allocate
DEFAULT_QUALITY = 90
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class RenderOptions:
    media_type: str = JPEG
    viewport: tuple[int, int] | None = None  # (width, height) to fit in, aspect kept
    window: tuple[float, float, str] | None = None  # (center, width, function)
    quality: int = DEFAULT_QUALITY  # JPEG only


def _choose_media_type(ranges: list[MediaRange]) -> str:
    if not ranges:
        return JPEG
    refused = {mr.type for mr in ranges if mr.q <= 0}
    offered = [t for t in SUPPORTED if t not in refused]
    for mr in ranges:  # best q first
        if mr.q <= 0:
            continue
        if mr.type in offered:
            return mr.type
        if mr.type in ("*/*", "image/*") and offered:
            return offered[0]
    asked = ", ".join(f"{mr.type};q={mr.q:g}" for mr in ranges)
    raise NotAcceptable(f"rendered images are available as {' or '.join(SUPPORTED)}, not {asked}")


def _viewport(value: str) -> tuple[int, int]:
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2:
        raise InvalidInput("viewport must be 'width,height' (source regions are not supported)")
    try:
        width, height = int(parts[0]), int(parts[1])
    except ValueError:
        raise InvalidInput(f"viewport {value!r} is not two integers") from None
    if not (0 < width <= MAX_VIEWPORT and 0 < height <= MAX_VIEWPORT):
        raise InvalidInput(f"viewport sides must be between 1 and {MAX_VIEWPORT}")
    return width, height


def _window(value: str) -> tuple[float, float, str]:
    parts = [p.strip() for p in value.split(",")]
    if len(parts) not in (2, 3):
        raise InvalidInput("window must be 'center,width,function'")
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise InvalidInput(f"window {value!r}: center and width must be numbers") from None
    function = parts[2].lower() if len(parts) == 3 else "linear"
    if function not in WINDOW_FUNCTIONS:
        raise InvalidInput(f"window function must be one of {', '.join(WINDOW_FUNCTIONS)}")
    if not (math.isfinite(center) and math.isfinite(width)):
        raise InvalidInput("window center and width must be finite")
    # PS3.3 C.11.2.1.2: width >= 1 for LINEAR, > 0 for the others
    if width < 1 if function == "linear" else width <= 0:
        raise InvalidInput(f"window width {parts[1]} is too small for {function}")
    return center, width, function


def _quality(value: str) -> int:
    try:
        quality = int(value)
    except ValueError:
        raise InvalidInput(f"quality {value!r} is not an integer") from None
    if not 1 <= quality <= 100:
        raise InvalidInput("quality must be between 1 and 100")
    return quality


def parse_render_params(
    params: Iterable[tuple[str, str]], accept_ranges: list[MediaRange], thumbnail: bool
) -> RenderOptions:
    """Options of a rendered (or thumbnail) request from its query parameters and Accept.

    An ``accept`` query parameter overrides the Accept header (PS3.18 8.3.3.1). Parameters
    this server does not use (annotation, charset, iccprofile...) are ignored.
    """
    seen: dict[str, str] = {}
    for name, value in params:
        if name in seen and name in ("accept", "viewport", "window", "quality"):
            raise InvalidInput(f"query parameter {name} is given twice")
        seen[name] = value
    if "accept" in seen:
        try:
            accept_ranges = parse_accept([seen["accept"]])
        except ValueError as exc:
            raise InvalidInput(f"accept parameter: {exc}") from None
    return RenderOptions(
        media_type=_choose_media_type(accept_ranges),
        viewport=_viewport(seen["viewport"])
        if "viewport" in seen
        else (THUMBNAIL_VIEWPORT if thumbnail else None),
        window=_window(seen["window"]) if "window" in seen else None,
        quality=_quality(seen["quality"]) if "quality" in seen else DEFAULT_QUALITY,
    )


def _apply_window(values: F64, center: float, width: float, function: str) -> F64:
    """PS3.3 C.11.2.1.2 windowing to the 0..255 output range."""
    if function == "sigmoid":
        return 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "linear-exact":
        scaled = (values - center) / width + 0.5
    else:
        # LINEAR: x <= c - 0.5 - (w-1)/2 -> 0, x > c - 0.5 + (w-1)/2 -> 255
        scaled = (values - (center - 0.5)) / max(width - 1.0, 1e-9) + 0.5
    return np.clip(scaled, 0.0, 1.0) * 255.0


def _first(value: Any) -> float:
    """First value of a possibly multi-valued DS/IS element."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return float(value)
    return float(next(iter(value)))


def _grayscale(arr: npt.NDArray[Any], ds: Dataset, options: RenderOptions) -> npt.NDArray[np.uint8]:
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    voi_luts = ds.get("VOILUTSequence")
    if options.window is not None:
        out = _apply_window(values, *options.window)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        function = str(ds.get("VOILUTFunction") or "LINEAR").lower().replace("_", "-")
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
        if function not in WINDOW_FUNCTIONS:
            function = "linear"
        out = _apply_window(values, center, max(width, 1.0), function)
    elif voi_luts:
        bits = int(voi_luts[0].LUTDescriptor[2])
        # the LUT is indexed by (integer) modality values
        lut_out = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0, prefer_lut=True)
        out = np.asarray(lut_out, dtype=np.float64) * (255.0 / (2**bits - 1))
    else:
        low, high = float(values.min()), float(values.max())
        out = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    inverse = ds.get("PhotometricInterpretation") == "MONOCHROME1"
    if ds.get("PresentationLUTShape") == "INVERSE":
        inverse = not inverse
    if inverse:
        out = 255.0 - out
    return np.rint(np.clip(out, 0.0, 255.0)).astype(np.uint8)


def _color(arr: npt.NDArray[Any], ds: Dataset) -> npt.NDArray[np.uint8]:
    if ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        top = 255 if arr.dtype.itemsize == 1 else 65535
    else:  # RGB; YBR was converted to RGB by pixel_array()
        top = 2 ** int(ds.get("BitsStored", 8)) - 1
    if top == 255:
        return np.asarray(arr, dtype=np.uint8)
    scaled = np.asarray(arr, dtype=np.float64) * (255.0 / top)
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def _fit(image: Image.Image, viewport: tuple[int, int] | None) -> Image.Image:
    if viewport is None:
        return image
    scale = min(viewport[0] / image.width, viewport[1] / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def render(path: Path, options: RenderOptions, frame: int = 1) -> bytes:
    """One frame (1-based) of the instance at ``path``, rendered as ``options.media_type``."""
    # Deferred reading keeps pixel data on disk: pixel_array() below reads one frame only.
    ds = dcmread(path, defer_size="64 KB")
    if not any(t in ds for t in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise NotFound("the instance has no pixel data")
    count = int(ds.get("NumberOfFrames") or 1)
    if not 1 <= frame <= count:
        raise NotFound(f"the instance has {count} frame(s), not {frame}")
    try:
        arr = pixel_array(path, index=frame - 1)
    except (NotImplementedError, RuntimeError, ValueError) as exc:
        raise NotAcceptable(f"cannot decode the pixel data to render it: {exc}") from None
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        image = Image.fromarray(_color(arr[..., :3], ds))  # RGB
    elif ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        image = Image.fromarray(_color(arr, ds))
    else:
        image = Image.fromarray(_grayscale(arr, ds, options))  # L
    image = _fit(image, options.viewport)
    buf = io.BytesIO()
    if options.media_type == PNG:
        image.save(buf, format="PNG")
    else:
        image.save(buf, format="JPEG", quality=options.quality)
    return buf.getvalue()
