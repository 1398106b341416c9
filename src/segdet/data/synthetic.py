"""Deterministic synthetic datasets that mimic ISIC 2018 Task 1 and Pascal VOC.

Two generators are provided:

* :func:`generate_isic` -- dermoscopy-like skin-lesion photographs with a binary
  lesion mask (ISIC 2018 Task 1 file layout).
* :func:`generate_voc` -- cluttered detection scenes of five shape classes with
  Pascal VOC XML annotations (``JPEGImages`` / ``Annotations`` /
  ``ImageSets/Main``).

Determinism: every image gets its own random generator derived from
``np.random.SeedSequence([seed, kind_tag, index])``, so image ``i`` is identical
whatever the number of generated images, and the same arguments always produce
byte-identical files (JPEG via Pillow with fixed quality and chroma subsampling,
PNG via Pillow).

Across CPUs: the VOC data are the same bytes on every x86-64 machine, whatever
SIMD kernels NumPy and OpenCV dispatch to (AVX-512, AVX2, SSE), whichever libm
variant glibc picks and however many threads OpenCV runs: everything that reaches
a pixel is IEEE-754 basic arithmetic (see "Portable arithmetic" below; the JPEG
encoder's integer DCT is exact on every SIMD path too). The one libm use left is
inside NumPy's normal sampler (exp / log1p in the ziggurat's rare wedge and tail
branches), where a last-bit libm difference could change a file only with a
probability far below one in a billion. The ISIC generator keeps its library
kernels (float ``np.exp``, ``cv2.GaussianBlur``, ``cv2.resize``) so that its data
stay as they were: they are the same bytes on every CPU with AVX2 and FMA (any
x86-64 from 2013 on), but differ on an older CPU without AVX2 or with
``cv2.setUseOptimized(False)``.

Conventions used below: images are ``uint8`` arrays of shape ``(H, W, 3)`` in
RGB order (float work buffers are ``float32`` in ``[0, 255]``), masks are
``(H, W)`` arrays, coordinates are ``(x, y)`` pixel positions with the pixel
centre at integer coordinates.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

__all__ = ["DET_CLASSES", "generate_isic", "generate_voc"]

DET_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

_ISIC_TAG = 1
_VOC_TAG = 2
_JPEG_QUALITY = 92
_JPEG_SUBSAMPLING = 0  # 4:4:4, fixed so files are reproducible
_SHIFT = 4  # fractional bits for sub-pixel cv2 drawing
_ONE = 1 << _SHIFT

_MIN_ISIC_SIZE = 16
_MIN_VOC_SIZE = 32

_MIN_VISIBLE_FRACTION = 0.4  # reject placements hiding more of an earlier object
_MIN_BOX_SIDE = 4  # px, smallest allowed visible box side
_OCCLUDED_BELOW = 0.95  # visible fraction under which <occluded> is 1
_MIN_INSIDE_FRACTION = 0.35  # part of an object that must lie inside the image
_ATTEMPTS_PER_OBJECT = 25


# --------------------------------------------------------------------------- #
# Shared helpers
# --------------------------------------------------------------------------- #
def _image_rng(seed: int, kind_tag: int, index: int) -> np.random.Generator:
    """Independent generator for image ``index`` of dataset kind ``kind_tag``."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return np.random.default_rng(np.random.SeedSequence([seed, kind_tag, index]))


def _check_common(num_images: int, image_size: int, minimum: int) -> None:
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    if image_size < minimum:
        raise ValueError(f"image_size must be >= {minimum}, got {image_size}")


def _smooth_noise(
    rng: np.random.Generator,
    height: int,
    width: int,
    cells: int,
    channels: int = 1,
    *,
    portable: bool = False,
) -> np.ndarray:
    """Low-frequency noise: a ``cells x cells`` Gaussian grid upsampled (bicubic).

    ``portable`` upsamples with :func:`_resize_cubic` (the same bits on every CPU)
    instead of ``cv2.resize``, whose optimised and plain kernels differ in the
    last bits. Returns float32 ``(H, W)`` (``channels == 1``) or
    ``(H, W, channels)``, normalised to zero mean and unit standard deviation.
    """
    cells = max(2, int(cells))
    shape = (cells, cells) if channels == 1 else (cells, cells, channels)
    small = rng.standard_normal(shape).astype(np.float32)
    if portable:
        big = _resize_cubic(small, height, width)
    else:  # ISIC: OpenCV's kernel, kept so that the ISIC data stay byte for byte as they were
        big = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    big = big.reshape(height, width) if channels == 1 else big.reshape(height, width, channels)
    big -= big.mean()
    return big / (big.std() + 1e-6)


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinate grids ``(yy, xx)``, float32 ``(H, W)`` each."""
    yy, xx = np.mgrid[0:height, 0:width]
    return yy.astype(np.float32), xx.astype(np.float32)


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float ``(N, 2)`` (x, y) points -> int32 fixed-point for cv2 ``shift=_SHIFT``."""
    return np.round(np.asarray(points, dtype=np.float64) * _ONE).astype(np.int32)


