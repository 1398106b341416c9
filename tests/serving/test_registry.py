"""The served models outside the pipeline, in a temporary MLflow store: logging and registering never fails a stage,
the alias ``best`` follows the validation figure, the model predicts in image pixels, pins what it imports and loads
where segdet is not installed."""

from __future__ import annotations

import ast
import base64
import importlib.metadata
import json
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from segdet import serving
from segdet.inference import PredictSettings
from segdet.segmentation.evaluate import unet_predictor
from tests.conftest import REPO
from tests.serving.conftest import b64, unet_checkpoint

NAME = "segdet-unet"


def _version(client: MlflowClient, source: str, **tags: str):
    """A new version of :data:`NAME` with ``tags`` (no model behind it: the rule reads tags only)."""
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    return client.create_model_version(NAME, source, tags=tags)


def _best(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias(NAME, serving.BEST).version)


def test_best_alias_follows_the_validation_figure(own_store, tmp_path):
    client = MlflowClient()
    src = (tmp_path / "model").as_uri()
    steps = [  # (tags of the new version, takes best?, the version holding best afterwards)
        ({"segdet.val_metric": "val_dice", "segdet.val_value": "0.5"}, True, "1"),   # the first version
        ({"segdet.val_metric": "val_dice", "segdet.val_value": "0.4"}, False, "1"),  # worse
        ({"segdet.val_metric": "val_dice", "segdet.val_value": "0.5"}, False, "1"),  # a tie keeps the holder
        ({}, False, "1"),                                                             # no figure
        ({"segdet.val_metric": "val_dice", "segdet.val_value": "nan"}, False, "1"),  # not a number
        ({"segdet.val_metric": "val_dice", "segdet.val_value": "0.7"}, True, "6"),   # better
        ({"segdet.val_metric": "val_iou", "segdet.val_value": "0.9"}, False, "6"),   # another metric: not compared
    ]
    for tags, takes, holder in steps:
        v = _version(client, src, **tags)
        assert serving.update_best(client, NAME, client.get_model_version(NAME, v.version)) is takes, tags
        assert _best(client) == holder, tags
    client.delete_registered_model_alias(NAME, serving.BEST)  # nobody holds it: the next version takes it
    v = _version(client, src, **{"segdet.val_metric": "val_dice", "segdet.val_value": "0.1"})
    assert serving.update_best(client, NAME, v) and _best(client) == str(v.version)


def test_a_figure_beats_none_and_losses_go_down():
    assert serving.beats(("val_map50", 0.0), None)  # R-CNN before rcnn_svm stored a val figure
    assert not serving.beats(None, None) and not serving.beats(None, ("val_map50", 0.1))
    assert serving.beats(("val_loss", 0.4), ("val_loss", 0.5)) and not serving.beats(("val_loss", 0.6), ("val_loss", 0.5))
    assert serving.figure_of({"segdet.val_metric": "val_dice", "segdet.val_value": "0.25"}) == ("val_dice", 0.25)
    assert serving.figure_of({"segdet.val_metric": "val_dice", "segdet.val_value": "x"}) is None


@pytest.fixture
def logged(own_store, tmp_path):
    """Two UNet models logged and registered as an eval stage does (val Dice 0.3, then 0.2): ``(run ids, versions)``."""
    runs, versions = [], []
    for i, dice in enumerate((0.3, 0.2)):
        ckpt = unet_checkpoint(tmp_path / f"unet{i}.pt", dice, seed=i)
        with mlflow.start_run(experiment_id=own_store) as run:
            versions.append(serving.log_model(None, "unet", [ckpt], PredictSettings(), example=None))
        runs.append(run.info.run_id)
    return runs, versions


def test_eval_logging_registers_versions_and_keeps_best_on_the_better_one(logged, tmp_path):
    runs, versions = logged
    client = MlflowClient()
    assert [str(v.version) for v in versions] == ["1", "2"]
    assert _best(client) == "1"  # 0.2 does not beat 0.3
    for run_id, v, dice, best in zip(runs, versions, (0.3, 0.2), ("true", "false"), strict=True):
        tags = client.get_run(run_id).data.tags
        assert tags["segdet.model_logged"] == "true" and tags["segdet.registered_model"] == f"{NAME}/{v.version}"
        assert tags["segdet.model_best"] == best
        v = client.get_model_version(NAME, v.version)
        assert v.run_id == run_id and float(v.tags["segdet.val_value"]) == dice
        assert v.tags["segdet.md5.unet.pt"] == serving.md5(tmp_path / f"unet{int(v.version) - 1}.pt")
    info = mlflow.models.get_model_info(f"runs:/{runs[0]}/model")  # the eval run holds the model as ``model``
    assert info.metadata["segdet_kind"] == "unet" and info.signature.inputs.input_names() == ["image"]


