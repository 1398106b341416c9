import subprocess

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from segdet import tracking
from segdet.runtime import repo_root


def _runs(stage):
    exp = MlflowClient().get_experiment_by_name(tracking.EXPERIMENT)
    return MlflowClient().search_runs([exp.experiment_id], f"tags.`segdet.stage` = '{stage}'")


def test_stage_run_logs_params_metrics_tags_and_artifacts(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGDET_PIPELINE_RUN", "pipe-123")
    monkeypatch.setenv("DVC_EXP_NAME", "bushy-hare")
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=tmp_path, check=True)
    with tracking.stage_run("t_logs", {"data.seed": 3, "data.seg.path": None}, root=tmp_path) as run:
        run.log_metrics({"images": 12}, step=0)
        run.log_metrics({"images": 13}, step=1)
        run.log_image(np.zeros((8, 8, 3), np.uint8), "samples/sheet.png")
    [r] = _runs("t_logs")
    assert r.info.status == "FINISHED"
    assert r.data.params == {"data.seed": "3", "data.seg.path": "null"}
    assert r.data.tags["segdet.pipeline_run"] == "pipe-123"
    assert r.data.tags["segdet.dvc_exp_name"] == "bushy-hare"
    assert r.data.tags["segdet.device"] == "cpu"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert r.data.tags["mlflow.source.git.commit"] == head
    history = MlflowClient().get_metric_history(r.info.run_id, "images")
    assert [(m.step, m.value) for m in history] == [(0, 12.0), (1, 13.0)]
    assert [a.path for a in MlflowClient().list_artifacts(r.info.run_id, "samples")] == ["samples/sheet.png"]
    # artifacts of a SQLite store live beside the database, never in the working directory
    assert r.info.artifact_uri.startswith("file://")
    assert str(tmp_path) not in r.info.artifact_uri


def test_failed_stage_marks_run_failed():
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.stage_run("t_fail"):
            raise RuntimeError("boom")
    [r] = _runs("t_fail")
    assert r.info.status == "FAILED"
    assert mlflow.active_run() is None


def test_repo_root_of_a_dvc_experiment_copy_is_the_users_repository(tmp_path):
    (tmp_path / ".dvc").mkdir()
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "tmpab12" / "stages"
    copy.mkdir(parents=True)
    assert repo_root(copy) == tmp_path
    assert repo_root(tmp_path / ".dvc" / "tmp") == tmp_path


def test_default_store_is_mlflow_db_in_repository_root(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / ".git").mkdir()
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    assert tracking.tracking_uri(sub) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(sub) == "http://127.0.0.1:5000"


def test_pipeline_run_id_outside_dvc_is_fresh(monkeypatch):
    monkeypatch.delenv("SEGDET_PIPELINE_RUN", raising=False)
    assert tracking.pipeline_run_id() != tracking.pipeline_run_id()


def test_a_run_whose_process_is_gone_is_marked_killed_by_the_next_stage_run(tmp_path):
    """SIGKILL or the out-of-memory killer leave a run RUNNING; the next stage run on this host ends it. A run whose
    process is alive (same pid and start time) or that ran on another host is left alone."""
    import socket

    import psutil

    client = MlflowClient()
    exp = client.get_experiment_by_name(tracking.EXPERIMENT) or client.get_experiment(
        client.create_experiment(tracking.EXPERIMENT))
    me = psutil.Process()
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    made = {}
    for name, tags in {
        "gone": {"segdet.host": host, "segdet.pid": str(dead.pid), "segdet.pid_start": "1.000"},
        "alive": {"segdet.host": host, "segdet.pid": str(me.pid), "segdet.pid_start": f"{me.create_time():.3f}"},
        "pid reused": {"segdet.host": host, "segdet.pid": str(me.pid), "segdet.pid_start": "2.000"},
        "elsewhere": {"segdet.host": "other-host", "segdet.pid": "1", "segdet.pid_start": "1.000"},
    }.items():
        made[name] = client.create_run(exp.experiment_id, tags={"segdet.stage": "t_orphan", **tags}).info.run_id
    with tracking.stage_run("t_next", root=tmp_path):
        pass
    status = {name: client.get_run(run_id).info.status for name, run_id in made.items()}
    assert status == {"gone": "KILLED", "alive": "RUNNING", "pid reused": "KILLED", "elsewhere": "RUNNING"}
    assert "process was gone" in client.get_run(made["gone"]).data.tags["segdet.ended_by"]
    for name in ("alive", "elsewhere"):
        client.set_terminated(made[name], "FINISHED")
