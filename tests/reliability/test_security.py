"""No pickle from a user's file is ever run, and manifest paths cannot make a stage write outside its outputs.

A crafted ``.pt`` or ``.npz`` whose unpickling would create a file is refused wherever segdet loads one (``weights``,
``init_from``: the bad-input matrix; ``segdet predict --models`` and ``--run``: here), and the file never appears."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from segdet import tracking
from tests.reliability.conftest import assert_clean_failure, now_ms, run_in, snapshot
from tests.reliability.test_bad_input import manifest, rgb, seg_files

pytestmark = pytest.mark.usefixtures("own_experiment")


class Payload:
    """Unpickling this calls ``open(target, "w")``: the file appears only if the pickle ran."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def _evil_models(folder: Path, target: Path, good: Path) -> Path:
    """A models folder like the pipeline's, every file crafted to run code when unpickled."""
    folder.mkdir()
    for name in ("unet.pt", "yolo.pt", "rcnn_cnn.pt"):
        torch.save({"model": Payload(target), "config": {}}, folder / name)
    with np.load(good / "rcnn_svm.npz") as z:
        arrays = dict(z)
    arrays["classes"] = np.array([Payload(target)], dtype=object)  # saved as a pickle inside the .npz
    np.savez(folder / "rcnn_svm.npz", **arrays)
    assert not target.exists()
    return folder


@pytest.mark.parametrize("kind", ["unet", "yolo", "rcnn"])
def test_predict_refuses_model_files_that_hold_code(workspace, tmp_path, kind):
    target = tmp_path / "pwned"
    models = _evil_models(tmp_path / "models", target, workspace / "models")
    if kind == "rcnn":  # the CNN is a good one: the crafted SVM file is the one refused
        shutil.copy2(workspace / "models" / "rcnn_cnn.pt", models / "rcnn_cnn.pt")
    image = rgb(tmp_path / "in" / "x.jpg")
    before, since = snapshot(workspace), now_ms()
    out = run_in(workspace, "cli", ["predict", kind, str(image), "--models", str(models), "--out", str(tmp_path / "o")])
    bad = "rcnn_svm.npz" if kind == "rcnn" else f"{kind}.pt"
    assert_clean_failure(workspace, out, before, since, [f"{models / bad}"])
    assert not target.exists()
    assert not (tmp_path / "o").exists()


def test_predict_run_refuses_a_crafted_artifact(workspace, tmp_path):
    """``segdet predict --run`` loads what it downloads from MLflow the same way: weights only."""
    target = tmp_path / "pwned"
    evil = tmp_path / "unet.pt"
    torch.save({"model": Payload(target)}, evil)
    mlflow.set_tracking_uri(tracking.tracking_uri(workspace))
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(evil), artifact_path="checkpoint")
    image = rgb(tmp_path / "in" / "x.jpg")
    before, since = snapshot(workspace), now_ms()
    out = run_in(workspace, "cli", ["predict", "unet", str(image), "--run", run.info.run_id, "--out", str(tmp_path / "o")])
    assert_clean_failure(workspace, out, before, since, ["unet.pt: not a checkpoint", "weights_only"])
    assert not target.exists()


@pytest.fixture(scope="module")
def ws(workspace, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("security") / "ws"
    shutil.copytree(workspace, copy, symlinks=True)
    return copy


def test_manifest_paths_outside_the_workspace_are_read_but_never_written(ws, tmp_path):
    """Labels given by absolute paths and by ``../`` paths: unet_eval reads them and writes its predictions, named
    by the label's file name, only into its own output folder."""
    outside = tmp_path / "outside"
    pairs = seg_files(outside, 3)
    rel = [(Path("..") / "outside" / a.relative_to(outside), Path("../outside") / b.relative_to(outside))
           for a, b in pairs[:2]]
    elsewhere = tmp_path / "run"  # the stage runs in a sibling of ``outside`` so that ``../outside`` resolves there
    shutil.copytree(ws, elsewhere, symlinks=True)
    m = manifest(tmp_path / "test.txt", [*rel, pairs[2]])
    files_before = sorted(p for p in tmp_path.rglob("*") if not p.is_relative_to(elsewhere))
    out = run_in(elsewhere, "unet_eval", ["--manifest", str(m)])
    assert out.rc == 0, out.stderr
    files_after = sorted(p for p in tmp_path.rglob("*") if not p.is_relative_to(elsewhere))
    assert files_after == files_before  # nothing appeared beside the inputs
    written = sorted(p.name for p in (elsewhere / "reports" / "unet" / "pred_test").iterdir())
    assert written == [f"ISIC_{i}_segmentation.png" for i in range(3)]
