import os
import subprocess
import sys

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


def test_pipeline_run_id_outside_dvc_is_one_per_process(monkeypatch):
    """A stage run by hand is its own pipeline run: the same id within the process, another in the next one."""
    monkeypatch.delenv("SEGDET_PIPELINE_RUN", raising=False)
    assert tracking.pipeline_run_id() == tracking.pipeline_run_id()
    code = "from segdet import tracking; print(tracking.pipeline_run_id())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert len(other) == 16 and other != tracking.pipeline_run_id()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the boot time psutil adds is Linux's /proc/stat")
def test_pipeline_run_id_and_process_start_survive_a_moved_boot_time(monkeypatch):
    """psutil's create_time() adds the boot time of /proc/stat, which follows the wall clock, so it moves for one
    process when the clock is stepped. The id the stages of one ``dvc repro`` share, and the start time that tells
    whether a RUNNING run's process is still there, must not move with it."""
    import psutil

    monkeypatch.delenv("SEGDET_PIPELINE_RUN", raising=False)
    monkeypatch.setattr(tracking, "_dvc_process", lambda: psutil.Process())  # this process plays the dvc parent
    before_id, before_start = tracking.pipeline_run_id(), tracking.process_start(psutil.Process())
    created = psutil.Process().create_time()
    moved = psutil.Process.create_time  # what a stepped clock does to it: the same process, one second later
    monkeypatch.setattr(psutil.Process, "create_time", lambda self: moved(self) + 1.0)
    assert psutil.Process().create_time() == pytest.approx(created + 1.0)
    assert tracking.pipeline_run_id() == before_id  # the id did not move with it
    assert tracking.process_start(psutil.Process()) == before_start
    with open("/proc/sys/kernel/random/boot_id") as fh:  # ticks since boot, and which boot
        assert before_start.startswith("ticks:") and before_start.endswith(f":{fh.read().strip()}")
    assert tracking._alive(str(os.getpid()), before_start)
    assert not tracking._alive(str(os.getpid()), "ticks:1")


