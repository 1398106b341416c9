"""The region CNN of R-CNN and the warping of proposals to its fixed input size."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models
from torchvision.ops import roi_align

from segdet.detection.boxes import dilate
from segdet.nets.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from segdet.nets.fuse import cache_block, fused_forward
from segdet.nets.weights import CheckpointError

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


#: bytes of first-layer output one CPU forward pass of region features may produce (:meth:`RegionCNN.cpu_block`):
#: on a 2-core Intel Xeon (2 MiB L2 a core) blocks of this size ran the features of 512 regions 1.75x faster
#: at 48 px than one pass, and 2x at 227 px (docs/benchmarks.md)
CPU_BLOCK_BYTES = 32 * 2**20


class RegionCNN(nn.Module):
    """CNN for warped regions ``[N, 3, S, S]`` -> logits ``[N, num_classes + 1]`` (index 0 = background).

    ``embed`` returns the penultimate features ``[N, D]`` the SVMs are trained on (fc7, D = 4096, for
    AlexNet and VGG16; D = 256 for ``small``). For AlexNet and VGG16 the module names are torchvision's,
    so ImageNet weights load with ``init_from`` (the 1000-way ``classifier.6`` is reported and skipped).
    """

    def __init__(self, backbone: str, num_classes: int):
        super().__init__()
        self.backbone_name = backbone
        self.num_classes = num_classes
        if backbone in ("alexnet", "vgg16"):
            tv = models.alexnet(weights=None) if backbone == "alexnet" else models.vgg16(weights=None)
            self.features, self.avgpool, self.classifier = tv.features, tv.avgpool, tv.classifier
            self.classifier[6] = nn.Linear(4096, num_classes + 1)
        elif backbone == "small":
            self.features = build_backbone("small").features
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(256, 256), nn.ReLU(inplace=True), nn.Dropout(0.3),
                                            nn.Linear(256, num_classes + 1))
        else:
            raise ValueError(f"Wrong R-CNN backbone {backbone!r}. Available options are: small, alexnet, vgg16")
        self.feature_dim = self.classifier[-1].in_features

    @classmethod
    def from_checkpoint(cls, ckpt: dict, path: str = "checkpoint") -> tuple[RegionCNN, dict]:
        """The trained CNN of a ``rcnn_finetune`` checkpoint, and the checkpoint's config (crop size, context).

        Raises:
            CheckpointError: the checkpoint is not an R-CNN region CNN's (named by ``path``).
        """
        cfg = ckpt.get("config", {})
        if "crop_size" not in cfg or "classes" not in ckpt:
            raise CheckpointError(f"{path}: not an R-CNN region CNN checkpoint (its config has no crop_size)")
        model = cls(cfg["backbone"], len(ckpt["classes"]))
        model.load_state_dict(ckpt["model"])
        # channels-last (NHWC), as the warp's crops come: 1.4x the feature speed on CPU (bench/roofline.py)
        return model.eval().to(memory_format=torch.channels_last), cfg

    def cpu_block(self, crop_size: int, element_size: int = 4) -> int:
        """Regions per forward pass when features are extracted on a CPU: the largest power of two (at least 2)
        whose first-layer output fits in :data:`CPU_BLOCK_BYTES` (:func:`segdet.nets.fuse.cache_block`), so each
        layer's output is still in the caches when the next layer (and the max-pooling) reads it. 128 for
        ``small`` at 48 px, 32 at 96 px, 8 at 227 px; 32 for AlexNet at 227 px."""
        return cache_block(self.features, crop_size, element_size, CPU_BLOCK_BYTES, smallest=2)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and not self.training and not torch.is_grad_enabled():
            block = self.cpu_block(x.shape[-1], x.element_size())
            if len(x) > block:  # cache-sized blocks: 1.75x the features of 512 regions at 48 px (bench/roofline.py)
                return torch.cat([self._embed(part) for part in x.split(block)])
        return self._embed(x)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        # eval-mode batch norms folded into their convolutions (same features, 1.35x faster: nets.fuse)
        x = torch.flatten(self.avgpool(fused_forward(self.features, x)), 1)
        return self.classifier[:-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier[-1](self.embed(x))


def normalise(image: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> float ImageNet-normalised (so the image mean is 0, as is the warp's padding).
    One fused pass, ``x * (1 / (255 std)) - mean / std``: a batch of 2000 crops at 227 px is 1.2 GB of floats."""
    scale = (1.0 / (255.0 * _STD)).to(image.device)
    return torch.addcmul((-_MEAN / _STD).to(image.device), image, scale)


#: the ImageNet mean colour in uint8: what the CPU warp pads with (0 once normalised, to within 0.01)
_MEAN_U8 = tuple(float(round(m * 255)) for m in IMAGENET_MEAN)


def sampling_counts(rois: torch.Tensor, crop_size: int, sampling_ratio: int = 2) -> torch.Tensor:
    """Bilinear samples per output pixel and axis for each of ``rois [K, 4]``: as many as the box has pixels per
    output pixel along its longer side (roi_align's adaptive count, ``ceil(side / crop)``), at least 1 and at
    most ``sampling_ratio``. A box that is enlarged needs one: bilinear interpolation is exact between pixel
    centres, and roi_align's several samples in a bin narrower than a pixel average to its centre value
    (exactly, unless they straddle a pixel centre). A box that shrinks gets up to ``sampling_ratio``, so
    it stays anti-aliased. At the paper's 227 px nearly every proposal is enlarged: a quarter of the work."""
    side = torch.maximum(rois[:, 2] - rois[:, 0], rois[:, 3] - rois[:, 1])
    return torch.ceil(side / crop_size).clamp(1, max(int(sampling_ratio), 1)).to(torch.int64)


