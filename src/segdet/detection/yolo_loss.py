"""The YOLOv1 loss (Redmon et al. 2016, equation 3): sum-squared error over the S x S x (B*5 + C) output.

For each ground-truth object, the cell containing its centre is responsible for it, and within that cell
the predictor (of B) whose box has the highest IoU with the object. With ``1obj`` for responsible
predictors, ``1noobj`` for every other predictor and ``p`` the class probabilities of cells holding an object::

    loss = l_coord * sum 1obj [(x - x^)^2 + (y - y^)^2 + (sqrt w - sqrt w^)^2 + (sqrt h - sqrt h^)^2]
         +           sum 1obj (C - IoU)^2
         + l_noobj * sum 1noobj C^2
         +           sum_cells_with_objects sum_c (p(c) - p^(c))^2

(l_coord = 5, l_noobj = 0.5), summed over the image and averaged over the batch. x, y are offsets in the
cell, w, h fractions of the image; square roots use ``sign(w) * sqrt(|w|)`` so a linear output that goes
negative still has a gradient. One object per cell, as YOLOv1 has one set of class probabilities per cell:
when several centres fall in one cell, the largest object is kept.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_iou


def _signed_sqrt(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.sqrt(x.abs() + 1e-9)


def cell_boxes_to_xyxy(boxes: torch.Tensor, i: torch.Tensor, j: torch.Tensor, S: int, size: float) -> torch.Tensor:
    """``[..., 4]`` ``(x, y, w, h)`` of cell (row ``i``, column ``j``) -> pixel ``(x1, y1, x2, y2)``."""
    cx = (j + boxes[..., 0]) * size / S
    cy = (i + boxes[..., 1]) * size / S
    w, h = boxes[..., 2] * size, boxes[..., 3] * size
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


class YoloLoss(nn.Module):
    def __init__(self, S: int, B: int, C: int, input_size: int, l_coord: float = 5.0, l_noobj: float = 0.5):
        super().__init__()
        self.S, self.B, self.C, self.size = S, B, C, input_size
        self.l_coord, self.l_noobj = l_coord, l_noobj

    def forward(self, pred: torch.Tensor, targets: list[dict[str, torch.Tensor]]
                ) -> tuple[torch.Tensor, dict[str, float]]:
        """``pred [N, S, S, B*5+C]``; ``targets[n]`` has ``boxes [k, 4]`` xyxy in input pixels and ``labels [k]``
        in ``1..C``. Returns ``(loss, {"coord", "obj", "noobj", "class"})`` (each averaged over the batch)."""
        S, B, C = self.S, self.B, self.C
        pred = pred.float()
        n = pred.shape[0]
        boxes = pred[..., : B * 5].reshape(n, S, S, B, 5)
        obj_mask = torch.zeros(n, S, S, B, dtype=torch.bool, device=pred.device)
        coord = obj = cls = pred.new_zeros(())
        for b_idx, t in enumerate(targets):
            gt = t["boxes"].to(pred.device).float()
            if len(gt) == 0:
                continue
            labels = t["labels"].to(pred.device)
            cx, cy = (gt[:, 0] + gt[:, 2]) / 2, (gt[:, 1] + gt[:, 3]) / 2
            col = (cx / self.size * S).clamp(0, S - 1e-6).floor().long()
            row = (cy / self.size * S).clamp(0, S - 1e-6).floor().long()
            area = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
            taken: set[tuple[int, int]] = set()
            for k in torch.argsort(area, descending=True).tolist():  # the largest object wins a shared cell
                i, j = int(row[k]), int(col[k])
                if (i, j) in taken:
                    continue
                taken.add((i, j))
                cell = boxes[b_idx, i, j]  # [B, 5]
                pred_xyxy = cell_boxes_to_xyxy(cell[:, :4], torch.tensor(i), torch.tensor(j), S, self.size)
                ious = box_iou(pred_xyxy.detach(), gt[k : k + 1])[:, 0]
                r = int(ious.argmax())
                obj_mask[b_idx, i, j, r] = True
                tx = cx[k] / self.size * S - j
                ty = cy[k] / self.size * S - i
                tw = (gt[k, 2] - gt[k, 0]) / self.size
                th = (gt[k, 3] - gt[k, 1]) / self.size
                p = cell[r]
                coord = coord + (p[0] - tx) ** 2 + (p[1] - ty) ** 2 + (
                    _signed_sqrt(p[2]) - torch.sqrt(tw)) ** 2 + (_signed_sqrt(p[3]) - torch.sqrt(th)) ** 2
                obj = obj + (p[4] - ious[r]) ** 2
                onehot = torch.zeros(C, device=pred.device)
                onehot[labels[k] - 1] = 1.0
                cls = cls + ((pred[b_idx, i, j, B * 5 :] - onehot) ** 2).sum()
        noobj = (boxes[..., 4][~obj_mask] ** 2).sum()
        parts = {"coord": self.l_coord * coord / n, "obj": obj / n, "noobj": self.l_noobj * noobj / n,
                 "class": cls / n}
        loss = sum(parts.values())
        return loss, {k: float(v.detach()) for k, v in parts.items()}
