"""YOLOv1 against R-CNN, the same test images on the same machine, with the trained pipeline models.

YOLOv1: frames per second at batch size 1 after warm-up, counting preprocessing, the forward pass and
decoding with NMS (and the forward pass alone). R-CNN: seconds per image for the whole detector,
selective search included (proposals, warp + CNN of every proposal, SVMs + box regression, NMS).
Needs ``models/{yolo.pt,rcnn_cnn.pt,rcnn_svm.npz}`` and ``data/manifests`` from ``dvc repro``.

    python -m bench.detector_speed --images 20 [--device cuda]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from segdet.data.datasets import DetectionDataset, read_classes
from segdet.detection.detector import run_detector
from segdet.detection.proposals import selective_search
from segdet.detection.rcnn.detect import load_rcnn
from segdet.detection.yolo.detect import load_yolo_detector
from segdet.runtime import hardware, resolve_device
from segdet.sections import ProposalsConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--manifests", default="data/manifests", type=Path)
    ap.add_argument("--warmup", type=int, default=3)
    args = ap.parse_args()
    device = resolve_device(args.device)
    classes = read_classes(args.manifests / "det_classes.txt")
    ds = DetectionDataset(args.manifests / "det_test.txt", classes)
    images = [ds[i][0].as_subclass(torch.Tensor) for i in range(min(args.images, len(ds)))]

    yolo = load_yolo_detector("models/yolo.pt", device=device, min_score=0.01, nms_iou=0.5)
    rcnn = load_rcnn("models/rcnn_cnn.pt", "models/rcnn_svm.npz", device=device, min_score=-1.0)
    settings = ProposalsConfig("fast", max_side=256)
    cv2.setNumThreads(1)
    yolo_run = run_detector(yolo, [(img, None, torch.zeros(0, 4)) for img in images], cut=0.0, warmup=args.warmup,
                            desc="YOLOv1")
    proposals, proposal_seconds = [], []
    for img in images:  # selective search, timed apart (the rcnn_eval stage reads it from the proposals stage)
        t0 = time.perf_counter()
        proposals.append(torch.from_numpy(selective_search(cv2.cvtColor(img.permute(1, 2, 0).numpy(),
                                                                        cv2.COLOR_RGB2BGR), settings)))
        proposal_seconds.append(time.perf_counter() - t0)
    rcnn_run = run_detector(rcnn, [(img, p, torch.zeros(0, 4)) for img, p in zip(images, proposals, strict=True)],
                            cut=0.0, warmup=args.warmup, desc="R-CNN")

    yolo_s = sum(yolo_run.seconds.values())
    parts = {"proposals": float(np.mean(proposal_seconds)), **rcnn_run.seconds}
    rcnn_s = sum(parts.values())
    yolo_fps, yolo_fwd_fps = 1 / yolo_s, 1 / yolo_run.seconds["forward"]
    print(f"hardware: {hardware(device)}")
    print(f"images: {len(images)} test images of {args.manifests}, batch size 1")
    print(f"YOLOv1 ({yolo.model.backbone_name}, {yolo.size} px): {yolo_fps:8.1f} FPS end to end, "
          f"{yolo_fwd_fps:.1f} FPS forward only")
    print(f"R-CNN ({rcnn.model.backbone_name}, crop {rcnn.crop_size}): {rcnn_s:8.3f} s/image = "
          f"{parts['proposals']:.3f} proposals + {parts['warp_cnn']:.3f} warp+CNN + {parts['svm_regression']:.4f} "
          f"SVM+regression + {parts['nms']:.4f} NMS ({np.mean([len(p) for p in proposals]):.0f} proposals/image)")
    print(f"ratio: YOLOv1 is {rcnn_s * yolo_fps:.0f}x faster per image "
          "(paper, Titan X GPU: 45 FPS against ~47 s/image, about 2100x)")


if __name__ == "__main__":
    main()
