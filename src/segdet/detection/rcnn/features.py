"""R-CNN features on disk: the region CNN's penultimate layer for every ground-truth box and proposal,
written in chunks so the SVM step streams them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segdet.detection.rcnn.model import RegionCNN, warp
from segdet.detection.rcnn.regions import label_regions


@torch.no_grad()
def embed_regions(model: RegionCNN, image: torch.Tensor, boxes: torch.Tensor, crop_size: int, context: float,
                  device: torch.device, batch: int = 512) -> torch.Tensor:
    """Penultimate CNN features ``float32 [K, D]`` (on CPU) of ``boxes`` in uint8 ``image [3, H, W]``. The image
    goes to ``device`` once and is warped there (roi_align on the GPU), not each crop."""
    image = image.to(device, non_blocking=True)
    out = []
    start = 0
    for size in batch_sizes(len(boxes), batch):
        part = boxes[start:start + size]
        if len(part) < size:  # the last few: padded with copies of a box to the smallest batch size
            part = torch.cat([part, part[:1].expand(size - len(part), 4)])
        crops = warp(image, part, crop_size, context)
        crops = crops.to(device).contiguous(memory_format=torch.channels_last)  # the CPU warp's are already NHWC
        out.append(model.embed(crops).float().cpu())
        start += size
    return torch.cat(out)[: len(boxes)] if out else torch.zeros(0, model.feature_dim)


def batch_sizes(n: int, batch: int = 512, smallest: int = 16) -> list[int]:
    """Split ``n`` regions into CNN batches whose sizes come from a few fixed values: full ``batch``es, then the
    powers of two of the rest down to ``smallest`` (the last one padded up to it). Batches of any size (one per
    image's remainder) made glibc's heap grow with every image (docs/benchmarks.md, scaling); with a handful of
    shapes the freed blocks are reused. ``sum(sizes) - n < smallest``."""
    sizes = [batch] * (n // batch)
    rest = n % batch
    size = batch // 2
    while rest > 0 and size >= smallest:
        if rest >= size:
            sizes.append(size)
            rest -= size
        size //= 2
    if rest > 0:
        sizes.append(smallest)
    return sizes


def extract_features(model: RegionCNN, items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                     out_dir: Path, *, crop_size: int, context: float, device: torch.device,
                     chunk_images: int = 25, progress: bool = True) -> dict:
    """Write features of every ground-truth box and proposal of ``items`` to ``out_dir/chunk_NNNNN.npz``.

    ``items``: ``(image uint8 [3, H, W], proposals [K, 4], gt_boxes [n, 4], gt_labels [n])`` per image (an
    iterable is consumed lazily, so only one chunk is held in memory). Each chunk holds ``features``
    (float16 ``[M, D]``), ``image`` (index), ``boxes``, ``is_gt``, ``label``, ``iou``, ``gt_box`` and
    ``iou_class`` (see :func:`label_regions`). Returns the summary also written to ``meta.json``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval().to(device)
    buffer: list[dict[str, np.ndarray]] = []
    chunks = regions = 0

    def flush() -> None:
        nonlocal chunks
        if buffer:
            arrays = {k: np.concatenate([b[k] for b in buffer]) for k in buffer[0]}
            np.savez(out_dir / f"chunk_{chunks:05d}.npz", **arrays)
            chunks += 1
            buffer.clear()

    for i, (image, props, gt_boxes, gt_labels) in enumerate(tqdm(items, desc="features", unit="img",
                                                                 disable=not progress)):
        boxes = torch.cat([gt_boxes.float(), props.float()])
        feats = embed_regions(model, image, boxes, crop_size, context, device)  # a few fixed batch shapes
        lab = label_regions(boxes, gt_boxes, gt_labels, model.num_classes)
        is_gt = torch.zeros(len(boxes), dtype=torch.bool)
        is_gt[: len(gt_boxes)] = True
        buffer.append({"features": feats.numpy().astype(np.float16), "image": np.full(len(boxes), i, np.int32),
                       "boxes": boxes.numpy(), "is_gt": is_gt.numpy(), "label": lab["label"].numpy().astype(np.int16),
                       "iou": lab["iou"].numpy().astype(np.float16), "gt_box": lab["gt_box"].numpy(),
                       "iou_class": lab["iou_class"].numpy().astype(np.float16)})
        regions += len(boxes)
        if len(buffer) >= chunk_images:
            flush()
    flush()
    meta = {"images": i + 1 if regions else 0, "regions": regions, "chunks": chunks, "dim": model.feature_dim}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def iter_chunks(feature_dir: Path) -> Iterator[dict[str, np.ndarray]]:
    """Stream the feature chunks of :func:`extract_features` (one in memory at a time)."""
    files = sorted(Path(feature_dir).glob("chunk_*.npz"))
    if not files:
        raise FileNotFoundError(f"{feature_dir}: no feature chunks (run the rcnn_features stage)")
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            yield {k: z[k] for k in z.files}
