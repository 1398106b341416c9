"""One interface for R-CNN and YOLOv1, the evaluation loop that the eval stages and ``bench/`` share, and the
publication of an evaluation (files and MLflow).

A :class:`Detector` takes one uint8 image ``[3, H, W]`` (and, for R-CNN, its proposals) and returns its
detections ``{"boxes" [M, 4] xyxy image pixels, "scores" [M], "labels" [M] 1..C}`` with the seconds of each
part of the work. :func:`run_detector` runs one over a split: COCO results (``image_id`` = 1-based position,
as in the split's ground truth), the mean seconds of each part, and drawn samples at the operating point.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from segdet.detection.evaluate import coco_results, passes, save_report
from segdet.draw import draw_detections, pr_figure
from segdet.io import write_json


class Detector(Protocol):
    classes: list[str]
    thresholds: list[float]  # per-class operating thresholds stored with the model (chosen on val)

    def detect(self, image: torch.Tensor, proposals: torch.Tensor | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, float]]: ...


@dataclass
class DetectorRun:
    results: list[dict] = field(default_factory=list)  # COCO results of every image
    seconds: dict[str, float] = field(default_factory=dict)  # mean seconds per image of each part
    samples: list[np.ndarray] = field(default_factory=list)  # RGB images with detections and ground truth drawn


def run_detector(detector: Detector, items: Iterable[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]], *,
                 cut: float | list[float], samples: int = 0, warmup: int = 0, total: int | None = None,
                 desc: str = "detect") -> DetectorRun:
    """Run ``detector`` on ``items`` ``(image uint8 [3, H, W], proposals [K, 4] or None, ground-truth boxes [n, 4])``.

    The first ``warmup`` images are run once untimed before the timed pass (caches, lazy initialisation),
    the first ``samples`` are drawn with the detections that pass ``cut`` (one score, or one per class).
    Items are read lazily: one image in memory at a time, plus the warm-up images.
    """
    items = iter(items)
    head = list(itertools.islice(items, warmup))
    for image, proposals, _ in head:
        detector.detect(image, proposals)
    run, parts = DetectorRun(), {}
    for image_id, (image, proposals, gt_boxes) in enumerate(tqdm(itertools.chain(head, items), total=total,
                                                                 desc=desc, unit="img"), 1):
        dets, seconds = detector.detect(image, proposals)
        run.results += coco_results(image_id, dets["boxes"], dets["scores"], dets["labels"])
        for part, s in seconds.items():
            parts.setdefault(part, []).append(s)
        if len(run.samples) < samples:
            shown = passes(dets, cut)
            run.samples.append(draw_detections(image.permute(1, 2, 0).numpy(), dets["boxes"][shown].numpy(),
                                               dets["labels"][shown].numpy(), dets["scores"][shown].numpy(),
                                               detector.classes, gt_boxes.numpy()))
    run.seconds = {part: float(np.mean(v)) for part, v in parts.items()}
    return run


def publish_report(run, out_dir, metrics_path, ev, results: list[dict], summary: dict,
                   samples: list[np.ndarray], title: str, info_path=None, info: dict | None = None) -> None:
    """Write an eval stage's files (``evaluate.save_report``; ``info``, what describes the run: device, timings
    ..., to ``info_path``, beside the metrics) and log them to the stage's MLflow ``run``: the numbers of
    ``summary`` and ``info``, the per-class table, a precision/recall plot and the sample images."""
    save_report(out_dir, metrics_path, ev, results, summary)
    if info_path is not None:
        write_json(info_path, info or {})
    run.log_metrics({k: v for k, v in {**summary, **(info or {})}.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool)})
    run.log_artifact(Path(out_dir) / "per_class_ap.csv")
    ap = dict(zip(ev.per_class["class"], ev.per_class["ap50"], strict=True))
    run.log_image(pr_figure(ev.curves, ap, f"{title} precision/recall at IoU 0.5 (mAP {ev.summary['map50']:.3f})"),
                  "pr_curve.png")
    for k, img in enumerate(samples):
        run.log_image(img, f"samples/test_{k:02d}.png")
