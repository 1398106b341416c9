"""A tiny project that has run its whole pipeline once, and the harness that runs a stage on bad input and checks
that it failed cleanly: exit status 1, one ``ERROR:`` message, no traceback, no output changed, ``dvc.lock``
unchanged, no MLflow run left RUNNING."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from segdet.stage import run_stage
from tests.stages.conftest import merge

OUTPUT_FOLDERS = ("data", "models", "reports")


#: the MLflow experiment of the runs these tests make (their failed and killed stage runs stay out of ``segdet``,
#: which other tests search)
EXPERIMENT = "segdet-reliability"


@pytest.fixture(scope="module")
def own_experiment():
    """Stage runs made by the tests that use this (in this process and in subprocesses) go to :data:`EXPERIMENT`."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        yield


@pytest.fixture(scope="session")
def workspace(pipeline_repo) -> Path:
    """The tiny project after ``dvc repro`` of every stage (models for the checkpoint and predict cases). The
    matrix asserts that no case changes it; tests that train work in a copy."""
    return pipeline_repo


def snapshot(ws: Path) -> dict[str, object]:
    """Every file under the output folders with its size and content hash, every folder by name, and ``dvc.lock``:
    equal snapshots mean nothing was written, replaced or left behind (a temporary ``.x.tmp-`` folder included)."""
    out: dict[str, object] = {"dvc.lock": (ws / "dvc.lock").read_bytes()}
    for top in OUTPUT_FOLDERS:
        for p in sorted((ws / top).rglob("*")):
            rel = str(p.relative_to(ws))
            out[rel] = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def write_params(ws: Path, dest: Path, **overrides: dict) -> Path:
    """The workspace's params with ``overrides`` per section (``data={"split": {...}}``), written to ``dest``."""
    params = merge(yaml.safe_load((ws / "params.yaml").read_text()), overrides)
    dest.write_text(yaml.safe_dump(params, sort_keys=False))
    return dest


def _stage_main(ws: Path, stage: str):
    spec = importlib.util.spec_from_file_location(f"_stage_{stage}", ws / "stages" / f"{stage}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@dataclass
class Outcome:
    rc: int
    stderr: str
    stdout: str


def run_in(ws: Path, stage: str, argv: list[str]) -> Outcome:
    """Run ``stages/<stage>.py`` (or ``segdet`` for ``stage="cli"``) in-process in ``ws``, as DVC would."""
    err, out = io.StringIO(), io.StringIO()
    old = Path.cwd()
    os.chdir(ws)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            if stage == "cli":
                from segdet.cli import main

                rc = main(argv)
            else:
                rc = run_stage(_stage_main(ws, stage), argv)
    finally:
        os.chdir(old)
    return Outcome(rc, err.getvalue(), out.getvalue())


def running_runs(since_ms: int) -> list[str]:
    """Names of MLflow runs started since ``since_ms`` that are still RUNNING."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], f"attributes.status = 'RUNNING' and attributes.start_time >= {since_ms}")
    return [r.info.run_name for r in runs]


def assert_clean_failure(ws: Path, outcome: Outcome, before: dict, since_ms: int, expect: list[str]) -> str:
    """The checks every bad input must pass; returns the message."""
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.rc == 1, f"exit status {outcome.rc}\n{outcome.stderr}"
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, outcome.stderr
    message = outcome.stderr[outcome.stderr.index("ERROR: "):]
    for text in expect:
        assert text in message, f"{text!r} not in the message:\n{message}"
    after = snapshot(ws)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"outputs changed by a failed stage: {changed}"
    assert running_runs(since_ms) == []
    return message


def now_ms() -> int:
    return int(time.time() * 1000) - 1


def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]