def _pt(x: float, y: float) -> tuple[int, int]:
    """A point as a fixed-point ``(x, y)`` tuple for cv2 ``shift=_SHIFT``."""
    return int(round(x * _ONE)), int(round(y * _ONE))


def _fill_alpha(height: int, width: int, polygon: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a polygon, float32 ``(H, W)`` in ``[0, 1]``."""
    layer = np.zeros((height, width), np.uint8)
    cv2.fillPoly(layer, [_fixed(polygon)], 255, cv2.LINE_AA, _SHIFT)
    return layer.astype(np.float32) / 255.0


def _blend(image: np.ndarray, colour: np.ndarray | float, alpha: np.ndarray) -> None:
    """In place ``image = image * (1 - alpha) + colour * alpha`` (alpha ``(H, W)``)."""
    a = alpha[..., None]
    image *= 1.0 - a
    image += np.asarray(colour, np.float32) * a


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _save_jpeg(path: Path, rgb: np.ndarray) -> None:
    """Save a ``(H, W, 3)`` uint8 RGB array as a reproducible JPEG."""
    Image.fromarray(rgb).save(path, format="JPEG", quality=_JPEG_QUALITY, subsampling=_JPEG_SUBSAMPLING)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------- #
# Portable arithmetic (VOC): the same bits on every x86 CPU
# --------------------------------------------------------------------------- #
# NumPy, OpenCV and glibc choose SIMD kernels and FMA variants at run time from the
# CPU's features, and their transcendental and filtering kernels do not agree in the
# last bit across those paths: NumPy's ``power`` on float arrays is Intel SVML on an
# AVX-512 CPU and another kernel elsewhere, ``cv2.cvtColor(HSV2RGB)`` and a float
# ``cv2.resize`` differ between their AVX2, SSE and plain-C code, libm's exp/log/sin/cos
# between its FMA and non-FMA variants. A last-bit difference then flips a pixel's
# rounding (or a fixed-point vertex) now and then, and the files differ. The VOC
# generator therefore computes everything that reaches a pixel from IEEE-754 basic
# operations only: + - * /, sqrt, floor and rounding, one NumPy ufunc or Python float
# operation at a time. These are correctly rounded on every SIMD path and never fused,
# so the results cannot depend on the CPU or on thread counts (OpenCV is used only for
# its integer rasterisers: fillPoly, polylines, line, ellipse).
_LN2 = 0.6931471805599453  # the double nearest to ln 2
_HALF_PI = 0.5 * math.pi


def _exp(x: float) -> float:
    """``e**x`` from + - * / and ``ldexp`` only (libm's exp may differ in the last bit by CPU)."""
    k = math.floor(x / _LN2 + 0.5)
    r = x - k * _LN2  # |r| <= ~0.35
    term = total = 1.0
    for n in range(1, 19):
        term = term * r / n
        total += term
    return math.ldexp(total, k)


def _log(x: float) -> float:
    """Natural logarithm of ``x > 0`` from + - * / and ``frexp`` only."""
    m, e = math.frexp(x)  # x = m * 2**e, 0.5 <= m < 1
    if m < 0.7071067811865476:
        m, e = 2.0 * m, e - 1
    f = (m - 1.0) / (m + 1.0)  # |f| <= 0.172: log(m) = 2 (f + f**3/3 + f**5/5 + ...)
    f2 = f * f
    term = total = f
    for n in range(3, 41, 2):
        term = term * f2
        total += term / n
    return 2.0 * total + e * _LN2


def _cos_sin(x: float) -> tuple[float, float]:
    """``(cos x, sin x)`` from + - * / only (Taylor series after reduction to ``|r| <= pi/4``)."""
    k = math.floor(x / _HALF_PI + 0.5)
    r = x - k * _HALF_PI
    r2 = r * r
    c = term_c = 1.0
    s = term_s = r
    for n in range(1, 12):
        term_c = -term_c * r2 / ((2 * n - 1) * (2 * n))
        term_s = -term_s * r2 / ((2 * n) * (2 * n + 1))
        c += term_c
        s += term_s
    return ((c, s), (-s, c), (-c, -s), (s, -c))[k % 4]


def _directions(angles: list[float]) -> np.ndarray:
    """Unit vectors ``(cos a, sin a)`` as float64 ``(N, 2)``."""
    return np.array([_cos_sin(a) for a in angles], np.float64)


_CIRCLE_DIRS = _directions([2.0 * math.pi * i / 72 for i in range(72)])
_STAR_DIRS = _directions([-math.pi / 2 + i * math.pi / 5 for i in range(10)])


def _cubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, both ``(n_out, 4)``, of a bicubic upsampling.

    The kernel of ``cv2.resize(INTER_CUBIC)``: pixel centres aligned, ``a = -0.75``,
    edge pixels replicated.
    """
    f = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    i0 = np.floor(f)
    x = f - i0
    y = 1.0 - x
    a = -0.75
    w0 = ((a * (x + 1.0) - 5.0 * a) * (x + 1.0) + 8.0 * a) * (x + 1.0) - 4.0 * a
    w1 = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    w2 = ((a + 2.0) * y - (a + 3.0)) * y * y + 1.0
    w3 = 1.0 - w0 - w1 - w2
    idx = np.clip(i0.astype(np.int64)[:, None] + np.arange(-1, 3), 0, n_in - 1)
    return idx, np.stack([w0, w1, w2, w3], axis=1)


def _resize_cubic(small: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic upsampling of ``(h, w[, C])`` to ``(height, width[, C])`` float32, in NumPy.

    Separable 4-tap sums of elementwise products, each one ufunc call, so the result
    has the same bits on every CPU (unlike ``cv2.resize`` on floats).
    """
    src = np.asarray(small, np.float32)
    planes = src[None] if src.ndim == 2 else np.moveaxis(src, -1, 0)  # (C, h, w): long inner loops
    row_idx, row_w = _cubic_taps(src.shape[0], height)
    col_idx, col_w = _cubic_taps(src.shape[1], width)
    row_w, col_w = row_w.astype(np.float32), col_w.astype(np.float32)
    cols = np.zeros((planes.shape[0], src.shape[0], width), np.float32)  # along x first, on the few source rows
    for k in range(4):
        cols += col_w[:, k] * planes[:, :, col_idx[:, k]]
    out = np.zeros((planes.shape[0], height, width), np.float32)
    tap = np.empty_like(out)
    for k in range(4):
        np.take(cols, row_idx[:, k], axis=1, out=tap)
        tap *= row_w[:, k, None]
        out += tap
    return out[0] if src.ndim == 2 else np.ascontiguousarray(np.moveaxis(out, 0, -1))


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """8-bit HSV (OpenCV ranges: H 0..179, S and V 0..255) ``(N, 3)`` -> RGB float32 ``(N, 3)``.

    The HSV cone formula that ``cv2.COLOR_HSV2RGB`` approximates (within 1 of it),
    rounded to nearest in exact integer arithmetic: cvtColor's own AVX2 and
    SSE/plain-C code paths disagree by 1 for some colours.
    """
    den = 255 * 30  # H / 30 = sector + rem / 30, S / 255
    rgb = []
    for h, s, v in np.asarray(hsv).astype(np.int64).tolist():
        sector, rem = divmod(h, 30)
        top = v * den
        p = v * (255 - s) * 30
        q = v * (den - s * rem)
        t = v * (den - s * (30 - rem))
        channels = ((top, t, p), (q, top, p), (p, top, t), (p, q, top), (t, p, top), (top, p, q))[sector % 6]
        rgb.append([(2 * c + den) // (2 * den) for c in channels])
    return np.array(rgb, np.float32)


# --------------------------------------------------------------------------- #
# ISIC-like skin lesions
# --------------------------------------------------------------------------- #
_SKIN_LIGHT = np.array([238.0, 200.0, 180.0], np.float32)
_SKIN_DARK = np.array([128.0, 86.0, 62.0], np.float32)

# Lesion colours as per-channel multipliers of the local skin colour (< 1 = darker).
_LESION_DARK = np.array([0.30, 0.22, 0.19], np.float32)
_LESION_LIGHT = np.array([0.76, 0.63, 0.55], np.float32)
_LESION_SPECIAL = (
    np.array([0.46, 0.50, 0.60], np.float32),  # bluish-grey veil
    np.array([0.82, 0.50, 0.48], np.float32),  # reddish / vascular
    np.array([0.16, 0.13, 0.13], np.float32),  # near black
)


def _render_isic(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render one lesion image.

    Returns ``(image, mask)``: uint8 RGB ``(size, size, 3)`` and bool
    ``(size, size)`` lesion mask (True = lesion).
    """
    s = float(size)
    yy, xx = _grid(size, size)

    # ---- skin -------------------------------------------------------------
    tone = rng.uniform(0.0, 1.0) ** 1.4  # more light than dark skin
    base = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * tone
    base = base * rng.uniform(0.94, 1.06, 3).astype(np.float32)
    broad = _smooth_noise(rng, size, size, int(rng.integers(3, 7)))
    tint = _smooth_noise(rng, size, size, int(rng.integers(6, 14)), channels=3)
    fine = _smooth_noise(rng, size, size, max(4, size // 5))
    skin = base[None, None, :] * (
        1.0
        + rng.uniform(0.03, 0.08) * broad[..., None]
        + rng.uniform(0.01, 0.03) * tint
        + rng.uniform(0.01, 0.025) * fine[..., None]
    )

    # ---- lesion outline: r(t) = R (1 + sum_k a_k cos(k t + phi_k)) ---------
    ks = np.arange(2, 8, dtype=np.float64)
    amp_scale = rng.uniform(0.05, 0.45)
    amps = amp_scale * rng.uniform(0.2, 1.0, ks.size) / (ks - 1.0) ** 0.6
    if amps.sum() > 0.8:
        amps *= 0.8 / amps.sum()
    phases = rng.uniform(0.0, 2.0 * math.pi, ks.size)
    area_fraction = math.exp(rng.uniform(math.log(0.02), math.log(0.85)))
    radius = s * math.sqrt(area_fraction / (math.pi * (1.0 + 0.5 * float(np.sum(amps**2)))))
    aspect = rng.uniform(0.65, 1.0)
    ax, ay = 1.0 / math.sqrt(aspect), math.sqrt(aspect)
    theta = rng.uniform(0.0, math.pi)
    cx = s / 2 + float(np.clip(rng.normal(0.0, 0.09 * s), -0.2 * s, 0.2 * s))
    cy = s / 2 + float(np.clip(rng.normal(0.0, 0.09 * s), -0.2 * s, 0.2 * s))
    t = np.linspace(0.0, 2.0 * math.pi, 360, endpoint=False)
    r = radius * (1.0 + (amps[:, None] * np.cos(ks[:, None] * t + phases[:, None])).sum(0))
    px, py = r * np.cos(t) * ax, r * np.sin(t) * ay
    ct, st = math.cos(theta), math.sin(theta)
    polygon = np.stack([cx + px * ct - py * st, cy + px * st + py * ct], axis=1)
    alpha = _fill_alpha(size, size, polygon)
    if rng.random() < 0.5:  # fuzzy border
        alpha = cv2.GaussianBlur(alpha, (0, 0), rng.uniform(0.008, 0.035) * s)
    mask = alpha >= 0.5

    # ---- lesion colour ----------------------------------------------------
    darkness = rng.uniform(0.0, 1.0)
    c_main = _LESION_DARK + (_LESION_LIGHT - _LESION_DARK) * darkness
    other = float(np.clip(darkness + rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.45), 0, 1))
    c_other = _LESION_DARK + (_LESION_LIGHT - _LESION_DARK) * other
    mix = _sigmoid(_smooth_noise(rng, size, size, int(rng.integers(3, 7))) * rng.uniform(1.0, 3.0))
    ratio = c_main * (1.0 - mix[..., None]) + c_other * mix[..., None]
    # darker centre
    rel = np.hypot(xx - cx, yy - cy) / max(radius * ax, 1.0)
    centre = 1.0 - np.clip(rel, 0.0, 1.0)
    ratio *= (1.0 - rng.uniform(0.0, 0.3) * centre)[..., None]
    if rng.random() < 0.35:  # bluish-grey / reddish / black region
        special = _LESION_SPECIAL[int(rng.integers(len(_LESION_SPECIAL)))]
        field = _smooth_noise(rng, size, size, int(rng.integers(3, 6)))
        weight = np.clip((field - rng.uniform(0.0, 1.0)) * 1.5, 0.0, 1.0) * rng.uniform(0.5, 0.9)
        ratio += (special - ratio) * weight[..., None]
    grain = _smooth_noise(rng, size, size, max(4, size // 8))
    ratio *= (1.0 + rng.uniform(0.03, 0.08) * grain)[..., None]
    # dots / globules
    inside = np.flatnonzero(mask)
    n_dots = int(rng.integers(3, 30)) if rng.random() < 0.6 else 0
    if n_dots and inside.size:
        dots = np.zeros((size, size), np.uint8)
        for idx in rng.choice(inside, size=n_dots):
            y, x = divmod(int(idx), size)
            rad = max(0.7, rng.uniform(0.005, 0.018) * s)
            cv2.circle(dots, _pt(x, y), int(round(rad * _ONE)), 255, -1, cv2.LINE_AA, _SHIFT)
        dots_f = cv2.GaussianBlur(dots.astype(np.float32) / 255.0, (0, 0), 0.6)
        ratio *= (1.0 - rng.uniform(0.3, 0.6) * dots_f)[..., None]
    lesion = skin * ratio

    image = skin.copy()
    _blend(image, lesion, alpha)

    # ---- lighting and vignetting -----------------------------------------
    phi = rng.uniform(0.0, 2.0 * math.pi)
    gradient = ((xx - s / 2) * math.cos(phi) + (yy - s / 2) * math.sin(phi)) / (s / 2)
    light = 1.0 + rng.uniform(0.0, 0.12) * gradient
    if rng.random() < 0.6:
        bx, by = rng.uniform(0.0, s, 2)
        sigma = rng.uniform(0.2, 0.5) * s
        light *= 1.0 + rng.uniform(-0.15, 0.2) * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2.0 * sigma**2))
    dist = np.hypot(xx - s / 2, yy - s / 2)
    light *= 1.0 - rng.uniform(0.0, 0.35) * (dist / (s / math.sqrt(2.0))) ** 2
    if rng.random() < 0.25:  # dermoscope: dark area outside a circular field
        field_r = rng.uniform(0.46, 0.62) * s
        soft = rng.uniform(0.015, 0.05) * s
        level = rng.uniform(0.04, 0.15)
        circle = _sigmoid((field_r - dist) / soft)
        light *= level + (1.0 - level) * circle
        mask &= circle >= 0.5  # truth = visible lesion only
    image *= light[..., None]

    # ---- distractors: hairs (not in the mask) ----------------------------
    n_hairs = int(rng.integers(0, 9))
    hair_base = np.array([45.0, 32.0, 25.0], np.float32) * rng.uniform(0.4, 1.4)
    tb = np.linspace(0.0, 1.0, 48)[:, None]
    for _ in range(n_hairs):
        length = rng.uniform(0.3, 1.2) * s
        angle = rng.uniform(0.0, 2.0 * math.pi)
        if rng.random() < 0.5:  # through the lesion
            mid = np.array([cx, cy]) + rng.normal(0.0, 0.5 * radius, 2)
        else:
            mid = rng.uniform(-0.05 * s, 1.05 * s, 2)
        d = np.array([math.cos(angle), math.sin(angle)]) * length / 2
        p0, p2 = mid - d, mid + d
        p1 = mid + np.array([-d[1], d[0]]) * rng.uniform(-0.6, 0.6)
        curve = (1 - tb) ** 2 * p0 + 2 * (1 - tb) * tb * p1 + tb**2 * p2
        layer = np.zeros((size, size), np.uint8)
        thickness = int(rng.integers(1, 3))  # 1-2 px
        cv2.polylines(layer, [_fixed(curve)], False, 255, thickness, cv2.LINE_AA, _SHIFT)
        opacity = rng.uniform(0.65, 0.95)
        _blend(image, hair_base * rng.uniform(0.8, 1.2), layer.astype(np.float32) / 255.0 * opacity)

    # ---- distractors: air bubbles -----------------------------------------
    n_bubbles = int(rng.integers(1, 5)) if rng.random() < 0.35 else 0
    for _ in range(n_bubbles):
        bx, by = rng.uniform(0.0, s, 2)
        br = rng.uniform(0.03, 0.12) * s
        centre_fp = _pt(bx, by)
        disc = np.zeros((size, size), np.uint8)
        cv2.circle(disc, centre_fp, int(round(br * _ONE)), 255, -1, cv2.LINE_AA, _SHIFT)
        _blend(image, 255.0, disc.astype(np.float32) / 255.0 * rng.uniform(0.04, 0.1))
        rim = np.zeros((size, size), np.uint8)
        cv2.circle(rim, centre_fp, int(round(br * _ONE)), 255, 1, cv2.LINE_AA, _SHIFT)
        _blend(image, 250.0, rim.astype(np.float32) / 255.0 * rng.uniform(0.3, 0.6))
        spec = np.zeros((size, size), np.uint8)
        hx, hy = bx - 0.45 * br, by - 0.45 * br
        cv2.circle(spec, _pt(hx, hy), int(round(max(0.8, 0.18 * br) * _ONE)), 255, -1, cv2.LINE_AA, _SHIFT)
        spec_f = cv2.GaussianBlur(spec.astype(np.float32) / 255.0, (0, 0), max(0.5, 0.05 * br))
        _blend(image, 255.0, np.clip(spec_f * 1.3, 0.0, 1.0) * 0.9)

    image += rng.normal(0.0, rng.uniform(1.5, 4.0), image.shape).astype(np.float32)
    return _to_uint8(image), mask


def generate_isic(
    out_dir: Path, *, num_images: int, image_size: int, seed: int, progress: bool = True
) -> dict:
    """Write an ISIC 2018 Task 1-like skin-lesion segmentation dataset.

    Layout (ids are 7-digit, zero-padded, starting at 0)::

        out_dir/images/ISIC_0000000.jpg               RGB JPEG, image_size x image_size
        out_dir/masks/ISIC_0000000_segmentation.png   'L' PNG, same size, values {0, 255}

    The mask marks exactly the single lesion (255); hairs, bubbles and the dark
    dermoscope border are not part of it.

    Args:
        out_dir: dataset root; ``images/`` and ``masks/`` are created.
        num_images: number of image/mask pairs (>= 0).
        image_size: side length in pixels (>= 16).
        seed: non-negative base seed; image ``i`` depends only on ``(seed, i)``.
        progress: show a tqdm progress bar.

    Returns:
        ``{"images": n, "lesion_fraction_mean": float, "lesion_fraction_min":
        float, "lesion_fraction_max": float}`` (fractions of image area; 0.0 when
        ``n == 0``).
    """
    _check_common(num_images, image_size, _MIN_ISIC_SIZE)
    out_dir = Path(out_dir)
    img_dir, mask_dir = out_dir / "images", out_dir / "masks"
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)

    fractions: list[float] = []
    for i in tqdm(range(num_images), desc="synthetic ISIC", unit="img", disable=not progress):
        rng = _image_rng(seed, _ISIC_TAG, i)
        image, mask = _render_isic(rng, image_size)
        name = f"ISIC_{i:07d}"
        _save_jpeg(img_dir / f"{name}.jpg", image)
        Image.fromarray(mask.astype(np.uint8) * 255).save(mask_dir / f"{name}_segmentation.png", format="PNG")
        fractions.append(float(mask.mean()))

    return {
        "images": num_images,
        "lesion_fraction_mean": float(np.mean(fractions)) if fractions else 0.0,
        "lesion_fraction_min": float(np.min(fractions)) if fractions else 0.0,
        "lesion_fraction_max": float(np.max(fractions)) if fractions else 0.0,
    }


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


@dataclass
class _Scene:
    """A rendered detection scene (before grain noise and JPEG encoding).

    ``image`` and ``background`` are float32 ``(S, S, 3)`` RGB; ``owner`` is
    int16 ``(S, S)`` with the index of the object owning each pixel (-1 = none).
    """

    image: np.ndarray
    background: np.ndarray
    owner: np.ndarray
    objects: list[_SceneObject]


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


def _sample_object(rng: np.random.Generator, size: int, palette: np.ndarray) -> _SceneObject | None:
    """Sample class, geometry and texture of one object; None if unusable."""
    s = float(size)
    name = DET_CLASSES[int(rng.integers(len(DET_CLASSES)))]
    lo, hi = max(0.05 * s, 6.0), 0.6 * s
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


def _render_background(rng: np.random.Generator, size: int, palette: np.ndarray) -> np.ndarray:
    """Gradient + low-frequency noise + clutter (lines, blobs, scribbles), float32 (S, S, 3)."""
    s = float(size)
    yy, xx = _grid(size, size)
    ca, cb = rng.uniform(20.0, 235.0, (2, 3)).astype(np.float32)
    cos_phi, sin_phi = _cos_sin(rng.uniform(0.0, 2.0 * math.pi))
    g = ((xx - s / 2) * cos_phi + (yy - s / 2) * sin_phi) / (s * 0.7072) * 0.5 + 0.5
    g = np.clip(g, 0.0, 1.0)[..., None]
    bg = ca * (1.0 - g) + cb * g
    bg += rng.uniform(8.0, 25.0) * _smooth_noise(rng, size, size, int(rng.integers(3, 8)), 3, portable=True)
    bg += rng.uniform(2.0, 8.0) * _smooth_noise(rng, size, size, max(4, size // 6), portable=True)[..., None]
    canvas = _to_uint8(bg)

    def colour() -> tuple[float, float, float]:
        c = palette[int(rng.integers(len(palette)))] if rng.random() < 0.5 else rng.uniform(0, 255, 3)
        return tuple(float(v) for v in c)

    n_clutter = int(rng.integers(3, 9 + size // 16))
    for _ in range(n_clutter):
        kind = int(rng.integers(3))
        if kind == 0:  # line segment
            p = rng.uniform(-0.1 * s, 1.1 * s, (2, 2))
            cv2.line(canvas, _pt(*p[0]), _pt(*p[1]), colour(), int(rng.integers(1, 3)), cv2.LINE_AA, _SHIFT)
        elif kind == 1:  # small elongated blob
            centre = _pt(*rng.uniform(0.0, s, 2))
            major = rng.uniform(0.015, 0.06) * s
            minor = major * rng.uniform(0.15, 0.5)
            axes = (int(round(major * _ONE)), int(round(max(0.7, minor) * _ONE)))
            cv2.ellipse(
                canvas,
                centre,
                axes,
                float(rng.uniform(0, 180)),
                0.0,
                360.0,
                colour(),
                -1,
                cv2.LINE_AA,
                _SHIFT,
            )
        else:  # scribble: random walk
            n = int(rng.integers(4, 10))
            steps = rng.normal(0.0, 0.06 * s, (n, 2))
            pts = rng.uniform(0.0, s, (1, 2)) + np.cumsum(steps, axis=0)
            cv2.polylines(
                canvas, [_fixed(pts)], False, colour(), int(rng.integers(1, 3)), cv2.LINE_AA, _SHIFT
            )
    return canvas.astype(np.float32)


def _render_voc_scene(rng: np.random.Generator, size: int, max_objects: int) -> _Scene:
    """Render one detection scene with 1..max_objects objects and their VOC boxes."""
    n_pal = int(rng.integers(5, 8))
    hsv = np.stack(
        [rng.uniform(0, 180, n_pal), rng.uniform(40, 255, n_pal), rng.uniform(40, 255, n_pal)],
        axis=1,
    ).astype(np.uint8)
    palette = _hsv_to_rgb(hsv)

    background = _render_background(rng, size, palette)
    owner = np.full((size, size), -1, np.int16)
    objects: list[_SceneObject] = []
    visible = []  # current visible pixel count per object
    target = int(rng.integers(1, max_objects + 1))
    attempts = 0
    while len(objects) < target and (attempts < target * _ATTEMPTS_PER_OBJECT or not objects):
        attempts += 1
        obj = _sample_object(rng, size, palette)
        if obj is None:
            continue
        k = len(objects)
        win = (slice(obj.y0, obj.y1), slice(obj.x0, obj.x1))
        region = owner[win]
        covered = region[obj.mask]
        affected = np.unique(covered[covered >= 0])
        if not _box_ok(_visible_box(obj.mask)):
            continue
        trial = owner.copy()
        trial[win][obj.mask] = k
        ok = True
        new_counts = {}
        for j in affected.tolist():
            count = visible[j] - int(np.count_nonzero(covered == j))
            o = objects[j]
            if count < _MIN_VISIBLE_FRACTION * o.area or not _box_ok(
                _visible_box(trial[o.y0 : o.y1, o.x0 : o.x1] == j)
            ):
                ok = False
                break
            new_counts[j] = count
        if not ok:
            continue
        owner = trial
        for j, count in new_counts.items():
            visible[j] = count
        objects.append(obj)
        visible.append(obj.area)

    image = background.copy()
    for k, obj in enumerate(objects):
        win = (slice(obj.y0, obj.y1), slice(obj.x0, obj.x1))
        _blend(image[win], obj.texture, obj.alpha)
        c0, r0, c1, r1 = _visible_box(owner[win] == k)
        obj.box = (obj.x0 + c0 + 1, obj.y0 + r0 + 1, obj.x0 + c1 + 1, obj.y0 + r1 + 1)
        obj.visible_fraction = visible[k] / obj.area
    return _Scene(image=image, background=background, owner=owner, objects=objects)


def _voc_xml(filename: str, size: int, objects: list[_SceneObject]) -> ET.ElementTree:
    """Pascal VOC annotation tree for one image."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    size_el = ET.SubElement(root, "size")
    ET.SubElement(size_el, "width").text = str(size)
    ET.SubElement(size_el, "height").text = str(size)
    ET.SubElement(size_el, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        el = ET.SubElement(root, "object")
        ET.SubElement(el, "name").text = obj.name
        ET.SubElement(el, "pose").text = "Unspecified"
        ET.SubElement(el, "truncated").text = str(int(obj.truncated))
        ET.SubElement(el, "occluded").text = str(int(obj.occluded))
        ET.SubElement(el, "difficult").text = "0"
        box = ET.SubElement(el, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), obj.box, strict=True):
            ET.SubElement(box, tag).text = str(value)
    tree = ET.ElementTree(root)
    ET.indent(tree, space="\t")
    return tree


def generate_voc(
    out_dir: Path,
    *,
    num_images: int,
    image_size: int,
    seed: int,
    max_objects: int = 8,
    progress: bool = True,
) -> dict:
    """Write a Pascal VOC-like detection dataset of the classes in ``DET_CLASSES``.

    Layout (ids are 6-digit, zero-padded, starting at 0)::

        out_dir/JPEGImages/000000.jpg        RGB JPEG, image_size x image_size
        out_dir/Annotations/000000.xml       VOC XML (boxes 1-based inclusive pixels)
        out_dir/ImageSets/Main/trainval.txt  every id, one per line, sorted
        out_dir/classes.txt                  DET_CLASSES, one per line

    Each image holds 1..max_objects objects (fewer than the drawn target only
    when placements keep failing). Boxes enclose each object's visible pixels;
    ``truncated`` = cut by the image border, ``occluded`` = less than 95 %
    visible, ``difficult`` is always 0. Classes differ by shape and texture
    only: circle = radial shading, square = stripes, triangle = checkerboard,
    star = polka dots, cross = solid with contrasting outline; colours come from
    a per-image palette shared by all classes.

    Args:
        out_dir: dataset root (folders are created).
        num_images: number of images (>= 0).
        image_size: side length in pixels (>= 32).
        seed: non-negative base seed; image ``i`` depends only on ``(seed, i)``.
        max_objects: maximum objects per image (>= 1).
        progress: show a tqdm progress bar.

    Returns:
        ``{"images": n, "objects": total, "objects_per_class": {name: count},
        "truncated": count, "occluded": count}``; ``objects_per_class`` has every
        class of ``DET_CLASSES`` in order.
    """
    _check_common(num_images, image_size, _MIN_VOC_SIZE)
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    out_dir = Path(out_dir)
    img_dir, ann_dir = out_dir / "JPEGImages", out_dir / "Annotations"
    sets_dir = out_dir / "ImageSets" / "Main"
    for d in (img_dir, ann_dir, sets_dir):
        d.mkdir(parents=True, exist_ok=True)

    stats: dict[str, Any] = {
        "images": num_images,
        "objects": 0,
        "objects_per_class": {name: 0 for name in DET_CLASSES},
        "truncated": 0,
        "occluded": 0,
    }
    ids: list[str] = []
    for i in tqdm(range(num_images), desc="synthetic VOC", unit="img", disable=not progress):
        rng = _image_rng(seed, _VOC_TAG, i)
        scene = _render_voc_scene(rng, image_size, max_objects)
        image = scene.image + rng.normal(0.0, rng.uniform(1.0, 4.0), scene.image.shape).astype(np.float32)
        image_id = f"{i:06d}"
        ids.append(image_id)
        _save_jpeg(img_dir / f"{image_id}.jpg", _to_uint8(image))
        _voc_xml(f"{image_id}.jpg", image_size, scene.objects).write(
            ann_dir / f"{image_id}.xml", encoding="utf-8"
        )
        for obj in scene.objects:
            stats["objects"] += 1
            stats["objects_per_class"][obj.name] += 1
            stats["truncated"] += int(obj.truncated)
            stats["occluded"] += int(obj.occluded)

    (sets_dir / "trainval.txt").write_text("".join(f"{x}\n" for x in sorted(ids)), encoding="utf-8")
    (out_dir / "classes.txt").write_text("".join(f"{c}\n" for c in DET_CLASSES), encoding="utf-8")
    return stats
