"""UNet (Ronneberger et al., 2015) with ``base_channel`` as the width knob.

Encoder: a double 3x3 conv block at ``base`` channels, then 4 downsamplings (2x2 max-pool + double conv),
each doubling the channels except the last, which keeps them (the plan of a bilinear-upsampling decoder):
for base 32 the encoder gives 32, 64, 128, 256 and 256 at the bottom. The decoder upsamples bilinearly or, with
``upsample="transpose"``, with the paper's learned 2x2 up-convolutions on the same channels. Each decoder
block upsamples x2, pads to the skip's size (so any input size works), concatenates the skip connection
(the first decoder block sees 256 + 256 = 512 channels for base 32) and halves the channels back down to
``base``; a 1x1 conv maps to ``num_classes`` logits.

``resnet18`` is the same encoder-decoder shape on torchvision's ResNet-18 as the encoder (the "Unet with a
ResNet-18 encoder" of segmentation_models_pytorch): it downsamples by 4 in its first two layers, so it runs
about twice the images a second of ``unet32`` on a CPU with three times the parameters, and learns faster per
minute on real lesions (docs/benchmarks.md). Its encoder keeps torchvision's names under ``encoder.``, so an
ImageNet ResNet-18 state dict given as ``init_from`` loads into it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

from segdet.nets.backbones import IMAGENET_MEAN, IMAGENET_STD

#: named variants -> base_channel. The width trades compute for quality (about 4x the FLOPs per doubling).
VARIANTS = {"unet32": 32, "unet64": 64, "unet128": 128}
#: variants with a pretrained-style encoder instead of the classic one
ENCODER_VARIANTS = ("resnet18",)


def split_concat(x: torch.Tensor) -> bool:
    """Whether a decoder computes its convolution of a concatenation as a sum of convolutions of the parts
    (:meth:`DoubleConv.concat`): in float32 on a CPU, where it was measured faster (docs/benchmarks.md), and not
    under autocast, whose reduced-precision outputs would be summed in that precision."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")


