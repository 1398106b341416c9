"""Selective search region proposals (Uijlings et al. 2013) with OpenCV contrib, over a process pool.

Each image is resized so its longer side is ``max_side`` (up or down; selective search finds more small
regions on larger images), searched in ``fast`` or ``quality`` mode, and the boxes are mapped back to
the original pixels. Boxes smaller than ``min_size`` on either side are dropped, exact duplicates
removed, and at most ``max_proposals`` kept in selective search's own (hierarchical) order.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from segdet.data.formats import read_bgr
from segdet.runtime import cpu_share
from segdet.sections import ProposalsConfig

MODES = ("fast", "quality")


def _seed_c_rand(seed: int) -> None:
    """Seed the C library's ``rand()``, which OpenCV's selective search uses to order its regions."""
    try:
        ctypes.CDLL(None).srand(seed)
    except (OSError, AttributeError):  # pragma: no cover - no C library symbols exposed (not Linux/macOS)
        pass


def selective_search(image_bgr: np.ndarray, settings: ProposalsConfig) -> np.ndarray:
    """Proposals ``float32[K, 4]`` xyxy in the pixels of ``image_bgr`` (``uint8[H, W, 3]``), K <= max_proposals."""
    if settings.mode not in MODES:
        raise ValueError(f"Wrong selective search mode {settings.mode!r}. Available options are: {', '.join(MODES)}")
    h, w = image_bgr.shape[:2]
    scale = settings.max_side / max(h, w)
    small = cv2.resize(image_bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    _seed_c_rand(0)  # OpenCV ranks the grouped regions with C's rand(): seed it, so an image always gets the same boxes
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(small)
    if settings.mode == "fast":
        ss.switchToSelectiveSearchFast()
    else:
        ss.switchToSelectiveSearchQuality()
    rects = ss.process().astype(np.float32)  # x, y, w, h in the resized image
    if len(rects) == 0:
        return np.zeros((0, 4), np.float32)
    sx, sy = w / small.shape[1], h / small.shape[0]
    boxes = np.stack([rects[:, 0] * sx, rects[:, 1] * sy, (rects[:, 0] + rects[:, 2]) * sx,
                      (rects[:, 1] + rects[:, 3]) * sy], axis=1)
    boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= settings.min_size) & ((boxes[:, 3] - boxes[:, 1]) >= settings.min_size)
    boxes = np.round(boxes[keep], 2)
    _, first = np.unique(boxes, axis=0, return_index=True)
    return boxes[np.sort(first)][: settings.max_proposals]


def _work(args: tuple[str, ProposalsConfig]) -> tuple[str, np.ndarray, float]:
    path, settings = args
    cv2.setNumThreads(1)  # one image per process: no nested threading
    t0 = time.perf_counter()
    image = read_bgr(path)  # the checks of every reader: UTF-8 name, pixel limit, a FormatError naming the file
    boxes = selective_search(image, settings)
    return path, boxes, time.perf_counter() - t0


def propose_many(paths: list[str | Path], settings: ProposalsConfig, workers: int = 0
                 ) -> Iterator[tuple[str, np.ndarray, float]]:
    """``(path, boxes, seconds)`` for each image, in input order, computed by ``workers`` processes
    (0: all cores; 1: in this process)."""
    workers = workers or cpu_share()
    jobs = [(str(p), settings) for p in paths]
    if workers == 1:
        yield from map(_work, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_work, jobs, chunksize=1)


def proposal_table(images: list[str], boxes: list[np.ndarray]) -> pd.DataFrame:
    """Proposals table (docs/architecture.md): columns ``image, x1, y1, x2, y2`` (float pixels of the original image)."""
    counts = [len(b) for b in boxes]
    stacked = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    frame = pd.DataFrame(stacked.astype(np.float32), columns=["x1", "y1", "x2", "y2"])
    frame.insert(0, "image", pd.Series(np.repeat(images, counts), dtype="string"))
    return frame


def recall(gt_boxes: list[np.ndarray], proposals: list[np.ndarray], iou: float) -> float:
    """Fraction of ground-truth boxes ``[n, 4]`` covered by some proposal with IoU >= ``iou``."""
    import torch
    from torchvision.ops import box_iou

    hit = total = 0
    for gt, props in zip(gt_boxes, proposals, strict=True):
        total += len(gt)
        if len(gt) and len(props):
            hit += int((box_iou(torch.as_tensor(gt), torch.as_tensor(props)).max(1).values >= iou).sum())
    return hit / total if total else float("nan")
