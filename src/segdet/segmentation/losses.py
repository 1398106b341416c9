"""Segmentation losses on logits ``[N, C, H, W]`` and integer targets ``[N, H, W]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce", "dice", "ce+dice")


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice of the foreground classes (1..C-1), averaged over classes, summed over the batch.

    ``dice_c = (2 * sum(p_c * t_c) + eps) / (sum(p_c) + sum(t_c) + eps)`` with ``p = softmax(logits)``.
    """
    probs = logits.float().softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + eps) / (denom + eps)
    return 1 - dice[1:].mean()


class SegLoss(nn.Module):
    """``ce``, ``dice`` or ``ce+dice`` (their sum). ``forward`` returns ``(loss, {"ce": .., "dice": ..})``."""

    def __init__(self, kind: str = "ce+dice"):
        super().__init__()
        if kind not in LOSSES:
            raise ValueError(f"Wrong loss {kind!r}. Available options are: {', '.join(LOSSES)}")
        self.kind = kind

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts: dict[str, torch.Tensor] = {}
        terms = self.kind.split("+")  # whole names: "dice" holds the letters "ce"
        if "ce" in terms:
            parts["ce"] = F.cross_entropy(logits.float(), target)
        if "dice" in terms:
            parts["dice"] = soft_dice_loss(logits, target)
        loss = sum(parts.values())
        return loss, {k: v.detach() for k, v in parts.items()}  # tensors: no host sync per step
