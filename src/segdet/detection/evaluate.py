"""One detection evaluator for R-CNN and YOLOv1, working on the files of docs/architecture.md.

Inputs are the split's COCO ground truth (``det_{split}_coco.json``) and a COCO results list
(``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``). Outputs:

- VOC-style AP at IoU 0.5 per class with all-point interpolation (VOC 2010+ devkit), and its mean;
  ground truth marked ``iscrowd`` (VOC ``difficult`` objects, COCO crowd regions) is ignored as the
  devkit ignores difficult objects: not counted as ground truth, and a detection on one is dropped;
- COCO mAP@[.5:.95] and AP50 from pycocotools (the maintained reference implementation);
- precision and recall at a chosen score threshold;
- per-class precision/recall curves for plotting.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torchvision.ops import batched_nms, box_iou

from segdet.data.formats import coco_box, coco_to_xyxy


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (all-point interpolation, VOC 2010+).

    ``recall`` and ``precision`` are the cumulative curves over detections sorted by descending score.
    """
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


@dataclass
class DetEvaluation:
    per_class: pd.DataFrame  # class, gt, detections, ap50, precision, recall (at the threshold)
    summary: dict  # map50, coco_map, coco_map50, precision, recall, ...
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # class -> (recall, precision)


def _ignored(a: dict) -> bool:
    """A ground-truth annotation that is neither a hit nor a miss: ``iscrowd`` (how the manifest stage writes
    VOC ``difficult`` objects). pycocotools derives its ``ignore`` from ``iscrowd`` alone (it overwrites an
    ``ignore`` key), so this reads ``iscrowd`` alone too and both metrics ignore the same boxes."""
    return bool(a.get("iscrowd", 0))


