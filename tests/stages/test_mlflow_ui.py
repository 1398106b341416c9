"""The MLflow UI for real: a tracking server with a SQLite store, a grid of two queued DVC experiments logged to
it (one parent run each, the stage runs nested), checked through the REST API and then in headless Chromium on
the runs-compare page of the two parents (``make test`` installs Chromium).

The screenshot is a test artifact: ``$SEGDET_TEST_ARTIFACTS`` (``.ci/run`` sets it) or pytest's temporary folder.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.stages.conftest import run_queue, sh

pytestmark = pytest.mark.slow



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, path: str, **query) -> dict:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(query)}", timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(f"{url}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 with a SQLite store and served artifacts."""
    folder = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    log = open(folder / "server.log", "w")  # noqa: SIM115 - open for the server's lifetime
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", str(folder / "art")],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start:\n{(folder / 'server.log').read_text()[-3000:]}")
        time.sleep(1)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def experiments(server, pipeline_repo, tmp_path_factory):
    """A grid of two queued experiments in DVC's own syntax over the UNet's learning rate, logged to the server.
    One value is the workspace's, already run by ``dvc repro``, so DVC runs no stage code for it (only the
    ``always_changed`` track stage); the other reruns the UNet stages. Returns the experiment id, the parent runs
    by DVC experiment name, and the learning rate of each."""
    repo = tmp_path_factory.mktemp("ui") / "repo"
    shutil.copytree(pipeline_repo, repo, symlinks=True)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "the workspace's pipeline run"], repo)  # the baseline holds its results
    lr = yaml.safe_load((repo / "params.yaml").read_text())["unet_train"]["lr"]
    sh(["dvc", "exp", "run", "--queue", "-S", f"unet_train.lr={lr},{lr * 2}"], repo)
    status = run_queue(repo, repo.parent / "queue.log", {"MLFLOW_TRACKING_URI": server}, jobs=1)
    assert status.count("Success") == 2, status + (repo.parent / "queue.log").read_text()[-3000:]
    exp = _get(server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="segdet")["experiment"]
    parents = _post(server, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [exp["experiment_id"]], "filter": "tags.`segdet.stage` = 'pipeline'"})["runs"]
    by_name = {_tags(r)["segdet.dvc_exp_name"]: r for r in parents}
    assert len(by_name) == len(parents) == 2, [r["info"]["run_name"] for r in parents]  # one parent each
    rates = {name: float(_params(run)["unet_train.lr"]) for name, run in by_name.items()}
    return exp["experiment_id"], by_name, rates, lr, repo


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _params(run: dict) -> dict:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def _nested(server: str, exp_id: str, parent: dict) -> list[dict]:
    return _post(server, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [exp_id], "filter": f"tags.`mlflow.parentRunId` = '{parent['info']['run_id']}'"}
    ).get("runs", [])


def _exp_file(repo, name: str, path: str) -> dict:
    """``path`` (a JSON or YAML file kept in git) as experiment ``name`` committed it."""
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], repo).stdout)
    revs = {e["name"]: e["rev"] for entry in shown for e in (entry.get("experiments") or []) for e in e["revs"]}
    return yaml.safe_load(sh(["git", "show", f"{revs[name]}:{path}"], repo).stdout)


def _ran_by_dvc(repo, name: str) -> set[str]:
    """The stages DVC ran for experiment ``name``: those whose dvc.lock entry differs from the baseline's
    (``track`` runs every time)."""
    base = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    exp = _exp_file(repo, name, "dvc.lock")["stages"]
    return {stage for stage, entry in exp.items() if stage != "track" and entry != base.get(stage)}


def test_each_experiment_has_one_parent_run_with_the_parameter_the_test_dice_and_the_stages_that_ran(
        server, experiments, pipeline_repo):
    exp_id, parents, rates, lr, repo = experiments
    assert sorted(rates.values()) == [lr, lr * 2]
    workspace = json.loads((pipeline_repo / "reports" / "unet_eval.json").read_text())
    for name, parent in parents.items():
        assert parent["info"]["status"] == "FINISHED"
        metrics = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
        assert {"unet_eval.dice", "rcnn_eval.map50", "yolo_eval.map50"} <= set(metrics)
        own = _exp_file(repo, name, "reports/unet_eval.json")  # the test Dice this experiment committed
        assert metrics["unet_eval.dice"] == pytest.approx(own["dice"])
        assert len(_params(parent)) > 100  # all of params.yaml, not one section
        nested = _nested(server, exp_id, parent)
        ran = {_tags(r)["segdet.stage"] for r in nested}
        assert ran == set(_tags(parent)["segdet.stages_run"].split()) - {"none"}
        assert all(r["info"]["status"] == "FINISHED" for r in nested)
        assert ran == _ran_by_dvc(repo, name)  # the nested runs are the stages DVC ran, no more, no less
        if rates[name] == lr:  # DVC restored every stage: no stage code ran, the parent still holds it all
            assert ran == set() and own == workspace
        else:  # the stages downstream of the changed parameter ran (report too when its inputs changed)
            assert {"unet_train", "unet_eval"} <= ran <= {"unet_train", "unet_eval", "report"}
            train = next(r for r in nested if _tags(r)["segdet.stage"] == "unet_train")
            assert float(_params(train)["unet_train.lr"]) == lr * 2
            history = _get(server, "/api/2.0/mlflow/metrics/get-history", run_id=train["info"]["run_id"],
                           metric_key="train_loss")["metrics"]
            assert sorted(m["step"] for m in history) == [1, 2]  # one value per epoch, with its step
            files = {f["path"] for f in _get(server, "/api/2.0/mlflow/artifacts/list",
                                             run_id=train["info"]["run_id"]).get("files", [])}
            assert {"unet_train.csv", "checkpoint", "resume"} <= files


def test_each_experiment_records_its_mlflow_run_ids_in_a_dvc_output(experiments):
    """The DVC -> MLflow link: reports/mlflow.json of each experiment commit names its parent run."""
    _, parents, _, _, repo = experiments
    for name, parent in parents.items():
        info = _exp_file(repo, name, "reports/mlflow.json")
        assert info["parent_run_id"] == parent["info"]["run_id"] and info["dvc_exp_name"] == name


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("Chromium is not installed: `make browser` (Debian package chromium) installs it; `make test` "
                "does that first")


def test_runs_compare_page_plots_the_parameter_against_the_test_dice_in_chromium(server, experiments, tmp_path):
    exp_id, parents, _, _, _ = experiments
    ids = [r["info"]["run_id"] for r in parents.values()]
    names = [r["info"]["run_name"] for r in parents.values()]
    query = f"runs={json.dumps(ids)}&experiments={json.dumps([exp_id])}"
    page = f"{server}/#/compare-runs?{urllib.parse.quote(query, safe='=&')}"
    out = Path(os.environ.get("SEGDET_TEST_ARTIFACTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "mlflow_compare_runs.png"
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1600,1000", "--virtual-time-budget=30000", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
    for run_id, name in zip(ids, names, strict=True):
        assert name in dom, f"parent run {name} ({run_id}) not on the compare page"
    # the parallel-coordinates plot (Plotly) drawn, with an axis for the parameter and one for the test metric:
    # not only their names in the page's tables
    assert "js-plotly-plot" in dom
    for axis in ("unet_train.lr", "unet_eval.dice"):
        assert re.search(rf'<text class="axis-title"[^>]*>{re.escape(axis)}</text>', dom), f"no plot axis {axis}"
    subprocess.run([*base, f"--screenshot={shot}", page], capture_output=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
