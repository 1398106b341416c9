"""YOLOv1's grid geometry and the decoding of its output into detections (Redmon et al. 2016, section 2:
class-specific confidence). The loss takes the cell geometry from here."""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms, clip_boxes_to_image


def cell_boxes_to_xyxy(boxes: torch.Tensor, i: torch.Tensor, j: torch.Tensor, S: int, size: float) -> torch.Tensor:
    """``[..., 4]`` ``(x, y, w, h)`` of cell (row ``i``, column ``j``) -> pixel ``(x1, y1, x2, y2)``."""
    cx = (j + boxes[..., 0]) * size / S
    cy = (i + boxes[..., 1]) * size / S
    w, h = boxes[..., 2] * size, boxes[..., 3] * size
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def decode(pred: torch.Tensor, *, B: int, input_size: int, score_threshold: float, nms_iou: float,
           max_detections: int = 100) -> list[dict[str, torch.Tensor]]:
    """``pred [N, S, S, B*5+C]`` -> per image ``{"boxes" [M, 4] xyxy input pixels, "scores" [M], "labels" [M] 1..C}``.

    Score of class c for predictor b of a cell = ``Pr(class c | object) * confidence_b``; scores below
    ``score_threshold`` are dropped, then per-class NMS at ``nms_iou`` keeps the best ``max_detections``.
    The paper defines both factors as probabilities, but the network's outputs are linear (trained with
    squared error), so each is clamped to ``[0, 1]`` first: two negative outputs must not multiply into
    a positive score, and the class outputs of cells without objects (never trained) score nothing
    where the confidence is 0 or below.
    """
    S = pred.shape[1]
    C = pred.shape[-1] - 5 * B
    pred = pred.float()
    rows = torch.arange(S, device=pred.device).view(S, 1, 1).expand(S, S, B)
    cols = torch.arange(S, device=pred.device).view(1, S, 1).expand(S, S, B)
    out = []
    for p in pred:
        boxes = p[..., : 5 * B].reshape(S, S, B, 5)
        xyxy = cell_boxes_to_xyxy(boxes[..., :4], rows, cols, S, input_size).reshape(-1, 4)
        conf = boxes[..., 4].reshape(-1).clamp(0.0, 1.0)
        cls = p[..., 5 * B :].clamp(0.0, 1.0).unsqueeze(2).expand(S, S, B, C).reshape(-1, C)
        scores = cls * conf[:, None]  # [S*S*B, C]
        k, c = torch.nonzero(scores >= score_threshold, as_tuple=True)
        b = clip_boxes_to_image(xyxy[k], (input_size, input_size))
        s = scores[k, c]
        ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, s, c = b[ok], s[ok], c[ok]
        keep = batched_nms(b, s, c, nms_iou)[:max_detections]
        out.append({"boxes": b[keep], "scores": s[keep], "labels": c[keep] + 1})
    return out
