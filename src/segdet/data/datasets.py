"""``torch.utils.data.Dataset`` classes that read a manifest (docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from segdet.data.formats import read_gray, read_rgb
from segdet.data.pairs import Pair, box_targets, read_classes, read_manifest, resolve


def _pairs(manifest: str | Path | Sequence[Pair]) -> list[Pair]:
    return list(manifest) if isinstance(manifest, (list, tuple)) else read_manifest(manifest)


def _to_image(rgb) -> tv_tensors.Image:
    """``uint8[H, W, 3]`` array -> ``tv_tensors.Image[3, H, W]`` uint8."""
    return tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1).contiguous())


class SegmentationDataset(Dataset):
    """Image and lesion mask pairs of a segmentation manifest.

    Item ``i``: ``(image, mask)`` with ``image`` a ``tv_tensors.Image[3, H, W]`` (uint8 RGB, or float
    after ``transforms``) and ``mask`` a ``tv_tensors.Mask[H, W]`` int64 with 0 = background,
    1 = lesion (labels 0/255 and 0/1 both read as 0/1).

    Args:
        manifest: a manifest path, or its pairs.
        root: folder that relative manifest paths start from (the repository root).
        transforms: joint transform called as ``transforms(image, mask)``.
        decode_at_least: the side ``transforms`` resize to (training at ``input_size``): an image at least 8 x
            larger (a full-size ISIC photo at 96 px) is decoded at 1/2 to 1/8 of its size
            (:func:`segdet.data.formats.reduction`), while its mask stays whole; the resize to a fixed size puts
            both on the same grid. None: decode whole.
    """

    def __init__(self, manifest: str | Path | Sequence[Pair], root: str | Path = ".",
                 transforms: Callable | None = None, decode_at_least: int | None = None):
        self.pairs = _pairs(manifest)
        self.root = Path(root)
        self.transforms = transforms
        self.decode_at_least = decode_at_least

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, i: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        p = self.pairs[i]
        image = _to_image(read_rgb(resolve(p.image, self.root), self.decode_at_least))
        mask = torch.from_numpy(read_gray(resolve(p.label, self.root)) > 0).to(torch.int64)
        return image, tv_tensors.Mask(mask)

    def __getitem__(self, i: int):
        image, mask = self.read(i)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask


class DetectionDataset(Dataset):
    """Images and Pascal VOC boxes of a detection manifest.

    Item ``i``: ``(image, target)`` with ``image`` a ``tv_tensors.Image[3, H, W]`` and ``target`` a dict:
    ``boxes`` ``tv_tensors.BoundingBoxes[N, 4]`` in XYXY pixels (``x1 = xmin - 1``, docs/architecture.md),
    ``labels`` ``Tensor[N]`` int64 with ``1..C`` = line of ``det_classes.txt`` (0 is background),
    ``image_id`` = ``i + 1`` (the COCO id of docs/architecture.md) and ``orig_size`` ``(H, W)``.
    Annotations are parsed once, up front; zero-area boxes are skipped as in the manifest stage.

    VOC ``difficult`` objects (and COCO crowd regions, imported as difficult): with ``use_difficult``
    false (the default, ``data.det.use_difficult``) they are dropped from the targets, as the VOC devkit
    leaves them out; with it true they are kept and the target also holds ``difficult`` ``Tensor[N]``
    bool, so an evaluation can ignore them (a transform that drops boxes must drop their flags too:
    :func:`box_labels`).
    """

    def __init__(self, manifest: str | Path | Sequence[Pair], classes: str | Path | Sequence[str],
                 root: str | Path = ".", transforms: Callable | None = None, *, use_difficult: bool = False):
        self.pairs = _pairs(manifest)
        self.root = Path(root)
        self.classes = list(classes) if isinstance(classes, (list, tuple)) else read_classes(classes)
        self.transforms = transforms
        self.use_difficult = use_difficult
        self.targets = []
        self.difficult: list[torch.Tensor] = []
        for t in box_targets(self.pairs, self.classes, self.root, use_difficult):
            self.targets.append((torch.from_numpy(t.boxes), torch.from_numpy(t.labels)))
            self.difficult.append(torch.from_numpy(t.difficult))

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        p = self.pairs[i]
        image = _to_image(read_rgb(resolve(p.image, self.root)))
        h, w = image.shape[-2:]
        boxes, labels = self.targets[i]
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes.clone(), format="XYXY", canvas_size=(h, w)),
            "labels": labels.clone(),
            "image_id": i + 1,
            "orig_size": (h, w),
        }
        if self.use_difficult:
            target["difficult"] = self.difficult[i].clone()
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def box_labels(sample) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``labels_getter`` for ``v2.SanitizeBoundingBoxes``: the target's ``labels`` and, when it has them, its
    ``difficult`` flags, so a dropped box takes its flag along (``DetectionDataset(use_difficult=True)``).

    ``sample`` is ``(image, target)`` or the target dict. A tuple of tensors needs torchvision >= 0.18.
    """
    target = sample[1] if isinstance(sample, (tuple, list)) else sample
    if "difficult" in target:
        return target["labels"], target["difficult"]
    return target["labels"]


def detection_collate(batch):
    """``[(image, target), ...]`` -> ``(images, targets)`` as tuples (sizes may differ)."""
    return tuple(zip(*batch, strict=True))
