"""The objects of the synthetic detection scenes: five shape classes that differ by outline and texture, their
sampling (size, aspect, rotation, placement) and rendering."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from segdet.data.synthetic.common import _LN2, _SHIFT, _blend, _cos_sin, _directions, _exp, _fill_alpha, _fixed, _log

DET_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
_MIN_BOX_SIDE = 4  # px, smallest allowed visible box side
_OCCLUDED_BELOW = 0.95  # visible fraction under which <occluded> is 1
_MIN_INSIDE_FRACTION = 0.35  # part of an object that must lie inside the image
_OBJECT_SIZE = (0.05, 0.6)  # default object side range, fractions of the image side (drawn log-uniformly)
_CIRCLE_DIRS = _directions([2.0 * math.pi * i / 72 for i in range(72)])
_STAR_DIRS = _directions([-math.pi / 2 + i * math.pi / 5 for i in range(10)])


# --------------------------------------------------------------------------- #
# Pascal VOC-like detection scenes
# --------------------------------------------------------------------------- #
@dataclass
class _SceneObject:
    """One placed object. Window arrays cover image rows ``y0:y1``, cols ``x0:x1``."""

    name: str
    x0: int
    y0: int
    x1: int
    y1: int
    alpha: np.ndarray  # float32 (h, w) anti-aliased coverage
    mask: np.ndarray  # bool (h, w) own pixels (alpha >= 0.5)
    texture: np.ndarray  # float32 (h, w, 3) RGB
    area: int  # own pixels inside the image
    truncated: bool
    # Filled in after all objects are placed:
    box: tuple[int, int, int, int] = (0, 0, 0, 0)  # VOC 1-based inclusive xmin, ymin, xmax, ymax
    visible_fraction: float = 1.0

    @property
    def occluded(self) -> bool:
        return self.visible_fraction < _OCCLUDED_BELOW


def _unit_polygon(rng: np.random.Generator, name: str) -> np.ndarray:
    """Class outline in unit object coordinates spanning about ``[-1, 1]^2``, ``(N, 2)``."""
    if name == "circle":
        return _CIRCLE_DIRS.copy()
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    if name == "triangle":
        return np.array([[0, -1], [1, 1], [-1, 1]], np.float64)
    if name == "star":
        inner = rng.uniform(0.38, 0.5)
        rad = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        pts = rad[:, None] * _STAR_DIRS
        pts[:, 1] += 0.095  # centre the star's vertical extent (-1 .. 0.81)
        return pts
    if name == "cross":
        w = rng.uniform(0.3, 0.45)
        return np.array(
            [
                [-w, -1],
                [w, -1],
                [w, -w],
                [1, -w],
                [1, w],
                [w, w],
                [w, 1],
                [-w, 1],
                [-w, w],
                [-1, w],
                [-1, -w],
                [-w, -w],
            ],
            np.float64,
        )
    raise ValueError(f"unknown class {name!r}")


def _pick_colours(rng: np.random.Generator, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two well-separated colours from the shared palette (class independent)."""
    i = int(rng.integers(len(palette)))
    c1 = palette[i]
    dist = np.linalg.norm(palette - c1, axis=1)
    order = np.argsort(-dist, kind="stable")
    c2 = palette[int(order[int(rng.integers(2))])]
    # (whole-number colours, so the BLAS dot inside norm is exact on every CPU kernel)
    if np.linalg.norm(c2 - c1) < 90.0:  # palette too uniform: use a contrasting shade
        c2 = np.where(c1 > 127.0, c1 * 0.35, c1 + (255.0 - c1) * 0.65).astype(np.float32)
    return c1, c2


def _object_texture(
    rng: np.random.Generator,
    name: str,
    a: np.ndarray,
    b: np.ndarray,
    hw: float,
    hh: float,
    c1: np.ndarray,
    c2: np.ndarray,
) -> np.ndarray:
    """Class texture on a window; ``a``/``b`` are pixel offsets along the object axes.

    circle = radial shading, square = stripes, triangle = checkerboard,
    star = polka dots, cross = solid (its outline is drawn by the caller).
    Returns float32 ``(h, w, 3)``.
    """
    side = 2.0 * max(hw, hh)
    if name == "circle":
        u, v = a / hw + 0.35, b / hh + 0.35
        rn = np.clip(np.sqrt(u * u + v * v) / 1.35, 0.0, 1.0)
        # gamma-like shading rn**g, g in [0.8, 1.5], as the bias curve through (0, 0),
        # (0.5, 0.5**g) and (1, 1): no float power (its SIMD kernels differ by CPU)
        k = 2.0 * (_exp((rng.uniform(0.8, 1.5) - 1.0) * _LN2) - 1.0)
        t = rn / (k * (1.0 - rn) + 1.0)
    elif name == "square":
        period = max(3.0, side / rng.uniform(3.0, 6.0))
        t = (np.floor(a / (period / 2.0)) % 2.0).astype(np.float32)
    elif name == "triangle":
        cell = max(2.0, side / rng.uniform(4.0, 7.0))
        t = ((np.floor(a / cell) + np.floor(b / cell)) % 2.0).astype(np.float32)
    elif name == "star":
        period = max(4.0, side / rng.uniform(3.0, 5.0))
        fa = a / period - np.round(a / period)
        fb = b / period - np.round(b / period)
        t = (np.sqrt(fa * fa + fb * fb) < rng.uniform(0.22, 0.32)).astype(np.float32)
    else:  # cross: solid
        t = np.zeros_like(a)
    t = t.astype(np.float32)[..., None]
    tex = c1[None, None, :] * (1.0 - t) + c2[None, None, :] * t
    # mild class-independent shading
    cos_phi, sin_phi = _cos_sin(rng.uniform(0.0, 2.0 * math.pi))
    shade = 1.0 + rng.uniform(0.0, 0.15) * (a * cos_phi + b * sin_phi) / max(side, 1.0)
    return (tex * shade[..., None]).astype(np.float32)