def _git_repo(path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    (path / "dvc.yaml").write_text("stages:\n  ev:\n    cmd: python ev.py\n    metrics:\n      - reports/ev.json:\n"
                                   "          cache: false\n    outs:\n      - reports/plots\n")
    (path / "params.yaml").write_text("a: 1\n")
    (path / "code.py").write_text("x = 1\n")
    (path / "reports" / "plots").mkdir(parents=True)
    (path / "reports" / "ev.json").write_text("{}")
    (path / "reports" / "plots" / "p.csv").write_text("a\n")
    subprocess.run([*git, "init", "-q"], cwd=path, check=True)
    subprocess.run([*git, "add", "-A"], cwd=path, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=path, check=True)


def test_git_dirty_counts_edited_code_but_not_what_a_pipeline_run_writes(tmp_path):
    _git_repo(tmp_path)
    assert tracking.git_dirty(tmp_path) == []
    (tmp_path / "params.yaml").write_text("a: 2\n")  # dvc exp run -S writes it
    (tmp_path / "reports" / "ev.json").write_text('{"x": 1}')  # a metrics output kept in git
    (tmp_path / "reports" / "plots" / "p.csv").write_text("b\n")  # inside an output folder
    assert tracking.git_dirty(tmp_path) == []
    (tmp_path / "code.py").write_text("x = 2\n")
    assert tracking.git_dirty(tmp_path) == ["code.py"]
    assert tracking.git_dirty(tmp_path / "nowhere") is None


def _store_runs(query):
    exp = MlflowClient().get_experiment_by_name(tracking.EXPERIMENT)
    return MlflowClient().search_runs([exp.experiment_id], query, order_by=["attributes.start_time ASC"])


def test_stage_runs_of_one_pipeline_run_nest_under_one_parent_that_follows_their_status(monkeypatch, tmp_path):
    _git_repo(tmp_path)
    monkeypatch.setenv("SEGDET_PIPELINE_RUN", "pipe-nest")
    monkeypatch.setenv("DVC_EXP_NAME", "tidy-owl")
    with tracking.stage_run("t_first", {"a": 1}, root=tmp_path) as first:
        pass
    (tmp_path / "code.py").write_text("x = 3\n")  # edited before the second stage
    with pytest.raises(RuntimeError):
        with tracking.stage_run("t_second", root=tmp_path) as second:
            [parent] = _store_runs("tags.`segdet.pipeline_run` = 'pipe-nest' and tags.`segdet.stage` = 'pipeline'")
            assert parent.info.status == "RUNNING"  # reopened while a stage runs
            raise RuntimeError("stage failed")
    [parent] = _store_runs("tags.`segdet.pipeline_run` = 'pipe-nest' and tags.`segdet.stage` = 'pipeline'")
    assert parent.info.run_name == "pipeline [tidy-owl]"
    assert parent.info.status == "FAILED"  # the last stage failed
    assert first.parent_run_id == second.parent_run_id == parent.info.run_id
    nested = _store_runs(f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert [(r.data.tags["segdet.stage"], r.info.status) for r in nested] == [("t_first", "FINISHED"),
                                                                             ("t_second", "FAILED")]
    assert nested[0].data.tags["segdet.git_dirty"] == "false"
    assert nested[1].data.tags["segdet.git_dirty"] == "true"
    assert nested[1].data.tags["segdet.git_dirty_files"] == "code.py"


def test_record_pipeline_gives_every_pipeline_run_a_parent_with_all_params_and_metrics(monkeypatch, tmp_path):
    """DVC restored every stage, so no stage code ran: the track stage still creates the parent run."""
    _git_repo(tmp_path)
    monkeypatch.setenv("SEGDET_PIPELINE_RUN", "pipe-restored")
    params = {f"s{i}.k{j}": i * j for i in range(12) for j in range(12)}  # 144: more than one MLflow batch
    params["unet_train.lr"] = 0.001
    info = tracking.record_pipeline(params, {"unet_eval.dice": 0.93, "rcnn_eval.map50": 0.71}, ["a", "b"],
                                    root=tmp_path)
    [parent] = _store_runs("tags.`segdet.pipeline_run` = 'pipe-restored'")
    assert info["parent_run_id"] == parent.info.run_id and parent.info.status == "FINISHED"
    assert parent.data.params["unet_train.lr"] == "0.001" and len(parent.data.params) == 145
    assert parent.data.metrics == {"unet_eval.dice": 0.93, "rcnn_eval.map50": 0.71}
    assert info["stage_runs"] == {} and info["restored_stages"] == ["a", "b"]
    assert parent.data.tags["segdet.stages_restored"] == "a b"
    # a pipeline run whose stages ran: their runs are listed, the parent keeps one value per param
    monkeypatch.setenv("SEGDET_PIPELINE_RUN", "pipe-ran")
    with tracking.stage_run("a", root=tmp_path) as ran:
        pass
    info = tracking.record_pipeline({"unet_train.lr": 0.002}, {}, ["a", "b"], root=tmp_path)
    assert info["stage_runs"] == {"a": ran.run_id} and info["restored_stages"] == ["b"]
    assert info["parent_run_id"] == ran.parent_run_id
    assert MlflowClient().get_run(ran.parent_run_id).data.params == {"unet_train.lr": "0.002"}


def test_checkpoints_logged_every_epoch_resume_through_a_runs_uri(tmp_path):
    """The resume state goes to MLflow as resume/last.pt and resume/best.pt; ``local_weights`` brings both back."""
    from segdet.stage import UserError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with tracking.stage_run("t_resume", root=tmp_path) as run:
        on_epoch = run.epoch_logger(tmp_path / "plots.csv", run_dir)
        (run_dir / "last.pt").write_bytes(b"epoch-1")
        (run_dir / "best.pt").write_bytes(b"best-1")
        on_epoch([{"epoch": 1, "train_loss": 1.0}])
        (run_dir / "last.pt").write_bytes(b"epoch-2")
        on_epoch([{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.5}])
    uri = f"runs:/{run.run_id}/resume/last.pt"
    with tracking.local_weights(uri, "unet_train.weights", root=tmp_path) as path:
        assert open(path, "rb").read() == b"epoch-2"
        assert open(path.replace("last.pt", "best.pt"), "rb").read() == b"best-1"
    with tracking.local_weights("models/x.pt", "k") as path:
        assert path == "models/x.pt"  # a local path is left as it is
    with pytest.raises(UserError, match=r"unet_train.weights = runs:/.*/resume/nope.pt: no file 'nope.pt'"):
        with tracking.local_weights(f"runs:/{run.run_id}/resume/nope.pt", "unet_train.weights", root=tmp_path):
            pass
    with pytest.raises(UserError, match="yolo_train.weights = runs:/0123456789abcdef/resume/last.pt: cannot download"):
        with tracking.local_weights("runs:/0123456789abcdef/resume/last.pt", "yolo_train.weights", root=tmp_path):
            pass


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


def test_a_repeated_workspace_repro_that_changed_nothing_keeps_its_parent_run(monkeypatch, tmp_path):
    """``dvc repro`` twice with nothing to do: one parent run, and reports/mlflow.json (so dvc.lock) unchanged. A
    changed metric, or a DVC experiment, gets a parent run of its own."""
    _git_repo(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.setenv("SEGDET_PIPELINE_RUN", "rerun-first")
    first = tracking.record_pipeline({"a.b": 1}, {"ev.dice": 0.5}, ["ev"], root=tmp_path)
    monkeypatch.setenv("SEGDET_PIPELINE_RUN", "rerun-again")
    assert tracking.record_pipeline({"a.b": 1}, {"ev.dice": 0.5}, ["ev"], root=tmp_path, previous=first) == first
    monkeypatch.setenv("SEGDET_PIPELINE_RUN", "rerun-changed")
    changed = tracking.record_pipeline({"a.b": 1}, {"ev.dice": 0.6}, ["ev"], root=tmp_path, previous=first)
    assert changed["parent_run_id"] != first["parent_run_id"]
    monkeypatch.setenv("SEGDET_PIPELINE_RUN", "rerun-exp")
    monkeypatch.setenv("DVC_EXP_NAME", "same-as-workspace")
    exp = tracking.record_pipeline({"a.b": 1}, {"ev.dice": 0.6}, ["ev"], root=tmp_path, previous=changed)
    assert exp["parent_run_id"] != changed["parent_run_id"] and exp["dvc_exp_name"] == "same-as-workspace"
    assert len(_store_runs("tags.`segdet.stage` = 'pipeline' and tags.`segdet.pipeline_run` LIKE 'rerun-%'")) == 3
