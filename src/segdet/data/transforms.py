"""Joint image/target transforms with ``torchvision.transforms.v2``.

Images are ``tv_tensors.Image``, masks ``tv_tensors.Mask`` and boxes ``tv_tensors.BoundingBoxes``, so
one transform moves all of them together: a horizontal flip mirrors the mask and the boxes with the
image, a resize scales the boxes and resamples the mask with nearest-neighbour.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from segdet.data.datasets import box_labels
from segdet.nets.backbones import IMAGENET_MEAN, IMAGENET_STD

_IMAGE_TO_FLOAT = v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


def seg_transforms(
    size: int | tuple[int, int],
    train: bool,
    hflip: float = 0.5,
    vflip: float = 0.5,
    *,
    rotate: float = 0.0,
    scale: float = 0.0,
    color_jitter: float = 0.0,
) -> v2.Compose:
    """Resize to ``size`` (int: square; ``(H, W)``); when ``train``, random augmentation. Image -> float in [0, 1].

    Input ``(Image[3, H, W] uint8, Mask[H, W])``; output ``(Image[3, h, w] float32, Mask[h, w])``.
    Training augmentation, each off at 0: flips (lesions have no up or down, so vertical flips are on by
    default too); a random rotation by up to ``rotate`` degrees and scaling by a factor in
    ``[1 - scale, 1 + scale]`` (one ``RandomAffine``: the mask follows with nearest-neighbour, the
    uncovered corners are 0 in the image and background in the mask); brightness, contrast and
    saturation jitter of strength ``color_jitter`` (hue a tenth of it), image only. Geometry is applied
    after the resize, so its cost does not grow with the source image size.
    """
    ops: list = [v2.Resize(_size(size), antialias=True)]
    if train:
        ops += [v2.RandomHorizontalFlip(hflip), v2.RandomVerticalFlip(vflip)]
        if rotate > 0 or scale > 0:
            ops.append(v2.RandomAffine(degrees=rotate, scale=(1 - scale, 1 + scale) if scale > 0 else None))
        if color_jitter > 0:
            c = color_jitter
            ops.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(c / 10, 0.5)))
    ops.append(_IMAGE_TO_FLOAT)
    return v2.Compose(ops)


def det_transforms(size: int | tuple[int, int], train: bool, hflip: float = 0.5) -> v2.Compose:
    """Resize to ``size``; when ``train``, random horizontal flip; drop boxes that became degenerate.

    Input ``(Image[3, H, W] uint8, {"boxes": BoundingBoxes[N, 4] XYXY, "labels": Tensor[N]})``; a
    ``difficult`` ``Tensor[N]`` in the target is kept in step with the boxes (:func:`segdet.data.datasets.box_labels`).
    """
    ops: list = [v2.Resize(_size(size), antialias=True)]
    if train:
        ops.append(v2.RandomHorizontalFlip(hflip))
    ops += [_IMAGE_TO_FLOAT, v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=box_labels)]
    return v2.Compose(ops)


def yolo_preprocess(size: int) -> v2.Compose:
    """An image alone (``tv_tensors.Image`` uint8 ``[3, H, W]``) -> the network's float input ``[3, size, size]``."""
    return v2.Compose([v2.Resize((size, size), antialias=True),
                       v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def yolo_transforms(size: int, train: bool, hflip: float = 0.0, vflip: float = 0.0) -> v2.Compose:
    """Image and boxes: resize to ``size`` x ``size``; when ``train``, the paper's augmentation: random scaling
    and translation up to 20% of the image size, exposure (brightness) and saturation up to a factor 1.5, a
    horizontal flip with probability ``hflip`` (Darknet's YOLOv1 training flips half the images) and a vertical
    one with probability ``vflip`` (only for data whose labels do not depend on up and down);
    ImageNet normalisation. Boxes move with the image; boxes pushed out of it are dropped (with their
    ``difficult`` flags, when the target has them)."""
    ops: list = [v2.Resize((size, size), antialias=True)]
    if train:
        ops += [v2.RandomAffine(degrees=0.0, translate=(0.2, 0.2), scale=(0.8, 1.2)),
                v2.ColorJitter(brightness=(1 / 1.5, 1.5), saturation=(1 / 1.5, 1.5))]
        if hflip:
            ops.append(v2.RandomHorizontalFlip(hflip))
        if vflip:
            ops.append(v2.RandomVerticalFlip(vflip))
    ops += [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD), v2.SanitizeBoundingBoxes(min_size=2.0, labels_getter=box_labels)]
    return v2.Compose(ops)
