"""Selective search region proposals (Uijlings et al. 2013) with OpenCV contrib, over a process pool.

Each image is resized so its longer side is ``max_side`` (up or down; selective search finds more small
regions on larger images), searched in ``fast`` or ``quality`` mode (``auto``: the one that covers more of the
training objects, :func:`choose_mode`), and the boxes are mapped back to the original pixels. Boxes smaller than
``min_size`` on either side are dropped, exact duplicates removed, and at most ``max_proposals`` kept in selective
search's own (hierarchical) order.
"""

from __future__ import annotations

import ctypes
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segdet.data.formats import read_bgr
from segdet.runtime import cpu_share
from segdet.sections import ProposalsConfig

MODES = ("fast", "quality")
#: ``proposals.mode: auto``: training images searched in both modes, and the gain in recall@0.5 that quality mode
#: must bring on them to be chosen (it takes about 3x the time of fast mode)
AUTO_IMAGES, AUTO_MIN_GAIN = 16, 0.02


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


def propose_reusing(paths: list[str | Path], settings: ProposalsConfig, workers: int = 0,
                    done: Mapping[str, tuple[np.ndarray, float]] | None = None) -> Iterator[tuple[str, np.ndarray, float]]:
    """:func:`propose_many`, with the images in ``done`` (path -> ``(boxes, seconds)``, searched before with the same
    ``settings``, e.g. :func:`choose_mode`'s sample in the mode it chose) taken from there instead of searched
    again; in input order."""
    done = {str(k): v for k, v in (done or {}).items()}
    rest = propose_many([p for p in paths if str(p) not in done], settings, workers)
    try:
        for p in paths:
            if str(p) in done:
                yield (str(p), *done[str(p)])
            else:
                yield next(rest)
    finally:
        rest.close()


def choose_mode(paths: list[str | Path], gt_boxes: list[np.ndarray], settings: ProposalsConfig, workers: int = 0,
                images: int = AUTO_IMAGES, min_gain: float = AUTO_MIN_GAIN, progress: bool = False,
                keep: dict[str, tuple[np.ndarray, float]] | None = None) -> tuple[str, dict]:
    """``proposals.mode: auto``: ``quality`` if on up to ``images`` training images (evenly spaced among those with
    objects) it covers at least ``min_gain`` more of the ground-truth boxes at IoU 0.5 than ``fast``, else ``fast``.

    Fast mode's two colour spaces and two segmentation scales find the objects of most photos, but objects of
    one colour that touch or overlap (cells, fruit, crowds) often merge into one region; quality mode's five
    colour spaces and five scales separate more of them, at about three times the time. Returns the mode and what
    it was chosen on: ``{"images", "min_gain", "recall_0.5": {mode: recall}, "seconds_per_image": {mode: s}}``.
    ``keep``, when given, receives the sampled images' search in the chosen mode (path -> ``(boxes, seconds)``),
    for :func:`propose_reusing`.
    """
    with_objects = [i for i, gt in enumerate(gt_boxes) if len(gt)]
    if not with_objects:
        return "fast", {"images": 0, "min_gain": min_gain, "recall_0.5": {}, "seconds_per_image": {}}
    n = min(images, len(with_objects))
    picks = [with_objects[round(k * (len(with_objects) - 1) / max(1, n - 1))] for k in range(n)]  # distinct
    found: dict[str, float] = {}
    seconds: dict[str, float] = {}
    results: dict[str, dict[str, tuple[np.ndarray, float]]] = {}
    for mode in MODES:
        searched = propose_many([paths[k] for k in picks], replace(settings, mode=mode), workers)
        if progress:
            from tqdm import tqdm

            searched = tqdm(searched, total=len(picks), unit="img", desc=f"mode auto: {mode} on training images")
        names, boxes, took = zip(*searched, strict=True)
        found[mode], seconds[mode] = recall([gt_boxes[k] for k in picks], list(boxes), 0.5), sum(took) / len(picks)
        results[mode] = {n: (b, s) for n, b, s in zip(names, boxes, took, strict=True)}
    chosen = "quality" if found["quality"] - found["fast"] >= min_gain else "fast"
    if keep is not None:
        keep.update(results[chosen])
    return chosen, {"images": len(picks), "min_gain": min_gain, "recall_0.5": found, "seconds_per_image": seconds}


def resolve_mode(mode: str, info_path: str | Path) -> str:
    """``proposals.mode`` as searched: ``auto`` becomes the mode the ``proposals`` stage chose (the ``mode`` of its
    ``reports/proposals_info.json``), so what searches new images searches as the stage did; ``fast`` and ``quality``
    stay as they are.

    Raises:
        FileNotFoundError: ``mode`` is ``auto`` and the stage has not written ``info_path``.
        ValueError: the file names no mode the search knows.
    """
    if mode != "auto":
        return mode
    path = Path(info_path)
    if not path.is_file():
        raise FileNotFoundError(f"proposals.mode is auto, and {path} (where the proposals stage records the mode it "
                                "chose) does not exist: run the proposals stage first, or set proposals.mode to "
                                f"{' or '.join(MODES)}")
    chosen = json.loads(path.read_text()).get("mode")
    if chosen not in MODES:
        raise ValueError(f"{path}: mode {chosen!r} is not one of {', '.join(MODES)}; run the proposals stage again")
    return chosen


