"""DVC stage ``rcnn_eval``: R-CNN detection on the test split, scored with the shared evaluator.

Reads ``models/rcnn_cnn.pt``, ``models/rcnn_svm.npz``, ``data/proposals/test.parquet``, the test manifest and
its COCO ground truth; writes ``reports/rcnn_eval.json`` (mAP@0.5 VOC-style, COCO mAP@[.5:.95], precision
and recall at the score threshold, seconds per image split into proposals, warp + CNN, SVM + regression and
NMS, device) and ``reports/rcnn/``: ``detections_test.json`` (COCO results), ``per_class_ap.csv``,
``pr_curves.csv``.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from segdet import tracking
from segdet.cli import run_stage
from segdet.config import flatten, load_params, load_section
from segdet.data.datasets import read_classes
from segdet.detection.data import iter_split
from segdet.detection.evaluate import coco_results, describe_cut, evaluate_detections, passes
from segdet.detection.rcnn import RCNNDetector, RegionCNN, load_svm, score_thresholds
from segdet.detection.visualize import draw_detections, publish_report
from segdet.io import atomic_dir
from segdet.nets.weights import load_checkpoint
from segdet.runtime import device_name, hardware, resolve_device

PARTS = ("warp_cnn", "svm_regression", "nms")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cnn", default="models/rcnn_cnn.pt", type=Path)
    ap.add_argument("--svm", default="models/rcnn_svm.npz", type=Path)
    ap.add_argument("--manifests", default="data/manifests", type=Path)
    ap.add_argument("--proposals", default="data/proposals/test.parquet", type=Path)
    ap.add_argument("--proposal-report", default="reports/proposals.json", type=Path)
    ap.add_argument("--metrics", default="reports/rcnn_eval.json", type=Path)
    ap.add_argument("--out", default="reports/rcnn", type=Path)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    base, cfg = load_section("base", params), load_section("rcnn_eval", params)
    device = resolve_device(base.device)
    ckpt = load_checkpoint(args.cnn)
    classes = read_classes(args.manifests / "det_classes.txt")
    model = RegionCNN(ckpt["config"]["backbone"], len(classes))
    model.load_state_dict(ckpt["model"])
    svm = load_svm(args.svm)
    detector = RCNNDetector(model, svm, crop_size=ckpt["config"]["crop_size"],
                            context=ckpt["config"]["context"], device=device)
    cut = cfg.score_threshold if cfg.score_threshold is not None else score_thresholds(svm)
    gt = json.loads((args.manifests / "det_test_coco.json").read_text())
    proposal_seconds = json.loads(args.proposal_report.read_text())["test"]["seconds_per_image"]
    logged = {**flatten(base, "base."), **flatten(cfg, "rcnn_eval."), "rcnn_finetune.backbone": model.backbone_name}
    with tracking.stage_run("rcnn_eval", logged, device=device_name(device)) as run, atomic_dir(args.out) as out:
        results, seconds, samples = [], {p: [] for p in PARTS}, []
        items = iter_split(args.manifests / "det_test.txt", classes, Path.cwd(), args.proposals)
        for image_id, (_, (image, props, gt_boxes, _)) in enumerate(tqdm(items, total=len(gt["images"]),
                                                                          desc="rcnn eval", unit="img"), 1):
            dets, secs = detector.detect(image, props, min_score=cfg.min_score, nms_iou=cfg.nms_iou,
                                         max_detections=cfg.max_detections)
            results += coco_results(image_id, dets["boxes"], dets["scores"], dets["labels"])
            for p in PARTS:
                seconds[p].append(secs[p])
            if len(samples) < cfg.samples:
                shown = passes(dets, cut)
                samples.append(draw_detections(image.permute(1, 2, 0).numpy(), dets["boxes"][shown].numpy(),
                                               dets["labels"][shown].numpy(), dets["scores"][shown].numpy(),
                                               classes, gt_boxes.numpy()))
        ev = evaluate_detections(gt, results, cut)
        timing = {f"seconds_{p}": float(np.mean(v)) if v else 0.0 for p, v in seconds.items()}
        timing["seconds_proposals"] = proposal_seconds
        timing["seconds_per_image"] = sum(timing.values())
        summary = {**ev.summary, **timing, "device": device_name(device),
                   "hardware": hardware(device), "backbone": model.backbone_name}
        publish_report(run, out, args.metrics, ev, results, summary, samples, "R-CNN")
        print(f"rcnn_eval: mAP@0.5 {summary['map50']:.4f}, COCO mAP {summary['coco_map']:.4f}, precision "
              f"{summary['precision']:.3f} recall {summary['recall']:.3f} at {describe_cut(cut, classes)}; "
              f"{summary['seconds_per_image']:.3f} s/image on {summary['device']}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
