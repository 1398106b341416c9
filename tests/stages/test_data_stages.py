"""prepare and manifest run as DVC stages on tiny synthetic data, and log to MLflow."""

import hashlib
import json
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.stages.conftest import make_repo, runs, sh

pytestmark = pytest.mark.slow

SPLITS = ("train", "val", "test")


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()



def test_dvc_repro_writes_manifests_and_logsruns(tiny_repo):
    sh(["dvc", "repro", "manifest"], tiny_repo)
    man = tiny_repo / "data" / "manifests"
    for s in SPLITS:
        for f in (f"seg_{s}.txt", f"det_{s}.txt", f"det_{s}_coco.json"):
            assert (man / f).is_file(), f
    assert (man / "det_classes.txt").read_text().split() == ["circle", "square", "triangle", "star", "cross"]
    lines = (man / "seg_train.txt").read_text().splitlines()
    assert len(lines) == 8  # 12 images, 0.7/0.15/0.15 -> 8/2/2
    image, label = lines[0].split(" ")
    assert image.startswith("data/raw/isic/images/ISIC_") and label.endswith("_segmentation.png")

    prep = runs(stage="prepare")[0]  # newest first
    [mani] = runs(stage="manifest", pipeline_run=prep.data.tags["segdet.pipeline_run"])
    assert prep.info.status == mani.info.status == "FINISHED"
    assert prep.data.params["data.seg.num_images"] == "12"
    assert mani.data.metrics["seg_train_images"] == 8
    coco = json.loads((tiny_repo / "data" / "manifests" / "det_train_coco.json").read_text())
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    for cid, name in cats.items():  # the per-class object counts logged are those of the written ground truth
        assert mani.data.metrics[f"det_train_objects_{name}"] == sum(a["category_id"] == cid for a in coco["annotations"])
    client = MlflowClient()
    assert {a.path for a in client.list_artifacts(prep.info.run_id, "samples")} == {
        "samples/seg_raw.png", "samples/det_raw.png"}
    assert {a.path for a in client.list_artifacts(mani.info.run_id, "samples")} == {
        "samples/seg_train.png", "samples/det_train.png"}

    again = sh(["dvc", "repro", "manifest"], tiny_repo)
    assert "Data and pipelines are up to date" in again.stdout


def test_same_params_give_byte_identical_data_and_seed_changes_it(tiny_repo):
    sh(["dvc", "repro", "manifest"], tiny_repo)
    raw, man = _digest(tiny_repo / "data" / "raw"), _digest(tiny_repo / "data" / "manifests")
    sh(["dvc", "repro", "--force", "manifest"], tiny_repo)
    assert (_digest(tiny_repo / "data" / "raw"), _digest(tiny_repo / "data" / "manifests")) == (raw, man)

    out = sh(["dvc", "exp", "run", "-n", "seed-one", "-S", "data.seed=1", "manifest"], tiny_repo)
    assert "Running stage 'prepare'" in out.stdout and "Running stage 'manifest'" in out.stdout
    assert _digest(tiny_repo / "data" / "raw") != raw
    assert _digest(tiny_repo / "data" / "manifests") != man
    [run] = runs(stage="manifest", dvc_exp_name="seed-one")
    assert run.data.params["data.seed"] == "1"


def test_bad_params_fail_clearly_and_write_nothing(tmp_path):
    repo = make_repo(tmp_path, data={"split": {"train": 2}})
    out = sh([sys.executable, "stages/manifest.py"], repo, check=False)
    assert out.returncode == 1
    assert "ERROR: params.yaml: data.split.train = 2.0 is out of range" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (repo / "data").exists()


def test_bad_source_folder_fails_stage_without_output(tmp_path):
    repo = make_repo(tmp_path, data={"det": {"source": "voc", "path": "no/such/voc"}})
    out = sh(["dvc", "repro", "manifest"], repo, check=False)
    assert out.returncode != 0
    assert "no/such/voc: not a Pascal VOC folder (missing JPEGImages, Annotations/)" in out.stderr + out.stdout
    assert not (repo / "data" / "raw" / "voc").exists()
    assert not (repo / "data" / "manifests").exists()
    failed = [r for r in runs(stage="prepare") if r.data.params.get("data.det.path") == "no/such/voc"]
    assert [r.info.status for r in failed] == ["FAILED"]
