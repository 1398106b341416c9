"""Shared pieces of the synthetic generators: per-image seeding, noise, drawing helpers, JPEG writing and the
portable arithmetic (the same bits on every x86 CPU) that the VOC scenes are built from."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

_JPEG_QUALITY = 92
_JPEG_SUBSAMPLING = 0  # 4:4:4, fixed so files are reproducible
_SHIFT = 4  # fractional bits for sub-pixel cv2 drawing
_ONE = 1 << _SHIFT


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