def warp(image: torch.Tensor, boxes: torch.Tensor, crop_size: int, context: float, sampling_ratio: int = 2
         ) -> torch.Tensor:
    """All ``boxes [K, 4]`` of one uint8 image ``[3, H, W]`` warped to normalised ``[K, 3, crop, crop]``.

    Each box is dilated so ``context`` pixels of surrounding image appear around it after warping
    (R-CNN's p = 16 at 227 pixels); area outside the image reads as the image mean (0 once normalised).
    ``sampling_ratio``: the most bilinear samples per output pixel and axis (2: anti-aliased when shrinking;
    :func:`sampling_counts` gives each box its own). Where the image is: on the GPU ``roi_align``
    (``aligned=True``), one batched call per sample count; on the CPU :func:`warp_cv2`, the same samples with
    OpenCV (several times faster there: docs/benchmarks.md).
    """
    if len(boxes) == 0:
        return torch.zeros((0, 3, crop_size, crop_size), device=image.device)
    rois = dilate(boxes.float(), crop_size, context)
    counts = sampling_counts(rois, crop_size, sampling_ratio)
    if image.device.type == "cpu":
        return normalise(warp_cv2(image, rois, crop_size, counts))
    return warp_roi_align(normalise(image), rois, crop_size, counts)


def warp_roi_align(image: torch.Tensor, rois: torch.Tensor, crop_size: int, counts: torch.Tensor) -> torch.Tensor:
    """``roi_align`` (``aligned=True``) of a float ``[3, H, W]`` image: one batched call per sample count of
    ``counts`` (:func:`sampling_counts`), the results in the order of ``rois``. The warp on the GPU."""
    out = torch.empty((len(rois), 3, crop_size, crop_size), device=image.device, dtype=image.dtype)
    rois, counts = rois.to(image.device), counts.to(image.device)
    for s in counts.unique().tolist():
        sel = counts == s
        out[sel] = roi_align(image[None], [rois[sel]], output_size=(crop_size, crop_size), spatial_scale=1.0,
                             sampling_ratio=int(s), aligned=True)
    return out


def warp_cv2(image: torch.Tensor, rois: torch.Tensor, crop_size: int, counts: torch.Tensor | int = 2) -> torch.Tensor:
    """``roi_align(image[None], [roi], crop_size, aligned=True, sampling_ratio=s)`` of a uint8 ``[3, H, W]`` image for
    each of ``rois``, ``s`` its entry of ``counts`` (or ``counts`` for all), computed with OpenCV's SIMD code in
    uint8: each region is sampled bilinearly by ``cv2.warpAffine`` on an ``s * crop`` grid (roi_align's sample
    positions: the centres of the sub-bins) and each ``s x s`` block averaged (``INTER_AREA`` at exactly 1/s).
    As in roi_align, a sample within one pixel outside the image reads the edge pixel and one further out the
    padding (here the mean colour). Differences: uint8 rounding and OpenCV's 1/32-pixel interpolation weights
    (tested tolerance: tests/detection/test_rcnn.py). Returns uint8 ``[K, 3, crop, crop]``."""
    import cv2
    import numpy as np

    if isinstance(counts, int):
        counts = torch.full((len(rois),), max(counts, 1), dtype=torch.int64)
    hwc = np.ascontiguousarray(image.permute(1, 2, 0).numpy(), dtype=np.uint8)
    h, w = hwc.shape[:2]
    padded = cv2.copyMakeBorder(hwc, 1, 1, 1, 1, cv2.BORDER_REPLICATE)  # coordinates below shift by this pixel
    fill = np.array(_MEAN_U8, np.uint8)
    out = np.empty((len(rois), crop_size, crop_size, 3), np.uint8)
    for k, ((x1, y1, x2, y2), s) in enumerate(zip(rois.double().tolist(), counts.tolist(), strict=True)):
        n = crop_size * s
        bw, bh = (x2 - x1) / n, (y2 - y1) / n
        # output pixel (u, v) samples the image at (x1 - 0.5 + (u + 0.5) bw, y1 - 0.5 + (v + 0.5) bh)
        m = np.array([[bw, 0.0, x1 + 0.5 + 0.5 * bw], [0.0, bh, y1 + 0.5 + 0.5 * bh]])
        grid = cv2.warpAffine(padded, m, (n, n), dst=out[k] if s == 1 else None,
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                              borderValue=_MEAN_U8)
        if x1 - 0.5 + 0.5 * bw < -1 or x2 - 0.5 - 0.5 * bw > w:  # samples more than a pixel outside: padding
            xs = x1 - 0.5 + (np.arange(n) + 0.5) * bw
            grid[:, (xs < -1) | (xs > w)] = fill
        if y1 - 0.5 + 0.5 * bh < -1 or y2 - 0.5 - 0.5 * bh > h:
            ys = y1 - 0.5 + (np.arange(n) + 0.5) * bh
            grid[(ys < -1) | (ys > h)] = fill
        if s > 1:
            cv2.resize(grid, (crop_size, crop_size), dst=out[k], interpolation=cv2.INTER_AREA)
    return torch.from_numpy(out).permute(0, 3, 1, 2)