def _sample_object(
    rng: np.random.Generator, size: int, palette: np.ndarray, object_size: tuple[float, float] = _OBJECT_SIZE
) -> _SceneObject | None:
    """Sample class, geometry and texture of one object; None if unusable."""
    s = float(size)
    name = DET_CLASSES[int(rng.integers(len(DET_CLASSES)))]
    lo, hi = max(object_size[0] * s, 6.0), object_size[1] * s
    side = _exp(rng.uniform(_log(lo), _log(hi)))
    ar = rng.uniform(0.7, 1.4)
    hw, hh = side * math.sqrt(ar) / 2.0, side / math.sqrt(ar) / 2.0
    theta = rng.uniform(0.0, 2.0 * math.pi)
    unit = _unit_polygon(rng, name)
    ct, st = _cos_sin(theta)
    ox = hw * unit[:, 0] * ct - hh * unit[:, 1] * st
    oy = hw * unit[:, 0] * st + hh * unit[:, 1] * ct
    # Mostly fully inside; otherwise anywhere, so some objects cross the border.
    lo_x, hi_x = -ox.min(), s - 1.0 - ox.max()
    lo_y, hi_y = -oy.min(), s - 1.0 - oy.max()
    if rng.random() < 0.6 and lo_x < hi_x and lo_y < hi_y:
        cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    else:
        margin = 0.1 * side
        cx, cy = rng.uniform(-margin, s - 1.0 + margin, 2)
    px, py = cx + ox, cy + oy
    c1, c2 = _pick_colours(rng, palette)
    # full window (may extend past the image) so truncation can be measured
    wx0, wy0 = int(math.floor(px.min())) - 2, int(math.floor(py.min())) - 2
    wx1, wy1 = int(math.ceil(px.max())) + 3, int(math.ceil(py.max())) + 3
    poly = np.stack([px - wx0, py - wy0], axis=1)
    full_alpha = _fill_alpha(wy1 - wy0, wx1 - wx0, poly)
    full_area = int(np.count_nonzero(full_alpha >= 0.5))

    x0, y0, x1, y1 = max(wx0, 0), max(wy0, 0), min(wx1, size), min(wy1, size)
    if x1 <= x0 or y1 <= y0 or full_area == 0:
        return None
    alpha = full_alpha[y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
    mask = alpha >= 0.5
    area = int(np.count_nonzero(mask))
    if area < _MIN_INSIDE_FRACTION * full_area or area < _MIN_BOX_SIDE**2:
        return None

    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    a, b = dx * ct + dy * st, -dx * st + dy * ct
    texture = _object_texture(rng, name, a, b, hw, hh, c1, c2)
    if name == "cross":  # contrasting outline
        outline = np.zeros(mask.shape, np.uint8)
        thick = max(2, int(round(side * 0.16)))
        shifted = np.stack([px - x0, py - y0], axis=1)
        cv2.polylines(outline, [_fixed(shifted)], True, 255, thick, cv2.LINE_AA, _SHIFT)
        _blend(texture, c2, outline.astype(np.float32) / 255.0)
    return _SceneObject(
        name=name,
        x0=x0,
        y0=y0,
        x1=x1,
        y1=y1,
        alpha=alpha,
        mask=mask,
        texture=texture,
        area=area,
        truncated=area < full_area,
    )


def _visible_box(vis: np.ndarray) -> tuple[int, int, int, int] | None:
    """0-based inclusive (c0, r0, c1, r1) of True pixels, None if empty."""
    rows = np.flatnonzero(vis.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(vis.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def _box_ok(box: tuple[int, int, int, int] | None) -> bool:
    return box is not None and min(box[2] - box[0], box[3] - box[1]) + 1 >= _MIN_BOX_SIDE