def match(gt: dict, detections: list[dict], category_id: int, iou_threshold: float = 0.5
          ) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy VOC matching for one class: returns ``(scores, is_tp)`` sorted by score, and the GT count.

    Each detection, best score first, looks at the ground-truth box of its image with the highest IoU.
    If that IoU is >= ``iou_threshold``: a difficult box (``iscrowd``) makes the detection
    neither a TP nor a FP (it is left out of the returned arrays), an unmatched box makes it a TP, a box
    already taken a FP. Otherwise it is a FP. Difficult boxes are not counted in the GT count. This is
    the VOC devkit's rule for ``difficult`` objects (``VOCevaldet``).
    """
    gts: dict[int, list] = {}
    for a in gt["annotations"]:
        if a["category_id"] == category_id:
            gts.setdefault(a["image_id"], []).append((coco_to_xyxy(a["bbox"]), _ignored(a)))
    ignored_of = {k: np.array([i for _, i in v], bool) for k, v in gts.items()}
    used = {k: np.zeros(len(v), bool) for k, v in gts.items()}
    dets = sorted((d for d in detections if d["category_id"] == category_id), key=lambda d: -d["score"])
    # each detection's best ground-truth box and IoU: one box_iou call per image for all its detections
    rows_of: dict[int, list[int]] = {}
    for i, d in enumerate(dets):
        if d["image_id"] in gts:
            rows_of.setdefault(d["image_id"], []).append(i)
    best = np.full(len(dets), -1)
    best_iou = np.zeros(len(dets))
    for image_id, rows in rows_of.items():
        ious = box_iou(torch.tensor([coco_to_xyxy(dets[i]["bbox"]) for i in rows], dtype=torch.float64),
                       torch.tensor([b for b, _ in gts[image_id]], dtype=torch.float64)).numpy()
        j = ious.argmax(axis=1)  # the first of equal IoUs, as before
        best[rows], best_iou[rows] = j, ious[np.arange(len(rows)), j]
    tp = np.zeros(len(dets), bool)
    keep = np.ones(len(dets), bool)
    for i, d in enumerate(dets):  # best score first: greedy matching
        j = int(best[i])
        if j < 0 or best_iou[i] < iou_threshold:
            continue
        if ignored_of[d["image_id"]][j]:
            keep[i] = False
        elif not used[d["image_id"]][j]:
            used[d["image_id"]][j] = True
            tp[i] = True
    scores = np.array([d["score"] for d in dets], dtype=np.float64)
    return scores[keep], tp[keep], int(sum((~v).sum() for v in ignored_of.values()))


def coco_metrics(gt: dict, detections: list[dict]) -> dict[str, float]:
    """``coco_map`` (AP@[.5:.95]) and ``coco_map50`` from pycocotools; 0 when there are no detections."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections or not gt["annotations"]:
        return {"coco_map": 0.0, "coco_map50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(d) for d in detections])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"coco_map": float(ev.stats[0]), "coco_map50": float(ev.stats[1])}


def operating_thresholds(gt: dict, detections: list[dict], fallback: float, iou_threshold: float = 0.5
                         ) -> list[float]:
    """One score threshold per class (``gt["categories"]`` order): the one with the best F1 on these detections.

    Meant for the validation split: a detector reports every detection down to a low score (for AP), and the
    threshold it then draws and predicts with is where precision and recall balance best for each class
    (``F1 = 2 TP / (detections + ground truth)`` with VOC matching, difficult objects ignored). A cut falls
    only between different scores. A class without ground truth or without a single true positive keeps
    ``fallback``.
    """
    out = []
    for cat in gt["categories"]:
        scores, tp, n_gt = match(gt, detections, cat["id"], iou_threshold)
        if n_gt == 0 or not tp.any():
            out.append(float(fallback))
            continue
        f1 = 2 * np.cumsum(tp) / (np.arange(1, len(tp) + 1) + n_gt)
        f1[:-1][scores[1:] == scores[:-1]] = -1.0  # cut only after the last of equal scores
        out.append(float(scores[int(np.argmax(f1))]))
    return out


def choose_thresholds(gt: dict, per_image: Iterable[dict[str, torch.Tensor]], fallback: float,
                      iou_threshold: float = 0.5) -> list[float]:
    """:func:`operating_thresholds` for a detector's output on a split: ``per_image`` yields the detections
    (``{"boxes" [M, 4] xyxy, "scores" [M], "labels" [M] 1..C}``) of each image of ``gt``, in manifest order."""
    results: list[dict] = []
    for image_id, dets in enumerate(per_image, 1):
        results += coco_results(image_id, dets["boxes"], dets["scores"], dets["labels"])
    return operating_thresholds(gt, results, fallback, iou_threshold)


def voc_map50(gt: dict, per_image: Iterable[dict[str, torch.Tensor]], iou_threshold: float = 0.5) -> float:
    """The ``map50`` of :func:`evaluate_detections` (VOC all-point AP@0.5, mean over the classes with ground truth)
    of a detector's output on a split, given like :func:`choose_thresholds`' (a list, to pass it to both)."""
    results: list[dict] = []
    for image_id, dets in enumerate(per_image, 1):
        results += coco_results(image_id, dets["boxes"], dets["scores"], dets["labels"])
    aps = []
    for cat in gt["categories"]:
        _, tp, n_gt = match(gt, results, cat["id"], iou_threshold)
        if n_gt:
            ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
            aps.append(voc_ap(ctp / n_gt, ctp / np.maximum(ctp + cfp, 1)))
    return float(np.mean(aps)) if aps else 0.0


#: the per-class NMS IoUs ``nms_iou: auto`` (``rcnn_eval``, ``yolo_eval``) chooses from on the validation split
NMS_CANDIDATES = (0.3, 0.4, 0.5, 0.6, 0.7)


def suppress(dets: dict[str, torch.Tensor], nms_iou: float, max_detections: int, vote_iou: float = 0.0
             ) -> dict[str, torch.Tensor]:
    """Per-class NMS at ``nms_iou`` of one image's detections, then the ``max_detections`` best (what the
    detectors do after scoring). ``vote_iou`` > 0: box voting (Gidaris and Komodakis, ICCV 2015): each kept box
    becomes the mean of the boxes of its class that overlap it by at least ``vote_iou`` among ``dets`` (itself
    included), weighted by ``exp(score)``; its score stays."""
    boxes, scores = dets["boxes"].float(), dets["scores"].float()
    keep = batched_nms(boxes, scores, dets["labels"], nms_iou)[:max_detections]
    out = {k: v[keep] for k, v in dets.items()}
    if vote_iou > 0 and len(keep):
        iou = box_iou(boxes[keep], boxes)  # [kept, all]
        near = (iou >= vote_iou) & (dets["labels"][keep][:, None] == dets["labels"][None, :])
        weight = torch.exp(scores - scores.max())[None, :] * near  # exp(score), scaled: the same mean
        out["boxes"] = ((weight @ boxes) / weight.sum(1, keepdim=True)).to(dets["boxes"].dtype)
    return out


def choose_nms_iou(gt: dict, unsuppressed: list[dict[str, torch.Tensor]], max_detections: int,
                   candidates: tuple[float, ...] = NMS_CANDIDATES, vote_iou: float = 0.0
                   ) -> tuple[float, dict[float, float], list[dict[str, torch.Tensor]]]:
    """The per-class NMS IoU of ``candidates`` with the best :func:`voc_map50` on a split (``gt``), from a
    detector's detections before any suppression (``unsuppressed``: one dict an image, in manifest order), each
    NMS followed by the detector's box voting at ``vote_iou`` (0: none; :func:`suppress`).

    A low IoU removes more duplicates of one object; a high one keeps more of the objects that overlap another
    of their class (crowds, stacks, flocks): which matters more is the data's question. Ties keep the lowest
    IoU. Returns ``(the IoU, {IoU: mAP@0.5}, the detections after its NMS)``.
    """
    scores, best, best_dets = {}, None, None
    for iou in candidates:
        dets = [suppress(d, iou, max_detections, vote_iou) for d in unsuppressed]
        scores[iou] = voc_map50(gt, dets)
        if best is None or scores[iou] > scores[best]:
            best, best_dets = iou, dets
    if best is None:
        raise ValueError("choose_nms_iou: no candidate IoU")
    return best, scores, best_dets


def passes(dets: dict[str, torch.Tensor], cut: float | list[float]) -> torch.Tensor:
    """``bool [M]``: which detections score at least ``cut`` (one value, or one per class, labels 1..C)."""
    if isinstance(cut, (int, float)):
        return dets["scores"] >= cut
    scores = dets["scores"]
    return scores >= torch.tensor(cut, dtype=scores.dtype, device=scores.device)[dets["labels"] - 1]


class DetPredictor:
    """A detector at its operating point ``cut`` (one score, or one per class, labels 1..C), for ``segdet predict`` and
    the served ``segdet-rcnn`` / ``segdet-yolo`` models: ``uint8[H, W, 3]`` RGB in, ``{"boxes" [M, 4] xyxy image
    pixels, "scores" [M], "labels" [M] 1..C}`` (numpy) out. :meth:`predict` takes another ``score_threshold`` for
    one call (a request's); the detector drops nothing below the operating point before NMS."""

    def __init__(self, kind: str, detector, cut: float | list[float]):
        import threading

        self.kind, self.detector, self.classes, self.cut = kind, detector, list(detector.classes), cut
        self._lock = threading.Lock()  # min_score is the detector's state; one image at a time

    def predict(self, image, score_threshold: float | None = None) -> dict:
        cut = self.cut if score_threshold is None else float(score_threshold)
        with self._lock:
            self.detector.min_score = min(cut) if isinstance(cut, list) else cut
            dets = self.detector.detect(torch.from_numpy(image).permute(2, 0, 1).contiguous())[0]
        keep = passes(dets, cut)
        return {k: v[keep].numpy() for k, v in dets.items()}


def describe_cut(cut: float | list[float], classes: list[str]) -> str:
    if isinstance(cut, (int, float)):
        return f"score {cut:g}"
    return "per-class scores chosen on val (" + ", ".join(f"{c} {t:.3g}" for c, t in zip(classes, cut, strict=True)) + ")"


def evaluate_detections(gt: dict, detections: list[dict], score_threshold: float | list[float],
                        iou_threshold: float = 0.5, coco: bool = True) -> DetEvaluation:
    """Score ``detections`` against ``gt`` (both COCO dicts/lists, docs/architecture.md ids).

    ``coco=False`` leaves pycocotools' COCO mAP (``coco_map``, ``coco_map50``) out of the summary, for callers that
    only rank by ``map50`` (a training run's per-epoch validation), where it took about half the time.

    Precision and recall are counted at ``score_threshold``: one value for every class, or one per class in
    ``gt["categories"]`` order (the operating thresholds stored with a model, see
    :func:`operating_thresholds`). The summary has ``score_threshold`` for one value, ``score_thresholds``
    (class -> value) for per-class ones; the per-class table has the threshold of each class.
    """
    per_class_cut = not isinstance(score_threshold, (int, float))
    cuts = list(score_threshold) if per_class_cut else [float(score_threshold)] * len(gt["categories"])
    if len(cuts) != len(gt["categories"]):
        raise ValueError(f"{len(cuts)} score thresholds for {len(gt['categories'])} classes")
    rows, curves = [], {}
    total_tp = total_det = total_gt = 0
    for cat, cut in zip(gt["categories"], cuts, strict=True):
        scores, tp, n_gt = match(gt, detections, cat["id"], iou_threshold)
        ctp, cfp = np.cumsum(tp), np.cumsum(~tp)
        recall = ctp / max(n_gt, 1)
        precision = ctp / np.maximum(ctp + cfp, 1)
        ap = voc_ap(recall, precision) if n_gt else float("nan")
        keep = scores >= cut
        k_tp, k_det = int(tp[keep].sum()), int(keep.sum())
        rows.append({"class": cat["name"], "gt": n_gt, "detections": k_det, "ap50": ap,
                     "precision": k_tp / k_det if k_det else 0.0, "recall": k_tp / n_gt if n_gt else float("nan"),
                     "score_threshold": cut})
        curves[cat["name"]] = (recall, precision)
        total_tp, total_det, total_gt = total_tp + k_tp, total_det + k_det, total_gt + n_gt
    per_class = pd.DataFrame(rows, columns=["class", "gt", "detections", "ap50", "precision", "recall",
                                            "score_threshold"])
    threshold = ({"score_thresholds": {c["name"]: t for c, t in zip(gt["categories"], cuts, strict=True)}}
                 if per_class_cut else {"score_threshold": float(score_threshold)})
    summary = {
        "map50": float(per_class["ap50"].mean(skipna=True)) if per_class["gt"].sum() else 0.0,
        **(coco_metrics(gt, detections) if coco else {}),
        "precision": total_tp / total_det if total_det else 0.0,
        "recall": total_tp / total_gt if total_gt else 0.0,
        **threshold,
        "images": len(gt["images"]),
        "ground_truth_boxes": total_gt,
        "detections": len(detections),
    }
    return DetEvaluation(per_class, summary, curves)


def coco_results(image_id: int, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> list[dict]:
    """Detections of one image as COCO results (``bbox = [x, y, w, h]``, ``category_id`` = label 1..N)."""
    out = []
    for b, s, c in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
        out.append({"image_id": image_id, "category_id": int(c), "bbox": [round(v, 2) for v in coco_box(b)],
                    "score": round(float(s), 5)})
    return out


def pr_table(curves: dict[str, tuple[np.ndarray, np.ndarray]], points: int = 101) -> pd.DataFrame:
    """Precision/recall curves as rows ``class, recall, precision``, resampled to ``points`` recall levels
    (the precision envelope, as AP uses), for ``dvc plots``."""
    rows = []
    levels = np.linspace(0, 1, points)
    for name, (rec, prec) in curves.items():
        if not len(rec):
            continue
        envelope = np.maximum.accumulate(prec[::-1])[::-1]
        for r in levels:
            idx = np.searchsorted(rec, r, side="left")
            if idx < len(rec):
                rows.append({"class": name, "recall": float(r), "precision": float(envelope[idx])})
    return pd.DataFrame(rows, columns=["class", "recall", "precision"])


def save_report(out_dir, metrics_path, ev: DetEvaluation, results: list[dict], summary: dict) -> None:
    """The files every detector's eval stage writes (docs/architecture.md): ``<out_dir>/detections_test.json`` (COCO
    results), ``per_class_ap.csv``, ``pr_curves.csv`` (for ``dvc plots``) and the metrics JSON."""
    from pathlib import Path

    from segdet.io import write_json

    out_dir = Path(out_dir)
    write_json(out_dir / "detections_test.json", results)
    ev.per_class.to_csv(out_dir / "per_class_ap.csv", index=False, float_format="%.6g")
    pr_table(ev.curves).to_csv(out_dir / "pr_curves.csv", index=False, float_format="%.5g")
    write_json(metrics_path, summary)
