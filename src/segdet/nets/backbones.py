"""Convolutional backbones shared by the R-CNN region CNN and YOLOv1.

Every backbone is a module ``features`` mapping ``[N, 3, H, W]`` images (ImageNet-normalised) to a
feature map ``[N, C, H / stride, W / stride]``. Module names follow torchvision (``features.0.weight``
for AlexNet/VGG16, ``features.conv1.weight`` / ``features.layer1...`` for ResNet18), so ImageNet
weights saved by torchvision load with ``init_from``, and a backbone trained in one network (the R-CNN
CNN) loads into another (YOLO) when the names and shapes match. No weights are downloaded.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn
from torchvision import models

BACKBONES = ("small", "alexnet", "vgg16", "resnet18", "darknet24")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    features: nn.Module
    channels: int  # C of the output feature map
    stride: int  # input pixels per feature-map cell


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True)]


def small() -> Backbone:
    """Four 3x3 conv blocks with 2x2 max-pooling (16, 32, 64, 128 channels), then a 3x3 conv to 256: stride 16.
    Narrow where the maps are large, so it trains on a 2-core CPU in minutes."""
    layers: list[nn.Module] = []
    cin = 3
    for cout in (16, 32, 64, 128):
        layers += _conv(cin, cout) + [nn.MaxPool2d(2)]
        cin = cout
    layers += _conv(128, 256)
    return Backbone(nn.Sequential(*layers), 256, 16)


def darknet24() -> Backbone:
    """The 20 convolutional layers YOLOv1 pre-trains (Redmon et al. 2016, figure 3); the detection head
    adds the last 4 of its 24. Stride 32: a 448 input gives a 14 x 14 map (7 x 7 after the head)."""
    spec = [(7, 64, 2), "M", (3, 192, 1), "M", (1, 128, 1), (3, 256, 1), (1, 256, 1), (3, 512, 1), "M",
            *[(1, 256, 1), (3, 512, 1)] * 4, (1, 512, 1), (3, 1024, 1), "M", *[(1, 512, 1), (3, 1024, 1)] * 2]
    layers: list[nn.Module] = []
    cin = 3
    for s in spec:
        if s == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            k, cout, stride = s
            layers += _conv(cin, cout, k, stride)
            cin = cout
    return Backbone(nn.Sequential(*layers), 1024, 32)


def build_backbone(name: str) -> Backbone:
    """``small``, ``alexnet``, ``vgg16``, ``resnet18`` (torchvision architectures) or ``darknet24``.

    Raises:
        ValueError: for any other name, listing the valid ones.
    """
    if name == "small":
        return small()
    if name == "darknet24":
        return darknet24()
    if name == "alexnet":
        return Backbone(models.alexnet(weights=None).features, 256, 32)
    if name == "vgg16":
        return Backbone(models.vgg16(weights=None).features, 512, 32)
    if name == "resnet18":
        r = models.resnet18(weights=None)
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        return Backbone(nn.Sequential(OrderedDict((n, getattr(r, n)) for n in names)), 512, 32)
    raise ValueError(f"Wrong backbone {name!r}. Available options are: {', '.join(BACKBONES)}")
