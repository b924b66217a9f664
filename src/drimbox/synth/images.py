"""Pixel data that looks and compresses like medical images, fast.

Cross-sectional images (CT, MR) come from an ellipse phantom: each structure (body wall,
organs, bones as cortical rings around marrow...) is an ellipse whose normalised radius field is
computed once per series, restricted to its bounding box. A slice is then a handful of
threshold-and-fill operations on those precomputed fields, with structure sizes following the
slice position, plus a smooth texture that drifts along the series and a small noise taken at a
moving offset in one precomputed noise tile. A 512x512 CT slice costs a few milliseconds.

Projection images (CR/DX/localizers), mammograms, ultrasound and NM images use the same idea:
sums of ellipsoid thickness profiles and smooth fields, so that they have large uniform areas
and gradients (they compress like real images) rather than white noise.

Coordinates are normalised to [-1, 1]: ``x`` grows with the column (towards the patient's left
on an axial slice), ``y`` with the row (posterior on an axial slice, inferior on a frontal
projection).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
Anatomy = Literal["trunk", "head", "knee"]
Weighting = Literal["T1", "T2", "FLAIR", "DWI", "T1C", "PDFS"]
ProjectionKind = Literal["chest_pa", "chest_lat", "head", "abdomen", "knee"]

CT_RESCALE_INTERCEPT = -1024
"""CT stored value = HU + 1024 (signed 16-bit, RescaleSlope 1)."""

_NOISE_PAD = 64


@dataclass(frozen=True, slots=True)
class Structure:
    tissue: str
    center: tuple[float, float]
    radii: tuple[float, float]
    z_range: tuple[float, float] = (-1.0, 2.0)
    """Series positions (0..1) where the structure exists."""
    taper: bool = True
    """Shrink to nothing at both ends of ``z_range`` (organs); else constant size."""
    wall: float = 0.0
    """If > 0, draw only a ring of this relative thickness (cortical bone, skull)."""
    inner: str | None = None
    """Tissue filling the inside of a ring (marrow)."""
    angle: float = 0.0

    def scale(self, z: float) -> float:
        z0, z1 = self.z_range
        if not z0 <= z <= z1:
            return 0.0
        if not self.taper:
            return 1.0
        return math.sqrt(max(0.0, math.sin(math.pi * (z - z0) / (z1 - z0))))


def _mirror(s: Structure) -> Structure:
    x, y = s.center
    return Structure(s.tissue, (-x, y), s.radii, s.z_range, s.taper, s.wall, s.inner, -s.angle)


def _pair(s: Structure) -> tuple[Structure, Structure]:
    return s, _mirror(s)


# z = 0 at the pelvis, 1 at the shoulders; anterior is up (negative y).
_TRUNK: tuple[Structure, ...] = (
    Structure("fat", (0.0, 0.02), (0.88, 0.64), taper=False),
    Structure("muscle", (0.0, 0.03), (0.80, 0.57), taper=False),
    Structure("visceral", (0.0, 0.02), (0.72, 0.49), taper=False),
    *_pair(Structure("lung", (0.36, -0.04), (0.30, 0.40), (0.52, 1.02))),
    Structure("heart", (0.12, -0.12), (0.25, 0.22), (0.55, 0.82)),
    Structure("liver", (-0.30, -0.02), (0.40, 0.36), (0.30, 0.62)),
    Structure("spleen", (0.45, 0.12), (0.15, 0.20), (0.38, 0.60)),
    *_pair(Structure("kidney", (0.30, 0.28), (0.12, 0.16), (0.22, 0.46), angle=0.4)),
    Structure("bowel", (-0.25, -0.18), (0.20, 0.14), (0.02, 0.40)),
    Structure("bowel", (0.22, -0.22), (0.22, 0.15), (0.05, 0.38)),
    Structure("gas", (0.05, -0.30), (0.09, 0.06), (0.10, 0.35)),
    Structure("gas", (-0.40, 0.05), (0.07, 0.05), (0.05, 0.30)),
    Structure("fluid", (0.0, -0.05), (0.20, 0.15), (-0.05, 0.14)),
    Structure("vessel", (0.04, 0.26), (0.05, 0.05), (0.18, 0.92), taper=False),
    Structure("vessel", (-0.10, 0.22), (0.06, 0.05), (0.25, 0.55), taper=False),
    Structure("bone", (0.0, 0.40), (0.11, 0.10), taper=False, wall=0.25, inner="marrow"),
    Structure("csf", (0.0, 0.55), (0.04, 0.04), taper=False),
    Structure("bone", (0.0, 0.62), (0.03, 0.05), taper=False),
    *_pair(Structure("bone", (0.48, 0.22), (0.26, 0.14), (-0.02, 0.22), wall=0.3, inner="marrow")),
    Structure("bone", (0.0, -0.50), (0.08, 0.04), (0.60, 0.95), wall=0.35, inner="marrow"),
    *_pair(Structure("bone", (0.56, 0.38), (0.20, 0.05), (0.80, 1.02), angle=-0.5)),
)

# z = 0 at the skull base, 1 at the vertex; the nose is up.
_HEAD: tuple[Structure, ...] = (
    Structure("soft", (0.0, 0.0), (0.70, 0.86), (-0.6, 1.08)),
    Structure("bone", (0.0, 0.0), (0.65, 0.81), (-0.5, 1.05), wall=0.07, inner="csf"),
    Structure("brain_gm", (0.0, 0.0), (0.58, 0.74), (-0.4, 1.02)),
    Structure("brain_wm", (0.0, 0.02), (0.42, 0.58), (0.15, 0.95)),
    *_pair(Structure("csf", (0.08, -0.02), (0.05, 0.20), (0.42, 0.72), angle=0.15)),
    Structure("csf", (0.0, 0.05), (0.02, 0.08), (0.30, 0.50)),
    Structure("brain_gm", (0.0, 0.48), (0.42, 0.26), (-0.05, 0.32)),
    *_pair(Structure("fluid", (0.27, -0.64), (0.11, 0.10), (0.02, 0.30), wall=0.0)),
    Structure("gas", (0.0, -0.58), (0.12, 0.09), (-0.05, 0.22)),
    *_pair(Structure("bone", (0.50, 0.15), (0.10, 0.22), (-0.05, 0.15), wall=0.4, inner="marrow")),
)

# z = 0 in the upper tibia, 1 in the lower femur.
_KNEE: tuple[Structure, ...] = (
    Structure("fat", (0.0, 0.0), (0.76, 0.70), taper=False),
    Structure("muscle", (0.0, 0.08), (0.64, 0.56), (-0.2, 1.2), taper=False),
    Structure("fat", (0.0, 0.35), (0.30, 0.18), (0.35, 0.70)),
    Structure("fluid", (0.0, -0.02), (0.46, 0.32), (0.36, 0.58)),
    Structure("bone", (0.0, 0.02), (0.20, 0.18), (0.58, 1.2), False, 0.2, "marrow"),
    Structure("bone", (0.0, 0.04), (0.40, 0.28), (0.42, 0.66), wall=0.06, inner="marrow"),
    Structure("bone", (0.0, 0.04), (0.38, 0.27), (0.30, 0.46), wall=0.06, inner="marrow"),
    Structure("bone", (0.0, 0.06), (0.22, 0.19), (-0.2, 0.36), False, 0.2, "marrow"),
    Structure("bone", (0.34, 0.22), (0.06, 0.06), (-0.2, 0.34), False, 0.4, "marrow"),
    Structure("bone", (0.0, -0.52), (0.17, 0.08), (0.50, 0.74), wall=0.2, inner="marrow"),
    Structure("soft", (0.0, 0.20), (0.05, 0.04), (0.40, 0.60)),
)

ANATOMIES: Mapping[Anatomy, tuple[Structure, ...]] = {
    "trunk": _TRUNK,
    "head": _HEAD,
    "knee": _KNEE,
}

_CT_HU: dict[str, float] = {
    "air": -1000, "gas": -950, "lung": -860, "fat": -105, "visceral": -40, "muscle": 48,
    "soft": 35, "liver": 62, "spleen": 50, "kidney": 35, "heart": 42, "vessel": 42, "bowel": 28,
    "fluid": 8, "csf": 6, "brain_gm": 40, "brain_wm": 27, "bone": 1150, "marrow": 260,
}  # fmt: skip
_CT_CONTRAST: dict[str, float] = {
    "liver": 110,
    "spleen": 120,
    "kidney": 190,
    "heart": 170,
    "vessel": 220,
    "bowel": 60,
}

_MR_BASE: dict[str, float] = {
    "air": 0, "gas": 0, "lung": 15, "bone": 20, "vessel": 60, "fat": 0, "visceral": 0,
    "muscle": 0, "soft": 0, "liver": 0, "spleen": 0, "kidney": 0, "heart": 0, "bowel": 0,
    "fluid": 0, "csf": 0, "brain_gm": 0, "brain_wm": 0, "marrow": 0,
}  # fmt: skip
_MR_WEIGHTS: dict[Weighting, dict[str, float]] = {
    "T1": {
        "fat": 1100, "visceral": 700, "muscle": 380, "soft": 420, "liver": 520, "spleen": 400,
        "kidney": 450, "heart": 350, "bowel": 350, "fluid": 120, "csf": 110, "brain_gm": 520,
        "brain_wm": 700, "marrow": 950,
    },
    "T2": {
        "fat": 850, "visceral": 600, "muscle": 250, "soft": 350, "liver": 220, "spleen": 500,
        "kidney": 650, "heart": 300, "bowel": 450, "fluid": 1350, "csf": 1400, "brain_gm": 760,
        "brain_wm": 560, "marrow": 700,
    },
    "FLAIR": {
        "fat": 500, "visceral": 420, "muscle": 260, "soft": 330, "liver": 260, "spleen": 380,
        "kidney": 420, "heart": 260, "bowel": 330, "fluid": 90, "csf": 80, "brain_gm": 700,
        "brain_wm": 520, "marrow": 450,
    },
    "DWI": {
        "fat": 60, "visceral": 80, "muscle": 150, "soft": 180, "liver": 220, "spleen": 380,
        "kidney": 300, "heart": 120, "bowel": 160, "fluid": 60, "csf": 60, "brain_gm": 520,
        "brain_wm": 430, "marrow": 120,
    },
    "T1C": {
        "fat": 1100, "visceral": 720, "muscle": 420, "soft": 600, "liver": 800, "spleen": 750,
        "kidney": 900, "heart": 700, "bowel": 600, "fluid": 120, "csf": 110, "brain_gm": 560,
        "brain_wm": 720, "marrow": 950, "vessel": 1000,
    },
    "PDFS": {
        "fat": 140, "visceral": 180, "muscle": 320, "soft": 420, "liver": 300, "spleen": 400,
        "kidney": 420, "heart": 300, "bowel": 300, "fluid": 1300, "csf": 1300, "brain_gm": 600,
        "brain_wm": 500, "marrow": 190,
    },
}  # fmt: skip


def ct_table(contrast: bool) -> dict[str, float]:
    """Tissue -> Hounsfield units."""
    return {**_CT_HU, **(_CT_CONTRAST if contrast else {})}


def mr_table(weighting: Weighting) -> dict[str, float]:
    """Tissue -> MR signal (arbitrary units, 12-bit range)."""
    return {**_MR_BASE, **_MR_WEIGHTS[weighting]}


def _grid(rows: int, cols: int) -> tuple[F32, F32]:
    y = (np.arange(rows, dtype=np.float32) + np.float32(0.5)) * np.float32(2 / rows) - 1
    x = (np.arange(cols, dtype=np.float32) + np.float32(0.5)) * np.float32(2 / cols) - 1
    return x[None, :].astype(np.float32), y[:, None].astype(np.float32)


def smooth_field(rng: np.random.Generator, rows: int, cols: int, cells: int) -> F32:
    """Bilinear upsampling of a ``cells`` x ``cells`` Gaussian grid: smooth, zero-mean, ~unit."""
    coarse = rng.standard_normal((cells + 2, cells + 2)).astype(np.float32)
    yi = np.linspace(0, cells, rows, dtype=np.float32)
    xi = np.linspace(0, cells, cols, dtype=np.float32)
    y0, x0 = yi.astype(np.intp), xi.astype(np.intp)
    wy, wx = (yi - y0)[:, None], (xi - x0)[None, :]
    top = coarse[np.ix_(y0, x0)] * (1 - wx) + coarse[np.ix_(y0, x0 + 1)] * wx
    bottom = coarse[np.ix_(y0 + 1, x0)] * (1 - wx) + coarse[np.ix_(y0 + 1, x0 + 1)] * wx
    return np.asarray(top * (1 - wy) + bottom * wy, dtype=np.float32)


def _ellipse_q(
    x: F32, y: F32, center: tuple[float, float], radii: tuple[float, float], angle: float
) -> F32:
    """Squared normalised radius of an (optionally rotated) ellipse; < 1 inside."""
    dx, dy = x - center[0], y - center[1]
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        dx, dy = dx * c + dy * s, dy * c - dx * s
    return np.asarray((dx / radii[0]) ** 2 + (dy / radii[1]) ** 2, dtype=np.float32)


def _bbox(
    center: tuple[float, float], reach: float, rows: int, cols: int
) -> tuple[slice, slice] | None:
    def span(c: float, n: int) -> slice:
        lo = max(0, math.floor((c - reach + 1) / 2 * n))
        hi = min(n, math.ceil((c + reach + 1) / 2 * n) + 1)
        return slice(lo, max(lo, hi))

    rs, cs = span(center[1], rows), span(center[0], cols)
    if rs.stop <= rs.start or cs.stop <= cs.start:
        return None
    return rs, cs


@dataclass(frozen=True, slots=True)
class _Prepared:
    structure: Structure
    box: tuple[slice, slice]
    q: F32


class CrossSectionPhantom:
    """Precomputed fields of one anatomy at one matrix size; renders slices cheaply."""

    def __init__(self, anatomy: Anatomy, rows: int, cols: int, seed: int) -> None:
        self.rows, self.cols = rows, cols
        rng = np.random.default_rng(seed)
        x, y = _grid(rows, cols)
        self._parts: list[_Prepared] = []
        for s in ANATOMIES[anatomy]:
            box = _bbox(s.center, max(s.radii) * 1.08, rows, cols)
            if box is None:
                continue
            q = _ellipse_q(x[:, box[1]], y[box[0], :], s.center, s.radii, s.angle)
            self._parts.append(_Prepared(s, box, q))
        self._ribs: npt.NDArray[np.bool_] | None = None
        if anatomy == "trunk":
            q_body = _ellipse_q(x, y, (0.0, 0.02), (0.80, 0.57), 0.0)
            theta = np.arctan2(y, x)
            self._ribs = (q_body > 0.72) & (q_body < 0.86) & (np.cos(16 * theta) > 0.45) & (y < 0.5)
        cells = max(4, min(rows, cols) // 24)
        self._texture_a = smooth_field(rng, rows, cols, cells)
        self._texture_b = smooth_field(rng, rows, cols, cells)
        self._noise = rng.standard_normal((rows + _NOISE_PAD, cols + _NOISE_PAD)).astype(np.float32)

    def render(
        self,
        z: float,
        table: Mapping[str, float],
        *,
        texture: float,
        noise: float,
        index: int = 0,
    ) -> F32:
        """One slice at series position ``z`` (0..1), in the units of ``table``."""
        air = table["air"]
        img = np.full((self.rows, self.cols), air, dtype=np.float32)
        body_scale = 1.0 + 0.035 * math.sin(2 * math.pi * 1.3 * z)
        for part in self._parts:
            s = part.structure
            size = s.scale(z) * body_scale
            if size <= 0.0:
                continue
            region = img[part.box]
            outer = part.q < size * size
            if s.wall > 0.0:
                inner = part.q < (size * (1.0 - s.wall)) ** 2
                np.copyto(region, np.float32(table[s.tissue]), where=outer & ~inner)
                if s.inner is not None:
                    np.copyto(region, np.float32(table[s.inner]), where=inner)
            else:
                np.copyto(region, np.float32(table[s.tissue]), where=outer)
        if self._ribs is not None and 0.45 < z < 0.98 and math.sin(2 * math.pi * 9 * z) > -0.3:
            np.copyto(img, np.float32(table["bone"]), where=self._ribs)
        body = img != np.float32(air)
        # Texture drifts with z so neighbouring slices differ smoothly, like real anatomy.
        tex = self._texture_a * np.float32((1.0 - z) * texture)
        tex += self._texture_b * np.float32(z * texture)
        dy, dx = (index * 7) % _NOISE_PAD, (index * 13) % _NOISE_PAD
        tex += self._noise[dy : dy + self.rows, dx : dx + self.cols] * np.float32(noise)
        img += np.where(body, tex, np.float32(0.0))
        return img


def ct_slices(
    anatomy: Anatomy,
    rows: int,
    cols: int,
    count: int,
    z_range: tuple[float, float],
    seed: int,
    *,
    contrast: bool = False,
) -> Iterator[npt.NDArray[np.int16]]:
    """``count`` CT slices from ``z_range[0]`` to ``z_range[1]``, stored values (HU + 1024)."""
    phantom = CrossSectionPhantom(anatomy, rows, cols, seed)
    table = ct_table(contrast)
    for i in range(count):
        z = z_range[0] + (z_range[1] - z_range[0]) * (i / max(1, count - 1))
        hu = phantom.render(z, table, texture=10.0, noise=7.0, index=i)
        stored = np.clip(hu - CT_RESCALE_INTERCEPT, 0, 4095)
        yield np.rint(stored).astype(np.int16)


def mr_slices(
    anatomy: Anatomy,
    rows: int,
    cols: int,
    count: int,
    z_range: tuple[float, float],
    weighting: Weighting,
    seed: int,
) -> Iterator[npt.NDArray[np.uint16]]:
    """``count`` MR slices (12-bit unsigned) with a smooth coil-sensitivity shading."""
    phantom = CrossSectionPhantom(anatomy, rows, cols, seed)
    table = mr_table(weighting)
    x, y = _grid(rows, cols)
    shading = np.asarray(1.1 - 0.25 * (x * x + (y + 0.2) ** 2), dtype=np.float32)
    for i in range(count):
        z = z_range[0] + (z_range[1] - z_range[0]) * (i / max(1, count - 1))
        signal = phantom.render(z, table, texture=25.0, noise=8.0, index=i) * shading
        yield np.rint(np.clip(signal, 0, 4095)).astype(np.uint16)


@dataclass(frozen=True, slots=True)
class _Slab:
    center: tuple[float, float]
    radii: tuple[float, float]
    weight: float
    """Attenuation added at the thickest point (negative: less dense than what is around)."""
    angle: float = 0.0
    wall: float = 0.0
    """Cortical bone: extra attenuation on a rim of this relative thickness."""


_PROJECTIONS: dict[ProjectionKind, tuple[_Slab, ...]] = {
    "chest_pa": (
        _Slab((0.0, 0.15), (0.86, 1.15), 1.0),
        _Slab((0.36, -0.05), (0.28, 0.55), -0.55),
        _Slab((-0.36, -0.05), (0.30, 0.57), -0.55),
        _Slab((0.12, 0.28), (0.30, 0.24), 0.40),
        _Slab((0.0, 0.05), (0.08, 1.3), 0.30, wall=0.3),
        _Slab((0.0, 0.95), (0.9, 0.35), 0.35),
        _Slab((0.30, -0.62), (0.26, 0.035), 0.45, angle=0.25),
        _Slab((-0.30, -0.62), (0.26, 0.035), 0.45, angle=-0.25),
        _Slab((0.70, -0.62), (0.12, 0.16), 0.45, wall=0.3),
        _Slab((-0.70, -0.62), (0.12, 0.16), 0.45, wall=0.3),
    ),
    "chest_lat": (
        _Slab((0.0, 0.15), (0.80, 1.15), 1.0),
        _Slab((0.0, -0.05), (0.55, 0.60), -0.60),
        _Slab((-0.22, 0.25), (0.32, 0.26), 0.40),
        _Slab((0.58, 0.05), (0.10, 1.3), 0.60, wall=0.3),
        _Slab((-0.72, 0.0), (0.05, 0.5), 0.35),
        _Slab((0.0, 0.95), (0.9, 0.35), 0.35),
    ),
    "head": (
        _Slab((0.0, 0.0), (0.72, 0.88), 0.6),
        _Slab((0.0, -0.05), (0.68, 0.82), 0.9, wall=0.1),
        _Slab((0.0, 0.62), (0.22, 0.3), 0.5),
        _Slab((0.3, -0.2), (0.12, 0.1), -0.2),
        _Slab((-0.3, -0.2), (0.12, 0.1), -0.2),
        _Slab((0.0, 0.35), (0.5, 0.12), 0.4),
    ),
    "abdomen": (
        _Slab((0.0, 0.0), (0.88, 1.3), 1.0),
        _Slab((-0.35, -0.55), (0.45, 0.35), 0.25),
        _Slab((0.0, 0.1), (0.09, 1.4), 0.55, wall=0.3),
        _Slab((0.45, 0.75), (0.35, 0.25), 0.45, wall=0.25),
        _Slab((-0.45, 0.75), (0.35, 0.25), 0.45, wall=0.25),
        _Slab((0.2, 0.0), (0.1, 0.08), -0.35),
        _Slab((-0.15, 0.2), (0.12, 0.07), -0.35),
    ),
    "knee": (
        _Slab((0.0, 0.0), (0.55, 1.4), 0.7),
        _Slab((0.0, -0.6), (0.2, 0.6), 0.8, wall=0.25),
        _Slab((0.0, -0.05), (0.38, 0.14), 0.6, wall=0.2),
        _Slab((0.0, 0.18), (0.36, 0.1), 0.6, wall=0.2),
        _Slab((0.0, 0.62), (0.2, 0.5), 0.8, wall=0.25),
        _Slab((0.3, 0.6), (0.06, 0.45), 0.4, wall=0.3),
    ),
}


def projection(kind: ProjectionKind, rows: int, cols: int, seed: int) -> npt.NDArray[np.uint16]:
    """A radiograph-like 12-bit image, bone bright (MONOCHROME2, for presentation)."""
    rng = np.random.default_rng(seed)
    x, y = _grid(rows, cols)
    att = np.zeros((rows, cols), dtype=np.float32)
    for slab in _PROJECTIONS[kind]:
        box = _bbox(slab.center, max(slab.radii) * 1.02, rows, cols)
        if box is None:
            continue
        q = _ellipse_q(x[:, box[1]], y[box[0], :], slab.center, slab.radii, slab.angle)
        thickness = np.sqrt(np.maximum(np.float32(0.0), 1 - q))
        if slab.wall:
            rim = (q < 1) & (q > (1 - slab.wall) ** 2)
            thickness += rim * np.float32(0.8)
        att[box] += thickness * np.float32(slab.weight)
    if kind == "chest_pa":
        # Ribs: curved bands over the lung fields, interrupted at the spine.
        ribs = np.cos(2 * np.pi * 7 * (y + 0.35 * x * x)) > 0.75
        ribs &= (np.abs(x) > 0.1) & (np.abs(x) < 0.8) & (y > -0.8) & (y < 0.55)
        att += ribs * np.float32(0.15)
    att += smooth_field(rng, rows, cols, 12) * np.float32(0.03)
    att += rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.006)
    image = 180 + 2600 * np.clip(att, 0, 1.5)
    return np.rint(np.clip(image, 0, 4095)).astype(np.uint16)


def mammogram(
    rows: int, cols: int, laterality: Literal["R", "L"], view: Literal["CC", "MLO"], seed: int
) -> npt.NDArray[np.uint16]:
    """A 12-bit mammogram: chest wall on the right edge for R views, left edge for L views."""
    rng = np.random.default_rng(seed)
    x, y = _grid(rows, cols)
    wall_x = np.float32(1.0 if laterality == "R" else -1.0)
    depth = np.abs(x - wall_x) / 2  # 0 at the chest wall, 1 at the opposite edge
    centre_y, ry = (0.0, 0.78) if view == "CC" else (0.1, 0.92)
    q = (depth / 0.78) ** 2 + ((y - centre_y) / ry) ** 2
    breast = q < 1
    thickness = np.sqrt(np.clip(1 - q, 0, 1))
    glands = smooth_field(rng, rows, cols, 10) + 0.5 * smooth_field(rng, rows, cols, 30)
    dense = np.clip(glands - 0.1, 0, None) * np.clip(1.1 - depth / 0.8, 0, 1)
    image = np.where(breast, 450 + 1300 * thickness + 600 * dense, 60)
    if view == "MLO":  # pectoral muscle: a bright triangle in the upper chest-wall corner
        pectoral = depth < 0.35 * (1 - (y + 1) / 1.3)
        image = np.where(pectoral & breast, image + 600, image)
    skin = breast & (q > 0.97)
    image = np.where(skin, image + 150, image)
    image = image + rng.standard_normal((rows, cols), dtype=np.float32) * breast * 6
    stored: npt.NDArray[np.uint16] = np.rint(np.clip(image, 0, 4095)).astype(np.uint16)
    return stored


def ultrasound_frames(
    rows: int, cols: int, count: int, seed: int
) -> Iterator[npt.NDArray[np.uint8]]:
    """B-mode-like 8-bit frames: a sector with echo texture, an organ and anechoic vessels."""
    rng = np.random.default_rng(seed)
    x, y = _grid(rows, cols)
    apex_y = np.float32(-1.05)
    radius = np.sqrt(x * x * (cols / rows) ** 2 + (y - apex_y) ** 2)
    angle = np.arctan2(x * (cols / rows), y - apex_y)
    sector = (np.abs(angle) < 0.62) & (radius > 0.12) & (radius < 2.0)
    depth_gain = np.clip(1.1 - 0.35 * radius, 0.3, 1.0)
    speckle = smooth_field(rng, rows, cols, max(8, rows // 6))
    coarse = smooth_field(rng, rows, cols, 6)
    for i in range(count):
        shift = 0.25 * math.sin(i * 0.7)
        organ = ((x - shift) / 0.8) ** 2 + ((y - 0.1) / 0.55) ** 2 < 1
        vessel = ((x + 0.1 - shift) / 0.09) ** 2 + ((y - 0.0 - 0.1 * math.cos(i)) / 0.07) ** 2 < 1
        echo = 55 + 14 * coarse + 16 * speckle + 30 * organ
        echo = np.where(vessel, 6, echo) * depth_gain
        frame = np.where(sector, echo, 0)
        yield np.rint(np.clip(frame, 0, 255)).astype(np.uint8)


def nm_image(rows: int, cols: int, seed: int, *, oblique: bool = False) -> npt.NDArray[np.uint16]:
    """A thyroid scintigraphy view: two lobes and an isthmus, Poisson counts."""
    rng = np.random.default_rng(seed)
    x, y = _grid(rows, cols)
    tilt = 0.3 if oblique else 0.0
    activity = np.full((rows, cols), 3.0, dtype=np.float32)
    for cx, weight in ((0.2, 1.0), (-0.2, 0.85)):
        q = _ellipse_q(x, y, (cx, 0.05), (0.11, 0.28), tilt if cx > 0 else -tilt)
        activity += np.float32(120 * weight) * np.clip(1 - q, 0, None)
    q_isthmus = _ellipse_q(x, y, (0.0, 0.18), (0.12, 0.05), 0.0)
    activity += np.float32(40) * np.clip(1 - q_isthmus, 0, None)
    for cx in (0.45, -0.45):  # salivary glands
        gland = _ellipse_q(x, y, (cx, -0.6), (0.1, 0.1), 0.0)
        activity += np.float32(25) * np.clip(1 - gland, 0, None)
    counts: npt.NDArray[np.uint16] = rng.poisson(activity).astype(np.uint16)
    return counts
