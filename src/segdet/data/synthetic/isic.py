"""Dermoscopy-like skin-lesion photographs with a binary lesion mask (ISIC 2018 Task 1 file layout)."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from segdet.data.synthetic.common import (
    _ONE,
    _SHIFT,
    _blend,
    _check_common,
    _fill_alpha,
    _fixed,
    _grid,
    _image_rng,
    _pt,
    _save_jpeg,
    _sigmoid,
    _smooth_noise,
    _to_uint8,
)

_ISIC_TAG = 1
_MIN_ISIC_SIZE = 16


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