def test_served_unet_answers_in_image_pixels(logged, tmp_path):
    """The registered model, loaded as MLflow loads it, on a PNG and a JPEG of other sizes than its input: a 0/255
    PNG mask of each image's size, the one its predictor computes from the decoded file."""
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@{serving.BEST}")
    predictor = unet_predictor([tmp_path / "unet0.pt"], torch.device("cpu"), PredictSettings())
    rng = np.random.default_rng(0)
    files = []
    for name, (h, w) in (("a.png", (37, 53)), ("b.jpg", (64, 41))):
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        files.append(tmp_path / name)
    out = model.predict(pd.DataFrame({"image": [b64(f) for f in files]}))
    assert list(out.columns) == ["mask", "width", "height", "lesion_fraction"] and len(out) == 2
    for row, f in zip(out.itertuples(), files, strict=True):
        image = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        mask = cv2.imdecode(np.frombuffer(base64.b64decode(row.mask), np.uint8), cv2.IMREAD_UNCHANGED)
        assert mask.shape == image.shape[:2] == (row.height, row.width) and set(np.unique(mask)) <= {0, 255}
        expected = predictor.predict(image)["mask"]
        assert 0 < expected.mean() < 1  # random weights: both classes, so a channel or size mix-up shows
        assert np.array_equal(mask > 0, expected)
        assert row.lesion_fraction == pytest.approx(expected.mean(), abs=1e-6)
    with pytest.raises(mlflow.exceptions.MlflowException, match="not base64"):
        model.predict(pd.DataFrame({"image": ["%%%"]}))
    wrapped = "\n".join(b64(files[0])[i:i + 76] for i in range(0, len(b64(files[0])), 76))  # `base64` without -w0
    assert model.predict(pd.DataFrame({"image": [f"data:image/png;base64,{wrapped}"]}))["mask"][0] == out["mask"][0]
    with pytest.raises(mlflow.exceptions.MlflowException, match="more than segdet's limit"):  # a decompression bomb
        ok, png = cv2.imencode(".png", np.zeros((1, 1), np.uint8))
        bomb = bytearray(png.tobytes())
        bomb[16:24] = (20000).to_bytes(4, "big") * 2  # the IHDR width and height: 400 megapixels, never decoded
        bomb[29:33] = zlib.crc32(bytes(bomb[12:29])).to_bytes(4, "big")
        model.predict(pd.DataFrame({"image": [base64.b64encode(bytes(bomb)).decode()]}))


def test_logging_failures_never_fail_the_stage(own_store, tmp_path, monkeypatch):
    with mlflow.start_run(experiment_id=own_store) as run:
        assert serving.log_model(None, "unet", [tmp_path / "missing.pt"], PredictSettings()) is None
    assert MlflowClient().get_run(run.info.run_id).data.tags["segdet.model_logged"] == "false"

    def refuse(*args, **kwargs):
        raise mlflow.exceptions.MlflowException("registry unavailable")

    monkeypatch.setattr(serving, "register_version", refuse)
    with mlflow.start_run(experiment_id=own_store) as run:
        ckpt = unet_checkpoint(tmp_path / "unet.pt", 0.5)
        assert serving.log_model(None, "unet", [ckpt], PredictSettings()) is None
    tags = MlflowClient().get_run(run.info.run_id).data.tags
    assert tags["segdet.model_logged"] == "true" and tags["segdet.model_registered"] == "false"


