"""YOLOv1 test-time augmentation: which passes pay, on a trained model's val and test splits.

Each set of passes (scale, horizontal flip) runs as ``yolo_eval.tta`` does (one batch, detections mapped back
to the image and pooled), then per-class NMS at the IoU of 0.3-0.7 with the best val mAP@0.5 (what
``nms_iou: auto`` would choose); the table has val and test mAP@0.5 and the frames per second at batch 1.
Needs ``models/yolo.pt`` and ``data/manifests`` from ``dvc repro`` (or an experiment with the ``voc`` preset).

    python -m bench.yolo_tta [--model models/yolo.pt] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from segdet.data.datasets import DetectionDataset, read_classes
from segdet.detection.evaluate import choose_nms_iou, suppress, voc_map50
from segdet.detection.yolo.detect import TTA_PASSES, load_yolo_detector
from segdet.runtime import hardware, resolve_device

#: name -> passes; "none" is the plain detector, "default" what ``yolo_eval.tta`` runs
PASS_SETS = {
    "none": ((1.0, False),),
    "flip": ((1.0, False), (1.0, True)),
    "scale 0.83": ((1.0, False), (0.83, False)),
    "default: flip, scale 0.83": TTA_PASSES,
    "flip, scale 0.67": ((1.0, False), (1.0, True), (0.67, False)),
    "ultralytics (1, 0.83 flipped, 0.67)": ((1.0, False), (0.83, True), (0.67, False)),
    "flip, scales 0.83 and 0.67": TTA_PASSES + ((0.67, False),),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/yolo.pt", type=Path)
    ap.add_argument("--manifests", default="data/manifests", type=Path)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    classes = read_classes(args.manifests / "det_classes.txt")
    detector = load_yolo_detector(args.model, device=device, min_score=0.01, nms_iou=1.0, max_detections=10**9,
                                  tta=True)
    splits = {}
    for split in ("val", "test"):
        ds = DetectionDataset(args.manifests / f"det_{split}.txt", classes)
        gt = json.loads((args.manifests / f"det_{split}_coco.json").read_text())
        splits[split] = ([ds[i][0].as_subclass(torch.Tensor) for i in range(len(ds))], gt)
    print(f"{args.model} ({detector.size} px), {hardware(device)}")
    print("| passes | NMS IoU (val) | val mAP@0.5 | test mAP@0.5 | FPS (batch 1) |")
    print("|---|---|---|---|---|")
    for name, passes in PASS_SETS.items():
        detector.tta_passes = passes
        raw, seconds = {}, 0.0
        for split, (images, _) in splits.items():
            start = time.perf_counter()
            raw[split] = [detector.detect(image)[0] for image in images]
            if split == "test":
                seconds = (time.perf_counter() - start) / len(images)
        iou, tried, _ = choose_nms_iou(splits["val"][1], raw["val"], 100)
        test = voc_map50(splits["test"][1], [suppress(d, iou, 100) for d in raw["test"]])
        print(f"| {name} | {iou} | {tried[iou]:.4f} | {test:.4f} | {1 / seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
