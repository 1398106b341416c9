"""The region CNN of R-CNN and the warping of proposals to its fixed input size."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models
from torchvision.ops import roi_align

from segdet.detection.boxes import dilate
from segdet.nets.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from segdet.nets.weights import CheckpointError

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


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
        return model.eval(), cfg

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier[:-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier[-1](self.embed(x))


def normalise(image: torch.Tensor) -> torch.Tensor:
    """uint8 ``[3, H, W]`` -> float ImageNet-normalised (so the image mean is 0, as is roi_align's padding)."""
    return (image.float() / 255.0 - _MEAN.to(image.device)) / _STD.to(image.device)


def warp(image: torch.Tensor, boxes: torch.Tensor, crop_size: int, context: float, sampling_ratio: int = 2
         ) -> torch.Tensor:
    """All ``boxes [K, 4]`` of one normalised image ``[3, H, W]`` warped to ``[K, 3, crop, crop]`` at once.

    Each box is dilated so ``context`` pixels of surrounding image appear around it after warping
    (R-CNN's p = 16 at 227 pixels); area outside the image reads as 0, the (normalised) image mean.
    ``sampling_ratio``: bilinear samples per output pixel and axis (2: anti-aliased when shrinking).
    """
    if len(boxes) == 0:
        return image.new_zeros((0, 3, crop_size, crop_size))
    rois = dilate(boxes.to(image.dtype), crop_size, context)
    return roi_align(image[None], [rois], output_size=(crop_size, crop_size), spatial_scale=1.0,
                     sampling_ratio=sampling_ratio, aligned=True)
