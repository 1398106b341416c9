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
from segdet.detection.proposals import ProposalSettings, selective_search
from segdet.detection.rcnn import RCNNDetector, RegionCNN, load_svm
from segdet.detection.yolo_detect import YoloDetector, load_yolo
from segdet.nets.weights import load_checkpoint
from segdet.runtime import hardware, resolve_device


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

    ck = load_checkpoint("models/yolo.pt")
    tc = ck["config"]
    yolo = YoloDetector(load_yolo(ck, "models/yolo.pt"), device=device, score_threshold=0.01, nms_iou=0.5)

    def run_yolo(img):
        return yolo.detect(img)[1:]

    for img in images[: args.warmup]:
        run_yolo(img)
    yolo_times = np.array([run_yolo(img) for img in images])

    rc = load_checkpoint("models/rcnn_cnn.pt")
    cnn = RegionCNN(rc["config"]["backbone"], len(classes))
    cnn.load_state_dict(rc["model"])
    det = RCNNDetector(cnn, load_svm(Path("models/rcnn_svm.npz")), crop_size=rc["config"]["crop_size"],
                       context=rc["config"]["context"], device=device)
    settings = ProposalSettings("fast", max_side=256)
    cv2.setNumThreads(1)

    def run_rcnn(img):
        t0 = time.perf_counter()
        bgr = cv2.cvtColor(img.permute(1, 2, 0).numpy(), cv2.COLOR_RGB2BGR)
        props = torch.from_numpy(selective_search(bgr, settings))
        t1 = time.perf_counter()
        _, parts = det.detect(img, props, min_score=-1.0)
        return [t1 - t0, parts["warp_cnn"], parts["svm_regression"], parts["nms"], time.perf_counter() - t0, len(props)]

    for img in images[: args.warmup]:
        run_rcnn(img)
    rcnn = np.array([run_rcnn(img) for img in images])

    yolo_fps, yolo_fwd_fps = 1 / yolo_times[:, 0].mean(), 1 / yolo_times[:, 1].mean()
    rcnn_s = rcnn[:, 4].mean()
    print(f"hardware: {hardware(device)}")
    print(f"images: {len(images)} test images of {args.manifests}, batch size 1")
    print(f"YOLOv1 ({tc['backbone']}, {tc['input_size']} px): {yolo_fps:8.1f} FPS end to end, "
          f"{yolo_fwd_fps:.1f} FPS forward only")
    print(f"R-CNN ({rc['config']['backbone']}, crop {rc['config']['crop_size']}): {rcnn_s:8.3f} s/image = "
          f"{rcnn[:, 0].mean():.3f} proposals + {rcnn[:, 1].mean():.3f} warp+CNN + {rcnn[:, 2].mean():.4f} SVM+regression"
          f" + {rcnn[:, 3].mean():.4f} NMS ({rcnn[:, 5].mean():.0f} proposals/image)")
    print(f"ratio: YOLOv1 is {rcnn_s * yolo_fps:.0f}x faster per image "
          "(paper, Titan X GPU: 45 FPS against ~47 s/image, about 2100x)")


if __name__ == "__main__":
    main()