class DoubleConv(nn.Sequential):
    """(conv 3x3 -> BN -> ReLU) x 2. ``[N, in_ch, H, W] -> [N, out_ch, H, W]``."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: int | None = None):
        mid_ch = mid_ch or out_ch
        super().__init__(
            nn.Conv2d(in_ch, mid_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, out_ch, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def concat(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """``self(torch.cat(parts, dim=1))``, on a CPU without building the concatenation.

        A convolution is linear in its input channels, so the first one runs as the sum of one convolution per
        part over that part's slice of the weights, and the state dict is the one of the concatenating network.
        On a 2-core CPU in channels-last this skips the copy into the concatenation and, in the backward pass,
        the copies of its gradient's channel slices, which made a UNet32 training step 0 to 6 % faster
        (docs/benchmarks.md). Elsewhere (CUDA, autocast) it concatenates, as measured there before.
        """
        if not split_concat(parts[0]):
            return self(torch.cat(parts, dim=1))
        first, *rest = self.children()
        x, start = None, 0
        for part in parts:
            stop = start + part.shape[1]
            y = F.conv2d(part, first.weight[:, start:stop], None, first.stride, first.padding, first.dilation)
            x, start = (y if x is None else x + y), stop
        if first.bias is not None:
            x = x + first.bias.view(1, -1, 1, 1)
        for m in rest:
            x = m(x)
        return x


class Down(nn.Sequential):
    """2x2 max-pool then :class:`DoubleConv`. ``[N, in_ch, H, W] -> [N, out_ch, H // 2, W // 2]``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch))


#: how the classic UNet's decoder doubles the resolution (``unet_train.upsample``)
UPSAMPLE = ("bilinear", "transpose")


class Up(nn.Module):
    """x2 upsample, pad to the skip's size, concatenate ``[skip, up]``, :class:`DoubleConv`.

    ``x [N, in_ch // 2, h, w]``, ``skip [N, in_ch // 2, H, W]`` -> ``[N, out_ch, H, W]``. ``upsample``: ``bilinear``
    (no weights) or ``transpose``, the paper's learned 2x2 up-convolution with stride 2 (``in_ch // 2`` channels in
    and out, as the bilinear plan keeps them).
    """

    def __init__(self, in_ch: int, out_ch: int, upsample: str = "bilinear"):
        super().__init__()
        if upsample == "transpose":
            self.up = nn.ConvTranspose2d(in_ch // 2, in_ch // 2, 2, stride=2)
        elif upsample == "bilinear":
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        else:
            raise ValueError(f"Wrong UNet upsample {upsample!r}. Available options are: {', '.join(UPSAMPLE)}")
        self.conv = DoubleConv(in_ch, out_ch, in_ch // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv.concat([skip, x])


class UNet(nn.Module):
    """UNet for ``[N, in_channels, H, W]`` images (any ``H, W``) -> logits ``[N, num_classes, H, W]``.

    Args:
        base_channel: channels of the first block (32, 64 or 128 for the named variants).
        num_classes: output channels (2 for lesion vs background, trained with cross-entropy).
        in_channels: input channels (3 for RGB).
        upsample: the decoder's x2 upsampling, ``bilinear`` or ``transpose`` (:class:`Up`).
    """

    def __init__(self, base_channel: int = 32, num_classes: int = 2, in_channels: int = 3,
                 upsample: str = "bilinear"):
        super().__init__()
        if base_channel < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError("UNet: base_channel, num_classes and in_channels must be positive")
        b = base_channel
        self.base_channel, self.num_classes = b, num_classes
        self.inc = DoubleConv(in_channels, b)
        self.down1, self.down2, self.down3 = Down(b, 2 * b), Down(2 * b, 4 * b), Down(4 * b, 8 * b)
        self.down4 = Down(8 * b, 8 * b)
        self.up1, self.up2 = Up(16 * b, 4 * b, upsample), Up(8 * b, 2 * b, upsample)
        self.up3, self.up4 = Up(4 * b, b, upsample), Up(2 * b, b, upsample)
        self.outc = nn.Conv2d(b, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)


class DecoderBlock(nn.Module):
    """Nearest x2 upsample to the skip's size, concatenate the skip (if any), (conv 3x3 -> BN -> ReLU) x 2."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int):
        super().__init__()
        self.conv = DoubleConv(in_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x) if skip is None else self.conv.concat([x, skip])


class ResNetUNet(nn.Module):
    """UNet on a torchvision ResNet-18 encoder: ``[N, in_channels, H, W]`` in [0, 1] -> logits ``[N, num_classes, H, W]``.

    The encoder's five stages (strides 2, 4, 8, 16, 32; 64, 64, 128, 256, 512 channels) feed a decoder of five
    :class:`DecoderBlock` (256, 128, 64, 32, 16 channels), each upsampling x2 and taking the encoder map of its
    size as the skip (the last, back at full size, has none), then a 3x3 conv to ``num_classes`` logits. The
    input is ImageNet-normalised inside the network, so ImageNet weights (``init_from``) see what they expect.
    """

    DECODER = (256, 128, 64, 32, 16)

    def __init__(self, num_classes: int = 2, in_channels: int = 3):
        super().__init__()
        if num_classes < 1 or in_channels < 1:
            raise ValueError("ResNetUNet: num_classes and in_channels must be positive")
        self.num_classes = num_classes
        r = models.resnet18(weights=None)
        if in_channels != 3:
            r.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
        self.encoder = nn.ModuleDict({n: getattr(r, n) for n in names})
        mean = torch.tensor(IMAGENET_MEAN if in_channels == 3 else [0.5] * in_channels).view(1, -1, 1, 1)
        std = torch.tensor(IMAGENET_STD if in_channels == 3 else [0.25] * in_channels).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        d = self.DECODER
        skips = (256, 128, 64, 64, 0)
        ins = (512, *d[:-1])
        self.decoder = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, d, strict=True))
        self.head = nn.Conv2d(d[-1], num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        e = self.encoder
        x0 = e["relu"](e["bn1"](e["conv1"]((x - self.mean) / self.std)))  # stride 2
        x1 = e["layer1"](e["maxpool"](x0))  # 4
        x2 = e["layer2"](x1)  # 8
        x3 = e["layer3"](x2)  # 16
        x = e["layer4"](x3)  # 32
        for block, skip in zip(self.decoder, (x3, x2, x1, x0, None), strict=True):
            x = block(x, skip, skip.shape[-2:] if skip is not None else size)
        return self.head(x)


def build_unet(variant: str, num_classes: int = 2, in_channels: int = 3, upsample: str = "bilinear") -> nn.Module:
    """A named UNet variant (``unet32``, ``unet64``, ``unet128``, ``resnet18``); ``upsample`` is the classic
    variants' decoder upsampling (:class:`Up`; ``resnet18``'s decoder upsamples nearest-neighbour either way).

    Raises:
        ValueError: for any other name, listing the valid ones.
    """
    if variant == "resnet18":
        return ResNetUNet(num_classes=num_classes, in_channels=in_channels)
    if variant not in VARIANTS:
        raise ValueError(f"Wrong UNet variant {variant!r}. Available options are: "
                         f"{', '.join([*VARIANTS, *ENCODER_VARIANTS])}")
    return UNet(VARIANTS[variant], num_classes=num_classes, in_channels=in_channels, upsample=upsample)
