"""``segdet predict``: run a trained UNet, R-CNN or YOLOv1 on image files and write overlays and a JSON.

Models come from the pipeline's ``models/`` files or from an MLflow training run's ``checkpoint/`` artifacts.
Output folder: ``<stem>.png`` overlays (the mask tinted red, or labelled boxes), ``<stem>_mask.png`` (UNet,
0/255 at the image's size) and ``predictions.json``. The folder is written whole or not at all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from segdet.data.formats import IMAGE_EXTS, FormatError, name_problem, read_rgb
from segdet.draw import draw_detections, tint
from segdet.io import atomic_dir, write_image
from segdet.nets.weights import load_checkpoint
from segdet.stage import UserError

KINDS = ("unet", "rcnn", "yolo")
#: the files a kind needs, as the pipeline writes them (``models/``) and as its MLflow run logs them (``checkpoint/``)
MODEL_FILES = {"unet": ("unet.pt",), "rcnn": ("rcnn_cnn.pt", "rcnn_svm.npz"), "yolo": ("yolo.pt",)}


class PredictError(UserError):
    """Bad ``segdet predict`` input: unknown kind, no images, a missing model."""


@dataclass(frozen=True)
class PredictSettings:
    score_threshold: float | None  # detections kept (SVM margin for R-CNN, class-specific score for YOLOv1); None:
    # the per-class thresholds stored with the model (chosen on the val split)
    nms_iou: float
    max_detections: int = 100
    proposals: Any = None  # the proposals section (ProposalsConfig), R-CNN only
    tta: bool = False  # UNet: flip test-time augmentation (unet_eval.tta)
    postprocess: bool = False  # UNet: largest blob, holes filled (unet_eval.postprocess)


def find_images(inputs: list[str | Path]) -> list[Path]:
    """Image files named in ``inputs``, folders expanded (sorted, recursive, by suffix)."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
            if not found:
                raise PredictError(f"{item}: no images in this folder (looked for {', '.join(IMAGE_EXTS)})")
            out += found
        elif item.is_file():
            out.append(item)
        else:
            raise PredictError(f"{item}: no such file or folder")
    bad = [problem for p in out if (problem := name_problem(p))]
    if bad:
        raise PredictError("\n".join(bad))
    return out


def output_names(images: list[Path], kind: str) -> list[str]:
    """One output stem per image: its own stem, or ``<stem>_1``, ``<stem>_2`` ... when that would make a file
    name already taken by an earlier image's outputs (``a/x.jpg`` and ``b/x.jpg``; ``x.jpg``, whose mask is
    ``x_mask.png``, beside ``x_mask.png``, whose overlay would be ``x_mask.png`` too)."""
    suffixes = (".png", "_mask.png") if kind == "unet" else (".png",)
    taken: set[str] = set()
    stems = []
    for path in images:
        stem, n = path.stem, 0
        while any(f"{stem}{s}" in taken for s in suffixes):
            n += 1
            stem = f"{path.stem}_{n}"
        taken.update(f"{stem}{s}" for s in suffixes)
        stems.append(stem)
    return stems


def model_files(kind: str, models_dir: str | Path) -> list[Path]:
    """The files of ``kind`` in ``models_dir``; each must exist."""
    if kind not in KINDS:
        raise PredictError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")
    files = [Path(models_dir) / name for name in MODEL_FILES[kind]]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise PredictError(f"{kind}: missing {', '.join(missing)} (train it with `dvc repro`, or pass --run)")
    return files


