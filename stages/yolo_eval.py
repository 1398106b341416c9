"""DVC stage ``yolo_eval``: YOLOv1 detection on the test split, scored with the shared evaluator, and its speed.

Speed, by definition: frames per second at batch size 1 after ``warmup_images`` untimed images, counting
preprocessing (resize, normalise), the forward pass and decoding with NMS, from a decoded image in memory;
and the forward pass alone. Writes ``reports/yolo_eval.json`` (results), ``reports/yolo_eval_info.json`` (the
speed, device, hardware, backbone: the run, not DVC metrics) and ``reports/yolo/`` (``detections_test.json``,
``per_class_ap.csv``, ``pr_curves.csv``), like ``rcnn_eval``. Logs the served model (``segdet.serving``) with these
settings and registers it as ``segdet-yolo``.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from segdet import serving, tracking
from segdet.config import load_params, load_section
from segdet.data.datasets import DetectionDataset, read_classes
from segdet.detection.detector import publish_report, run_detector
from segdet.detection.evaluate import describe_cut, evaluate_detections
from segdet.detection.yolo.detect import load_yolo_detector
from segdet.inference import settings_of
from segdet.io import atomic_dir
from segdet.runtime import device_name, hardware, resolve_device
from segdet.schema import flatten
from segdet.stage import check_writable, run_stage


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="models/yolo.pt", type=Path)
    ap.add_argument("--manifests", default="data/manifests", type=Path)
    ap.add_argument("--metrics", default="reports/yolo_eval.json", type=Path)
    ap.add_argument("--info", default="reports/yolo_eval_info.json", type=Path)
    ap.add_argument("--out", default="reports/yolo", type=Path)
    args = ap.parse_args(argv)
    check_writable(args.metrics, args.info, args.out)
    params = load_params(args.params)
    base, cfg = load_section("base", params), load_section("yolo_eval", params)
    device = resolve_device(base.device)
    detector = load_yolo_detector(args.model, device=device, min_score=cfg.min_score, nms_iou=None if cfg.nms_iou == "auto" else cfg.nms_iou,
                                  max_detections=cfg.max_detections, tta=None if cfg.tta == "auto" else cfg.tta)
    model = detector.model
    classes = read_classes(args.manifests / "det_classes.txt")
    cut = cfg.score_threshold if cfg.score_threshold is not None else detector.thresholds
    ds = DetectionDataset(args.manifests / "det_test.txt", classes)
    gt = json.loads((args.manifests / "det_test_coco.json").read_text())
    logged = {**flatten(base, "base."), **flatten(cfg, "yolo_eval."), "yolo_train.backbone": model.backbone_name,
              "yolo_train.input_size": model.input_size}
    with tracking.stage_run("yolo_eval", logged, device=device_name(device)) as run, atomic_dir(args.out) as out:
        items = ((image.as_subclass(torch.Tensor), None, target["boxes"].as_subclass(torch.Tensor))
                 for image, target in (ds[i] for i in range(len(ds))))
        done = run_detector(detector, items, cut=cut, samples=cfg.samples, warmup=cfg.warmup_images, total=len(ds),
                            desc="yolo eval")
        ev = evaluate_detections(gt, done.results, cut)
        seconds = sum(done.seconds.values())
        summary = {**ev.summary, "batch_size": 1, "input_size": model.input_size, "grid": model.S}
        if cfg.nms_iou == "auto":  # chosen on val by yolo_train, like input_size by auto
            summary["nms_iou"] = detector.nms_iou
        if cfg.tta:  # true, or auto: what yolo_train chose on val (the figures and the speed are of it); 1 on, 0 off
            summary["tta"] = int(detector.tta)
        info = {"fps": 1.0 / seconds, "seconds_per_image": seconds, "forward_fps": 1.0 / done.seconds["forward"],
                "backbone": model.backbone_name, "device": device_name(device), "hardware": hardware(device),
                "tta": detector.tta}
        publish_report(run, out, args.metrics, ev, done.results, summary, done.samples, "YOLOv1", args.info, info)
        print(f"yolo_eval: mAP@0.5 {summary['map50']:.4f}, COCO mAP {summary['coco_map']:.4f}, precision "
              f"{summary['precision']:.3f} recall {summary['recall']:.3f} at {describe_cut(cut, classes)}, "
              f"NMS IoU {detector.nms_iou:g}{', TTA' if detector.tta else ''}; {info['fps']:.1f} FPS (forward only {info['forward_fps']:.1f}) at batch 1 on {info['device']}")
        example = gt["images"][0]["file_name"] if gt["images"] else None
        serving.log_model(run, "yolo", [args.model], settings_of("yolo", cfg), example)  # never raises


if __name__ == "__main__":
    sys.exit(run_stage(main))
