"""Contact sheets: a grid of samples with masks or boxes drawn, for a quick look in MLflow."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from segdet.data.formats import VocAnnotation, read_gray, read_rgb
from segdet.data.pairs import Pair, resolve
from segdet.draw import WHITE, class_colour, labelled_box, outline


def _fit(img: np.ndarray, tile: int) -> tuple[np.ndarray, float]:
    scale = tile / max(img.shape[:2])
    out = np.full((tile, tile, 3), 32, np.uint8)
    small = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                       interpolation=cv2.INTER_AREA)
    out[: small.shape[0], : small.shape[1]] = small
    return out, scale


def _grid(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    tile = tiles[0].shape[0]
    rows = (len(tiles) + cols - 1) // cols
    sheet = np.full((rows * (tile + 2), cols * (tile + 2), 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * (tile + 2): r * (tile + 2) + tile, c * (tile + 2): c * (tile + 2) + tile] = t
    return sheet


def seg_sheet(pairs: list[Pair], root: Path, n: int = 16, tile: int = 160, cols: int = 4) -> np.ndarray:
    """``HxWx3`` uint8 grid of the first ``n`` images with their lesion outline drawn in green."""
    tiles = []
    for p in pairs[:n]:
        img = read_rgb(resolve(p.image, root))
        mask = read_gray(resolve(p.label, root))
        outline(img, mask > 0, (0, 255, 0), max(1, max(img.shape[:2]) // 128))
        tiles.append(_fit(img, tile)[0])
    return _grid(tiles or [np.zeros((tile, tile, 3), np.uint8)], cols)


def det_sheet(
    pairs: list[Pair], annotations: list[VocAnnotation], classes: list[str], root: Path,
    n: int = 16, tile: int = 192, cols: int = 4,
) -> np.ndarray:
    """``HxWx3`` uint8 grid of the first ``n`` images with their boxes and class names drawn."""
    tiles = []
    for p, ann in list(zip(pairs, annotations, strict=True))[:n]:
        img, scale = _fit(read_rgb(resolve(p.image, root)), tile)
        for o in ann.objects:
            colour = class_colour(classes.index(o.name) + 1) if o.name in classes else WHITE
            labelled_box(img, [round(v * scale) for v in o.box], colour, o.name, font_scale=0.3, text_offset=(1, 8))
        tiles.append(img)
    return _grid(tiles or [np.zeros((tile, tile, 3), np.uint8)], cols)
