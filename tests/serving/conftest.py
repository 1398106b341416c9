"""Helpers of the served-model tests: an isolated MLflow store, tiny model files, images as requests."""

from __future__ import annotations

import base64
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch


@pytest.fixture
def own_store(tmp_path, monkeypatch) -> str:
    """A fresh SQLite MLflow store (tracking and registry) for one test, and in it an experiment whose artifacts stay
    in ``tmp_path``: yields its id. The session store is pointed at again afterwards."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield mlflow.create_experiment("serving", artifact_location=(tmp_path / "art").as_uri())
    if mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(before)


def calibrated(ckpt: dict, image: np.ndarray) -> dict:
    """``ckpt`` (a UNet checkpoint) with the lesion logit's bias moved so that about half the pixels of ``image``
    (RGB) are lesion: a mask with both classes, whatever the network learnt (an untrained or barely trained
    network predicts one class everywhere), so that a wrong size, channel order or resampling shows in a test."""
    from torchvision import tv_tensors

    from segdet.data.transforms import seg_transforms
    from segdet.segmentation.evaluate import load_unet

    model, cfg = load_unet(ckpt)
    x = seg_transforms(cfg["input_size"], train=False)(tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)))
    with torch.no_grad():
        logits = model(x[None].float())[0]
    state = dict(ckpt["model"])
    bias = state["outc.bias"].clone()
    bias[1] -= (logits[1] - logits[0]).median()
    state["outc.bias"] = bias
    return {**ckpt, "model": state}


def calibrated_yolo(ckpt: dict) -> dict:
    """``ckpt`` (a YOLOv1 checkpoint) with the biases of its last layer moved so that every cell predicts boxes a
    third of the image wide, confident, of every class: a tiny network (two epochs on 12 images) predicts no box
    at all, and a test of where boxes land needs some. The trained weights stay, so the boxes still depend on
    the image."""
    state = dict(ckpt["model"])
    key = [k for k in state if k.endswith(".bias")][-1]
    B, C = ckpt["config"]["boxes_per_cell"], len(ckpt["classes"])
    bias = state[key].clone().view(-1, 5 * B + C)
    for b in range(B):
        bias[:, 5 * b: 5 * b + 5] += torch.tensor([0.5, 0.5, 0.3 + 0.1 * b, 0.35, 0.8])
    bias[:, 5 * B:] += torch.linspace(0.3, 0.7, C)
    state[key] = bias.view(-1)
    return {**ckpt, "model": state}


def unet_checkpoint(path: Path, val_dice: float, seed: int = 0) -> Path:
    """A ``unet_train``-style checkpoint of an untrained unet32 with ``val_dice`` as its best validation figure,
    :func:`calibrated` on a noise image (its masks have both classes)."""
    from segdet.nets.unet import build_unet

    torch.manual_seed(seed)
    model = build_unet("unet32", num_classes=2)
    ckpt = {"model": model.state_dict(), "classes": ["background", "lesion"], "epoch": 1,
            "config": {"variant": "unet32", "input_size": 32},
            "metrics": {"history": [], "best_epoch": 1, "best_value": val_dice, "monitor": "val_dice"}}
    noise = np.random.default_rng(seed).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    torch.save(calibrated(ckpt, noise), path)
    return path


def b64(path: Path) -> str:
    """An image file as a request sends it: base64 of its bytes."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")
