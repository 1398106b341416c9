"""YOLOv1 inference on one image (a :class:`segdet.detection.detector.Detector`), and the one way to build the
detector from a ``yolo_train`` checkpoint: :func:`load_yolo_detector`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from segdet.data.transforms import yolo_preprocess
from segdet.detection.evaluate import NMS_CANDIDATES, DetPredictor, choose_nms_iou, choose_thresholds, suppress
from segdet.detection.yolo.decode import decode
from segdet.nets.backbones import IMAGENET_MEAN, IMAGENET_STD
from segdet.nets.weights import CheckpointError, load_checkpoint, save_checkpoint_dict
from segdet.nets.yolo import YOLOv1

#: the operating threshold of a class the validation split cannot set (no ground truth, or not one hit)
FALLBACK_SCORE = 0.2
#: the per-class NMS IoU of a checkpoint that stores none (``yolo_eval.nms_iou`` a number)
DEFAULT_NMS_IOU = 0.5
#: test-time augmentation (``yolo_eval.tta``): the passes of one image, as (scale, horizontal flip); a scale under 1
#: shrinks the image into the middle of a black input (the fill of the training's affine augmentation)
TTA_PASSES = ((1.0, False), (1.0, True), (0.83, False), (0.83, True))


def score_thresholds(ckpt: dict) -> list[float]:
    """The per-class operating thresholds stored in a ``yolo_train`` checkpoint (``FALLBACK_SCORE`` for a
    checkpoint written before they were)."""
    return [float(t) for t in ckpt.get("score_thresholds", [FALLBACK_SCORE] * len(ckpt["classes"]))]


def stored_tta(ckpt: dict) -> bool:
    """Whether ``yolo_train`` chose test-time augmentation on val (``yolo_eval.tta: auto``) and stored it; off when
    the checkpoint stores nothing."""
    return bool(ckpt.get("tta", False))


def stored_nms_iou(ckpt: dict) -> float:
    """The NMS IoU ``yolo_train`` chose on val and stored in the checkpoint (``yolo_eval.nms_iou: auto``), else
    :data:`DEFAULT_NMS_IOU`."""
    return float(ckpt.get("nms_iou", DEFAULT_NMS_IOU))


def load_yolo(ckpt: dict, path: str = "checkpoint") -> YOLOv1:
    """The trained YOLOv1 of a ``yolo_train`` checkpoint (``config`` says how to build it)."""
    tc = ckpt.get("config", {})
    if "boxes_per_cell" not in tc or "classes" not in ckpt:
        raise CheckpointError(f"{path}: not a YOLOv1 checkpoint (its config has no boxes_per_cell)")
    model = YOLOv1(tc["backbone"], len(ckpt["classes"]), boxes_per_cell=tc["boxes_per_cell"],
                   input_size=tc["input_size"], head_channels=tc["head_channels"], hidden=tc["hidden"],
                   dropout=tc["dropout"], head=tc.get("head", "fc"))  # checkpoints from before ``head`` are fc
    model.load_state_dict(ckpt["model"])
    return model.eval()


class YoloDetector:
    """Resize and normalise, one forward pass, decode (class-specific scores, per-class NMS), boxes back in
    the image's pixels; class-specific scores below ``min_score`` are dropped. :meth:`detect` times each
    part. ``thresholds``: the per-class operating thresholds stored with the model (``FALLBACK_SCORE`` each
    when not given). ``tta``: test-time augmentation, the :data:`TTA_PASSES` of the image (one batch on a GPU,
    one after the other on a CPU), their detections mapped back to the image and pooled before the per-class NMS
    (as ultralytics' ``augment``)."""

    def __init__(self, model: YOLOv1, *, device: torch.device, min_score: float, nms_iou: float,
                 max_detections: int = 100, classes: list[str] | None = None, thresholds: list[float] | None = None,
                 tta: bool = False):
        self.model = model.eval().to(device, memory_format=torch.channels_last)  # ~25% faster on CPU
        self.device, self.size = device, model.input_size
        self.preprocess = yolo_preprocess(self.size)
        self.min_score, self.nms_iou, self.max_detections = min_score, nms_iou, max_detections
        self.tta, self.tta_passes = tta, TTA_PASSES  # bench/yolo_tta.py tries other passes
        self.classes = list(classes) if classes is not None else [str(c) for c in range(1, model.C + 1)]
        self.thresholds = list(thresholds) if thresholds is not None else [FALLBACK_SCORE] * len(self.classes)
        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    @torch.no_grad()
    def detect(self, image: torch.Tensor, proposals: torch.Tensor | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """``image`` uint8 ``[3, H, W]`` -> ``({"boxes" [M, 4] xyxy image pixels, "scores" [M], "labels" [M] 1..C},
        seconds of ``preprocess``, ``forward`` and ``decode``)``; ``proposals`` are not used (one pass)."""
        if self.tta:
            return self._detect_tta(image)
        t0 = time.perf_counter()
        x = self.preprocess(tv_tensors.Image(image))[None].to(self.device, memory_format=torch.channels_last)
        self._sync()
        t1 = time.perf_counter()
        pred = self.model(x)
        self._sync()
        t2 = time.perf_counter()
        dets = decode(pred, B=self.model.B, input_size=self.size, score_threshold=self.min_score,
                      nms_iou=self.nms_iou, max_detections=self.max_detections)[0]
        h, w = image.shape[-2:]
        scale = torch.tensor([w / self.size, h / self.size, w / self.size, h / self.size], device=self.device)
        dets["boxes"] = dets["boxes"] * scale
        dets = {k: v.cpu() for k, v in dets.items()}
        return dets, {"preprocess": t1 - t0, "forward": t2 - t1, "decode": time.perf_counter() - t2}

    def _detect_tta(self, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """:meth:`detect` over the :data:`TTA_PASSES`, each pass decoded without suppression and its boxes mapped
        back to the image, then the per-class NMS over them all."""
        t0 = time.perf_counter()
        size, h, w = self.size, *image.shape[-2:]
        fill = [-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]  # black, normalised
        inputs, frames = [], []  # frames: (offset, side) of the image in the input, in input pixels
        scaled = {}  # side -> the resized, padded input: a flipped pass reuses its unflipped twin's
        for scale, flip in self.tta_passes:
            side = size if scale == 1.0 else int(round(size * scale))
            if side not in scaled:
                x = (self.preprocess if side == size else yolo_preprocess(side))(tv_tensors.Image(image))
                x = x.as_subclass(torch.Tensor)
                if side < size:
                    lo = (size - side) // 2
                    x = TF.pad(x, [lo, lo, size - side - lo, size - side - lo], fill=fill)
                scaled[side] = x
            x = scaled[side]
            inputs.append(x.flip(-1) if flip else x)
            frames.append(((size - side) // 2, side))
        x = torch.stack(inputs).to(self.device, memory_format=torch.channels_last)
        self._sync()
        t1 = time.perf_counter()
        if self.device.type == "cpu":  # one at a time: a batch of four 448 px inputs ran 5.7x slower on 2 cores
            pred = torch.cat([self.model(x[i : i + 1]) for i in range(len(x))])
        else:
            pred = self.model(x)
        self._sync()
        t2 = time.perf_counter()
        passes = decode(pred, B=self.model.B, input_size=size, score_threshold=self.min_score, nms_iou=1.0,
                        max_detections=10**9)
        to_image = torch.tensor([w, h, w, h], device=self.device, dtype=torch.float32)
        for d, (_, flip), (lo, side) in zip(passes, self.tta_passes, frames, strict=True):
            b = d["boxes"]
            if flip:
                b = torch.stack([size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]], dim=1)
            d["boxes"] = ((b - lo) / side * to_image).clamp(min=0).minimum(to_image)
        pooled = {k: torch.cat([d[k] for d in passes]) for k in ("boxes", "scores", "labels")}
        dets = {k: v.cpu() for k, v in suppress(pooled, self.nms_iou, self.max_detections).items()}
        return dets, {"preprocess": t1 - t0, "forward": t2 - t1, "decode": time.perf_counter() - t2}


def load_yolo_detector(path: str | Path, *, device: torch.device, nms_iou: float | None = None,
                       tta: bool | None = False, **settings) -> YoloDetector:
    """The YOLOv1 detector of a ``yolo_train`` checkpoint, with its classes and operating thresholds;
    ``nms_iou`` None: the one stored in the checkpoint (:func:`stored_nms_iou`); ``tta`` None: likewise
    (:func:`stored_tta`); ``settings``: the other keyword arguments of :class:`YoloDetector` (``min_score``,
    ``max_detections``).

    Raises:
        CheckpointError: the file is missing or is not a YOLOv1 checkpoint (named).
    """
    ckpt = load_checkpoint(path, map_location=device)
    return YoloDetector(load_yolo(ckpt, str(path)), device=device, classes=list(ckpt["classes"]),
                        thresholds=score_thresholds(ckpt), nms_iou=stored_nms_iou(ckpt) if nms_iou is None else nms_iou,
                        tta=stored_tta(ckpt) if tta is None else tta, **settings)


def yolo_predictor(files: list[Path], device: torch.device, settings) -> DetPredictor:
    """YOLOv1 of ``files`` (``[yolo.pt]``) at ``settings.score_threshold`` (None: the per-class thresholds stored in
    the checkpoint), with ``settings.nms_iou`` and ``tta`` (None: the checkpoint's) and ``max_detections`` (a
    :class:`segdet.inference.PredictSettings`)."""
    detector = load_yolo_detector(files[0], device=device, min_score=0.0, nms_iou=settings.nms_iou,
                                  max_detections=settings.max_detections, tta=settings.tta)
    cut = settings.score_threshold if settings.score_threshold is not None else detector.thresholds
    return DetPredictor("yolo", detector, cut)


class ValChoice(NamedTuple):
    """What :func:`save_with_thresholds` chose on the validation split and stored with the model."""

    thresholds: list[float]  # per class, best F1
    nms_iou: float  # the NMS IoU the thresholds were chosen at
    nms_tried: dict[float, float]  # val mAP@0.5 of each IoU tried (``nms_iou`` auto), else empty
    tta: bool  # test-time augmentation on
    tta_tried: dict[bool, float]  # val mAP@0.5 without and with it (``tta`` auto), else empty


def save_with_thresholds(model: YOLOv1, best_checkpoint: str | Path, out: str | Path, dataset, gt: dict, *,
                         device: torch.device, min_score: float, nms_iou: float | None, max_detections: int,
                         tta: bool | None = False) -> ValChoice:
    """Choose ``model``'s per-class operating thresholds on the validation ``dataset`` (COCO ground truth
    ``gt``) with the eval stage's detection settings, and write ``best_checkpoint`` with them to ``out``.

    ``nms_iou`` None (``yolo_eval.nms_iou: auto``): first choose the NMS IoU with the best val mAP@0.5
    (:func:`segdet.detection.evaluate.choose_nms_iou`) and store it too (``nms_iou``). ``tta`` None
    (``yolo_eval.tta: auto``): the same without and with test-time augmentation, the better val mAP@0.5 kept
    (ties: without) and stored (``tta``). Each is one pass over the split, its detections unsuppressed, then
    per-class NMS at each IoU tried."""
    candidates = NMS_CANDIDATES if nms_iou is None else (nms_iou,)
    runs = {}  # tta -> (val mAP@0.5, IoU, mAP by IoU, detections)
    for option in (False, True) if tta is None else (tta,):
        raw = YoloDetector(model, device=device, min_score=min_score, nms_iou=1.0, max_detections=10**9, tta=option)
        unsuppressed = [raw.detect(dataset[i][0])[0] for i in range(len(dataset))]
        iou, tried, dets = choose_nms_iou(gt, unsuppressed, max_detections, candidates)
        runs[option] = (tried[iou], iou, tried, dets)
    chosen = max(runs, key=lambda option: (runs[option][0], not option))  # ties: without
    _, iou, tried, dets = runs[chosen]
    thresholds = choose_thresholds(gt, dets, FALLBACK_SCORE)
    extra = {"nms_iou": iou} if nms_iou is None else {}
    if tta is None:
        extra["tta"] = chosen
    save_checkpoint_dict({**load_checkpoint(best_checkpoint), "score_thresholds": thresholds, **extra}, out)
    return ValChoice(thresholds, iou, tried if nms_iou is None else {}, chosen,
                     {option: run[0] for option, run in runs.items()} if tta is None else {})
