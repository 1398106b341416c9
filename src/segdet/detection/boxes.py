"""Box helpers. Boxes are ``Tensor[N, 4]`` in ``(x1, y1, x2, y2)`` pixels (docs/architecture.md), unless named ``xywh``.

IoU and NMS come from ``torchvision.ops``; this module adds the R-CNN regression parameterisation
(Girshick et al. 2014, appendix C) and context dilation.
"""

from __future__ import annotations

import torch
from torchvision.ops import box_iou, clip_boxes_to_image

__all__ = ["box_iou", "clip_boxes_to_image", "encode", "decode", "dilate"]


def _centre_size(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def encode(proposals: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Regression targets ``[N, 4]`` = ``(dx, dy, dw, dh)`` that map ``proposals`` onto ``targets``.

    ``dx = (Gx - Px) / Pw``, ``dy = (Gy - Py) / Ph``, ``dw = log(Gw / Pw)``, ``dh = log(Gh / Ph)`` with
    ``(x, y)`` box centres and ``(w, h)`` sizes; both inputs ``[N, 4]`` xyxy.
    """
    px, py, pw, ph = _centre_size(proposals)
    gx, gy, gw, gh = _centre_size(targets)
    return torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=1)


def decode(proposals: torch.Tensor, deltas: torch.Tensor, max_log: float = 4.135) -> torch.Tensor:
    """Inverse of :func:`encode`: apply ``deltas [N, 4]`` to ``proposals [N, 4]`` -> boxes ``[N, 4]`` xyxy.

    ``dw, dh`` are clamped to ``max_log`` (log(1000/16), as torchvision does) so a wild regressor cannot
    overflow.
    """
    px, py, pw, ph = _centre_size(proposals)
    dx, dy = deltas[:, 0], deltas[:, 1]
    dw, dh = deltas[:, 2].clamp(max=max_log), deltas[:, 3].clamp(max=max_log)
    cx, cy = px + dx * pw, py + dy * ph
    w, h = pw * torch.exp(dw), ph * torch.exp(dh)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=1)


def dilate(boxes: torch.Tensor, crop_size: int, context: float) -> torch.Tensor:
    """Grow ``boxes [N, 4]`` so that, warped to ``crop_size``, each has ``context`` pixels of image around it.

    R-CNN (section 2.1): the box maps to the central ``crop_size - 2 * context`` pixels of the warped
    region, so every side grows by ``context / (crop_size - 2 * context)`` of the box size.
    """
    if not 0 <= 2 * context < crop_size:
        raise ValueError(f"context {context} must be in [0, crop_size / 2) for crop_size {crop_size}")
    scale = context / (crop_size - 2 * context)
    w = (boxes[:, 2] - boxes[:, 0]) * scale
    h = (boxes[:, 3] - boxes[:, 1]) * scale
    return torch.stack([boxes[:, 0] - w, boxes[:, 1] - h, boxes[:, 2] + w, boxes[:, 3] + h], dim=1)
