"""The R-CNN and YOLOv1 stages run through DVC on tiny synthetic scenes, and write the files of docs/architecture.md."""

import contextlib
import io
import json
import re
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from torchvision.ops import box_iou

from tests.conftest import REALDATA
from tests.stages.conftest import runs, sh

pytestmark = pytest.mark.slow



@pytest.fixture(scope="module")
def det_repo(pipeline_repo):
    """The tiny project after ``dvc repro`` of every stage (tests/conftest.py)."""
    return pipeline_repo


def _pycocotools(gt_path, dets) -> tuple[float, float]:
    """COCO mAP and AP50 of ``dets`` scored by pycocotools itself (0 without detections)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not dets:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in dets]), "bbox")  # loadRes adds keys to what it gets
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return max(float(ev.stats[0]), 0.0), max(float(ev.stats[1]), 0.0)


def _numbers_only(value) -> bool:
    return all(map(_numbers_only, value.values())) if isinstance(value, dict) else (
        isinstance(value, (int, float)) and not isinstance(value, bool))


def _check_detection_outputs(repo, name):
    metrics = json.loads((repo / "reports" / f"{name}_eval.json").read_text())
    info = json.loads((repo / "reports" / f"{name}_eval_info.json").read_text())
    assert _numbers_only(metrics), metrics  # DVC metrics: numbers only; text and timings are in the info file
    assert info["device"] == "cpu" and info["backbone"] == "small" and info["seconds_per_image"] > 0
    gt_path = repo / "data" / "manifests" / "det_test_coco.json"
    gt = json.loads(gt_path.read_text())
    dets = json.loads((repo / "reports" / name / "detections_test.json").read_text())
    # the reported COCO numbers are what an outside scorer gets from the files the stage wrote
    coco_map, coco_map50 = _pycocotools(gt_path, dets)
    assert metrics["coco_map"] == pytest.approx(coco_map, abs=1e-6)
    assert metrics["coco_map50"] == pytest.approx(coco_map50, abs=1e-6)
    # VOC AP@0.5 (all-point interpolation) and COCO AP50 (101 points) rank the same matches
    assert metrics["map50"] == pytest.approx(coco_map50, abs=0.05)
    assert metrics["detections"] == len(dets)
    assert metrics["ground_truth_boxes"] == sum(not a["iscrowd"] for a in gt["annotations"])
    ids = {im["id"] for im in gt["images"]}
    for d in dets:
        assert set(d) == {"image_id", "category_id", "bbox", "score"}
        assert d["image_id"] in ids and 1 <= d["category_id"] <= 5 and len(d["bbox"]) == 4
    per_class = pd.read_csv(repo / "reports" / name / "per_class_ap.csv")
    assert per_class["class"].tolist() == ["circle", "square", "triangle", "star", "cross"]
    assert set(pd.read_csv(repo / "reports" / name / "pr_curves.csv").columns) == {"class", "recall", "precision"}
    return metrics, info


def test_rcnn_stages_write_the_contract_files(det_repo):
    props = pd.read_parquet(det_repo / "data" / "proposals" / "test.parquet")
    assert list(props.columns) == ["image", "x1", "y1", "x2", "y2"]
    assert props["image"].iloc[0].startswith("data/raw/voc/JPEGImages/")
    report = json.loads((det_repo / "reports" / "proposals.json").read_text())
    assert report["train"]["boxes_per_image"] <= 150 and _numbers_only(report)
    info = json.loads((det_repo / "reports" / "proposals_info.json").read_text())
    assert info["mode"] == "fast" and info["test"]["seconds_per_image"] > 0
    gt = json.loads((det_repo / "data" / "manifests" / "det_test_coco.json").read_text())
    found = []  # recall@0.5 recomputed with torchvision: a ground-truth box is found when a proposal overlaps it
    for im in gt["images"]:
        boxes = torch.tensor(props.loc[props["image"] == im["file_name"], ["x1", "y1", "x2", "y2"]].to_numpy())
        for a in gt["annotations"]:
            if a["image_id"] == im["id"] and not a["iscrowd"]:
                x, y, w, h = a["bbox"]
                found.append(bool(len(boxes)) and box_iou(torch.tensor([[x, y, x + w, y + h]]).double(),
                                                          boxes.double()).max().item() >= 0.5)
    assert report["test"]["recall_0.5"] == pytest.approx(sum(found) / len(found))
    with np.load(det_repo / "models" / "rcnn_svm.npz", allow_pickle=False) as z:
        assert z["svm_weight"].shape[0] == 5 and z["reg_weight"].shape[:2] == (5, 4)
        thresholds = z["score_threshold"]
    assert thresholds.shape == (5,) and thresholds.dtype == np.float32
    ckpt = torch.load(det_repo / "models" / "rcnn_cnn.pt", weights_only=True)
    assert ckpt["config"]["backbone"] == "small" and len(ckpt["classes"]) == 5
    metrics, info = _check_detection_outputs(det_repo, "rcnn")
    # precision and recall at the operating point stored with the model (rcnn_eval.score_threshold: null)
    assert list(metrics["score_thresholds"].values()) == pytest.approx(thresholds.tolist())
    per_class = pd.read_csv(det_repo / "reports" / "rcnn" / "per_class_ap.csv")
    assert per_class["score_threshold"].tolist() == pytest.approx(thresholds.tolist())
    proposals_info = json.loads((det_repo / "reports" / "proposals_info.json").read_text())
    assert info["seconds_proposals"] == pytest.approx(proposals_info["test"]["seconds_per_image"])  # the stage's
    assert info["seconds_per_image"] == pytest.approx(sum(info[f"seconds_{p}"] for p in (
        "proposals", "warp_cnn", "svm_regression", "nms")))
    run = runs(stage="rcnn_eval")[0]
    assert "pr_curve.png" in [a.path for a in MlflowClient().list_artifacts(run.info.run_id)]


def test_yolo_stages_and_transfer_from_rcnn(det_repo):
    metrics, info = _check_detection_outputs(det_repo, "yolo")
    thresholds = torch.load(det_repo / "models" / "yolo.pt", weights_only=True)["score_thresholds"]
    assert len(thresholds) == 5
    assert list(metrics["score_thresholds"].values()) == pytest.approx(thresholds)
    assert info["fps"] * info["seconds_per_image"] == pytest.approx(1.0) and metrics["batch_size"] == 1
    curve = pd.read_csv(det_repo / "reports" / "yolo_train.csv")
    assert curve["epoch"].tolist() == [1, 2]
    assert {"train_coord", "train_obj", "train_noobj", "train_class", "val_map50", "lr"} <= set(curve.columns)
    run = runs(stage="yolo_train")[0]
    assert run.data.tags["segdet.transfer"].endswith("0 unexpected")
    rcnn = torch.load(det_repo / "models" / "rcnn_cnn.pt", weights_only=True)["model"]
    assert run.data.metrics["transfer_loaded"] == sum(k.startswith("features.") for k in rcnn)  # the whole backbone
    assert "transfer_report.json" in [a.path for a in MlflowClient().list_artifacts(run.info.run_id)]


def test_changing_svm_params_reruns_only_svm_and_eval(det_repo):
    out = sh(["dvc", "exp", "run", "-S", "rcnn_svm.C=0.01", "rcnn_eval"], det_repo)
    ran = re.findall(r"Running stage '(\w+)'", out.stdout)
    assert ran == ["rcnn_svm", "rcnn_eval"]


def test_paper_input_size_with_a_stride_32_backbone(det_repo):
    out = sh(["dvc", "exp", "run", "-S", "yolo_train.input_size=448", "-S", "yolo_train.backbone=resnet18",
              "-S", "yolo_train.head=fc",
              "-S", "yolo_train.epochs=1", "-S", "yolo_train.warmup_epochs=0", "-S", "yolo_train.batch_size=8",
              "yolo_train"], det_repo)
    assert "Running stage 'yolo_train'" in out.stdout
    ckpt = torch.load(det_repo / "models" / "yolo.pt", weights_only=True)
    assert ckpt["config"]["grid"] == 7 and ckpt["config"]["input_size"] == 448
    assert ckpt["model"]["fc.4.weight"].shape[0] == 7 * 7 * (2 * 5 + 5)


def test_wrong_input_size_fails_clearly(det_repo):
    out = sh(["dvc", "exp", "run", "--temp", "-S", "yolo_train.input_size=100", "-S", "yolo_train.backbone=small",
              "yolo_train"], det_repo, check=False)  # --temp: the workspace keeps its models for the tests below
    assert out.returncode != 0
    assert "yolo_train.input_size = 100: input_size 100 is not a multiple of 32" in out.stdout + out.stderr


def _row(markdown: str, start: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {start}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_stage_matches_the_eval_jsons(det_repo):
    sh(["dvc", "repro", "report"], det_repo)  # after the experiments above changed some eval JSONs
    reports = det_repo / "reports"
    md = (reports / "summary.md").read_text()
    for name, label in (("rcnn", "R-CNN (segdet"), ("yolo", "YOLOv1 (segdet")):
        m = json.loads((reports / f"{name}_eval.json").read_text())
        info = json.loads((reports / f"{name}_eval_info.json").read_text())
        cells = _row(md, label)
        assert cells[1:4] == [f"{m['map50']:.3f}", f"{m['coco_map']:.3f}", f"{info['seconds_per_image']:.3f}"]
        assert cells[5] == info["hardware"] and info["device"] == "cpu"
    unet = json.loads((reports / "unet_eval.json").read_text())
    variant = json.loads((reports / "unet_eval_info.json").read_text())["variant"]
    assert _row(md, variant)[1:4] == [f"{unet[k]:.3f}" for k in ("dice", "iou", "thresholded_jaccard")]
    test = json.loads((reports / "proposals.json").read_text())["test"]
    assert _row(md, "test")[2] == f"{test['recall_0.5']:.3f}"
    pngs = sorted((reports / "summary").glob("*.png"))
    assert [p.name for p in pngs] == ["detection_map.png", "detection_speed.png", "proposal_recall.png", "unet.png"]
    assert all(cv2.imread(str(p)) is not None for p in pngs)
    run = runs(stage="report")[0]
    assert run.data.metrics["yolo_map50"] == pytest.approx(json.loads((reports / "yolo_eval.json").read_text())["map50"])
    paths = [a.path for a in MlflowClient().list_artifacts(run.info.run_id)]
    assert "summary.md" in paths and "summary" in paths
    first = runs(stage="report")[-1]  # the fixture's dvc repro: every stage ran in that one pipeline run
    grouped = {r.data.tags["segdet.stage"] for r in runs(pipeline_run=first.data.tags["segdet.pipeline_run"])}
    assert {"prepare", "unet_eval", "rcnn_eval", "yolo_eval", "report"} <= grouped


def _predict(repo, *args):
    return sh([sys.executable, "-m", "segdet.cli", "predict", *args], repo, check=False)


def _sample_images(repo, tmp_path, kind):
    """Real photos from ../shared/realdata when it is there, else the pipeline's own test images."""
    real = REALDATA / ("isic-sample/images" if kind == "unet" else "raccoon-voc/JPEGImages")
    if real.is_dir():
        return sorted(real.glob("*.jpg"))[:2]
    folder = "isic/images" if kind == "unet" else "voc/JPEGImages"
    return sorted((repo / "data" / "raw" / folder).glob("*.jpg"))[:2]


