"""DVC stage ``rcnn_svm``: one linear SVM per class (hard-negative mining) and Ridge box regressors.

Reads ``data/features/train``, ``models/rcnn_cnn.pt`` (logged to MLflow with the SVMs, for ``segdet predict
--run``), the val split (``det_val.txt``, its COCO ground truth and ``data/proposals/val.parquet``) and params
``base``, ``rcnn_svm`` and the detection settings of ``rcnn_eval``; writes ``models/rcnn_svm.npz`` (plain
arrays: ``classes``, ``svm_weight [N, D]``, ``svm_bias [N]``, ``reg_weight [N, 4, D]``, ``reg_bias [N, 4]``,
``feature_scale``, ``score_threshold [N]``: each class's best-F1 SVM score on the val split, the operating
point of ``rcnn_eval`` and ``segdet predict``; with ``rcnn_eval.nms_iou: auto`` also ``nms_iou``, the per-class NMS
IoU of the best val mAP@0.5, that they then detect with), loadable with ``numpy.load(allow_pickle=False)``.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from segdet import tracking
from segdet.config import load_params, load_section
from segdet.data.datasets import read_classes
from segdet.detection.evaluate import choose_nms_iou, choose_thresholds, voc_map50
from segdet.detection.rcnn.detect import load_rcnn
from segdet.detection.rcnn.regions import iter_split
from segdet.detection.rcnn.svm import FALLBACK_SCORE, save_svm, train_svms
from segdet.runtime import resolve_device
from segdet.schema import flatten
from segdet.stage import check_writable, run_stage


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--features", default="data/features/train", type=Path)
    ap.add_argument("--classes", default="data/manifests/det_classes.txt", type=Path)
    ap.add_argument("--cnn", default="models/rcnn_cnn.pt", type=Path, help="the CNN the features came from")
    ap.add_argument("--manifests", default="data/manifests", type=Path, help="det_val.txt and its COCO json")
    ap.add_argument("--val-proposals", default="data/proposals/val.parquet", type=Path)
    ap.add_argument("--out", default="models/rcnn_svm.npz", type=Path)
    args = ap.parse_args(argv)
    check_writable(args.out)
    params = load_params(args.params)
    base, cfg = load_section("base", params), load_section("rcnn_svm", params)
    ev = load_section("rcnn_eval", params)
    classes = read_classes(args.classes)
    with tracking.stage_run("rcnn_svm", {**flatten(base, "base."), **flatten(cfg, "rcnn_svm.")}) as run:
        arrays = train_svms(args.features, classes, cfg, seed=base.seed)
        auto = ev.nms_iou == "auto"
        detector = load_rcnn(args.cnn, arrays, device=resolve_device(base.device), min_score=ev.min_score,
                             nms_iou=1.0 if auto else ev.nms_iou, max_detections=10**9 if auto else ev.max_detections,
                             box_voting=0.0 if auto else ev.box_voting)
        val_gt = json.loads((args.manifests / "det_val_coco.json").read_text())
        val = iter_split(args.manifests / "det_val.txt", classes, Path.cwd(), args.val_proposals)
        dets = [detector.detect(image, props)[0] for _, (image, props, _, _) in val]
        if auto:  # unsuppressed detections: each candidate IoU's NMS, the best val mAP@0.5 kept
            arrays["nms_iou"], tried, dets = choose_nms_iou(val_gt, dets, ev.max_detections, vote_iou=ev.box_voting)
            run.log_metrics({"nms_iou": float(arrays["nms_iou"])})
            print(f"rcnn_svm: rcnn_eval.nms_iou auto -> {arrays['nms_iou']} (val mAP@0.5 by NMS IoU: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in tried.items()) + ")")
        thresholds = choose_thresholds(val_gt, dets, FALLBACK_SCORE)
        arrays["score_threshold"] = np.asarray(thresholds, np.float32)
        arrays["val_map50"] = np.float32(voc_map50(val_gt, dets))  # picks the registered model's alias "best"
        save_svm(args.out, arrays)
        for i, name in enumerate(classes):
            run.log_metrics({f"{k}_{name}": float(arrays[k][i])
                             for k in ("positives", "negatives", "hard_negatives_added", "regression_samples",
                                       "score_threshold")})
            print(f"rcnn_svm {name}: {arrays['positives'][i]} positives, {arrays['negatives'][i]} negatives "
                  f"({arrays['hard_negatives_added'][i]} mined), {arrays['regression_samples'][i]} regression samples; "
                  f"operating threshold {arrays['score_threshold'][i]:.3f} (best F1 on val)")
        run.log_checkpoint(args.cnn)  # CNN + SVMs: what segdet predict --run needs
        run.log_checkpoint(args.out)


if __name__ == "__main__":
    sys.exit(run_stage(main))
