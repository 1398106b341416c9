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
    assert "mlflow.source.git.commit" in r.data.tags
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
