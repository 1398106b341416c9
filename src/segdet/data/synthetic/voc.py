"""Cluttered detection scenes of five shape classes with Pascal VOC annotations (``JPEGImages`` /
``Annotations`` / ``ImageSets/Main``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from segdet.data.formats import write_voc_xml
from segdet.data.synthetic.common import (
    _ONE,
    _SHIFT,
    _blend,
    _check_common,
    _cos_sin,
    _fixed,
    _grid,
    _hsv_to_rgb,
    _image_rng,
    _pt,
    _save_jpeg,
    _smooth_noise,
    _to_uint8,
)
from segdet.data.synthetic.shapes import _OBJECT_SIZE, DET_CLASSES, _box_ok, _sample_object, _SceneObject, _visible_box

_VOC_TAG = 2
_MIN_VOC_SIZE = 32
_MIN_VISIBLE_FRACTION = 0.4  # reject placements hiding more of an earlier object
_ATTEMPTS_PER_OBJECT = 25


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


def _render_voc_scene(
    rng: np.random.Generator, size: int, max_objects: int, object_size: tuple[float, float] = _OBJECT_SIZE
) -> _Scene:
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
        obj = _sample_object(rng, size, palette, object_size)
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


def generate_voc(
    out_dir: Path,
    *,
    num_images: int,
    image_size: int,
    seed: int,
    max_objects: int = 8,
    object_size: tuple[float, float] = _OBJECT_SIZE,
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
        object_size: (smallest, largest) object side as a fraction of ``image_size``, drawn
            log-uniformly (the smallest is at least 6 px); small fractions make dense scenes.
        progress: show a tqdm progress bar.

    Returns:
        ``{"images": n, "objects": total, "objects_per_class": {name: count},
        "truncated": count, "occluded": count}``; ``objects_per_class`` has every
        class of ``DET_CLASSES`` in order.
    """
    _check_common(num_images, image_size, _MIN_VOC_SIZE)
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    if not 0.0 < object_size[0] <= object_size[1] <= 1.0:
        raise ValueError(f"object_size must be two fractions 0 < smallest <= largest <= 1, got {object_size}")
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
        scene = _render_voc_scene(rng, image_size, max_objects, object_size)
        image = scene.image + rng.normal(0.0, rng.uniform(1.0, 4.0), scene.image.shape).astype(np.float32)
        image_id = f"{i:06d}"
        ids.append(image_id)
        _save_jpeg(img_dir / f"{image_id}.jpg", _to_uint8(image))
        write_voc_xml(ann_dir / f"{image_id}.xml", f"{image_id}.jpg", image_size, image_size,
                      [(o.name, o.box, False, o.truncated, o.occluded) for o in scene.objects], xml_declaration=True)
        for obj in scene.objects:
            stats["objects"] += 1
            stats["objects_per_class"][obj.name] += 1
            stats["truncated"] += int(obj.truncated)
            stats["occluded"] += int(obj.occluded)

    (sets_dir / "trainval.txt").write_text("".join(f"{x}\n" for x in sorted(ids)), encoding="utf-8")
    (out_dir / "classes.txt").write_text("".join(f"{c}\n" for c in DET_CLASSES), encoding="utf-8")
    return stats
