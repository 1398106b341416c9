"""A throw-away copy of the project (git + DVC) with tiny synthetic datasets, for running real stages."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from segdet import tracking
from tests.conftest import REPO

#: params for a fast pipeline: a dozen tiny images per dataset, one or two epochs
TINY = {
    "data": {"seg": {"num_images": 12, "image_size": 48}, "det": {"num_images": 12, "image_size": 64, "max_objects": 3}},
    "unet_train": {"input_size": 32, "batch_size": 4, "epochs": 2, "step_size": 1},
    "unet_eval": {"batch_size": 4, "overlays": 2},
    "proposals": {"max_side": 64, "max_proposals": 150},
    "rcnn_finetune": {"crop_size": 24, "context": 2, "batches_per_epoch": 3, "val_batches": 1, "epochs": 2,
                      "fg_per_batch": 8, "bg_per_batch": 24},
    "rcnn_svm": {"rounds": 1, "init_negatives": 200, "max_negatives": 500},
    "rcnn_eval": {"samples": 2},
    "yolo_train": {"input_size": 64, "batch_size": 4, "epochs": 2, "warmup_epochs": 1, "head_channels": 16,
                   "hidden": 32},
    "yolo_eval": {"warmup_images": 1, "samples": 2},
}


def merge(base: dict, over: dict) -> dict:
    """``base`` updated recursively with ``over``."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def sh(cmd: list[str], cwd: Path, check: bool = True, env: dict[str, str | None] | None = None
       ) -> subprocess.CompletedProcess:
    """Run ``cmd`` in ``cwd`` with this venv first on PATH; ``env`` adds variables (``None`` removes one)."""
    env = {**os.environ, **(env or {}), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    env = {k: v for k, v in env.items() if v is not None}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def make_repo(dest: Path, **overrides: dict) -> Path:
    """A git + DVC repository in ``dest`` with this project's stages and TINY params (plus ``overrides``
    per params section, e.g. ``data={"seed": 1}``)."""
    for name in ("stages", "src"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy2(REPO / "dvc.yaml", dest / "dvc.yaml")
    params = merge(merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY), overrides)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".gitignore").write_text("/data/\n/models/\n/mlflow.db\n/mlflow.db.lock\n/mlartifacts/\n")
    sh(["git", "init", "-q"], dest)
    sh([sys.executable, "-m", "dvc", "init", "-q"], dest)
    if (REPO / ".dvc" / "plots").is_dir():  # the custom plot templates dvc.yaml names (template: pr_by_class)
        shutil.copytree(REPO / ".dvc" / "plots", dest / ".dvc" / "plots")
    sh(["git", "add", "-A"], dest)
    sh(["git", "commit", "-qm", "init"], dest)
    return dest


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    return make_repo(tmp_path_factory.mktemp("repo"))


def runs(**tags: str) -> list:
    """MLflow runs of the test store whose ``segdet.<key>`` tags have these values, newest first."""
    exp = MlflowClient().get_experiment_by_name(tracking.EXPERIMENT)
    query = " and ".join(f"tags.`segdet.{k}` = '{v}'" for k, v in tags.items())
    return MlflowClient().search_runs([exp.experiment_id], query)


def queue_start(repo: Path, log: Path, env: dict[str, str | None] | None = None, jobs: int = 2) -> None:
    """``dvc queue start -j <jobs>`` with its output in ``log``.

    Not through :func:`sh`, whose pipes the workers' parent process keeps open until the last worker exits; and a
    worker can stay behind after its task is done (seen with dvc-task 0.40 when the other worker's task empties
    the queue): :func:`stop_leftover_workers` ends it."""
    full = {**os.environ, **(env or {}), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1"}
    with open(log, "wb") as fh:
        out = subprocess.run(["dvc", "queue", "start", "-j", str(jobs)], cwd=repo, stdin=subprocess.DEVNULL, stdout=fh,
                             stderr=subprocess.STDOUT, timeout=300, env={k: v for k, v in full.items() if v is not None})
    assert out.returncode == 0, f"dvc queue start -j {jobs} exited {out.returncode}:\n{log.read_text()}"


def run_queue(repo: Path, log: Path, env: dict[str, str | None] | None = None, jobs: int = 2,
              timeout: float = 900) -> str:
    """:func:`queue_start`, then wait until no experiment is running or queued; returns ``dvc queue status``."""
    queue_start(repo, log, env, jobs)
    deadline = time.time() + timeout
    try:
        while True:
            status = sh(["dvc", "queue", "status"], repo).stdout
            if not any(s in status for s in ("Running", "Queued")):
                return status
            assert time.time() < deadline, status
            time.sleep(3)
    finally:
        stop_leftover_workers(repo)


def stop_leftover_workers(repo: Path) -> None:
    """End the queue workers of ``repo`` still alive 20 s after the queue is done (by their pid files)."""
    def worker(pid: int) -> bool:
        try:
            return b"queue-worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    pids = [int(p.read_text().strip()) for p in (repo / ".dvc/tmp/exps/celery").glob("*.pid")
            if p.read_text().strip().isdigit()]
    deadline = time.time() + 20
    while any(worker(p) for p in pids) and time.time() < deadline:
        time.sleep(0.5)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in (p for p in pids if worker(p)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + 10
        while any(worker(p) for p in pids) and time.time() < deadline:
            time.sleep(0.5)
