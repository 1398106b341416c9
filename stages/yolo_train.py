"""DVC stage ``yolo_train``: train YOLOv1 on the detection manifests.

Reads the det manifests, ``models/rcnn_cnn.pt`` (backbone transfer when the backbones match); writes
``models/yolo.pt`` (the weights of the best val mAP@0.5, or of the last epoch with ``keep: last``, with each
class's best-F1 score on val under ``yolo_eval``'s detection settings: the operating point; with ``yolo_eval.nms_iou: auto`` also the NMS IoU of the best val mAP@0.5) and
``reports/yolo_train.csv``; ``models/yolo_run/last.pt`` resumes.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from segdet import distributed, tracking
from segdet.config import load_params, load_section
from segdet.data.datasets import DetectionDataset, read_classes
from segdet.detection.yolo.detect import save_with_thresholds
from segdet.detection.yolo.train import train_yolo
from segdet.runtime import device_name, resolve_device, seed_everything
from segdet.schema import flatten
from segdet.stage import check_writable, run_stage


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifests", default="data/manifests", type=Path)
    ap.add_argument("--rcnn", default="models/rcnn_cnn.pt", type=Path)
    ap.add_argument("--model", default="models/yolo.pt", type=Path)
    ap.add_argument("--run-dir", default="models/yolo_run", type=Path)
    ap.add_argument("--plots", default="reports/yolo_train.csv", type=Path)
    args = ap.parse_args(argv)
    check_writable(args.model, args.run_dir, args.plots)
    params = load_params(args.params)
    base, cfg = load_section("base", params), load_section("yolo_train", params)
    ev = load_section("yolo_eval", params)  # the detection settings the operating thresholds are chosen with
    use_difficult = load_section("data", params).det.use_difficult
    device = distributed.init(resolve_device(base.device))  # cuda:LOCAL_RANK under torchrun
    seed_everything(base.seed)
    classes = read_classes(args.manifests / "det_classes.txt")
    logged = {**flatten(base, "base."), **flatten(cfg, "yolo_train."), "data.det.use_difficult": use_difficult}
    with (tracking.stage_run("yolo_train", logged, device=device_name(device), system_metrics=True) as run,
          tracking.local_weights(cfg.weights, "yolo_train.weights") as weights):
        cfg = dataclasses.replace(cfg, weights=weights)  # a runs:/ URI is now a downloaded file
        model, result = train_yolo(cfg, train_manifest=args.manifests / "det_train.txt",
                                   val_manifest=args.manifests / "det_val.txt", classes=classes, root=Path.cwd(),
                                   device=device, run_dir=args.run_dir, seed=base.seed, rcnn_checkpoint=args.rcnn,
                                   on_epoch=run.epoch_logger(args.plots, args.run_dir), on_transfer=run.log_transfer,
                                   use_difficult=use_difficult, cpu_bf16=base.cpu_bf16)
        if not distributed.is_main():  # rank 0 writes the outputs and logs
            return
        kept = result.last_checkpoint if cfg.keep == "last" else result.best_checkpoint
        choice = save_with_thresholds(
            model, kept, args.model, DetectionDataset(args.manifests / "det_val.txt", classes),
            json.loads((args.manifests / "det_val_coco.json").read_text()), device=device, min_score=ev.min_score,
            nms_iou=None if ev.nms_iou == "auto" else ev.nms_iou, max_detections=ev.max_detections,
            tta=None if ev.tta == "auto" else ev.tta)
        thresholds = choice.thresholds
        run.log_metrics({f"score_threshold_{c}": t for c, t in zip(classes, thresholds, strict=True)})
        if choice.nms_tried:
            run.log_metrics({"nms_iou": choice.nms_iou})
            print(f"yolo_train: yolo_eval.nms_iou auto -> {choice.nms_iou} (val mAP@0.5 by NMS IoU: "
                  + ", ".join(f"{k} {v:.4f}" for k, v in choice.nms_tried.items()) + ")")
        if choice.tta_tried:
            run.log_metrics({"tta": float(choice.tta)})
            print(f"yolo_train: yolo_eval.tta auto -> {str(choice.tta).lower()} (val mAP@0.5 without "
                  f"{choice.tta_tried[False]:.4f}, with {choice.tta_tried[True]:.4f})")
        run.log_metrics({"best_val_map50": result.best_value, "best_epoch": result.best_epoch})
        run.log_artifact(args.plots)
        run.log_checkpoint(args.model)  # for segdet predict --run
        last = result.history[-1] if result.history else {}
        kept_as = (f"the last epoch ({last.get('epoch')}, val mAP@0.5 {last.get('val_map50', float('nan')):.4f}; "
                   f"best {result.best_value:.4f} at epoch {result.best_epoch})" if cfg.keep == "last" else
                   f"best val mAP@0.5 {result.best_value:.4f} at epoch {result.best_epoch}")
        print(f"yolo_train: {kept_as} -> {args.model}; operating thresholds (best F1 on val): "
              + ", ".join(f"{c} {t:.3f}" for c, t in zip(classes, thresholds, strict=True)))


if __name__ == "__main__":
    sys.exit(run_stage(distributed.closing(main)))
