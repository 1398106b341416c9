"""UNet (Ronneberger et al., 2015) with ``base_channel`` as the width knob.

Encoder: a double 3x3 conv block at ``base`` channels, then 4 downsamplings (2x2 max-pool + double conv),
each doubling the channels except the last, which keeps them because the decoder upsamples bilinearly
(no transposed conv): for base 32 the encoder gives 32, 64, 128, 256 and 256 at the bottom. Each decoder
block upsamples x2, pads to the skip's size (so any input size works), concatenates the skip connection
(the first decoder block sees 256 + 256 = 512 channels for base 32) and halves the channels back down to
``base``; a 1x1 conv maps to ``num_classes`` logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: named variants -> base_channel. The width trades compute for quality (about 4x the FLOPs per doubling).
VARIANTS = {"unet32": 32, "unet64": 64, "unet128": 128}


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


class Down(nn.Sequential):
    """2x2 max-pool then :class:`DoubleConv`. ``[N, in_ch, H, W] -> [N, out_ch, H // 2, W // 2]``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch))


class Up(nn.Module):
    """Bilinear x2 upsample, pad to the skip's size, concatenate ``[skip, up]``, :class:`DoubleConv`.

    ``x [N, in_ch // 2, h, w]``, ``skip [N, in_ch // 2, H, W]`` -> ``[N, out_ch, H, W]``.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.conv = DoubleConv(in_ch, out_ch, in_ch // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        if dy or dx:
            x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """UNet for ``[N, in_channels, H, W]`` images (any ``H, W``) -> logits ``[N, num_classes, H, W]``.

    Args:
        base_channel: channels of the first block (32, 64 or 128 for the named variants).
        num_classes: output channels (2 for lesion vs background, trained with cross-entropy).
        in_channels: input channels (3 for RGB).
    """

    def __init__(self, base_channel: int = 32, num_classes: int = 2, in_channels: int = 3):
        super().__init__()
        if base_channel < 1 or num_classes < 1 or in_channels < 1:
            raise ValueError("UNet: base_channel, num_classes and in_channels must be positive")
        b = base_channel
        self.base_channel, self.num_classes = b, num_classes
        self.inc = DoubleConv(in_channels, b)
        self.down1, self.down2, self.down3 = Down(b, 2 * b), Down(2 * b, 4 * b), Down(4 * b, 8 * b)
        self.down4 = Down(8 * b, 8 * b)
        self.up1, self.up2 = Up(16 * b, 4 * b), Up(8 * b, 2 * b)
        self.up3, self.up4 = Up(4 * b, b), Up(2 * b, b)
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


def build_unet(variant: str, num_classes: int = 2, in_channels: int = 3) -> UNet:
    """A named UNet variant (``unet32``, ``unet64``, ``unet128``).

    Raises:
        ValueError: for any other name, listing the valid ones.
    """
    if variant not in VARIANTS:
        raise ValueError(f"Wrong UNet variant {variant!r}. Available options are: {', '.join(VARIANTS)}")
    return UNet(VARIANTS[variant], num_classes=num_classes, in_channels=in_channels)
