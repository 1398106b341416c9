"""Shared fixtures. No test writes into the repository's mlflow.db: MLflow points at a temporary store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"


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
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield uri
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory) -> Path:
    """The tiny project (tests/stages/conftest.py) after a full ``dvc repro``, logged to the experiment ``segdet``.
    Shared by the detection stage tests and the reliability tests: one pipeline run instead of two."""
    import shutil

    from tests.stages.conftest import make_repo, sh

    repo = make_repo(tmp_path_factory.mktemp("pipeline"))
    sh(["dvc", "repro", "-q"], repo, env={"MLFLOW_EXPERIMENT_NAME": None})
    # what this first pipeline run wrote, for tests that compare with it after others ran experiments in the repo
    shutil.copytree(repo / "reports", repo.parent / "first_run" / "reports")
    shutil.copy2(repo / "params.yaml", repo.parent / "first_run" / "params.yaml")
    return repo