@pytest.mark.parametrize("kind", ["unet", "rcnn", "yolo"])
def test_predict_writes_overlays_and_json(det_repo, tmp_path, kind):
    images = _sample_images(det_repo, tmp_path, kind)
    out = tmp_path / kind
    threshold = {"unet": [], "rcnn": ["--score-threshold", "-10"], "yolo": ["--score-threshold", "0"]}[kind]
    res = _predict(det_repo, kind, *map(str, images), "--out", str(out), *threshold)
    assert res.returncode == 0, res.stderr
    pred = json.loads((out / "predictions.json").read_text())
    assert pred["kind"] == kind and [r["image"] for r in pred["images"]] == list(map(str, images))
    for rec, path in zip(pred["images"], images, strict=True):
        h, w = cv2.imread(str(path)).shape[:2]
        assert (rec["width"], rec["height"]) == (w, h)
        assert cv2.imread(str(out / rec["overlay"])).shape[:2] == (h, w)
        if kind == "unet":
            mask = cv2.imread(str(out / rec["mask"]), cv2.IMREAD_GRAYSCALE)
            assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
            assert rec["lesion_fraction"] == pytest.approx((mask > 0).mean(), abs=1e-5)
        else:
            for d in rec["detections"]:
                assert d["class"] in ("circle", "square", "triangle", "star", "cross")
                x1, y1, x2, y2 = d["box"]
                assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
    if kind == "rcnn":  # the low threshold keeps candidates (R-CNN's boxes are its proposals, regressed; the tiny
        # YOLOv1, two epochs on a dozen scenes, may still predict a negative width for every box, which decodes to none)
        assert sum(len(r["detections"]) for r in pred["images"]) > 0
    if kind != "unet":
        # without --score-threshold: the model's own per-class thresholds. Against a run cut at the lowest of
        # them (the same candidates before NMS), that keeps exactly the boxes scoring above their class's own
        if kind == "rcnn":
            with np.load(det_repo / "models" / "rcnn_svm.npz", allow_pickle=False) as z:
                cut = dict(zip(z["classes"].tolist(), z["score_threshold"].tolist(), strict=True))
        else:
            ckpt = torch.load(det_repo / "models" / "yolo.pt", weights_only=True)
            cut = dict(zip(ckpt["classes"], ckpt["score_thresholds"], strict=True))
        runs_ = {}
        for name, extra in (("own", []), ("lowest", ["--score-threshold", repr(min(cut.values()))])):
            res = _predict(det_repo, kind, *map(str, images), "--out", str(tmp_path / name), *extra)
            assert res.returncode == 0, res.stderr
            runs_[name] = json.loads((tmp_path / name / "predictions.json").read_text())["images"]
        for rec_own, rec_low in zip(runs_["own"], runs_["lowest"], strict=True):
            kept = [(d["class"], d["score"]) for d in rec_low["detections"] if d["score"] >= cut[d["class"]] - 1e-6]
            assert [(d["class"], d["score"]) for d in rec_own["detections"]] == kept


