"""The MLflow UI for real: a tracking server with a SQLite store, two DVC experiments logged to it, checked
through the REST API and then in headless Chromium on the runs-compare page (``make test`` installs Chromium).

The screenshot is a test artifact: ``$SEGDET_TEST_ARTIFACTS`` (``.ci/run`` sets it) or pytest's temporary folder.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.stages.conftest import make_repo, sh

pytestmark = pytest.mark.slow

EXPERIMENTS = {"lr-high": "0.01", "lr-low": "0.0005"}


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
def experiments(server, tmp_path_factory):
    """Two ``dvc exp run`` experiments of ``unet_train`` with different learning rates, logged to the server."""
    repo = make_repo(tmp_path_factory.mktemp("ui_repo"))
    for name, lr in EXPERIMENTS.items():
        sh(["dvc", "exp", "run", "-n", name, "-S", f"unet_train.lr={lr}", "unet_train"], repo,
           env={"MLFLOW_TRACKING_URI": server})
    exp = _get(server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="segdet")["experiment"]
    found = _post(server, "/api/2.0/mlflow/runs/search", {
        "experiment_ids": [exp["experiment_id"]], "filter": "tags.`segdet.stage` = 'unet_train'"})["runs"]
    return exp["experiment_id"], found


def _tags(run: dict) -> dict:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def test_rest_api_has_both_runs_with_params_metrics_and_artifacts(server, experiments):
    _, found = experiments
    by_name = {_tags(r)["segdet.dvc_exp_name"]: r for r in found}
    assert set(by_name) == set(EXPERIMENTS)
    for name, lr in EXPERIMENTS.items():
        run = by_name[name]
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert float(params["unet_train.lr"]) == float(lr)
        assert run["info"]["status"] == "FINISHED" and len(_tags(run)["mlflow.source.git.commit"]) == 40
        history = _get(server, "/api/2.0/mlflow/metrics/get-history", run_id=run["info"]["run_id"],
                       metric_key="train_loss")["metrics"]
        assert sorted(m["step"] for m in history) == [1, 2]  # one value per epoch, with its step
        files = {f["path"] for f in _get(server, "/api/2.0/mlflow/artifacts/list", run_id=run["info"]["run_id"])
                 .get("files", [])}
        assert {"unet_train.csv", "checkpoint"} <= files and _tags(run)["segdet.model_logged"] == "true"
    losses = {name: by_name[name]["data"]["metrics"] for name in EXPERIMENTS}
    assert losses["lr-high"] != losses["lr-low"]  # different params, different results


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("Chromium is not installed: `make browser` (Debian package chromium) installs it; `make test` "
                "does that first")


def test_runs_compare_page_shows_both_runs_in_chromium(server, experiments, tmp_path):
    exp_id, found = experiments
    ids = [r["info"]["run_id"] for r in found]
    names = [r["info"]["run_name"] for r in found]
    query = f"runs={json.dumps(ids)}&experiments={json.dumps([exp_id])}"
    page = f"{server}/#/compare-runs?{urllib.parse.quote(query, safe='=&')}"
    out = Path(os.environ.get("SEGDET_TEST_ARTIFACTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "mlflow_compare_runs.png"
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1600,1000", "--virtual-time-budget=30000", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
    for run_id, name in zip(ids, names, strict=True):
        assert name in dom, f"run {name} ({run_id}) not on the compare page"
    assert "unet_train.lr" in dom  # the parameter that differs is in the comparison table
    subprocess.run([*base, f"--screenshot={shot}", page], capture_output=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
