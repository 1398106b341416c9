"""Per-image segmentation metrics from binary predictions and truths.

All functions take ``pred`` and ``target`` as bool/0-1 tensors ``[N, H, W]`` (lesion = 1) and return one
value per image, so means over a test set are means over images (as the ISIC 2018 challenge scores).
"""

from __future__ import annotations

import torch

#: ISIC 2018 Task 1: an image whose Jaccard is below this scores 0
ISIC_JACCARD_THRESHOLD = 0.65


def confusion(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pixel counts per image: ``tp, fp, fn, tn`` as float64 tensors ``[N]``."""
    p, t = pred.bool().flatten(1), target.bool().flatten(1)
    return {
        "tp": (p & t).sum(1).double(),
        "fp": (p & ~t).sum(1).double(),
        "fn": (~p & t).sum(1).double(),
        "tn": (~p & ~t).sum(1).double(),
    }


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``, and 1 where ``den == 0`` (nothing to find and nothing found is perfect)."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.ones_like(num))


def scores(pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image ``dice, iou, thresholded_jaccard, pixel_accuracy, sensitivity, specificity`` ``[N]``.

    ``dice = 2TP / (2TP + FP + FN)``, ``iou = TP / (TP + FP + FN)``, ``thresholded_jaccard = iou`` if
    ``iou >= 0.65`` else 0, ``sensitivity = TP / (TP + FN)``, ``specificity = TN / (TN + FP)``.
    """
    c = confusion(pred, target)
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    iou = _ratio(tp, tp + fp + fn)
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": iou,
        "thresholded_jaccard": torch.where(iou >= ISIC_JACCARD_THRESHOLD, iou, torch.zeros_like(iou)),
        "pixel_accuracy": (tp + tn) / (tp + fp + fn + tn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
    }
