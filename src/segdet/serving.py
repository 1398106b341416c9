"""Served models: the trained UNet, R-CNN and YOLOv1 as MLflow ``pyfunc`` models that take image files and answer
in image pixels, with the pre- and post-processing of ``segdet predict`` inside (the same predictors:
:mod:`segdet.inference`).

The eval stages log them (artifact ``model`` of their run) and register them as ``segdet-unet``, ``segdet-rcnn``
and ``segdet-yolo``; the alias ``best`` follows the version with the best validation figure (:func:`update_best`).
Serve one with ``mlflow models serve -m "models:/segdet-unet@best" --env-manager local -p 5001``.

Input, every kind: a DataFrame with a column ``image``, one base64-encoded image file (PNG, JPEG, ... the bytes of
the file, decoded by :func:`segdet.data.formats.decode_rgb`: at most ``MAX_PIXELS``) a row; over HTTP
``{"dataframe_split": {"columns": ["image"], "data": [["<base64>"]]}}`` posted to ``/invocations``.
Output, one row per image (``{"predictions": [...]}`` over HTTP):

- UNet: ``mask`` (base64 of a single-channel PNG, 0 background / 255 lesion, the image's size), ``width``,
  ``height``, ``lesion_fraction``;
- R-CNN, YOLOv1: ``width``, ``height``, ``boxes`` (``[x1, y1, x2, y2]`` in the image's pixels, rounded to 0.01),
  ``scores`` (SVM margins for R-CNN, class-specific confidences for YOLOv1; 6 decimals), ``labels`` (class names).
  The param ``score_threshold`` (``"params": {"score_threshold": 0.3}``) sets another operating point for a request.

What the model holds: its files as artifacts (``unet.pt``; ``yolo.pt``; ``rcnn_cnn.pt`` and ``rcnn_svm.npz``:
weights and what inference reads, no optimizer state), the eval settings of the run that logged it as
``model_config`` (UNet ``tta``, ``postprocess``; detectors ``score_threshold`` (null: the per-class thresholds chosen
on val, stored in the files), ``nms_iou`` (null: the one stored in the files, chosen on val, else the detector's
default), ``max_detections``; R-CNN ``proposals``; and ``device``, ``auto``), the
``segdet`` package as code (it loads where segdet is not installed), pinned pip requirements, a signature and an
input example. Loading runs code, never a pickle: the model is an MLflow "model from code" and the files load
with ``weights_only=True`` / ``allow_pickle=False``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import importlib
import importlib.metadata
import logging
import math
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from segdet.data.formats import FormatError, decode_rgb, read_rgb
from segdet.inference import (
    EVAL_STAGES,
    KINDS,
    MODEL_FILES,
    PredictSettings,
    detection_records,
    settings_config,
    settings_from_config,
)
from segdet.tracking import tracking_uri

log = logging.getLogger(__name__)

#: the registered model of each kind
REGISTERED = {"unet": "segdet-unet", "rcnn": "segdet-rcnn", "yolo": "segdet-yolo"}
#: the alias of the version with the best validation figure
BEST = "best"
#: the name of the model in its run (``runs:/<run id>/model``)
ARTIFACT = "model"
#: builds a kind's predictor from its files, device and :class:`PredictSettings` (imported by name, so that serving
#: one kind never imports the code of the others)
LOADERS = {"unet": "segdet.segmentation.evaluate:unet_predictor", "yolo": "segdet.detection.yolo.detect:yolo_predictor",
           "rcnn": "segdet.detection.rcnn.detect:rcnn_predictor"}
#: the distributions the served model imports (pinned to the installed versions when it is logged)
REQUIREMENTS = ("torch", "torchvision", "opencv-contrib-python-headless", "numpy", "pandas", "scipy", "scikit-learn",
                "pillow", "pyyaml", "tqdm", "pyarrow", "pycocotools", "psutil", "filelock")
#: validation figures where lower is better (all others: higher)
LOWER_IS_BETTER = ("val_loss",)
#: checkpoint keys that are training state, left out of a served model's files
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "train_model", "ema_updates")
#: longest side of the input example logged with a model (a test image, scaled down)
EXAMPLE_SIDE = 96

#: the file MLflow runs to build the model ("models from code"): no pickle in the model
_ENTRY = '''"""segdet served model (MLflow models from code): the settings are the model_config."""
from mlflow.models import set_model

from segdet.serving import SegdetModel

set_model(SegdetModel())
'''


class ServingError(ValueError):
    """A request the model cannot answer (bad base64, not an image, too many pixels): HTTP 400 when served."""


# ----------------------------------------------------------------------------------------------------------
# The pyfunc model
# ----------------------------------------------------------------------------------------------------------


def decode_image(value: Any, name: str = "image") -> np.ndarray:
    """``uint8[H, W, 3]`` RGB of ``value``: base64 of an image file's bytes (line breaks and a
    ``data:image/...;base64,`` prefix are allowed), or the bytes themselves.

    Raises:
        ServingError: not base64, or not an image file, or more than ``MAX_PIXELS`` (named by ``name``).
    """
    if isinstance(value, str):
        text = "".join(value.split())  # line breaks of `base64` without -w0
        if text.startswith("data:") and "," in text:
            text = text.split(",", 1)[1]
        try:
            value = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ServingError(f"{name}: not base64 (send the image file's bytes, base64-encoded)") from None
    if not isinstance(value, (bytes, bytearray)):
        raise ServingError(f"{name}: expected a base64 string, got {type(value).__name__}")
    try:
        return decode_rgb(bytes(value), name)
    except FormatError as exc:
        raise ServingError(str(exc)) from None


def encode_png(image: np.ndarray) -> str:
    """Base64 of ``image`` as a PNG file (a 0/255 mask: single channel)."""
    ok, buf = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 array
        raise RuntimeError("could not encode a PNG")
    return base64.b64encode(buf.tobytes()).decode("ascii")


def respond(predictor: Any, image: np.ndarray, score_threshold: float | None = None) -> dict[str, Any]:
    """The served answer for one image (see the module's doc)."""
    h, w = image.shape[:2]
    if predictor.kind == "unet":
        pred = predictor.predict(image)
        return {"mask": encode_png(pred["mask"].astype(np.uint8) * 255), "width": w, "height": h,
                "lesion_fraction": round(pred["lesion_fraction"], 6)}
    records = detection_records(predictor.predict(image, score_threshold), predictor.classes)
    return {"width": w, "height": h, "boxes": [r["box"] for r in records], "scores": [r["score"] for r in records],
            "labels": [r["class"] for r in records]}


class SegdetModel(mlflow.pyfunc.PythonModel):
    """The served model of any kind: ``model_config["kind"]`` picks the predictor (:data:`LOADERS`), the artifacts
    are its files (:data:`segdet.inference.MODEL_FILES`), the rest of ``model_config`` its settings."""

    def load_context(self, context) -> None:
        from segdet.runtime import resolve_device

        config = dict(context.model_config or {})
        self.kind = config["kind"]
        self.config = config
        self.settings = settings_from_config(self.kind, config)
        self.device = resolve_device(str(config.get("device") or "auto"))
        files = [Path(context.artifacts[name]) for name in MODEL_FILES[self.kind]]
        module, func = LOADERS[self.kind].split(":")
        self.predictor = getattr(importlib.import_module(module), func)(files, self.device, self.settings)

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per image (see the module's doc); ``model_input``: a DataFrame with a column ``image`` (the
        signature, :func:`signature`, describes it: a DataFrame hint leaves validation to it)."""
        threshold = (params or {}).get("score_threshold")
        threshold = None if threshold is None or self.kind == "unet" else float(threshold)
        if isinstance(model_input, pd.DataFrame):
            if "image" not in model_input.columns:
                raise MlflowException.invalid_parameter_value(
                    f"the input needs a column 'image' (base64 image files); got {list(model_input.columns)}")
            values = list(model_input["image"])
        elif isinstance(model_input, Mapping) and "image" in model_input:
            values = list(np.atleast_1d(model_input["image"]))
        else:
            values = list(np.atleast_1d(model_input))
        rows = []
        for i, value in enumerate(values):
            try:
                image = decode_image(value, f"image {i}" if len(values) > 1 else "image")
            except ServingError as exc:
                raise MlflowException.invalid_parameter_value(str(exc)) from None
            rows.append(respond(self.predictor, image, threshold))
        return pd.DataFrame(rows, columns=output_columns(self.kind))


def output_columns(kind: str) -> list[str]:
    return ["mask", "width", "height", "lesion_fraction"] if kind == "unet" else [
        "width", "height", "boxes", "scores", "labels"]


def signature(kind: str):
    """Input ``image`` (string: base64 of an image file); the output columns of ``kind``; detectors' param
    ``score_threshold`` (default null: the model's own operating point)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec("string", "image")])
    if kind == "unet":
        return ModelSignature(inputs, Schema([ColSpec("string", "mask"), ColSpec("long", "width"),
                                              ColSpec("long", "height"), ColSpec("double", "lesion_fraction")]))
    outputs = Schema([ColSpec("long", "width"), ColSpec("long", "height"), ColSpec(Array(Array("double")), "boxes"),
                      ColSpec(Array("double"), "scores"), ColSpec(Array("string"), "labels")])
    return ModelSignature(inputs, outputs, ParamSchema([ParamSpec("score_threshold", "double", None)]))


def input_example(image: str | Path | np.ndarray | None) -> pd.DataFrame:
    """One request: ``image`` (a path or RGB array; a grey square when None) scaled to at most
    :data:`EXAMPLE_SIDE` pixels, as base64 PNG."""
    if image is None:
        rgb = np.full((EXAMPLE_SIDE, EXAMPLE_SIDE, 3), 128, np.uint8)
    else:
        rgb = read_rgb(image) if not isinstance(image, np.ndarray) else image
        scale = EXAMPLE_SIDE / max(rgb.shape[:2])
        if scale < 1:
            rgb = cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale))),
                             interpolation=cv2.INTER_AREA)
    return pd.DataFrame({"image": [encode_png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))]})


