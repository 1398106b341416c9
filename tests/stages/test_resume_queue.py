"""A queued experiment that is killed resumes from its own checkpoint. DVC removes the killed experiment's
temporary copy of the repository (and its ``models/unet_run/``) with it; the training run logged its resume
state to MLflow after every epoch, so ``-S unet_train.weights=runs:/<run id>/resume/last.pt`` continues it."""

import io
import json
import time

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.stages.conftest import make_repo, queue_start, sh, stop_leftover_workers

pytestmark = pytest.mark.slow

NO_URI = {"MLFLOW_TRACKING_URI": None}  # the repository's own store, also for the queue's copies


def _wait_queue(repo, name: str, want: str, deadline: float) -> str:
    while True:
        status = sh(["dvc", "queue", "status"], repo).stdout
        line = next((ln for ln in status.splitlines() if name in ln.split()), "")
        if want in line:
            return status
        assert time.time() < deadline, status
        time.sleep(2)


def test_a_killed_queued_experiment_resumes_from_its_own_checkpoint(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("resume"))
    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")  # where the queue's copies log
    sh(["dvc", "exp", "run", "--queue", "-n", "long", "-S", "unet_train.epochs=500", "unet_train"], repo, env=NO_URI)
    queue_start(repo, repo.parent / "queue1.log", NO_URI, jobs=1)
    deadline = time.time() + 600
    try:
        while True:  # until the training run has logged a resume checkpoint
            exp = client.get_experiment_by_name("segdet")
            runs = client.search_runs([exp.experiment_id], "tags.`segdet.stage` = 'unet_train' and "
                                      "tags.`segdet.dvc_exp_name` = 'long'") if exp else []
            if runs and any(a.path == "resume/last.pt" for a in client.list_artifacts(runs[0].info.run_id, "resume")):
                break
            assert time.time() < deadline, (repo.parent / "queue1.log").read_text()[-3000:]
            time.sleep(1)
        sh(["dvc", "queue", "kill", "long"], repo)
        _wait_queue(repo, "long", "Failed", time.time() + 300)
    finally:
        stop_leftover_workers(repo)
    killed = client.get_run(runs[0].info.run_id)
    assert killed.info.status in ("KILLED", "FAILED")
    run_id = killed.info.run_id
    ckpt = torch.load(io.BytesIO(open(client.download_artifacts(run_id, "resume/last.pt", str(repo.parent)), "rb")
                                 .read()), map_location="cpu", weights_only=True)
    done = int(ckpt["epoch"])
    assert 1 <= done < 500
    before = {m.step: m.value for m in client.get_metric_history(run_id, "train_loss")}

    sh(["dvc", "exp", "run", "--queue", "-n", "long-resumed", "-S", f"unet_train.epochs={done + 2}",
        "-S", f"unet_train.weights=runs:/{run_id}/resume/last.pt", "unet_train"], repo, env=NO_URI)
    queue_start(repo, repo.parent / "queue2.log", NO_URI, jobs=1)
    try:
        _wait_queue(repo, "long-resumed", "Success", time.time() + 600)
    finally:
        stop_leftover_workers(repo)
    [resumed] = client.search_runs([killed.info.experiment_id], "tags.`segdet.stage` = 'unet_train' and "
                                   "tags.`segdet.dvc_exp_name` = 'long-resumed'")
    assert resumed.info.status == "FINISHED"
    assert resumed.data.params["unet_train.weights"] == f"runs:/{run_id}/resume/last.pt"
    # the resumed run trained only the epochs after the checkpoint ...
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "train_loss")] == [done + 1, done + 2]
    # ... and its per-epoch CSV carries the killed run's epochs, as that run logged them
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo).stdout)
    revs = {e["name"]: e["rev"] for entry in shown for e in (entry.get("experiments") or []) for e in e["revs"]}
    csv = pd.read_csv(io.StringIO(sh(["git", "show", f"{revs['long-resumed']}:reports/unet_train.csv"], repo).stdout))
    assert list(csv["epoch"]) == list(range(1, done + 3))
    for epoch in range(1, done + 1):
        assert csv.loc[csv["epoch"] == epoch, "train_loss"].item() == pytest.approx(before[epoch], rel=1e-5)
