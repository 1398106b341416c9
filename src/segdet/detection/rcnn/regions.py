"""Regions of R-CNN: matching proposals to ground truth, fine-tuning mini-batches, and the detection
splits with their proposals (one tuple per image)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torchvision.ops import box_iou

from segdet.data.datasets import DetectionDataset
from segdet.detection.proposals import iter_proposals
from segdet.detection.rcnn.model import warp

Item = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def label_regions(boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, num_classes: int,
                  fg_iou: float = 0.5) -> dict[str, torch.Tensor]:
    """Match regions ``[K, 4]`` to ground truth ``[n, 4]`` (labels ``1..N``).

    Returns ``iou [K]`` (max IoU), ``label [K]`` (class of the best box if ``iou >= fg_iou``, else 0),
    ``gt_box [K, 4]`` (the best box), ``iou_class [K, N]`` (max IoU with the boxes of each class).
    """
    k = len(boxes)
    if len(gt_boxes) == 0:
        return {"iou": torch.zeros(k), "label": torch.zeros(k, dtype=torch.int64),
                "gt_box": torch.zeros(k, 4), "iou_class": torch.zeros(k, num_classes)}
    ious = box_iou(boxes.float(), gt_boxes.float())
    best, arg = ious.max(1)
    label = torch.where(best >= fg_iou, gt_labels[arg], torch.zeros_like(arg))
    iou_class = torch.zeros(k, num_classes)
    for c in range(1, num_classes + 1):
        sel = gt_labels == c
        if sel.any():
            iou_class[:, c - 1] = ious[:, sel].max(1).values
    return {"iou": best, "label": label, "gt_box": gt_boxes[arg].float(), "iou_class": iou_class}


class RegionBatches:
    """``batches`` mini-batches of ``fg`` positive and ``bg`` background warped regions.

    ``images`` are uint8 ``[3, H, W]``; ``regions[i]`` the boxes of image i (ground truth and proposals),
    ``labels[i]`` their classes (0 = background). Regions are drawn uniformly with replacement from the
    positive and background pools with PyTorch's global RNG (re-seeded every epoch by the engine).
    Yields ``(crops [fg + bg, 3, S, S], labels [fg + bg])``.
    """

    def __init__(self, images: list[torch.Tensor], regions: list[torch.Tensor], labels: list[torch.Tensor],
                 *, fg: int, bg: int, batches: int, crop_size: int, context: float):
        self.images, self.regions = images, regions
        self.fg, self.bg, self.batches, self.crop_size, self.context = fg, bg, batches, crop_size, context
        index = torch.cat([torch.stack([torch.full((len(lb),), i), torch.arange(len(lb))], 1)
                           for i, lb in enumerate(labels)])
        flat = torch.cat(labels)
        self.labels = labels
        self.pos, self.neg = index[flat > 0], index[flat == 0]
        if len(self.pos) == 0 or len(self.neg) == 0:
            raise ValueError(f"R-CNN fine-tuning needs positive and background regions; found {len(self.pos)} "
                             f"positive and {len(self.neg)} background (are there objects in the train split?)")

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.batches):
            pick = torch.cat([self.pos[torch.randint(len(self.pos), (self.fg,))],
                              self.neg[torch.randint(len(self.neg), (self.bg,))]])
            yield self.gather(pick)

    def gather(self, pick: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Warp the regions ``pick [M, 2]`` (image index, region index), one roi_align call per image."""
        crops, labels = [], []
        for i in pick[:, 0].unique().tolist():
            rows = pick[pick[:, 0] == i, 1]
            crops.append(warp(self.images[i], self.regions[i][rows], self.crop_size, self.context))
            labels.append(self.labels[i][rows])
        return torch.cat(crops), torch.cat(labels)


def iter_split(manifest: str | Path, classes: list[str], root: str | Path, proposals: str | Path,
               use_difficult: bool = False) -> Iterator[tuple[str, Item]]:
    """``(image path, (image uint8 [3, H, W], proposals [K, 4], gt_boxes [n, 4], gt_labels [n]))`` per
    manifest line, read lazily (one image and its proposals in memory at a time).

    Proposals come from the proposals stage's parquet (docs/architecture.md); an image without a row gets none.
    VOC difficult objects are in the ground truth only with ``use_difficult`` (``data.det.use_difficult``).
    """
    ds = DetectionDataset(manifest, classes, root, use_difficult=use_difficult)
    streamed = iter_proposals(proposals, (pair.image for pair in ds.pairs))
    for i, (pair, props) in enumerate(zip(ds.pairs, streamed, strict=True)):
        image, target = ds[i]
        yield pair.image, (image.as_subclass(torch.Tensor), torch.from_numpy(props),
                           target["boxes"].as_subclass(torch.Tensor), target["labels"])


def load_split(manifest: str | Path, classes: list[str], root: str | Path, proposals: str | Path,
               use_difficult: bool = False) -> tuple[list[str], list[Item]]:
    """:func:`iter_split` held in memory: ``(image paths, items)``."""
    pairs = list(iter_split(manifest, classes, root, proposals, use_difficult))
    return [p for p, _ in pairs], [item for _, item in pairs]
