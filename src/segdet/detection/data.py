"""Detection splits in memory for R-CNN: images, ground truth and proposals, one tuple per image."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from segdet.data.datasets import DetectionDataset
from segdet.detection.rcnn import proposals_by_image

Item = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def iter_split(manifest: str | Path, classes: list[str], root: str | Path, proposals: str | Path,
               use_difficult: bool = False) -> Iterator[tuple[str, Item]]:
    """``(image path, (image uint8 [3, H, W], proposals [K, 4], gt_boxes [n, 4], gt_labels [n]))`` per
    manifest line, read lazily (one image in memory at a time).

    Proposals come from the proposals stage's parquet (DESIGN.md); an image without a row gets none.
    VOC difficult objects are in the ground truth only with ``use_difficult`` (``data.det.use_difficult``).
    """
    ds = DetectionDataset(manifest, classes, root, use_difficult=use_difficult)
    by_image = proposals_by_image(pd.read_parquet(proposals))
    for i, pair in enumerate(ds.pairs):
        image, target = ds[i]
        props = by_image.get(pair.image, torch.zeros(0, 4))
        yield pair.image, (image.as_subclass(torch.Tensor), props, target["boxes"].as_subclass(torch.Tensor),
                           target["labels"])


def load_split(manifest: str | Path, classes: list[str], root: str | Path, proposals: str | Path,
               use_difficult: bool = False) -> tuple[list[str], list[Item]]:
    """:func:`iter_split` held in memory: ``(image paths, items)``."""
    pairs = list(iter_split(manifest, classes, root, proposals, use_difficult))
    return [p for p, _ in pairs], [item for _, item in pairs]
