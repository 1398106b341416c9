"""Experiments land in one place: queued DVC experiments (run in copies under ``.dvc/tmp/exps`` by
``dvc queue start -j 2``) log to the repository's own MLflow store with their experiment names, show in
``dvc exp show``, and ``dvc plots diff`` renders their training curves."""

import json

import pytest
from mlflow.tracking import MlflowClient

from tests.stages.conftest import make_repo, run_queue, sh

pytestmark = pytest.mark.slow

NAMES = {"q-unet32": "unet32", "q-unet64": "unet64"}
NO_URI = {"MLFLOW_TRACKING_URI": None}  # the default store: <repository>/mlflow.db


@pytest.fixture(scope="module")
def queued(tmp_path_factory):
    repo = make_repo(tmp_path_factory.mktemp("queue"))
    for name, variant in NAMES.items():
        sh(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"unet_train.variant={variant}", "unet_eval"], repo,
           env=NO_URI)
    status = run_queue(repo, repo.parent / "queue.log", NO_URI)
    assert status.count("Success") == 2, status + sh(["dvc", "queue", "logs", "q-unet64"], repo, check=False).stdout
    return repo


def test_queued_experiments_show_in_dvc_exp_show(queued):
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], queued).stdout)
    exps = {e["name"]: e for entry in shown for e in (entry.get("experiments") or []) for e in e["revs"]}
    assert set(NAMES) <= set(exps)
    for name, variant in NAMES.items():
        data = exps[name]["data"]
        assert data["params"]["params.yaml"]["data"]["unet_train"]["variant"] == variant
        metrics = data["metrics"]["reports/unet_eval.json"]["data"]
        assert "variant" not in metrics  # text describes the run: reports/unet_eval_info.json, not a metric
        info = sh(["git", "show", f"{exps[name]['rev']}:reports/unet_eval_info.json"], queued).stdout
        assert json.loads(info)["variant"] == variant
        # the metrics DVC shows are those the experiment's unet_eval logged to MLflow
        client = MlflowClient(tracking_uri=f"sqlite:///{queued / 'mlflow.db'}")
        exp = client.get_experiment_by_name("segdet")
        query = f"tags.`segdet.stage` = 'unet_eval' and tags.`segdet.dvc_exp_name` = '{name}'"
        logged = client.search_runs([exp.experiment_id], query)[0].data.metrics
        assert metrics["dice"] == pytest.approx(logged["dice"]) and metrics["iou"] == pytest.approx(logged["iou"])


def test_queued_experiments_log_to_the_repositorys_store_with_their_names(queued):
    client = MlflowClient(tracking_uri=f"sqlite:///{queued / 'mlflow.db'}")
    exp = client.get_experiment_by_name("segdet")
    head = sh(["git", "rev-parse", "HEAD"], queued).stdout.strip()
    groups = {}
    for name, variant in NAMES.items():
        found = client.search_runs([exp.experiment_id], f"tags.`segdet.dvc_exp_name` = '{name}'")
        assert {r.data.tags["segdet.stage"] for r in found} >= {"prepare", "manifest", "unet_train", "unet_eval"}
        assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.source.git.commit"] == head for r in found)
        train = next(r for r in found if r.data.tags["segdet.stage"] == "unet_train")
        assert train.data.params["unet_train.variant"] == variant
        groups[name] = {r.data.tags["segdet.pipeline_run"] for r in found}
    assert all(len(g) == 1 for g in groups.values())  # one grouping id per experiment's pipeline run
    assert groups["q-unet32"] != groups["q-unet64"]


def test_plots_diff_renders_the_training_curves_of_both(queued, tmp_path):
    out = tmp_path / "plots"
    sh(["dvc", "plots", "diff", *NAMES, "-o", str(out)], queued)
    html = (out / "index.html").read_text()
    assert "UNet loss" in html and "UNet validation Dice and IoU" in html
    for name in NAMES:
        assert name in html


def test_experiments_run_side_by_side_share_the_cores(queued):
    """Under ``dvc queue start -j 2`` the first stage of each experiment (both start at once) took half the cores."""
    from segdet.runtime import cores

    client = MlflowClient(tracking_uri=f"sqlite:///{queued / 'mlflow.db'}")
    exp = client.get_experiment_by_name("segdet")
    for name in NAMES:
        query = f"tags.`segdet.stage` = 'prepare' and tags.`segdet.dvc_exp_name` = '{name}'"
        (run,) = client.search_runs([exp.experiment_id], query)
        assert run.data.tags["segdet.cpu_share"] == f"{max(1, cores() // 2)}/{cores()}"
