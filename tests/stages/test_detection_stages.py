"""The R-CNN and YOLOv1 stages run through DVC on tiny synthetic scenes, and write the DESIGN.md files."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.stages.conftest import make_repo, runs, sh

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def det_repo(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("det"))
    sh(["dvc", "repro", "rcnn_eval", "yolo_eval"], repo)
    return repo


def _check_detection_outputs(repo, name):
    metrics = json.loads((repo / "reports" / f"{name}_eval.json").read_text())
    for k in ("map50", "coco_map", "coco_map50", "precision", "recall"):
        assert 0.0 <= metrics[k] <= 1.0, k
    assert metrics["device"] == "cpu"
    gt = json.loads((repo / "data" / "manifests" / "det_test_coco.json").read_text())
    dets = json.loads((repo / "reports" / name / "detections_test.json").read_text())
    ids = {im["id"] for im in gt["images"]}
    for d in dets:
        assert set(d) == {"image_id", "category_id", "bbox", "score"}
        assert d["image_id"] in ids and 1 <= d["category_id"] <= 5 and len(d["bbox"]) == 4
    per_class = pd.read_csv(repo / "reports" / name / "per_class_ap.csv")
    assert per_class["class"].tolist() == ["circle", "square", "triangle", "star", "cross"]
    assert set(pd.read_csv(repo / "reports" / name / "pr_curves.csv").columns) == {"class", "recall", "precision"}
    return metrics


def test_rcnn_stages_write_the_contract_files(det_repo):
    props = pd.read_parquet(det_repo / "data" / "proposals" / "test.parquet")
    assert list(props.columns) == ["image", "x1", "y1", "x2", "y2"]
    assert props["image"].iloc[0].startswith("data/raw/voc/JPEGImages/")
    report = json.loads((det_repo / "reports" / "proposals.json").read_text())
    assert 0 < report["test"]["recall_0.5"] <= 1 and report["train"]["boxes_per_image"] <= 150
    with np.load(det_repo / "models" / "rcnn_svm.npz", allow_pickle=False) as z:
        assert z["svm_weight"].shape[0] == 5 and z["reg_weight"].shape[:2] == (5, 4)
    ckpt = torch.load(det_repo / "models" / "rcnn_cnn.pt", weights_only=True)
    assert ckpt["config"]["backbone"] == "small" and len(ckpt["classes"]) == 5
    metrics = _check_detection_outputs(det_repo, "rcnn")
    for part in ("proposals", "warp_cnn", "svm_regression", "nms"):
        assert metrics[f"seconds_{part}"] >= 0
    assert metrics["seconds_per_image"] == pytest.approx(sum(metrics[f"seconds_{p}"] for p in (
        "proposals", "warp_cnn", "svm_regression", "nms")))
    run = runs(stage="rcnn_eval")[0]
    assert "pr_curve.png" in [a.path for a in MlflowClient().list_artifacts(run.info.run_id)]


def test_yolo_stages_and_transfer_from_rcnn(det_repo):
    metrics = _check_detection_outputs(det_repo, "yolo")
    assert metrics["fps"] > 0 and metrics["forward_fps"] >= metrics["fps"] and metrics["batch_size"] == 1
    curve = pd.read_csv(det_repo / "reports" / "yolo_train.csv")
    assert curve["epoch"].tolist() == [1, 2]
    assert {"train_coord", "train_obj", "train_noobj", "train_class", "val_map50", "lr"} <= set(curve.columns)
    run = runs(stage="yolo_train")[0]
    assert run.data.tags["segdet.transfer"].endswith("0 unexpected")
    assert run.data.metrics["transfer_loaded"] > 0
    assert "transfer_report.json" in [a.path for a in MlflowClient().list_artifacts(run.info.run_id)]


def test_changing_svm_params_reruns_only_svm_and_eval(det_repo):
    out = sh(["dvc", "exp", "run", "-S", "rcnn_svm.C=0.01", "rcnn_eval"], det_repo)
    ran = re.findall(r"Running stage '(\w+)'", out.stdout)
    assert ran == ["rcnn_svm", "rcnn_eval"]


def test_paper_input_size_with_a_stride_32_backbone(det_repo):
    out = sh(["dvc", "exp", "run", "-S", "yolo_train.input_size=448", "-S", "yolo_train.backbone=resnet18",
              "-S", "yolo_train.epochs=1", "-S", "yolo_train.warmup_epochs=0", "-S", "yolo_train.batch_size=8",
              "yolo_train"], det_repo)
    assert "Running stage 'yolo_train'" in out.stdout
    ckpt = torch.load(det_repo / "models" / "yolo.pt", weights_only=True)
    assert ckpt["config"]["grid"] == 7 and ckpt["config"]["input_size"] == 448
    assert ckpt["model"]["fc.4.weight"].shape[0] == 7 * 7 * (2 * 5 + 5)


def test_wrong_input_size_fails_clearly(det_repo):
    out = sh(["dvc", "exp", "run", "-S", "yolo_train.input_size=100", "-S", "yolo_train.backbone=small", "yolo_train"],
             det_repo, check=False)
    assert out.returncode != 0
    assert "yolo_train.input_size = 100: input_size 100 is not a multiple of 32" in out.stdout + out.stderr
