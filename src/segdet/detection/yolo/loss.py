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

``cell_objects`` > 1 (at most B) lets a cell train up to that many objects, each on its own predictor:
the largest object picks its predictor first (highest IoU), the next-largest the best of those left, and
so on. Only objects of the largest one's class join it (the cell's class probabilities stay one-hot), and
the class term counts each cell once. On dense scenes this keeps objects the paper's rule throws away.
"""

from __future__ import annotations

import torch
from torch import nn

from segdet.detection.yolo.decode import cell_boxes_to_xyxy


def _signed_sqrt(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.sqrt(x.abs() + 1e-9)


class YoloLoss(nn.Module):
    def __init__(self, S: int, B: int, C: int, input_size: int, l_coord: float = 5.0, l_noobj: float = 0.5,
                 cell_objects: int = 1):
        super().__init__()
        if not 1 <= cell_objects <= B:
            raise ValueError(f"cell_objects = {cell_objects} must lie in [1, B = {B}]")
        self.S, self.B, self.C, self.size = S, B, C, input_size
        self.l_coord, self.l_noobj, self.cell_objects = l_coord, l_noobj, cell_objects

    def forward(self, pred: torch.Tensor, targets: list[dict[str, torch.Tensor]]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``pred [N, S, S, B*5+C]``; ``targets[n]`` has ``boxes [k, 4]`` xyxy in input pixels and ``labels [k]``
        in ``1..C``. Returns ``(loss, {"coord", "obj", "noobj", "class"})`` (each averaged over the batch).

        The assignment (which cell owns which object) is bookkeeping on a few numbers per image; the losses
        are computed for all responsible cells of the batch at once."""
        S, B, C = self.S, self.B, self.C
        pred = pred.float()
        n = pred.shape[0]
        boxes = pred[..., : B * 5].reshape(n, S, S, B, 5)
        img_idx, rows, cols, gts, labels, ranks = self.assign(targets)
        obj_mask = torch.zeros(n, S, S, B, dtype=torch.bool, device=pred.device)
        coord = obj = cls = pred.new_zeros(())
        if len(img_idx):
            gt = torch.tensor(gts, dtype=torch.float32, device=pred.device)  # [M, 4] xyxy
            b_i = torch.tensor(img_idx, device=pred.device)
            i = torch.tensor(rows, device=pred.device)
            j = torch.tensor(cols, device=pred.device)
            cells = boxes[b_i, i, j]  # [M, B, 5]
            pred_xyxy = cell_boxes_to_xyxy(cells[..., :4].detach(), i[:, None], j[:, None], S, self.size)  # [M, B, 4]
            ious = _pairwise_iou(pred_xyxy, gt[:, None, :])  # [M, B]
            rank = torch.tensor(ranks, device=pred.device)
            r = torch.zeros(len(rank), dtype=torch.long, device=pred.device)
            for k in range(max(ranks) + 1):  # rank k picks the best predictor ranks < k left free
                sel = rank == k
                r[sel] = ious[sel].masked_fill(obj_mask[b_i[sel], i[sel], j[sel]], -1.0).argmax(dim=1)
                obj_mask[b_i[sel], i[sel], j[sel], r[sel]] = True
            m = torch.arange(len(r), device=pred.device)
            p = cells[m, r]  # [M, 5], the responsible predictors
            tx = (gt[:, 0] + gt[:, 2]) / 2 / self.size * S - j
            ty = (gt[:, 1] + gt[:, 3]) / 2 / self.size * S - i
            tw = (gt[:, 2] - gt[:, 0]) / self.size
            th = (gt[:, 3] - gt[:, 1]) / self.size
            coord = ((p[:, 0] - tx) ** 2 + (p[:, 1] - ty) ** 2 + (_signed_sqrt(p[:, 2]) - torch.sqrt(tw)) ** 2
                     + (_signed_sqrt(p[:, 3]) - torch.sqrt(th)) ** 2).sum()
            obj = ((p[:, 4] - ious[m, r]) ** 2).sum()
            first = rank == 0  # one class term per cell
            onehot = torch.zeros(int(first.sum()), C, device=pred.device)
            onehot[torch.arange(len(onehot), device=pred.device),
                   torch.tensor(labels, device=pred.device)[first] - 1] = 1.0
            cls = ((pred[b_i[first], i[first], j[first], B * 5 :] - onehot) ** 2).sum()
        noobj = (boxes[..., 4][~obj_mask] ** 2).sum()
        parts = {"coord": self.l_coord * coord / n, "obj": obj / n, "noobj": self.l_noobj * noobj / n,
                 "class": cls / n}
        loss = sum(parts.values())
        return loss, {k: v.detach() for k, v in parts.items()}  # tensors: no host sync per step

    def assign(self, targets: list[dict[str, torch.Tensor]]
               ) -> tuple[list[int], list[int], list[int], list[list[float]], list[int], list[int]]:
        """The cell responsible for each object: the one holding its centre; when several centres fall in
        one cell, the largest object keeps it, and with ``cell_objects`` > 1 so do the next-largest of its
        class, up to ``cell_objects``. Returns parallel lists (image, row, column, box, label, rank), rank
        being the object's place by size among those its cell trains (0: the largest)."""
        S = self.S
        img_idx, rows, cols, gts, labels, ranks = [], [], [], [], [], []
        for b_idx, t in enumerate(targets):
            gt = t["boxes"].detach().float().cpu().tolist()
            if not gt:
                continue
            lab = t["labels"].cpu().tolist()
            order = sorted(range(len(gt)), key=lambda k: -(gt[k][2] - gt[k][0]) * (gt[k][3] - gt[k][1]))
            taken: dict[tuple[int, int], tuple[int, int]] = {}  # cell -> (its class, objects it trains)
            for k in order:  # the largest object wins a shared cell
                x1, y1, x2, y2 = gt[k]
                j = min(max(int((x1 + x2) / 2 / self.size * S), 0), S - 1)
                i = min(max(int((y1 + y2) / 2 / self.size * S), 0), S - 1)
                cls, count = taken.get((i, j), (int(lab[k]), 0))
                if cls != int(lab[k]) or count >= self.cell_objects:
                    continue
                taken[i, j] = (cls, count + 1)
                img_idx.append(b_idx)
                rows.append(i)
                cols.append(j)
                gts.append(gt[k])
                labels.append(int(lab[k]))
                ranks.append(count)
        return img_idx, rows, cols, gts, labels, ranks


def _pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of broadcastable ``[..., 4]`` xyxy boxes ``a`` and ``b`` (elementwise, not all pairs)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area_a = ((a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0))
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))