def proposal_table(images: list[str], boxes: list[np.ndarray]) -> pd.DataFrame:
    """Proposals table (docs/architecture.md): columns ``image, x1, y1, x2, y2`` (float pixels of the original image)."""
    counts = [len(b) for b in boxes]
    stacked = np.concatenate(boxes) if boxes else np.zeros((0, 4), np.float32)
    frame = pd.DataFrame(stacked.astype(np.float32), columns=["x1", "y1", "x2", "y2"])
    frame.insert(0, "image", pd.Series(np.repeat(images, counts), dtype="string"))
    return frame


#: the proposals parquet's columns (docs/architecture.md); the rows of one image are consecutive
SCHEMA = pa.schema([("image", pa.string()), ("x1", pa.float32()), ("y1", pa.float32()), ("x2", pa.float32()),
                    ("y2", pa.float32())])


class ProposalWriter:
    """Write the proposals parquet one image at a time, a row group every ``group_images`` images, so a split's
    proposals are never all in memory. ``with ProposalWriter(path) as w: w.add(image, boxes [K, 4])``."""

    def __init__(self, path: str | Path, group_images: int = 64):
        self.path, self.group_images = Path(path), group_images
        self.pending: list[tuple[str, np.ndarray]] = []
        self.writer: pq.ParquetWriter | None = None

    def __enter__(self) -> ProposalWriter:
        self.writer = pq.ParquetWriter(self.path, SCHEMA)
        return self

    def add(self, image: str, boxes: np.ndarray) -> None:
        self.pending.append((image, np.asarray(boxes, np.float32).reshape(-1, 4)))
        if len(self.pending) >= self.group_images:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            frame = proposal_table([i for i, _ in self.pending], [b for _, b in self.pending])
            self.writer.write_table(pa.Table.from_pandas(frame, schema=SCHEMA, preserve_index=False))
            self.pending.clear()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.flush()
        self.writer.close()


def iter_proposals(path: str | Path, images: Iterable[str], batch_rows: int = 65536) -> Iterator[np.ndarray]:
    """The proposals ``float32 [K, 4]`` of each of ``images`` (in that order; ``[0, 4]`` for an image without rows)
    from a proposals parquet, streamed: one batch of rows and the images read ahead of their turn are in memory,
    not the split's proposals. Reading in the file's own order (the split manifest's, as the proposals stage
    writes it) reads ahead nothing."""
    pf = pq.ParquetFile(path)
    present = set()
    for batch in pf.iter_batches(batch_size=batch_rows, columns=["image"]):
        present.update(pc.unique(batch.column(0)).to_pylist())
    batches = pf.iter_batches(batch_size=batch_rows, columns=["image", "x1", "y1", "x2", "y2"])
    ready: dict[str, np.ndarray] = {}  # images whose rows are all read
    current: str | None = None
    parts: list[np.ndarray] = []
    for image in images:
        while image in present and image not in ready:
            batch = next(batches, None)
            if batch is None:  # end of the file: the last image's rows are complete
                ready[current] = np.concatenate(parts)
                break
            names = batch.column(0).to_numpy(zero_copy_only=False)
            xyxy = np.stack([batch.column(k).to_numpy() for k in range(1, 5)], 1).astype(np.float32, copy=False)
            starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]])
            for start, end in zip(starts, np.r_[starts[1:], len(names)], strict=True):
                if names[start] != current:
                    if current is not None:
                        ready[current] = np.concatenate(parts)
                    current, parts = names[start], []
                parts.append(xyxy[start:end])
        yield ready.pop(image, np.zeros((0, 4), np.float32))


def covered(gt: np.ndarray, proposals: np.ndarray, iou: float) -> int:
    """How many ground-truth boxes ``[n, 4]`` some proposal covers with IoU >= ``iou``."""
    import torch
    from torchvision.ops import box_iou

    if not len(gt) or not len(proposals):
        return 0
    return int((box_iou(torch.as_tensor(gt), torch.as_tensor(proposals)).max(1).values >= iou).sum())


def recall(gt_boxes: list[np.ndarray], proposals: list[np.ndarray], iou: float) -> float:
    """Fraction of ground-truth boxes ``[n, 4]`` covered by some proposal with IoU >= ``iou``."""
    hit = total = 0
    for gt, props in zip(gt_boxes, proposals, strict=True):
        total += len(gt)
        hit += covered(gt, props, iou)
    return hit / total if total else float("nan")