def test_predict_from_an_mlflow_run_matches_models(det_repo, tmp_path):
    images = [str(p) for p in _sample_images(det_repo, tmp_path, "yolo")]
    run = next(r for r in runs(stage="yolo_train") if r.info.status == "FINISHED")  # the one behind models/yolo.pt
    a = _predict(det_repo, "yolo", *images, "--out", str(tmp_path / "a"), "--score-threshold", "0")
    b = _predict(det_repo, "yolo", *images, "--out", str(tmp_path / "b"), "--score-threshold", "0",
                 "--run", run.info.run_id)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    # the newest yolo_train run is the one that wrote models/yolo.pt: same weights, same predictions
    assert json.loads((tmp_path / "a/predictions.json").read_text())["images"] == json.loads(
        (tmp_path / "b/predictions.json").read_text())["images"]
    bad = _predict(det_repo, "rcnn", *images, "--run", run.info.run_id, "--out", str(tmp_path / "c"))
    assert bad.returncode == 1 and "has no checkpoint/rcnn_cnn.pt" in bad.stderr and "rcnn_svm" in bad.stderr


def test_predict_errors_are_clear_and_write_nothing(det_repo, tmp_path):
    good = str(_sample_images(det_repo, tmp_path, "yolo")[0])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    res = _predict(det_repo, "yolo", good, str(broken), "--out", str(out))
    assert res.returncode == 1 and f"ERROR: {broken}: cannot read image" in res.stderr
    assert not out.exists()
    res = _predict(det_repo, "fcn", good)
    assert res.returncode == 2  # argparse names the valid kinds (quoted or not, by Python version)
    assert re.search(r"invalid choice: 'fcn' \(choose from '?unet'?, '?rcnn'?, '?yolo'?\)", res.stderr), res.stderr
    wrong = tmp_path / "models"
    wrong.mkdir()
    (wrong / "unet.pt").write_bytes((det_repo / "models" / "yolo.pt").read_bytes())
    res = _predict(det_repo, "unet", good, "--models", str(wrong), "--out", str(out))
    assert res.returncode == 1 and "not a UNet checkpoint" in res.stderr
    res = _predict(det_repo, "yolo", str(tmp_path / "nowhere"), "--out", str(out))
    assert res.returncode == 1 and "nowhere: no such file or folder" in res.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("user file")
    res = _predict(det_repo, "yolo", good, "--out", str(tmp_path / "mine"))
    assert res.returncode == 1 and "not a segdet predict output folder" in res.stderr
    assert (tmp_path / "mine" / "keep.txt").read_text() == "user file"


