"""DVC stage ``rcnn_eval``: R-CNN detection on the test split, scored with the shared evaluator.

Reads ``models/rcnn_cnn.pt``, ``models/rcnn_svm.npz``, ``data/proposals/test.parquet``, the test manifest and
its COCO ground truth and the proposal timings of ``reports/proposals_info.json``; writes ``reports/rcnn_eval.json``
(mAP@0.5 VOC-style, COCO mAP@[.5:.95], precision and recall at the score threshold), ``reports/rcnn_eval_info.json``
(seconds per image split into proposals, warp + CNN, SVM + regression and NMS, device, hardware, backbone: the
run, not DVC metrics) and ``reports/rcnn/``: ``detections_test.json`` (COCO results), ``per_class_ap.csv``,
``pr_curves.csv``. Logs the served model (``segdet.serving``: it searches its own proposals with params
``proposals``) with these settings and registers it as ``segdet-rcnn``.
"""

import argparse
import json
import sys
from pathlib import Path

from segdet import serving, tracking
from segdet.config import load_params, load_section
from segdet.data.datasets import read_classes
from segdet.detection.detector import publish_report, run_detector
from segdet.detection.evaluate import describe_cut, evaluate_detections
from segdet.detection.proposals import resolve_mode
from segdet.detection.rcnn.detect import load_rcnn
from segdet.detection.rcnn.regions import iter_split
from segdet.inference import settings_of
from segdet.io import atomic_dir
from segdet.runtime import device_name, hardware, resolve_device
from segdet.schema import flatten
from segdet.stage import check_writable, run_stage


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--cnn", default="models/rcnn_cnn.pt", type=Path)
    ap.add_argument("--svm", default="models/rcnn_svm.npz", type=Path)
    ap.add_argument("--manifests", default="data/manifests", type=Path)
    ap.add_argument("--proposals", default="data/proposals/test.parquet", type=Path)
    ap.add_argument("--proposal-info", default="reports/proposals_info.json", type=Path,
                    help="the proposals stage's timings (seconds per image of the selective search)")
    ap.add_argument("--metrics", default="reports/rcnn_eval.json", type=Path)
    ap.add_argument("--info", default="reports/rcnn_eval_info.json", type=Path)
    ap.add_argument("--out", default="reports/rcnn", type=Path)
    args = ap.parse_args(argv)
    check_writable(args.metrics, args.info, args.out)
    params = load_params(args.params)
    base, cfg = load_section("base", params), load_section("rcnn_eval", params)
    # what the served model searches with; mode auto: the one the proposals stage chose
    search = load_section("proposals", params)
    proposals = {"mode": resolve_mode(search.mode, args.proposal_info), "max_side": search.max_side,
                 "min_size": search.min_size, "max_proposals": search.max_proposals}
    device = resolve_device(base.device)
    detector = load_rcnn(args.cnn, args.svm, device=device, min_score=cfg.min_score, nms_iou=None if cfg.nms_iou == "auto" else cfg.nms_iou,
                         max_detections=cfg.max_detections, box_voting=cfg.box_voting)
    classes = read_classes(args.manifests / "det_classes.txt")
    cut = cfg.score_threshold if cfg.score_threshold is not None else detector.thresholds
    gt = json.loads((args.manifests / "det_test_coco.json").read_text())
    backbone = detector.model.backbone_name
    logged = {**flatten(base, "base."), **flatten(cfg, "rcnn_eval."), "rcnn_finetune.backbone": backbone}
    with tracking.stage_run("rcnn_eval", logged, device=device_name(device)) as run, atomic_dir(args.out) as out:
        items = ((image, props, gt_boxes) for _, (image, props, gt_boxes, _) in
                 iter_split(args.manifests / "det_test.txt", classes, Path.cwd(), args.proposals))
        done = run_detector(detector, items, cut=cut, samples=cfg.samples, total=len(gt["images"]), desc="rcnn eval")
        ev = evaluate_detections(gt, done.results, cut)
        timing = {f"seconds_{p}": done.seconds.get(p, 0.0) for p in ("warp_cnn", "svm_regression", "nms")}
        timing["seconds_proposals"] = json.loads(args.proposal_info.read_text())["test"]["seconds_per_image"]
        timing["seconds_per_image"] = sum(timing.values())
        summary = dict(ev.summary)  # results only: what describes the run goes to the info file
        if cfg.nms_iou == "auto":  # a setting chosen from the data (on val, by rcnn_svm), compared like a result
            summary["nms_iou"] = detector.nms_iou
        info = {**timing, "device": device_name(device), "hardware": hardware(device), "backbone": backbone}
        publish_report(run, out, args.metrics, ev, done.results, summary, done.samples, "R-CNN", args.info, info)
        print(f"rcnn_eval: mAP@0.5 {summary['map50']:.4f}, COCO mAP {summary['coco_map']:.4f}, precision "
              f"{summary['precision']:.3f} recall {summary['recall']:.3f} at {describe_cut(cut, classes)}, "
              f"NMS IoU {detector.nms_iou:g}; {info['seconds_per_image']:.3f} s/image on {info['device']}")
        example = gt["images"][0]["file_name"] if gt["images"] else None
        serving.log_model(run, "rcnn", [args.cnn, args.svm], settings_of("rcnn", cfg, proposals), example)  # never raises


if __name__ == "__main__":
    sys.exit(run_stage(main))