# ----------------------------------------------------------------------------------------------------------
# Logging and registration (eval stages)
# ----------------------------------------------------------------------------------------------------------


def requirements() -> list[str]:
    """:data:`REQUIREMENTS` pinned to the installed versions (a local version label such as ``+cu130`` dropped: pip
    installs the index's build)."""
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


def md5(path: str | Path) -> str:
    """The MD5 of a file, as ``dvc.lock`` records it."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def validation_figure(kind: str, files: list[Path]) -> tuple[str, float] | None:
    """``(metric, value)`` on the val split, stored in the model's files: the ``best_value`` of the checkpoint's
    monitored metric (UNet ``val_dice``, YOLOv1 ``val_map50``); R-CNN the ``val_map50`` of ``rcnn_svm.npz`` when it
    holds one. None when there is none (or it is not a finite number)."""
    if kind == "rcnn":
        with np.load(files[1], allow_pickle=False) as z:
            if "val_map50" not in z.files:
                return None
            name, value = "val_map50", float(z["val_map50"])
    else:
        import torch

        metrics = torch.load(files[0], map_location="cpu", weights_only=True).get("metrics") or {}
        name, value = metrics.get("monitor"), metrics.get("best_value")
        if not name or value is None:
            return None
        value = float(value)
    return (str(name), value) if math.isfinite(value) else None


def _model_files(kind: str, files: list[Path], dest: Path) -> dict[str, str]:
    """The artifacts: each file under its contract name, checkpoints without their training state."""
    import torch

    out = {}
    for path, name in zip(files, MODEL_FILES[kind], strict=True):
        target = dest / name
        if path.suffix == ".pt":
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            torch.save({k: v for k, v in ckpt.items() if k not in TRAINING_STATE}, target)
        else:
            shutil.copyfile(path, target)
        out[name] = str(target)
    return out


def _package(dest: Path) -> Path:
    """A copy of the installed ``segdet`` package (no caches), for ``code_paths``."""
    import segdet

    src = Path(segdet.__file__).parent
    target = dest / "segdet"
    shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def log_model(run: Any, kind: str, files: list[str | Path], settings: PredictSettings,
              example: str | Path | np.ndarray | None = None, *, registered_model: str | None = None) -> Any | None:
    """Log the served model of ``kind`` into the active MLflow run (``run``: its :class:`segdet.tracking.StageRun`,
    or None) as ``model``, register it as ``registered_model`` (default :data:`REGISTERED` ``[kind]``) and move the
    alias ``best`` to it when its validation figure beats the holder's (:func:`update_best`).

    Args:
        files: the model files, in :data:`segdet.inference.MODEL_FILES` order.
        settings: the eval settings it predicts with.
        example: an image (path or RGB array) for the input example, scaled down; None: a grey square.

    Never raises: a failure is a warning and the tag ``segdet.model_logged=false`` (or
    ``segdet.model_registered=false``), so an evaluation is never lost to a logging problem. Returns the model
    version, or None.
    """
    set_tags = run.set_tags if run is not None else mlflow.set_tags
    name = registered_model or REGISTERED[kind]
    try:
        info, figure, sums = _log(kind, [Path(f) for f in files], settings, example)
    except Exception as exc:  # noqa: BLE001 - report any logging failure, keep the run
        log.warning("could not log the %s model to MLflow (%s: %s)", kind, type(exc).__name__, exc)
        set_tags({"segdet.model_logged": "false"})
        return None
    set_tags({"segdet.model_logged": "true"})
    try:
        run_tags = MlflowClient().get_run(mlflow.active_run().info.run_id).data.tags
        tags = {**version_tags(kind, figure, sums),
                **{k: v for k, v in run_tags.items()
                   if k in ("segdet.dvc_exp_name", "segdet.pipeline_run", "mlflow.source.git.commit")}}
        version, best = register_version(info.model_uri, name, tags)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not register the %s model as %s (%s: %s)", kind, name, type(exc).__name__, exc)
        set_tags({"segdet.model_registered": "false"})
        return None
    set_tags({"segdet.model_registered": "true", "segdet.registered_model": f"{name}/{version.version}",
              "segdet.model_best": str(best).lower()})
    shown = f"{figure[0]} {figure[1]:.4f}" if figure else "no validation figure"
    if not best:
        with contextlib.suppress(MlflowException):
            holder = MlflowClient().get_model_version_by_alias(name, BEST)
            held = figure_of(holder.tags)
            shown += f"; alias {BEST} stays on version {holder.version} (" + (
                f"{held[0]} {held[1]:.4f})" if held else "no validation figure)")
    print(f"{EVAL_STAGES[kind]}: served model registered as {name} version {version.version} ({shown})"
          + (f", alias {BEST}" if best else ""))
    return version


def _log(kind: str, files: list[Path], settings: PredictSettings, example: Any):
    if kind not in KINDS or len(files) != len(MODEL_FILES[kind]):
        raise ValueError(f"a served {kind} model needs {', '.join(MODEL_FILES.get(kind, ()))}; got {len(files)} file(s)")
    figure = validation_figure(kind, files)
    sums = {name: md5(f) for name, f in zip(MODEL_FILES[kind], files, strict=True)}
    config = {"kind": kind, "device": "auto", **settings_config(kind, settings)}
    metadata = {"segdet_kind": kind, "source_files": sums,
                **({"val_metric": figure[0], "val_value": figure[1]} if figure else {})}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "files").mkdir()
        artifacts = _model_files(kind, files, tmp / "files")
        entry = tmp / "segdet_model.py"
        entry.write_text(_ENTRY)
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT, python_model=str(entry), artifacts=artifacts, code_paths=[str(_package(tmp))],
            model_config=config, pip_requirements=requirements(), signature=signature(kind),
            input_example=input_example(example), metadata=metadata)
    return info, figure, sums


def version_tags(kind: str, figure: tuple[str, float] | None, sums: Mapping[str, str]) -> dict[str, str]:
    """The tags of a model version: ``segdet.kind``, ``segdet.val_metric`` / ``segdet.val_value`` (the validation
    figure :func:`update_best` compares) and ``segdet.md5.<file>`` (the model files as ``dvc.lock`` records them)."""
    tags = {"segdet.kind": kind, **{f"segdet.md5.{name}": h for name, h in sums.items()}}
    if figure:
        tags.update({"segdet.val_metric": figure[0], "segdet.val_value": repr(float(figure[1]))})
    return tags


def figure_of(tags: Mapping[str, str]) -> tuple[str, float] | None:
    """The validation figure in a model version's tags, or None."""
    name, value = tags.get("segdet.val_metric"), tags.get("segdet.val_value")
    try:
        value = float(value) if value is not None else math.nan
    except ValueError:
        return None
    return (name, value) if name and math.isfinite(value) else None


