"""What ``segdet predict`` and the served MLflow models share: the model files of each kind, the inference
settings, and predictions as JSON-ready records in image pixels.

The predictors themselves live beside their networks (:func:`segdet.segmentation.evaluate.unet_predictor`,
:func:`segdet.detection.yolo.detect.yolo_predictor`, :func:`segdet.detection.rcnn.detect.rcnn_predictor`), so a
stage that serves one kind never imports the code of the others. A predictor has ``kind``, ``classes`` and
``predict(image)``: ``uint8[H, W, 3]`` RGB in, ``{"mask" bool[H, W], "lesion_fraction"}`` (UNet) or
``{"boxes" [M, 4] xyxy image pixels, "scores" [M], "labels" [M] 1..C}`` (numpy; detectors) out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

KINDS = ("unet", "rcnn", "yolo")
#: the files a kind needs, as the pipeline writes them (``models/``), as a training run logs them (``checkpoint/``)
#: and as a served model keeps them (its artifacts)
MODEL_FILES = {"unet": ("unet.pt",), "rcnn": ("rcnn_cnn.pt", "rcnn_svm.npz"), "yolo": ("yolo.pt",)}
#: the eval stage whose settings a kind predicts with (and that logs its served model)
EVAL_STAGES = {"unet": "unet_eval", "rcnn": "rcnn_eval", "yolo": "yolo_eval"}


@dataclass(frozen=True)
class PredictSettings:
    score_threshold: float | None = None  # detections kept (SVM margin for R-CNN, class-specific score for YOLOv1);
    # None: the per-class thresholds stored with the model (chosen on the val split)
    nms_iou: float | None = None  # None: the one stored with the model (chosen on val with nms_iou: auto), else
    # the detector's default (R-CNN 0.3, YOLOv1 0.5)
    max_detections: int = 100
    box_voting: float = 0.0  # R-CNN: box voting after NMS at this IoU (0: off)
    proposals: Any = None  # the proposals section (ProposalsConfig, or its fields as a dict), R-CNN only
    tta: bool | None = False  # UNet: flip test-time augmentation (unet_eval.tta); YOLOv1: flips and scales
    # (yolo_eval.tta; None: as stored with the model, chosen on val with tta: auto)
    postprocess: bool = False  # UNet: largest blob, holes filled (unet_eval.postprocess)


class Predictor(Protocol):
    kind: str
    classes: list[str]

    def predict(self, image: np.ndarray) -> dict[str, Any]: ...  # pragma: no cover - interface


def settings_of(kind: str, ev: Any, proposals: Any = None, score_threshold: float | None = None) -> PredictSettings:
    """The settings of ``kind`` from its eval section ``ev`` (``unet_eval``, ``rcnn_eval`` or ``yolo_eval``; R-CNN
    also the ``proposals`` section); ``score_threshold`` overrides the section's."""
    if kind == "unet":  # test-time flips and post-processing as the eval stage uses them
        return PredictSettings(tta=ev.tta, postprocess=ev.postprocess)
    threshold = ev.score_threshold if score_threshold is None else score_threshold
    nms_iou = None if ev.nms_iou == "auto" else ev.nms_iou
    if kind == "rcnn":
        return PredictSettings(threshold, nms_iou, ev.max_detections, ev.box_voting, proposals)
    return PredictSettings(threshold, nms_iou, ev.max_detections, tta=None if ev.tta == "auto" else ev.tta)


PROPOSAL_KEYS = ("mode", "max_side", "min_size", "max_proposals")


def settings_config(kind: str, settings: PredictSettings) -> dict[str, Any]:
    """``settings`` as plain values (a served model's ``model_config``): only the keys ``kind`` uses."""
    if kind == "unet":
        return {"tta": bool(settings.tta), "postprocess": bool(settings.postprocess)}
    nms_iou = None if settings.nms_iou is None else float(settings.nms_iou)
    out: dict[str, Any] = {"score_threshold": settings.score_threshold, "nms_iou": nms_iou,
                           "max_detections": int(settings.max_detections)}
    if kind == "rcnn":
        p = settings.proposals
        out["proposals"] = {k: (p[k] if isinstance(p, dict) else getattr(p, k)) for k in PROPOSAL_KEYS}
        out["box_voting"] = float(settings.box_voting)
    else:
        out["tta"] = None if settings.tta is None else bool(settings.tta)
    return out


def settings_from_config(kind: str, config: dict[str, Any]) -> PredictSettings:
    """The inverse of :func:`settings_config`."""
    if kind == "unet":
        return PredictSettings(tta=bool(config.get("tta", False)), postprocess=bool(config.get("postprocess", False)))
    threshold = config.get("score_threshold")
    nms_iou = config.get("nms_iou")
    settings = PredictSettings(None if threshold is None else float(threshold),
                               None if nms_iou is None else float(nms_iou), int(config["max_detections"]))
    if kind == "rcnn":  # a model served before box voting has none: off
        settings = replace(settings, box_voting=float(config.get("box_voting", 0.0)),
                           proposals=dict(config["proposals"]))
    else:  # likewise test-time augmentation for a YOLOv1 served before it
        tta = config.get("tta", False)
        settings = replace(settings, tta=None if tta is None else bool(tta))
    return settings


def detection_records(pred: dict[str, Any], classes: list[str]) -> list[dict[str, Any]]:
    """Detections as ``predictions.json`` writes them: ``{"label" 1..C, "class", "score", "box" [x1, y1, x2, y2]}``
    in image pixels (score rounded to 6 decimals, box to 2)."""
    return [{"label": int(lab), "class": classes[int(lab) - 1], "score": round(float(s), 6),
             "box": [round(float(v), 2) for v in b]}
            for b, s, lab in zip(pred["boxes"], pred["scores"], pred["labels"], strict=True)]