def test_served_model_loads_where_segdet_is_not_installed(logged, tmp_path):
    """In a Python whose path has no segdet (the installed one taken out), the model runs the copy logged with it."""
    src = str(REPO / "src")
    code = f"""
import sys
sys.path = [p for p in sys.path if p.rstrip('/') != {src!r}]
import importlib.util
assert importlib.util.find_spec('segdet') is None, 'segdet is still importable'
import base64, cv2, mlflow.pyfunc, numpy as np, pandas as pd
m = mlflow.pyfunc.load_model('models:/{NAME}/1')
import segdet
print(segdet.__file__)
ok, buf = cv2.imencode('.png', np.full((20, 30, 3), 90, np.uint8))
out = m.predict(pd.DataFrame({{'image': [base64.b64encode(buf.tobytes()).decode()]}}))
print(int(out.width[0]), int(out.height[0]))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    where, size = res.stdout.strip().splitlines()[-2:]
    assert not where.startswith(src) and "/code/segdet/" in where and size == "30 20"


def _third_party_imports() -> set[str]:
    """Top-level modules outside segdet and the standard library that a served model's code imports: segdet.serving
    and the predictors of every kind, transitively (imports inside functions included)."""
    roots = ["segdet.serving", *(spec.split(":")[0] for spec in serving.LOADERS.values())]
    seen, found, todo = set(), set(), list(roots)
    while todo:
        name = todo.pop()
        path = REPO / "src" / Path(*name.split("."))
        path = path.with_suffix(".py") if path.with_suffix(".py").is_file() else path / "__init__.py"
        if name in seen or not path.is_file():
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for n in names:
                top = n.split(".")[0]
                if top == "segdet":
                    todo.append(n)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.add(top)
    return found


def test_pip_requirements_pin_every_distribution_the_model_imports():
    dists = importlib.metadata.packages_distributions()
    needed = {d.lower() for m in _third_party_imports() if m != "mlflow" for d in dists.get(m, [m])}
    pinned = {r.split("==")[0].lower(): r.split("==")[1] for r in serving.requirements()}
    assert needed <= set(pinned), f"imported but not in serving.REQUIREMENTS: {sorted(needed - set(pinned))}"
    for name, version in pinned.items():
        assert importlib.metadata.version(name).split("+")[0] == version
    assert json.dumps(serving.requirements())  # plain strings


def test_rcnn_validation_figure_is_the_val_map50_of_the_svm_file(tmp_path):
    """R-CNN: ``val_map50`` of ``rcnn_svm.npz`` when it holds one (none before rcnn_svm writes it); UNet and YOLOv1:
    the checkpoint's monitored best value."""
    arrays = {"classes": np.array(["a"]), "score_threshold": np.zeros(1, np.float32)}
    np.savez(tmp_path / "without.npz", **arrays)
    np.savez(tmp_path / "with.npz", **arrays, val_map50=np.float32(0.625))
    cnn = tmp_path / "rcnn_cnn.pt"
    assert serving.validation_figure("rcnn", [cnn, tmp_path / "without.npz"]) is None
    assert serving.validation_figure("rcnn", [cnn, tmp_path / "with.npz"]) == ("val_map50", 0.625)
    assert serving.validation_figure("unet", [unet_checkpoint(tmp_path / "u.pt", 0.75)]) == ("val_dice", 0.75)


def test_voc_map50_is_the_map50_of_the_evaluator():
    """The figure rcnn_svm can store (``evaluate.voc_map50``) is the ``map50`` that evaluate_detections reports."""
    from segdet.detection.evaluate import coco_results, evaluate_detections, voc_map50

    rng = np.random.default_rng(1)
    images, anns, per_image, results = [], [], [], []
    for i in range(1, 6):
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 100, "height": 100})
        for c in (1, 2):
            x, y = rng.uniform(0, 60, 2)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x, y, 30, 30], "area": 900,
                         "iscrowd": 0})
        boxes = torch.tensor([[*a["bbox"][:2], a["bbox"][0] + 30, a["bbox"][1] + 30] for a in anns[-2:]])
        boxes = torch.cat([boxes + torch.from_numpy(rng.normal(0, 4, (2, 4))).float(), boxes[:1] + 40]).clamp(0, 100)
        dets = {"boxes": boxes, "scores": torch.from_numpy(rng.uniform(0, 1, 3)).float(),
                "labels": torch.tensor([1, 2, 2])}
        per_image.append(dets)
        results += coco_results(i, dets["boxes"], dets["scores"], dets["labels"])
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    expected = evaluate_detections(gt, results, 0.5).summary["map50"]
    assert 0 < expected < 1 and voc_map50(gt, per_image) == pytest.approx(expected, abs=1e-12)


def test_voc_map50_on_imperfect_detections_hand_computed():
    """The hand-worked case of tests/detection/test_boxes_and_evaluate.py (a false positive first, a duplicate, a
    detection on a crowd region, a miss): AP@0.5 = 1/3, and 1/12 at IoU 0.9."""
    from segdet.data.formats import coco_to_xyxy
    from segdet.detection.evaluate import voc_map50
    from tests.detection.test_boxes_and_evaluate import _imperfect

    gt, dets = _imperfect()
    per_image = []
    for image in gt["images"]:
        mine = [d for d in dets if d["image_id"] == image["id"]]
        per_image.append({"boxes": torch.tensor([coco_to_xyxy(d["bbox"]) for d in mine], dtype=torch.float32)
                          .reshape(-1, 4),
                          "scores": torch.tensor([d["score"] for d in mine]),
                          "labels": torch.tensor([d["category_id"] for d in mine], dtype=torch.int64)})
    assert voc_map50(gt, per_image) == pytest.approx(1 / 3)
    assert voc_map50(gt, per_image, iou_threshold=0.9) == pytest.approx(1 / 12)
