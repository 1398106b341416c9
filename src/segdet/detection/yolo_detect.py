"""YOLOv1 inference on one image, shared by the ``yolo_eval`` stage and ``segdet predict``."""

from __future__ import annotations

import time

import torch
from torchvision import tv_tensors

from segdet.detection.decode import decode
from segdet.detection.evaluate import choose_thresholds
from segdet.detection.yolo_train import yolo_preprocess
from segdet.nets.weights import CheckpointError
from segdet.nets.yolo import YOLOv1

#: the operating threshold of a class the validation split cannot set (no ground truth, or not one hit)
FALLBACK_SCORE = 0.2


def score_thresholds(ckpt: dict) -> list[float]:
    """The per-class operating thresholds stored in a ``yolo_train`` checkpoint (``FALLBACK_SCORE`` for a
    checkpoint written before they were)."""
    return [float(t) for t in ckpt.get("score_thresholds", [FALLBACK_SCORE] * len(ckpt["classes"]))]


def load_yolo(ckpt: dict, path: str = "checkpoint") -> YOLOv1:
    """The trained YOLOv1 of a ``yolo_train`` checkpoint (``config`` says how to build it)."""
    tc = ckpt.get("config", {})
    if "boxes_per_cell" not in tc or "classes" not in ckpt:
        raise CheckpointError(f"{path}: not a YOLOv1 checkpoint (its config has no boxes_per_cell)")
    model = YOLOv1(tc["backbone"], len(ckpt["classes"]), tc["boxes_per_cell"], tc["input_size"], tc["head_channels"],
                   tc["hidden"], tc["dropout"], tc.get("head", "fc"))
    model.load_state_dict(ckpt["model"])
    return model.eval()


class YoloDetector:
    """Resize and normalise, one forward pass, decode (class-specific scores, per-class NMS), boxes back in
    the image's pixels. :meth:`detect` times the whole and the forward pass alone."""

    def __init__(self, model: YOLOv1, *, device: torch.device, score_threshold: float, nms_iou: float,
                 max_detections: int = 100):
        self.model = model.eval().to(device, memory_format=torch.channels_last)  # ~25% faster on CPU
        self.device, self.size = device, model.input_size
        self.preprocess = yolo_preprocess(self.size)
        self.score_threshold, self.nms_iou, self.max_detections = score_threshold, nms_iou, max_detections
        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @torch.no_grad()
    def detect(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], float, float]:
        """``image`` uint8 ``[3, H, W]`` -> ``({"boxes" [M, 4] xyxy image pixels, "scores" [M], "labels" [M] 1..C},
        seconds in all, seconds of the forward pass)``."""
        t0 = time.perf_counter()
        x = self.preprocess(tv_tensors.Image(image))[None].to(self.device, memory_format=torch.channels_last)
        self._sync()
        t1 = time.perf_counter()
        pred = self.model(x)
        self._sync()
        t2 = time.perf_counter()
        dets = decode(pred, B=self.model.B, input_size=self.size, score_threshold=self.score_threshold,
                      nms_iou=self.nms_iou, max_detections=self.max_detections)[0]
        h, w = image.shape[-2:]
        scale = torch.tensor([w / self.size, h / self.size, w / self.size, h / self.size], device=self.device)
        dets["boxes"] = dets["boxes"] * scale
        dets = {k: v.cpu() for k, v in dets.items()}
        return dets, time.perf_counter() - t0, t2 - t1


def choose_yolo_thresholds(detector: YoloDetector, dataset, gt: dict) -> list[float]:
    """Per-class best-F1 score thresholds of ``detector`` on ``dataset`` (a :class:`DetectionDataset` of the
    validation split, whose COCO ground truth is ``gt``); see :func:`segdet.detection.evaluate.operating_thresholds`."""
    return choose_thresholds(gt, (detector.detect(dataset[i][0])[0] for i in range(len(dataset))), FALLBACK_SCORE)
