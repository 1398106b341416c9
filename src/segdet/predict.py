"""``segdet predict``: run a trained UNet, R-CNN or YOLOv1 on image files and write overlays and a JSON.

Models come from the pipeline's ``models/`` files (settings from ``params.yaml``), from a served model logged to
MLflow by an eval stage (its files and that run's settings: see :mod:`segdet.serving`), or from an MLflow training
run's ``checkpoint/`` artifacts (settings from ``params.yaml``).
Output folder: ``<stem>.png`` overlays (the mask tinted red, or labelled boxes), ``<stem>_mask.png`` (UNet,
0/255 at the image's size) and ``predictions.json``. The folder is written whole or not at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from segdet.data.formats import IMAGE_EXTS, FormatError, name_problem, read_rgb
from segdet.draw import draw_detections, tint
from segdet.inference import EVAL_STAGES, KINDS, MODEL_FILES, Predictor, PredictSettings, detection_records
from segdet.io import atomic_dir, write_image
from segdet.stage import UserError

__all__ = ["KINDS", "MODEL_FILES", "PredictError", "PredictSettings", "Predictor", "download_run_checkpoint",
           "find_images", "load_predictor", "load_served", "model_files", "output_names", "predict_images", "render",
           "served_uri"]


class PredictError(UserError):
    """Bad ``segdet predict`` input: unknown kind, no images, a missing model."""


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


def load_predictor(kind: str, files: list[Path], device: torch.device, settings: PredictSettings) -> Predictor:
    """A predictor of ``kind`` from its ``files`` (see :data:`MODEL_FILES`)."""
    if kind == "unet":
        from segdet.segmentation.evaluate import unet_predictor

        return unet_predictor(files, device, settings)
    if kind == "yolo":
        from segdet.detection.yolo.detect import yolo_predictor

        return yolo_predictor(files, device, settings)
    if kind == "rcnn":
        from segdet.detection.rcnn.detect import rcnn_predictor

        return rcnn_predictor(files, device, settings)
    raise PredictError(f"unknown model kind {kind!r}; choose one of {', '.join(KINDS)}")


def render(predictor: Predictor, image: np.ndarray, pred: dict[str, Any]) -> np.ndarray:
    """The overlay of ``pred`` on ``image``: the mask tinted red, or labelled boxes."""
    if predictor.kind == "unet":
        return tint(image, pred["mask"], (255, 0, 0), max(1, round(max(image.shape[:2]) / 300)))
    return draw_detections(image, pred["boxes"], pred["labels"], pred["scores"], predictor.classes)


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
            write_image(out / f"{stem}.png", cv2.cvtColor(render(predictor, image, pred), cv2.COLOR_RGB2BGR))
            rec: dict[str, Any] = {"image": str(path), "width": image.shape[1], "height": image.shape[0],
                                   "overlay": f"{stem}.png"}
            if predictor.kind == "unet":
                write_image(out / f"{stem}_mask.png", pred["mask"].astype(np.uint8) * 255)
                rec.update(mask=f"{stem}_mask.png", lesion_fraction=round(pred["lesion_fraction"], 6))
            else:
                rec["detections"] = detection_records(pred, predictor.classes)
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
                           f"the stage that trains a {kind} ({'rcnn_svm' if kind == 'rcnn' else kind + '_train'}), or "
                           f"the one of {EVAL_STAGES[kind]} (its served model)")
    return [by_name[n] for n in MODEL_FILES[kind]]


def served_uri(ref: str) -> str | None:
    """The URI of the served model ``ref`` names (a ``models:/`` or ``runs:/`` URI, or the id of an eval run that
    logged one); None when ``ref`` is a run without a served model (a training run: use its ``checkpoint/``)."""
    from segdet import serving

    return serving.model_uri(ref)


def load_served(uri: str, kind: str, device: torch.device, score_threshold: float | None = None
                ) -> tuple[Predictor, str]:
    """The predictor of the served model at ``uri`` with its settings, ``score_threshold`` replacing a detector's;
    and a note that names it and its settings."""
    from segdet import serving

    try:
        found = serving.model_kind(uri)
        if found != kind:
            raise PredictError(f"{uri} is a served {found} model, not {kind}: run `segdet predict {found} ...`, or pass "
                               f"the run of {EVAL_STAGES[kind]} (or models:/{serving.REGISTERED[kind]}@{serving.BEST})")
        model = serving.load(uri, str(device), score_threshold)
    except serving.ServingError as exc:
        raise PredictError(str(exc)) from None
    shown = ", ".join(f"{k} {v}" for k, v in model.config.items() if k not in ("kind", "device"))
    return model.predictor, f"; served model {uri} ({shown})"