def beats(new: tuple[str, float] | None, old: tuple[str, float] | None) -> bool:
    """Whether a version with validation figure ``new`` takes ``best`` from a holder with ``old``: a figure beats
    none, and of the same metric a strictly better value wins (lower for :data:`LOWER_IS_BETTER`, else higher);
    different metrics are not compared (the holder keeps it)."""
    if new is None:
        return False
    if old is None:
        return True
    if new[0] != old[0]:
        log.warning("validation figures %s and %s cannot be compared; alias %s stays where it is", new[0], old[0], BEST)
        return False
    return new[1] < old[1] if new[0] in LOWER_IS_BETTER else new[1] > old[1]


def _registry_lock() -> contextlib.AbstractContextManager:
    """One registration at a time on a SQLite store (two queued experiments may finish together)."""
    uri = mlflow.get_registry_uri()
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    return FileLock(f"{uri[len('sqlite:///'):]}.registry.lock", timeout=600)


def update_best(client: MlflowClient, name: str, version: Any) -> bool:
    """Point alias ``best`` of registered model ``name`` at ``version`` when no version holds it or when ``version``'s
    validation figure :func:`beats` the holder's. Returns whether it did."""
    try:
        holder = client.get_model_version_by_alias(name, BEST)
    except MlflowException:
        holder = None
    if holder is not None and not beats(figure_of(version.tags), figure_of(holder.tags)):
        return False
    client.set_registered_model_alias(name, BEST, version.version)
    return True


