"""YOLOv1 (Redmon et al., CVPR 2016): a backbone, the paper's detection head, an S x S x (B*5 + C) output.

Head (figure 3 of the paper, its last four convolutional and two fully connected layers): 3x3 conv,
3x3 conv with stride 2, 3x3 conv, 3x3 conv (no max-pooling), flatten, a fully connected layer (4096 in the
paper), dropout 0.5, and a fully connected output of S*S*(B*5+C) values reshaped to ``[N, S, S, B*5+C]``.
Each cell holds B boxes ``(x, y, w, h, confidence)`` (x, y relative to the cell, w, h to the image) and
then C class probabilities. The output layer is linear, as in the paper.

``head="conv"`` keeps the four convolutions and replaces the two fully connected layers by their per-cell
form, two 1x1 convolutions (``hidden`` channels, dropout, then B*5+C): every cell predicts from its own
features with weights shared across cells (as YOLOv2 does). Same output, same loss; it learns from far fewer
images and steps, which is what a CPU budget allows (the fully connected layers must learn each cell's
mapping separately).

S follows from the input size: ``S = input_size / (2 * backbone stride)``, so a 448 input gives the
paper's 7 x 7 with the stride-32 backbones (darknet24, vgg16, resnet18) and a 224 input gives 7 x 7 with
the stride-16 ``small`` backbone; with VOC's 20 classes and B = 2 the output is 7 x 7 x 30.
"""

from __future__ import annotations

import torch
from torch import nn

from segdet.nets.backbones import build_backbone
from segdet.nets.fuse import cache_block, fused_forward


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.1, inplace=True)]


def grid_size(backbone_stride: int, input_size: int) -> int:
    """S for an input size; raises ``ValueError`` naming the valid sizes when it does not divide."""
    step = 2 * backbone_stride
    if input_size % step or input_size < step:
        raise ValueError(
            f"input_size {input_size} is not a multiple of {step} (2 x the backbone stride {backbone_stride}); "
            f"valid sizes include {', '.join(str(step * k) for k in range(3, 9))}"
        )
    return input_size // step


HEADS = ("fc", "conv")

#: bytes of first-layer output one CPU pass through the frozen first backbone layers may produce: blocks of
#: 2 images at 256 px and 1 at 448 px ran those layers 2.4x and 3.2x faster than a batch of 8 in one pass on a
#: 2-core Intel Xeon (docs/benchmarks.md)
FROZEN_BLOCK_BYTES = 8 * 2**20


class YOLOv1(nn.Module):
    """``[N, 3, input_size, input_size]`` -> ``[N, S, S, B*5 + C]``.

    Args:
        backbone: ``small``, ``darknet24``, ``vgg16``, ``resnet18`` or ``alexnet`` (see ``nets.backbones``).
        num_classes: C. boxes_per_cell: B.
        head_channels: channels of the four head convolutions (1024 in the paper).
        hidden: width of the first fully connected layer (4096 in the paper).
        head: ``fc`` (the paper's fully connected layers) or ``conv`` (the same per cell, as 1x1 convolutions).

    The defaults are those of the ``yolo_train`` section of ``params.yaml`` (a test keeps them equal).
    """

    def __init__(self, backbone: str = "small", num_classes: int = 20, *, boxes_per_cell: int = 2,
                 input_size: int = 256, head_channels: int = 128, hidden: int = 1024, dropout: float = 0.0,
                 head: str = "conv"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"Wrong YOLOv1 head {head!r}. Available options are: {', '.join(HEADS)}")
        bb = build_backbone(backbone)
        self.backbone_name = backbone
        self.S = grid_size(bb.stride, input_size)
        self.B, self.C, self.input_size = boxes_per_cell, num_classes, input_size
        self.features = bb.features
        c = head_channels
        self.head = nn.Sequential(*_conv(bb.channels, c), *_conv(c, c, stride=2), *_conv(c, c), *_conv(c, c))
        self.head_type = head
        out = self.B * 5 + self.C
        if head == "fc":
            self.fc = nn.Sequential(nn.Flatten(), nn.Linear(self.S * self.S * c, hidden), nn.LeakyReLU(0.1, inplace=True),
                                    nn.Dropout(dropout), nn.Linear(hidden, self.S * self.S * out))
        else:
            self.fc = nn.Sequential(nn.Conv2d(c, hidden, 1), nn.LeakyReLU(0.1, inplace=True), nn.Dropout(dropout),
                                    nn.Conv2d(hidden, out, 1))

    def freeze_backbone(self, layers: int) -> int:
        """Keep the first ``layers`` convolutions of the backbone, and the batch norms after them, as they are
        (no gradient; batch norms use their stored statistics), like torchvision's ``trainable_backbone_layers``
        and detectron2's ``FREEZE_AT``. Returns the number of frozen parameters.

        Raises:
            ValueError: ``layers`` is more than the backbone's convolutions (the message gives the count).
        """
        convs = [m for m in self.features.modules() if isinstance(m, nn.Conv2d)]
        if layers > len(convs):
            raise ValueError(f"{layers} is more than the {len(convs)} convolutions of backbone {self.backbone_name!r}")
        frozen: list[nn.Module] = []
        seen = 0
        for m in self.features.modules():
            if isinstance(m, nn.Conv2d):
                seen += 1
            if seen == 0 or seen > layers:
                continue
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
                frozen.append(m)
        for m in frozen:
            m.requires_grad_(False)
        self._frozen_norms = [m for m in frozen if isinstance(m, nn.BatchNorm2d)]
        # the leading feature modules that need no gradient: the frozen layers and the activation / pooling
        # after the last of them, up to the next convolution
        children = list(self.features.children())
        prefix = 0
        if layers:
            last = max(i for i, m in enumerate(children) if any(m is f for f in frozen))
            prefix = next((i for i in range(last + 1, len(children)) if isinstance(children[i], nn.Conv2d)),
                          len(children))
        self._frozen_prefix = prefix
        self.train(self.training)
        return sum(p.numel() for m in frozen for p in m.parameters())

    def train(self, mode: bool = True) -> YOLOv1:
        super().train(mode)
        for m in getattr(self, "_frozen_norms", ()):
            m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # frozen / eval-mode batch norms folded into their convolutions (same result, less memory traffic)
        x = self.fc(fused_forward(self.head, self._features(x)))
        if self.head_type == "conv":
            return x.permute(0, 2, 3, 1)
        return x.view(-1, self.S, self.S, self.B * 5 + self.C)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone; on a CPU the frozen first layers run without autograd in blocks of
        :data:`FROZEN_BLOCK_BYTES` of first-layer output (each image is computed on its own there: folded
        running-statistics norms, no batch statistics), the rest on the whole batch."""
        prefix = getattr(self, "_frozen_prefix", 0)
        if not prefix or x.device.type != "cpu" or x.requires_grad:
            return fused_forward(self.features, x)
        block = cache_block(self.features, x.shape[-1], x.element_size(), FROZEN_BLOCK_BYTES)
        with torch.no_grad():
            if len(x) > block:
                x = torch.cat([fused_forward(self.features, part, stop=prefix) for part in x.split(block)])
            else:
                x = fused_forward(self.features, x, stop=prefix)
        return fused_forward(self.features, x, start=prefix)
