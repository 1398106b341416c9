"""DVC stage ``yolo_eval``: YOLOv1 detection on the test split, scored with the shared evaluator, and its speed.

Speed, by definition: frames per second at batch size 1 after ``warmup_images`` untimed images, counting
preprocessing (resize, normalise), the forward pass and decoding with NMS, from a decoded image in memory;
and the forward pass alone. Writes ``reports/yolo_eval.json`` and ``reports/yolo/`` (``detections_test.json``,
``per_class_ap.csv``, ``pr_curves.csv``), like ``rcnn_eval``.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from segdet import tracking
from segdet.cli import run_stage
from segdet.config import flatten, load_params, load_section
from segdet.data.datasets import DetectionDataset, read_classes
from segdet.detection.evaluate import coco_results, describe_cut, evaluate_detections, passes
from segdet.detection.visualize import draw_detections, publish_report
from segdet.detection.yolo_detect import YoloDetector, load_yolo, score_thresholds
from segdet.io import atomic_dir
from segdet.nets.weights import load_checkpoint
from segdet.runtime import device_name, hardware, resolve_device


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="models/yolo.pt", type=Path)
    ap.add_argument("--manifests", default="data/manifests", type=Path)
    ap.add_argument("--metrics", default="reports/yolo_eval.json", type=Path)
    ap.add_argument("--out", default="reports/yolo", type=Path)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    base, cfg = load_section("base", params), load_section("yolo_eval", params)
    device = resolve_device(base.device)
    ckpt = load_checkpoint(args.model, map_location=device)
    tc = ckpt["config"]
    classes = read_classes(args.manifests / "det_classes.txt")
    model = load_yolo(ckpt, str(args.model))
    cut = cfg.score_threshold if cfg.score_threshold is not None else score_thresholds(ckpt)
    detector = YoloDetector(model, device=device, score_threshold=cfg.min_score, nms_iou=cfg.nms_iou,
                            max_detections=cfg.max_detections)
    size = tc["input_size"]
    ds = DetectionDataset(args.manifests / "det_test.txt", classes)
    gt = json.loads((args.manifests / "det_test_coco.json").read_text())

    logged = {**flatten(base, "base."), **flatten(cfg, "yolo_eval."), "yolo_train.backbone": tc["backbone"],
              "yolo_train.input_size": size}
    with tracking.stage_run("yolo_eval", logged, device=device_name(device)) as run, atomic_dir(args.out) as out:
        for i in range(min(cfg.warmup_images, len(ds))):
            detector.detect(ds[i][0].as_subclass(torch.Tensor))
        results, total, forward, samples = [], [], [], []
        for i in tqdm(range(len(ds)), desc="yolo eval", unit="img"):
            image, target = ds[i]
            image = image.as_subclass(torch.Tensor)
            dets, t_all, t_fwd = detector.detect(image)
            total.append(t_all)
            forward.append(t_fwd)
            results += coco_results(i + 1, dets["boxes"], dets["scores"], dets["labels"])
            if len(samples) < cfg.samples:
                shown = passes(dets, cut)
                samples.append(draw_detections(image.permute(1, 2, 0).numpy(), dets["boxes"][shown].numpy(),
                                               dets["labels"][shown].numpy(), dets["scores"][shown].numpy(), classes,
                                               target["boxes"].numpy()))
        ev = evaluate_detections(gt, results, cut)
        summary = {**ev.summary, "fps": 1.0 / float(np.mean(total)), "seconds_per_image": float(np.mean(total)),
                   "forward_fps": 1.0 / float(np.mean(forward)), "batch_size": 1, "input_size": size,
                   "grid": model.S, "backbone": tc["backbone"], "device": device_name(device),
                   "hardware": hardware(device)}
        publish_report(run, out, args.metrics, ev, results, summary, samples, "YOLOv1")
        print(f"yolo_eval: mAP@0.5 {summary['map50']:.4f}, COCO mAP {summary['coco_map']:.4f}, precision "
              f"{summary['precision']:.3f} recall {summary['recall']:.3f} at {describe_cut(cut, classes)}; "
              f"{summary['fps']:.1f} FPS (forward only {summary['forward_fps']:.1f}) at batch 1 on {summary['device']}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