def register_version(model_uri: str, name: str, tags: Mapping[str, str]) -> tuple[Any, bool]:
    """Register ``model_uri`` as a new version of ``name`` with ``tags``; move ``best`` (:func:`update_best`).
    Returns ``(version, whether it holds best)``."""
    client = MlflowClient()
    with _registry_lock():
        version = mlflow.register_model(model_uri, name, tags=dict(tags))
        version = client.get_model_version(name, version.version)
        return version, update_best(client, name, version)


# ----------------------------------------------------------------------------------------------------------
# Loading (segdet predict --run)
# ----------------------------------------------------------------------------------------------------------


def model_uri(ref: str) -> str | None:
    """``ref`` as the URI of a served model: a ``models:/`` or ``runs:/`` URI as it is; a run id as
    ``runs:/<id>/model`` when that run logged a segdet served model; None for a run without one (a training run)."""
    mlflow.set_tracking_uri(tracking_uri())
    if ref.startswith(("models:/", "runs:/")):
        return ref
    try:
        info = mlflow.models.get_model_info(f"runs:/{ref}/{ARTIFACT}")
    except Exception:  # noqa: BLE001 - no such run, or no model in it
        return None
    return f"runs:/{ref}/{ARTIFACT}" if (info.metadata or {}).get("segdet_kind") else None


def model_kind(uri: str) -> str:
    """The kind (``unet``, ``rcnn``, ``yolo``) of the served model at ``uri``.

    Raises:
        ServingError: no such model, or not a segdet served model.
    """
    mlflow.set_tracking_uri(tracking_uri())
    try:
        info = mlflow.models.get_model_info(uri)
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a missing model
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServingError(f"{uri} in {tracking_uri()}: cannot load the model ({first})") from None
    kind = (info.metadata or {}).get("segdet_kind")
    if kind not in KINDS:
        raise ServingError(f"{uri}: not a segdet served model (logged by unet_eval, rcnn_eval or yolo_eval)")
    return kind


def load(uri: str, device: str = "auto", score_threshold: float | None = None) -> SegdetModel:
    """The served model at ``uri`` as MLflow loads it (its files, its settings), on ``device``; a detector's
    ``score_threshold`` replaces its own. The predictor is ``.predictor``, the settings ``.config``."""
    kind = model_kind(uri)
    config: dict[str, Any] = {"device": device}
    if score_threshold is not None and kind != "unet":
        config["score_threshold"] = float(score_threshold)
    return mlflow.pyfunc.load_model(uri, model_config=config).unwrap_python_model()
