"""Joint image/target transforms with ``torchvision.transforms.v2``.

Images are ``tv_tensors.Image``, masks ``tv_tensors.Mask`` and boxes ``tv_tensors.BoundingBoxes``, so
one transform moves all of them together: a horizontal flip mirrors the mask and the boxes with the
image, a resize scales the boxes and resamples the mask with nearest-neighbour.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from segdet.data.datasets import box_labels, resize_with_boxes, size_hw
from segdet.nets.backbones import IMAGENET_MEAN, IMAGENET_STD

_IMAGE_TO_FLOAT = v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)


def seg_transforms(
    size: int | tuple[int, int],
    train: bool,
    hflip: float = 0.5,
    vflip: float = 0.5,
    *,
    rotate: float = 0.0,
    scale: float = 0.0,
    color_jitter: float = 0.0,
    resize: bool = True,
) -> v2.Compose:
    """Resize to ``size`` (int: square; ``(H, W)``); when ``train``, random augmentation. Image -> float in [0, 1].
    ``resize=False`` leaves the resize out, for pairs that come resized already
    (``SegmentationDataset(resize_to=size)``, whose cache then holds them resized).

    Input ``(Image[3, H, W] uint8, Mask[H, W])``; output ``(Image[3, h, w] float32, Mask[h, w])``.
    Training augmentation, each off at 0: flips (lesions have no up or down, so vertical flips are on by
    default too); a random rotation by up to ``rotate`` degrees and scaling by a factor in
    ``[1 - scale, 1 + scale]`` (one ``RandomAffine``: the mask follows with nearest-neighbour, the
    uncovered corners are 0 in the image and background in the mask); brightness, contrast and
    saturation jitter of strength ``color_jitter`` (hue a tenth of it), image only. Geometry is applied
    after the resize, so its cost does not grow with the source image size.
    """
    ops: list = [v2.Resize(size_hw(size), antialias=True)] if resize else []
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
    ops: list = [v2.Resize(size_hw(size), antialias=True)]
    if train:
        ops.append(v2.RandomHorizontalFlip(hflip))
    ops += [_IMAGE_TO_FLOAT, v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=box_labels)]
    return v2.Compose(ops)


def yolo_preprocess(size: int) -> v2.Compose:
    """An image alone (``tv_tensors.Image`` uint8 ``[3, H, W]``) -> the network's float input ``[3, size, size]``."""
    return v2.Compose([v2.Resize((size, size), antialias=True),
                       v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class YoloAugment:
    """YOLOv1's training augmentation (Redmon et al. 2016, section 2.2) on an ``(image, target)`` pair: resize to
    ``size`` x ``size`` (the inference resize, :func:`yolo_preprocess`), random scaling by a factor in
    ``[1 - scale, 1 + scale]`` about the centre and translation by up to ``translate`` of the image size (one
    OpenCV affine warp of the uint8 image, uncovered pixels 0 as in ``v2.RandomAffine``), exposure
    (brightness) and saturation each by a factor in ``[1 / exposure, exposure]`` and ``[1 / saturation,
    saturation]``, in random order (``v2.ColorJitter``'s blends, saturating at 0 and 255), a horizontal flip
    with probability ``hflip`` and a vertical one with ``vflip``; then float and ImageNet normalisation.

    Boxes move by the same affine map, are clipped to the image, and those narrower or shorter than 2 px
    afterwards are dropped with their labels and ``difficult`` flags (as ``v2.SanitizeBoundingBoxes``). The
    random numbers come from PyTorch's generator, so seeds and DataLoader workers behave as with
    torchvision's ops.

    The same augmentation as torchvision's ``RandomAffine`` + ``ColorJitter`` + flips, computed on the uint8
    array with OpenCV (``python -m bench.augment`` times both).
    """

    def __init__(self, size: int, hflip: float = 0.0, vflip: float = 0.0, *, translate: float = 0.2,
                 scale: float = 0.2, exposure: float = 1.5, saturation: float = 1.5):
        self.size, self.hflip, self.vflip = size, hflip, vflip
        self.translate, self.scale, self.exposure, self.saturation = translate, scale, exposure, saturation
        std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        self._mul = 1.0 / (255.0 * std)
        self._add = -torch.tensor(IMAGENET_MEAN).view(3, 1, 1) / std

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[tv_tensors.Image, dict]:
        size = self.size
        image, b = resize_with_boxes(image.as_subclass(torch.Tensor), target["boxes"].as_subclass(torch.Tensor), size)
        rgb = np.ascontiguousarray(image.permute(1, 2, 0).numpy())
        r = torch.rand(8).tolist()
        s = 1.0 + self.scale * (2 * r[0] - 1)
        tx = round(self.translate * size * (2 * r[1] - 1))
        ty = round(self.translate * size * (2 * r[2] - 1))
        c = size / 2  # u' = s (u - c) + c + t in continuous coordinates, where pixel i covers [i, i + 1)
        if s != 1.0 or tx or ty:
            off = (1 - s) * (c - 0.5)  # the same map in pixel-centre coordinates, as OpenCV takes it
            m = np.array([[s, 0.0, off + tx], [0.0, s, off + ty]])
            rgb = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                 borderValue=(0, 0, 0))
        jitter = [("exposure", self.exposure, r[3]), ("saturation", self.saturation, r[4])]
        for kind, strength, u in (jitter if r[5] < 0.5 else jitter[::-1]):
            if strength == 1.0:
                continue
            f = 1 / strength + (strength - 1 / strength) * u
            if kind == "exposure":
                rgb = cv2.convertScaleAbs(rgb, alpha=f)
            else:
                gray = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
                rgb = cv2.addWeighted(rgb, f, gray, 1 - f, 0)
        hflip, vflip = r[6] < self.hflip, r[7] < self.vflip
        if hflip or vflip:
            rgb = cv2.flip(rgb, -1 if hflip and vflip else (1 if hflip else 0))
        out = torch.addcmul(self._add, torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float(),
                            self._mul)

        b = ((b - c) * s + c + torch.tensor([tx, ty, tx, ty], dtype=torch.float32)).clamp(0, size)
        if hflip:
            b = torch.stack([size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]], dim=1)
        if vflip:
            b = torch.stack([b[:, 0], size - b[:, 3], b[:, 2], size - b[:, 1]], dim=1)
        keep = ((b[:, 2] - b[:, 0]) >= 2.0) & ((b[:, 3] - b[:, 1]) >= 2.0)
        target = {**target, "boxes": tv_tensors.BoundingBoxes(b[keep], format="XYXY", canvas_size=(size, size)),
                  "labels": target["labels"][keep]}
        if "difficult" in target:
            target["difficult"] = target["difficult"][keep]
        return tv_tensors.Image(out), target


def yolo_transforms(size: int, train: bool, hflip: float = 0.0, vflip: float = 0.0) -> v2.Compose | YoloAugment:
    """Image and boxes: resize to ``size`` x ``size``, float, ImageNet normalisation; when ``train``, the paper's
    augmentation (:class:`YoloAugment`): random scaling and translation up to 20% of the image size, exposure
    (brightness) and saturation up to a factor 1.5, a horizontal flip with probability ``hflip`` (Darknet's
    YOLOv1 training flips half the images) and a vertical one with probability ``vflip`` (only for data whose
    labels do not depend on up and down). Boxes move with the image; boxes pushed out of it are dropped (with
    their ``difficult`` flags, when the target has them)."""
    if train:
        return YoloAugment(size, hflip, vflip)
    return v2.Compose([v2.Resize((size, size), antialias=True),
                       v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                       v2.SanitizeBoundingBoxes(min_size=2.0, labels_getter=box_labels)])
