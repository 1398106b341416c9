"""Running a ``nn.Sequential`` of convolution / batch norm / activation / max-pooling layers with less memory
traffic, exactly as it would run module by module (to float rounding).

- A convolution followed by a batch norm that uses its running statistics (eval mode, or a frozen norm in a
  training network) runs as one convolution with the norm folded into its weights and bias, computed from the
  current parameters at every call (a few thousand multiplies), so loading a state dict, resuming or averaging
  weights needs no refresh and the module structure and state dict stay as they are. Gradients still reach the
  convolution's and norm's parameters through the folded weights when they require them.
- A ``ReLU``/``LeakyReLU`` (slope >= 0) followed by a ``MaxPool2d`` runs as the pooling first: both are
  monotonic, so the result is identical and the activation touches a quarter of the values.

Measured on a 2-core Intel Xeon (docs/benchmarks.md): the R-CNN region features 1.35x and a YOLOv1 training
epoch with the three frozen layers transferred from R-CNN 1.25x. Training batch norms (batch statistics) are
left alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def foldable(conv: nn.Module, norm: nn.Module) -> bool:
    """Whether ``norm`` after ``conv`` can be folded into it: a plain zero-padded 2-D convolution and a batch norm
    that normalises with its running statistics (eval mode, or a frozen norm kept in eval mode)."""
    return (isinstance(conv, nn.Conv2d) and isinstance(norm, (nn.BatchNorm2d, nn.SyncBatchNorm))
            and conv.padding_mode == "zeros"
            and not norm.training and norm.running_mean is not None and norm.running_var is not None)


def folded_conv(conv: nn.Conv2d, norm: nn.BatchNorm2d | nn.SyncBatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))`` as one convolution: ``w * g / sqrt(var + eps)`` and ``(b - mean) * g / sqrt(var + eps) + beta``."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    bias = -norm.running_mean * scale if conv.bias is None else (conv.bias - norm.running_mean) * scale
    if norm.bias is not None:
        bias = bias + norm.bias
    weight = conv.weight * scale.reshape(-1, 1, 1, 1)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _commutes_with_max(act: nn.Module) -> bool:
    return isinstance(act, nn.ReLU) or (isinstance(act, nn.LeakyReLU) and act.negative_slope >= 0)


def fused_forward(seq: nn.Sequential, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """``seq[start:stop](x)``, with conv + running-statistics batch norm folded and activation + max-pooling
    swapped (see the module docstring). Any other module runs as it is."""
    mods = list(seq.children())[start:stop]
    i, n = 0, len(mods)
    while i < n:
        m = mods[i]
        if i + 1 < n and foldable(m, mods[i + 1]):
            x = folded_conv(m, mods[i + 1], x)
            i += 2
            continue
        if i + 1 < n and _commutes_with_max(m) and isinstance(mods[i + 1], nn.MaxPool2d):
            x = m(mods[i + 1](x))
            i += 2
            continue
        x = m(x)
        i += 1
    return x


def cache_block(net: nn.Module, side: int, element_size: int, budget: int, smallest: int = 1) -> int:
    """Inputs per forward pass such that the output of ``net``'s first convolution (``net`` itself when it is one)
    for a square ``side`` input fits in ``budget`` bytes: the largest power of two, at least ``smallest``. On a CPU, running the per-sample (no-gradient, no
    batch-statistics) layers of a large batch in such blocks keeps each layer's output in the caches for the next
    layer and the max-pooling instead of writing it to memory and reading it back (docs/benchmarks.md)."""
    conv = next(m for m in net.modules() if isinstance(m, nn.Conv2d))
    out = (side + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
    fits = budget // (conv.out_channels * out * out * element_size)
    return 1 << max(smallest.bit_length() - 1, int(fits).bit_length() - 1)