class Predictor:
    kind: str

    def predict(self, image: np.ndarray) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    def render(self, image: np.ndarray, pred: dict[str, Any]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class UnetPredictor(Predictor):
    kind = "unet"

    def __init__(self, ckpt: dict, device: torch.device, path: str, tta: bool = False, postprocess: bool = False):
        from segdet.segmentation.evaluate import load_unet

        self.model, cfg = load_unet(ckpt, path)
        self.model.to(device)
        self.input_size, self.device = cfg["input_size"], device
        self.tta, self.postprocess = tta, postprocess

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> dict[str, Any]:
        from torchvision import tv_tensors

        from segdet.segmentation.evaluate import predict_masks

        tensor = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        mask = predict_masks(self.model, [tensor], self.input_size, self.device, tta=self.tta,
                             postprocess=self.postprocess)[0]
        mask = mask.numpy()
        return {"mask": mask, "lesion_fraction": float(mask.mean())}

    def render(self, image: np.ndarray, pred: dict[str, Any]) -> np.ndarray:
        return tint(image, pred["mask"], (255, 0, 0), max(1, round(max(image.shape[:2]) / 300)))


class DetPredictor(Predictor):
    """Detections at the operating point ``cut``: one score, or one per class (labels 1..C)."""

    def __init__(self, kind: str, detect, classes: list[str], cut: float | list[float]):
        self.kind, self._detect, self.classes, self.cut = kind, detect, classes, cut

    def predict(self, image: np.ndarray) -> dict[str, Any]:
        from segdet.detection.evaluate import passes

        dets = self._detect(torch.from_numpy(image).permute(2, 0, 1).contiguous())
        keep = passes(dets, self.cut)
        return {k: v[keep].numpy() for k, v in dets.items()}

    def render(self, image: np.ndarray, pred: dict[str, Any]) -> np.ndarray:
        return draw_detections(image, pred["boxes"], pred["labels"], pred["scores"], self.classes)


def load_predictor(kind: str, files: list[Path], device: torch.device, settings: PredictSettings) -> Predictor:
    """A predictor of ``kind`` from its ``files`` (see :data:`MODEL_FILES`)."""
    if kind == "unet":
        return UnetPredictor(load_checkpoint(files[0], map_location=device), device, str(files[0]),
                             tta=settings.tta, postprocess=settings.postprocess)
    if kind in ("yolo", "rcnn"):
        from segdet.detection.rcnn.detect import load_rcnn
        from segdet.detection.yolo.detect import load_yolo_detector

        common = {"nms_iou": settings.nms_iou, "max_detections": settings.max_detections}
        if kind == "yolo":
            detector = load_yolo_detector(files[0], device=device, min_score=0.0, **common)
        else:
            detector = load_rcnn(files[0], files[1], device=device, proposals=settings.proposals, **common)
        cut = settings.score_threshold if settings.score_threshold is not None else detector.thresholds
        detector.min_score = min(cut) if isinstance(cut, list) else cut  # nothing below the operating point
        return DetPredictor(kind, lambda img: detector.detect(img)[0], detector.classes, cut)
    raise PredictError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")


def predict_images(predictor: Predictor, images: list[Path], out_dir: str | Path, progress: bool = True
                   ) -> list[dict[str, Any]]:
    """Run ``predictor`` on ``images``; write overlays, masks and ``predictions.json`` into ``out_dir``.

    Raises:
        FormatError: an image cannot be decoded (named; nothing is written).
    """
    out_dir = Path(out_dir)
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "predictions.json").exists()):
        raise PredictError(f"{out_dir}: exists and is not a segdet predict output folder; choose a new --out "
                           "(a previous output folder is replaced)")
    records: list[dict[str, Any]] = []
    stems = output_names(images, predictor.kind)
    with atomic_dir(out_dir) as out:
        bar = tqdm(images, desc=f"predict {predictor.kind}", unit="img", disable=not progress)
        for path, stem in zip(bar, stems, strict=True):
            try:
                image = read_rgb(path)
            except FormatError as exc:
                raise FormatError(f"{exc}; nothing was written") from None
            pred = predictor.predict(image)
            write_image(out / f"{stem}.png", cv2.cvtColor(predictor.render(image, pred), cv2.COLOR_RGB2BGR))
            rec: dict[str, Any] = {"image": str(path), "width": image.shape[1], "height": image.shape[0],
                                   "overlay": f"{stem}.png"}
            if predictor.kind == "unet":
                write_image(out / f"{stem}_mask.png", pred["mask"].astype(np.uint8) * 255)
                rec.update(mask=f"{stem}_mask.png", lesion_fraction=round(pred["lesion_fraction"], 6))
            else:
                rec["detections"] = [
                    {"label": int(lab), "class": predictor.classes[int(lab) - 1], "score": round(float(s), 6),
                     "box": [round(float(v), 2) for v in b]}
                    for b, s, lab in zip(pred["boxes"], pred["scores"], pred["labels"], strict=True)]
            records.append(rec)
        (out / "predictions.json").write_text(json.dumps({"kind": predictor.kind, "images": records}, indent=1))
    return records


def download_run_checkpoint(run_id: str, kind: str, dest: str | Path) -> list[Path]:
    """The ``checkpoint/`` artifacts of MLflow run ``run_id`` (a training run), saved into ``dest``."""
    from segdet import tracking

    try:
        files = tracking.download_artifacts(run_id, "checkpoint", dest)
    except FileNotFoundError as exc:
        raise PredictError(str(exc)) from None
    by_name = {p.name: p for p in files}
    missing = [n for n in MODEL_FILES[kind] if n not in by_name]
    if missing:
        raise PredictError(f"MLflow run {run_id} has no checkpoint/{', checkpoint/'.join(missing)}; pass the run of "
                           f"the stage that trains a {kind} ({'rcnn_svm' if kind == 'rcnn' else kind + '_train'})")
    return [by_name[n] for n in MODEL_FILES[kind]]
