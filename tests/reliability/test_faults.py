"""Faults survived, for every training stage: SIGKILL mid-epoch and in the middle of a checkpoint write (the last
checkpoint stays loadable, the resumed run ends with the weights of an uninterrupted one, the killed MLflow run is
marked KILLED), a full disk and a read-only output folder (a clear error, the previous outputs intact). Full disks
and read-only folders are made with a private mount namespace (``unshare -rm``), so nothing outside the test sees
them."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.reliability.conftest import EXPERIMENT, Outcome, assert_clean_failure, now_ms, snapshot, write_params
from tests.stages.conftest import sh

pytestmark = pytest.mark.usefixtures("own_experiment")

FAULT = Path(__file__).with_name("fault_injection.py")
RUN_DIRS = {"unet_train": "models/unet_run", "rcnn_finetune": "models/rcnn_run", "yolo_train": "models/yolo_run"}
PLOTS = {"unet_train": "reports/unet_train.csv", "rcnn_finetune": "reports/rcnn_finetune.csv",
         "yolo_train": "reports/yolo_train.csv"}


@pytest.fixture(scope="module")
def ws(workspace, tmp_path_factory) -> Path:
    """A copy of the workspace that these tests may train in (the matrix checks the original stays unchanged)."""
    copy = tmp_path_factory.mktemp("faults") / "ws"
    shutil.copytree(workspace, copy, symlinks=True)
    return copy


def _run(ws: Path, stage: str, params: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    inject = [str(FAULT), fault] if fault else []
    return sh([sys.executable, *inject, f"stages/{stage}.py", "--params", str(params)], ws, check=False)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _stage_runs(stage: str, since_ms: int) -> list:
    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    query = f"tags.`segdet.stage` = '{stage}' and attributes.start_time >= {since_ms}"
    return client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time ASC"])


@pytest.mark.parametrize("stage", list(RUN_DIRS))
def test_a_killed_training_run_resumes_to_the_weights_of_an_uninterrupted_one(ws, tmp_path, stage):
    run_dir = ws / RUN_DIRS[stage]
    fresh = write_params(ws, tmp_path / "fresh.yaml")  # the workspace's own params
    resume = write_params(ws, tmp_path / "resume.yaml", **{stage: {"weights": f"{RUN_DIRS[stage]}/last.pt"}})
    since = now_ms()
    # the uninterrupted run: the one `dvc repro` made of the workspace, with these params
    reference = _weights(run_dir / "last.pt")
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 2

    for fault in ("mid-epoch", "checkpoint-write"):
        killed = _run(ws, stage, fresh, fault)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        last = torch.load(run_dir / "last.pt", weights_only=True)  # loadable, and the epoch before the kill
        assert last["epoch"] == 1
        assert not all(torch.equal(last["model"][k], reference[k]) for k in reference)
        if fault == "checkpoint-write":
            assert len(list(run_dir.glob(".last.pt.tmp-*"))) == 1  # the cut write, beside the intact last.pt
        # the run before the killed one (uninterrupted, then resumed: the same weights) is kept for resuming
        kept = _weights(run_dir / "previous" / "last.pt")
        assert all(torch.equal(kept[k], reference[k]) for k in reference)

        resumed = _run(ws, stage, resume)
        assert resumed.returncode == 0, resumed.stderr
        assert "resumed from" in resumed.stderr and "after epoch 1" in resumed.stderr
        got = _weights(run_dir / "last.pt")
        assert got.keys() == reference.keys()
        assert all(torch.equal(got[k], reference[k]) for k in reference), f"{stage} after {fault}: weights differ"
        assert not list(run_dir.glob(".*.tmp-*"))

    statuses = [r.info.status for r in _stage_runs(stage, since)]
    assert statuses == ["KILLED", "FINISHED", "KILLED", "FINISHED"]
    killed_runs = [r for r in _stage_runs(stage, since) if r.info.status == "KILLED"]
    assert all("process was gone" in r.data.tags["segdet.ended_by"] for r in killed_runs)


def _in_namespace(ws: Path, mount: str, stage: str, params: Path, folder: str) -> tuple[Outcome, str]:
    """Run the stage in ``ws`` inside a private mount namespace after ``mount`` (shell); returns its outcome and what
    ``folder`` holds when it has ended (seen from inside the namespace)."""
    script = (f"{mount} || exit 99; {sys.executable} stages/{stage}.py --params {params}; rc=$?; "
              f"echo \"left:$(ls -A {folder} | tr '\\n' ' ')\"; exit $rc")
    out = sh(["unshare", "-rm", "sh", "-c", script], ws, check=False)
    assert out.returncode != 99, f"cannot mount in a private namespace (unshare -rm): {out.stderr}"
    left = out.stdout.rsplit("left:", 1)[-1].strip()
    return Outcome(out.returncode, out.stderr, out.stdout), left


@pytest.mark.parametrize("stage", list(RUN_DIRS))
def test_a_read_only_output_folder_stops_the_stage_before_any_work(ws, tmp_path, stage):
    params = write_params(ws, tmp_path / "p.yaml")
    before, since = snapshot(ws), now_ms()
    mount = "mount --bind reports reports && mount -o remount,ro,bind reports"
    out, _ = _in_namespace(ws, mount, stage, params, "reports")
    message = assert_clean_failure(ws, out, before, since, [f"cannot write {PLOTS[stage]}: Read-only file system",
                                                            "make the folder writable"])
    assert "epoch 1" not in out.stderr  # it stopped before training
    assert "previous run are unchanged" in message


@pytest.mark.parametrize("stage", list(RUN_DIRS))
def test_a_full_disk_gives_a_clear_error_and_no_partial_checkpoint(ws, tmp_path, stage):
    params = write_params(ws, tmp_path / "p.yaml")
    run_dir = RUN_DIRS[stage]
    before, since = snapshot(ws), now_ms()
    out, left = _in_namespace(ws, f"mount -t tmpfs -o size=64k tmpfs {run_dir}", stage, params, run_dir)
    assert_clean_failure(ws, out, before, since, [f"cannot write {run_dir}/", "No space left on device",
                                                  "free some space"])
    assert left == ""  # no partial best.pt / last.pt, no temporary file
