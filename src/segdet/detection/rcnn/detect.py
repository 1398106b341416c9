"""The R-CNN detector: region CNN features of the proposals, SVM scores, box regression, per-class NMS; and
:func:`load_rcnn`, the one way to build it from the pipeline's model files."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.ops import clip_boxes_to_image

from segdet.detection.boxes import decode
from segdet.detection.evaluate import DetPredictor, suppress
from segdet.detection.proposals import selective_search
from segdet.detection.rcnn.features import embed_regions
from segdet.detection.rcnn.model import RegionCNN
from segdet.detection.rcnn.svm import load_svm, score_thresholds
from segdet.nets.weights import CheckpointError, load_checkpoint
from segdet.sections import ProposalsConfig

#: the per-class NMS IoU of an SVM file that stores none (the paper's; ``rcnn_eval.nms_iou`` a number)
DEFAULT_NMS_IOU = 0.3


def stored_nms_iou(svm: dict[str, np.ndarray]) -> float:
    """The NMS IoU ``rcnn_svm`` chose on val and stored with the SVMs (``rcnn_eval.nms_iou: auto``), else the paper's."""
    return float(svm["nms_iou"]) if "nms_iou" in svm else DEFAULT_NMS_IOU


class RCNNDetector:
    """CNN + SVMs + regressors (a :class:`segdet.detection.detector.Detector`); :meth:`detect` runs one image
    and times each part. Detections score at least ``min_score`` (SVM margin); ``thresholds`` are the per-class
    operating thresholds stored with the SVMs; ``nms_iou`` None: the NMS IoU stored with them
    (:func:`stored_nms_iou`). Without proposals, ``detect`` runs selective search with ``proposals``
    (``segdet predict``)."""

    def __init__(self, model: RegionCNN, svm: dict[str, np.ndarray], *, crop_size: int, context: float,
                 device: torch.device, min_score: float = 0.0, nms_iou: float | None = None,
                 max_detections: int = 100, box_voting: float = 0.0, proposals: ProposalsConfig | None = None):
        self.model = model.eval().to(device)
        self.classes = [str(c) for c in svm["classes"]]
        self.thresholds = score_thresholds(svm)
        nms_iou = stored_nms_iou(svm) if nms_iou is None else nms_iou
        self.w = torch.from_numpy(svm["svm_weight"]).float()
        self.b = torch.from_numpy(svm["svm_bias"]).float()
        self.reg_w = torch.from_numpy(svm["reg_weight"]).float()
        self.reg_b = torch.from_numpy(svm["reg_bias"]).float()
        self.scale = float(svm["feature_scale"])
        self.crop_size, self.context, self.device = crop_size, context, device
        self.min_score, self.nms_iou, self.max_detections = min_score, nms_iou, max_detections
        self.box_voting = box_voting
        self.proposal_settings = proposals

    @torch.no_grad()
    def detect(self, image: torch.Tensor, proposals: torch.Tensor | None = None
               ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Detections in ``image`` (uint8 ``[3, H, W]``) from its ``proposals [K, 4]``.

        Returns ``({"boxes" [M, 4] xyxy, "scores" [M] SVM margins, "labels" [M] 1..N}, seconds)`` with
        seconds split into ``warp_cnn``, ``svm_regression`` and ``nms`` (and ``proposals`` when the
        detector searched them itself).
        """
        seconds = {}
        if proposals is None:
            if self.proposal_settings is None:
                raise ValueError("RCNNDetector.detect needs proposals, or proposal settings to search them")
            t = time.perf_counter()
            bgr = cv2.cvtColor(image.permute(1, 2, 0).numpy(), cv2.COLOR_RGB2BGR)
            proposals = torch.from_numpy(selective_search(bgr, self.proposal_settings))
            seconds["proposals"] = time.perf_counter() - t
        t0 = time.perf_counter()
        feats = embed_regions(self.model, image, proposals, self.crop_size, self.context, self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        x = feats * self.scale
        scores = x @ self.w.T + self.b  # [K, N]
        keep_k, keep_c = torch.nonzero(scores >= self.min_score, as_tuple=True)
        deltas = torch.einsum("kd,kjd->kj", x[keep_k], self.reg_w[keep_c]) + self.reg_b[keep_c]
        boxes = clip_boxes_to_image(decode(proposals[keep_k].float(), deltas), image.shape[-2:])
        cand_scores, labels = scores[keep_k, keep_c], keep_c + 1
        t2 = time.perf_counter()
        dets = suppress({"boxes": boxes, "scores": cand_scores, "labels": labels}, self.nms_iou,
                        self.max_detections, self.box_voting)
        t3 = time.perf_counter()
        return dets, {**seconds, "warp_cnn": t1 - t0, "svm_regression": t2 - t1, "nms": t3 - t2}


def load_rcnn(cnn: str | Path, svm: str | Path | dict[str, np.ndarray], *, device: torch.device,
              **settings) -> RCNNDetector:
    """The R-CNN detector of a ``rcnn_finetune`` checkpoint and a ``rcnn_svm`` file (or its arrays);
    ``settings``: the keyword arguments of :class:`RCNNDetector` (``min_score``, ``nms_iou``, ...).

    Raises:
        CheckpointError: a file is missing, or is not what it should be (named).
    """
    model, cfg = RegionCNN.from_checkpoint(load_checkpoint(cnn, map_location="cpu"), str(cnn))
    if not isinstance(svm, dict):
        try:
            svm = load_svm(Path(svm))
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{svm}: not an R-CNN SVM file ({exc})") from None
    return RCNNDetector(model, svm, crop_size=cfg["crop_size"], context=cfg["context"], device=device, **settings)


def rcnn_predictor(files: list[Path], device: torch.device, settings) -> DetPredictor:
    """R-CNN of ``files`` (``[rcnn_cnn.pt, rcnn_svm.npz]``) searching its own proposals with ``settings.proposals``
    (a :class:`ProposalsConfig` or its fields), at ``settings.score_threshold`` (None: the per-class thresholds
    stored with the SVMs), with ``settings.nms_iou`` (None: the one stored with them) and ``max_detections`` (a
    :class:`segdet.inference.PredictSettings`)."""
    proposals = settings.proposals
    if isinstance(proposals, dict):
        proposals = ProposalsConfig(**proposals)
    detector = load_rcnn(files[0], files[1], device=device, proposals=proposals, nms_iou=settings.nms_iou,
                         max_detections=settings.max_detections, box_voting=settings.box_voting)
    cut = settings.score_threshold if settings.score_threshold is not None else detector.thresholds
    return DetPredictor("rcnn", detector, cut)