def test_proposals_mode_auto_chooses_on_training_images_and_predict_searches_with_the_choice(det_repo, tmp_path):
    import yaml

    params = yaml.safe_load((det_repo / "params.yaml").read_text())
    params["proposals"]["mode"] = "auto"
    auto = tmp_path / "params.yaml"
    auto.write_text(yaml.safe_dump(params))
    res = sh([sys.executable, "stages/proposals.py", "--params", str(auto), "--out", str(tmp_path / "proposals"),
              "--report", str(tmp_path / "proposals.json"), "--info", str(tmp_path / "info.json")], det_repo)
    info = json.loads((tmp_path / "info.json").read_text())
    found = info["mode_auto"]["recall_0.5"]
    train = (det_repo / "data" / "manifests" / "det_train.txt").read_text().split("\n")
    n = min(16, len([line for line in train if line.strip() and not line.startswith("#")]))  # each has objects
    assert info["mode_auto"]["images"] == n and set(found) == {"fast", "quality"}
    assert info["mode"] == ("quality" if found["quality"] - found["fast"] >= 0.02 else "fast")
    assert re.search(rf"proposals: mode auto -> {info['mode']} \(recall@0.5 on {n} training images: fast "
                     rf"{found['fast']:.3f}, quality {found['quality']:.3f}", res.stdout), res.stdout
    # every split was searched in the chosen mode: the default pipeline's run in that mode gave the same boxes, also
    # for the training images the choice had searched already (not searched again, in their place in the table)
    if info["mode"] == "fast":
        for split in ("train", "test"):
            ours = pd.read_parquet(tmp_path / "proposals" / f"{split}.parquet")
            pd.testing.assert_frame_equal(ours, pd.read_parquet(det_repo / "data" / "proposals" / f"{split}.parquet"))
    # predict with mode auto searches as the workspace's proposals stage chose (its reports/proposals_info.json) ...
    image = str(_sample_images(det_repo, tmp_path, "rcnn")[0])
    res = _predict(det_repo, "rcnn", image, "--params", str(auto), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    # ... and says what to do where no proposals stage has run
    res = sh([sys.executable, "-m", "segdet.cli", "predict", "rcnn", image, "--params", str(auto), "--models",
              str(det_repo / "models"), "--out", str(tmp_path / "out2")], tmp_path, check=False)
    assert res.returncode == 1 and "proposals.mode is auto, and reports/proposals_info.json" in res.stderr, res.stderr
    assert not (tmp_path / "out2").exists()
