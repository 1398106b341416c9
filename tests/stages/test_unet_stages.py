"""unet_train and unet_eval run as DVC stages (tiny data, tiny epochs) and log to MLflow."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image
from sklearn.metrics import f1_score

from tests.stages.conftest import make_repo, runs, sh

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def unet_repo(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("unet"))
    # the workspace linked to DVC's cache, as docs/real-data.md advises for large data: the resumes and new runs
    # below must replace the linked checkpoints, never write into them (the last test checks the cache)
    sh(["dvc", "config", "--local", "cache.type", "hardlink,symlink"], repo)
    sh(["dvc", "repro", "unet_eval"], repo)
    return repo


def test_training_writes_checkpoint_curve_and_mlflow_run(unet_repo):
    ckpt = torch.load(unet_repo / "models" / "unet.pt", weights_only=True)
    assert set(ckpt) == {"model", "optimizer", "scheduler", "scaler", "epoch", "config", "classes", "metrics",
                         "world_size"}
    assert ckpt["config"]["variant"] == "unet32" and ckpt["world_size"] == 1  # one process: no torchrun
    curve = pd.read_csv(unet_repo / "reports" / "unet_train.csv")
    assert curve["epoch"].tolist() == [1, 2]
    assert {"train_loss", "val_loss", "val_dice", "val_iou", "lr", "seconds"} <= set(curve.columns)
    assert (unet_repo / "models" / "unet_run" / "last.pt").is_file()

    run = runs(stage="unet_train")[0]
    history = MlflowClient().get_metric_history(run.info.run_id, "val_dice")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx(curve["val_dice"].tolist())
    assert run.data.params["unet_train.variant"] == "unet32"
    # the checkpoint for segdet predict --run, and the resume state of the last epoch, as DVC holds it
    client = MlflowClient()
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/unet.pt"]
    resume = client.download_artifacts(run.info.run_id, "resume/last.pt", str(unet_repo.parent))
    assert torch.load(resume, weights_only=True)["epoch"] == 2
    lock = yaml.safe_load((unet_repo / "dvc.lock").read_text())["stages"]["unet_train"]
    assert "models/unet_run" in {o["path"] for o in lock["outs"]}  # a DVC output: cached, pushed, in --temp runs


def test_evaluation_outputs_match_the_contract(unet_repo):
    metrics = json.loads((unet_repo / "reports" / "unet_eval.json").read_text())
    info = json.loads((unet_repo / "reports" / "unet_eval_info.json").read_text())
    assert info["device"] == "cpu" and info["variant"] == "unet32" and info["images_per_second"] > 0
    assert metrics["batch_size"] == 4 and {"dice", "iou", "images", "input_size", "trained_epochs"} <= set(metrics)
    assert all(isinstance(v, (int, float)) for v in metrics.values()), metrics  # DVC metrics: numbers only
    per_image = pd.read_csv(unet_repo / "reports" / "unet_eval_per_image.csv")
    test_lines = (unet_repo / "data" / "manifests" / "seg_test.txt").read_text().split("\n")
    assert len(per_image) == len([line for line in test_lines if line])
    dice = []  # recomputed with scikit-learn from the written predictions and the label files
    for image, label in zip(per_image["image"], per_image["label"], strict=True):
        pred = Image.open(unet_repo / "reports" / "unet" / "pred_test" / label.split("/")[-1])
        assert pred.mode == "L" and pred.size == Image.open(unet_repo / image).size
        truth = np.asarray(Image.open(unet_repo / label)).ravel() > 0
        assert set(np.unique(np.asarray(pred))) <= {0, 255}
        guess = np.asarray(pred).ravel() > 0
        dice.append(f1_score(truth, guess, zero_division=1.0))
    assert per_image["dice"].tolist() == pytest.approx(dice, abs=1e-6)
    assert metrics["dice"] == pytest.approx(float(np.mean(dice)), abs=1e-6)
    run = runs(stage="unet_eval")[0]
    arts = [a.path for a in MlflowClient().list_artifacts(run.info.run_id, "overlays")]
    assert len(arts) == 2


def test_resume_from_last_checkpoint_through_the_stage(unet_repo):
    sh(["cp", "models/unet_run/last.pt", "resume.pt"], unet_repo)
    out = sh(["dvc", "exp", "run", "-n", "resumed", "-S", "unet_train.epochs=3", "-S", "unet_train.variant=unet32",
              "-S", "unet_train.init_from=null", "-S", "unet_train.weights=resume.pt", "unet_train"], unet_repo)
    assert "resumed from resume.pt after epoch" in out.stderr + out.stdout
    curve = pd.read_csv(unet_repo / "reports" / "unet_train.csv")
    assert curve["epoch"].tolist() == [1, 2, 3]


def test_resume_with_another_variant_fails_clearly(unet_repo):
    out = sh(["dvc", "exp", "run", "-S", "unet_train.variant=unet64", "-S", "unet_train.weights=resume.pt",
              "unet_train"], unet_repo, check=False)
    assert out.returncode != 0
    assert "was trained with variant unet32 but unet_train.variant is unet64" in out.stderr + out.stdout


def test_variant_experiment_and_transfer_report(unet_repo):
    # unet64 rather than unet128: the same code path, a sixteenth of the disk (a unet128 run writes about 2 GB of
    # checkpoints, DVC cache and MLflow copies)
    out = sh(["dvc", "exp", "run", "-n", "wide", "-S", "unet_train.variant=unet64", "-S", "unet_train.epochs=1",
              "-S", "unet_train.weights=null", "unet_train"], unet_repo)
    assert "Running stage 'unet_train'" in out.stdout
    [wide] = runs(stage="unet_train", dvc_exp_name="wide")
    assert wide.data.params["unet_train.variant"] == "unet64"

    sh(["cp", "models/unet_run/best.pt", "u64.pt"], unet_repo)
    sh(["dvc", "exp", "run", "-n", "transfer", "-S", "unet_train.variant=unet32", "-S", "unet_train.epochs=1",
        "-S", "unet_train.init_from=u64.pt", "unet_train"], unet_repo)
    [run] = runs(stage="unet_train", dvc_exp_name="transfer")
    local = MlflowClient().download_artifacts(run.info.run_id, "transfer_report.json")
    report = json.loads(Path(local).read_text())
    assert report["mismatched"] and {"key": "inc.0.weight", "source": [64, 3, 3, 3], "target": [32, 3, 3, 3]} in (
        report["mismatched"])
    assert run.data.metrics["transfer_mismatched"] == len(report["mismatched"])


def test_not_a_checkpoint_fails_clearly(unet_repo):
    (unet_repo / "junk.pt").write_text("not weights")
    out = sh(["dvc", "exp", "run", "-S", "unet_train.weights=null", "-S", "unet_train.init_from=junk.pt",
              "unet_train"], unet_repo, check=False)
    assert out.returncode != 0
    assert "ERROR: junk.pt: not a checkpoint" in out.stderr + out.stdout


def test_linked_cache_stays_intact_after_resumes_and_new_runs(unet_repo):
    """After this module's resumed run, new runs (checkpoints moved to previous/) and failed runs, every file in
    DVC's cache still hashes to its name: no stage wrote into a checkpoint that is a link to the cache (as root,
    read-only permissions would not have stopped it)."""
    import hashlib

    # (DVC itself copies a persist output's links before a run, so the failed run above left the checkpoints
    # unlinked; the prepared images stay linked)
    images = [p for p in (unet_repo / "data" / "raw").rglob("*.png") if p.is_file()]
    assert images and all(p.is_symlink() or p.stat().st_nlink > 1 for p in images), "not linked to the cache"
    objects = [p for p in (unet_repo / ".dvc" / "cache" / "files" / "md5").rglob("*")
               if p.is_file() and not p.name.endswith(".dir")]
    assert len(objects) > 10
    bad = [str(p) for p in objects if hashlib.md5(p.read_bytes()).hexdigest() != p.parent.name + p.name]
    assert not bad
