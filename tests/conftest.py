"""Shared fixtures. No test writes into the repository's mlflow.db: MLflow points at a temporary store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"

#: test files run by one xdist worker one after the other (``make test`` runs ``pytest -n N --dist loadfile``):
#: these start DVC queue workers or count them on the whole machine (segdet.runtime.queue_workers), so two of them
#: at once on different workers would see each other's
SERIAL = ("stages/test_experiments.py", "stages/test_mlflow_ui.py", "stages/test_resume_queue.py",
          "reliability/test_concurrency.py", "test_machine_share.py")
#: the files whose fixtures run whole pipelines, about longest first: handed out first, so no worker is left with
#: a long one at the end while the other idles. The files that share ``pipeline_repo`` keep their relative order
#: (test_detection_stages.py leaves a YOLOv1 of its own in it: test_faults.py, which resumes the pipeline's
#: training runs, comes before)
LONGEST_FIRST = ("dvc-queue", "reliability/test_bad_input.py", "reliability/test_faults.py",
                 "stages/test_distributed_stages.py", "serving/test_serve.py", "stages/test_detection_stages.py",
                 "stages/test_dvc_tidy.py", "stages/test_unet_stages.py")


def pytest_configure(config):
    """Under xdist, each of N workers gives the stage processes it starts 1/N of the cores (``OMP_NUM_THREADS``),
    so N workers do not run N x cores PyTorch threads on the cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        from segdet.runtime import cores

        threads = max(1, cores() // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


def _group(nodeid: str) -> str:
    """The unit of work a test belongs to under xdist: its file, or ``dvc-queue`` for the :data:`SERIAL` files."""
    file = nodeid.split("::", 1)[0].removeprefix("tests/")
    return "dvc-queue" if file in SERIAL else file


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` (``make test``), with the :data:`SERIAL` files one unit of work: each file's module
    fixtures run once, on one worker."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduler(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid)

    return Scheduler(config, log)


def pytest_collection_modifyitems(config, items):
    """In an xdist worker, the :data:`LONGEST_FIRST` units first (each file's own test order kept): with
    ``--no-loadscope-reorder`` the scheduler hands them out in this order."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    rank = {g: i for i, g in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda it: rank.get(_group(it.nodeid), len(rank)))  # stable: the order within a unit stays


def stage_script(cmd: str) -> tuple[str, list[str]]:
    """The script of a dvc.yaml stage command and the arguments after it (training stages start as
    ``python -m segdet.launch ${base.nproc_per_node} stages/x.py``, the others as ``python stages/x.py``)."""
    words = cmd.split()
    at = next(i for i, w in enumerate(words) if w.endswith(".py"))
    return words[at], words[at + 1:]


@pytest.fixture(autouse=True, scope="session")
def mlflow_store(tmp_path_factory) -> str:
    """A session-wide temporary SQLite MLflow store (``MLFLOW_TRACKING_URI``)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(autouse=True, scope="session")
def scratch_tmpdir(tmp_path_factory) -> Path:
    """``TMPDIR`` (and :mod:`tempfile`'s folder) inside pytest's base temporary folder for the whole session: the
    temporary folders of the stage processes the tests kill (MLflow's model staging folders, 18 MB each) go with
    it when the session passes (``tmp_path_retention_policy``) instead of piling up in /tmp."""
    import tempfile

    folder = tmp_path_factory.mktemp("TMPDIR", numbered=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(folder))
        mp.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again; restored afterwards
        yield folder


@pytest.fixture(autouse=True)
def session_store_again(mlflow_store):
    """After each test, ``MLFLOW_TRACKING_URI`` and MLflow's own tracking URI point at the session store again:
    ``mlflow.set_tracking_uri`` also sets the environment variable, and a session fixture first requested after
    a test that called it (``pipeline_repo``) would log its stages to that test's store."""
    yield
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_store
    if "mlflow" in sys.modules and sys.modules["mlflow"].get_tracking_uri() != mlflow_store:
        sys.modules["mlflow"].set_tracking_uri(mlflow_store)


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory, mlflow_store) -> Path:
    """The tiny project (tests/stages/conftest.py) after a full ``dvc repro``, logged to the experiment ``segdet``.
    Shared by the detection stage tests and the reliability tests: one pipeline run instead of two."""
    import shutil

    from tests.stages.conftest import make_repo, sh

    repo = make_repo(tmp_path_factory.mktemp("pipeline"))
    sh(["dvc", "repro", "-q"], repo, env={"MLFLOW_EXPERIMENT_NAME": None, "MLFLOW_TRACKING_URI": mlflow_store})
    # what this first pipeline run wrote, for tests that compare with it after others ran experiments in the repo
    shutil.copytree(repo / "reports", repo.parent / "first_run" / "reports")
    shutil.copy2(repo / "params.yaml", repo.parent / "first_run" / "params.yaml")
    return repo
