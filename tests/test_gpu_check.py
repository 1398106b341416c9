"""bench/gpu_check.sh, the GPU check of docs/benchmarks.md: its --dry-run runs every step on CPU (tiny synthetic
data), so the script a GPU session runs is known to work before the GPU time is spent."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.sh"


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run([str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_dry_run_runs_every_check_and_records_the_hardware(dry_run):
    results, table = dry_run
    assert results["dry_run"] is True and "cores" in results["hardware"]
    unet, yolo, rcnn, ddp = results["unet"], results["yolo"], results["rcnn"], results["torchrun"]
    assert unet["processes"] == 1 and unet["epochs"] == 1 and 0 <= unet["best_val_dice"] <= 1
    assert yolo["output_shape"] == [7, 7, 30] and yolo["head"] == "fc"  # the paper's output on 20 classes
    assert yolo["fps_forward_batch1"] > yolo["fps_end_to_end_batch1"] > 0
    assert rcnn["mean_proposals"] > 10 and set(rcnn["seconds_by_part"]) == {
        "selective_search", "warp_cnn", "svm_regression", "nms"}
    assert rcnn["seconds_per_image"] == pytest.approx(sum(rcnn["seconds_by_part"].values()))
    assert ddp["processes"] == 2  # on CPU the torchrun step runs 2 gloo processes
    assert "| YOLOv1 training | small at 224 px, fc head, output 7x7x30" in table and "dry run" in table


def test_without_a_gpu_it_says_so_instead_of_measuring_the_cpu(tmp_path):
    if os.environ.get("CUDA_VISIBLE_DEVICES") != "" and Path("/dev/nvidia0").exists():
        pytest.skip("this machine has a GPU")
    done = subprocess.run([str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=120)
    assert done.returncode == 1
    assert "ERROR: no CUDA device here; bench/gpu_check.sh --dry-run checks the script on CPU" in done.stderr
    assert not (tmp_path / "gpu_check.json").exists()
