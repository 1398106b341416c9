"""MLflow tracking: the only module that imports mlflow (docs/architecture.md).

Every stage run is one MLflow run in the experiment ``segdet`` (``MLFLOW_EXPERIMENT_NAME`` overrides)
with its params section flattened, its metrics, artifacts and these tags:

===========================  ==========================================================================
``segdet.stage``             the DVC stage (``prepare``, ``manifest``, ...)
``segdet.pipeline_run``      one id shared by every stage run of the same ``dvc repro`` / ``dvc exp run``
``segdet.dvc_exp_name``      ``DVC_EXP_NAME`` when DVC runs an experiment (else ``workspace``)
``mlflow.source.git.commit``  the commit the run started from (``DVC_EXP_BASELINE_REV`` in experiments)
``segdet.device``            ``cpu`` or the GPU's name
``segdet.host``, ``.pid``     the process that runs the stage (with ``segdet.pid_start``, its start time, and
                             ``segdet.pid_ns``, its pid namespace): a run still RUNNING whose process is gone
                             is marked KILLED by the next stage run
===========================  ==========================================================================

Store: ``MLFLOW_TRACKING_URI`` when set (a tracking server, a PostgreSQL store ...), else
``sqlite:///<repository root>/mlflow.db``; a SQLite store keeps artifacts beside it in ``mlartifacts/``. The root is
the user's repository even when DVC runs a queued or ``--temp`` experiment in a copy under
``.dvc/tmp/exps/``, so all runs land in the store that ``mlflow ui --backend-store-uri sqlite:///mlflow.db``
opens from the repository root.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from segdet.runtime import repo_root

log = logging.getLogger(__name__)

EXPERIMENT = "segdet"


def tracking_uri(root: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI``, else ``sqlite:///<root>/mlflow.db`` (an absolute path)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{repo_root(root) / 'mlflow.db'}"


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a SQLite store sit beside its database (``mlartifacts/``); a server decides its own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts" / experiment).as_uri()
    return None


def pipeline_run_id() -> str:
    """An id shared by all stage runs of one pipeline run.

    ``SEGDET_PIPELINE_RUN`` when set; else derived from the ``dvc`` process that started this stage
    (its pid and start time), so every stage of one ``dvc repro`` or of one queued experiment shares
    it; else a fresh id (a stage run by hand is its own pipeline run).
    """
    env = os.environ.get("SEGDET_PIPELINE_RUN")
    if env:
        return env
    try:
        import psutil

        for proc in psutil.Process().parents():
            cmd = proc.cmdline()
            if any(Path(c).name == "dvc" for c in cmd[:2]) or cmd[1:3] == ["-m", "dvc"]:
                key = f"{proc.pid}-{proc.create_time()}-{' '.join(cmd)}"
                return hashlib.sha1(key.encode()).hexdigest()[:16]
    except Exception as exc:  # pragma: no cover - process table unreadable
        log.debug("no dvc parent process found: %s", exc)
    return uuid.uuid4().hex[:16]


def git_commit(root: Path) -> str:
    rev = os.environ.get("DVC_EXP_BASELINE_REV")
    if rev:
        return rev
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _store_lock(uri: str) -> contextlib.AbstractContextManager:
    """A lock around the first use of a SQLite store: MLflow creates and migrates its schema then, and two
    queued experiments starting together (``dvc queue start -j 2``) must not both do it."""
    if not uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    from filelock import FileLock

    db = Path(uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{db}.lock", timeout=600)


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri, name))
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel queued run
        return client.get_experiment_by_name(name).experiment_id


class StageRun:
    """Handle for logging into the active stage run (metrics, params, images, files)."""

    def __init__(self, run: Any):
        self.run = run
        self.run_id: str = run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        mlflow.log_params({k: ("null" if v is None else v) for k, v in params.items()})

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_image(self, image: Any, name: str) -> None:
        """Log an ``HxWx3`` uint8 array or PIL image as ``name`` (e.g. ``samples/seg.png``)."""
        mlflow.log_image(image, artifact_file=name)

    def log_dict(self, obj: Any, name: str) -> None:
        mlflow.log_dict(obj, name)

    def log_text(self, text: str, name: str) -> None:
        mlflow.log_text(text, name)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)

    def log_model(self, model: Any, name: str, input_example: Any) -> bool:
        """Log a torch model in MLflow's safe ``pt2`` format (``torch.export``; the batch dimension stays
        dynamic); load it back with ``mlflow.pytorch.load_model(f"runs:/{run_id}/{name}")``.

        Returns False (with a warning and the tag ``segdet.model_logged=false``) when export fails, so a
        finished training is never lost to a logging problem.
        """
        import mlflow.pytorch
        import torch

        try:
            mlflow.pytorch.log_model(
                model, name=name, input_example=input_example,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
        except Exception as exc:  # noqa: BLE001 - report any export failure, keep the run
            log.warning("could not log the model to MLflow (%s: %s)", type(exc).__name__, exc)
            mlflow.set_tag("segdet.model_logged", "false")
            return False
        mlflow.set_tag("segdet.model_logged", "true")
        return True

    def log_checkpoint(self, path: str | Path) -> None:
        """Log a trained model for ``segdet predict --run`` as ``checkpoint/<file name>``: a checkpoint without its
        optimizer, scheduler and scaler state (weights, config, classes, metrics), or any other file as it is."""
        path = Path(path)
        if path.suffix != ".pt":
            mlflow.log_artifact(str(path), artifact_path="checkpoint")
            return
        import torch

        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({k: v for k, v in ckpt.items() if k not in ("optimizer", "scheduler", "scaler")},
                       Path(tmp) / path.name)
            mlflow.log_artifact(str(Path(tmp) / path.name), artifact_path="checkpoint")

    def epoch_logger(self, csv_path: str | Path):
        """An ``on_epoch(history)`` callback for ``engine.fit``: rewrites the per-epoch CSV (a DVC plot)
        atomically and logs the last row as MLflow metrics with ``step`` = epoch."""
        import pandas as pd

        from segdet.io import atomic_file

        def on_epoch(history: list[dict]) -> None:
            with atomic_file(csv_path) as fh:
                pd.DataFrame(history).to_csv(fh, index=False, float_format="%.6g")
            row = history[-1]
            self.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])

        return on_epoch

    def log_transfer(self, report: Any) -> None:
        """Print a ``TransferReport`` and log it (``transfer_report.json``, counts, a one-line tag)."""
        print(report.summary())
        self.log_dict(report.as_dict(), "transfer_report.json")
        self.set_tags({"segdet.transfer": report.summary().splitlines()[0]})
        self.log_metrics({"transfer_loaded": len(report.loaded), "transfer_mismatched": len(report.mismatched),
                          "transfer_missing": len(report.missing), "transfer_unexpected": len(report.unexpected)})

    @contextlib.contextmanager
    def artifact_dir(self, artifact_path: str | None = None) -> Iterator[Path]:
        """A temporary folder whose contents are logged as artifacts when the block ends."""
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
            mlflow.log_artifacts(tmp, artifact_path=artifact_path)


def download_artifacts(run_id: str, artifact_path: str, dest: str | Path, root: str | Path | None = None
                       ) -> list[Path]:
    """Files of ``artifact_path`` of MLflow run ``run_id`` (in the store of :func:`tracking_uri`), into ``dest``.

    Raises:
        FileNotFoundError: no such run, or the run has no such artifact (the message names both).
    """
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    try:
        local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                         dst_path=str(dest)))
    except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a missing run or artifact
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FileNotFoundError(f"MLflow run {run_id} in {uri}: cannot get {artifact_path!r} ({first})") from None
    return sorted(p for p in local.rglob("*") if p.is_file()) if local.is_dir() else [local]


def _process_tags() -> dict[str, str]:
    """Which process runs the stage: ``segdet.host``, ``segdet.pid`` and the process's start time, so that a later
    run can tell whether the process of a run still marked RUNNING is gone (killed, crashed, out of memory)."""
    import psutil

    me = psutil.Process()
    return {"segdet.host": socket.gethostname(), "segdet.pid": str(me.pid), "segdet.pid_start": f"{me.create_time():.3f}",
            "segdet.pid_ns": _pid_namespace()}


def _pid_namespace() -> str:
    """The process-id namespace (containers sharing a host name have their own), or ``""`` where unknown."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _alive(pid: str, start: str) -> bool:
    import psutil

    try:
        return f"{psutil.Process(int(pid)).create_time():.3f}" == start
    except (psutil.Error, ValueError):
        return False


def _end_orphaned_runs(client: MlflowClient, exp_id: str) -> list[str]:
    """Mark KILLED every run of this host still RUNNING whose process is gone: a stage killed by SIGKILL, the
    out-of-memory killer or a crash cannot end its own run. Runs of other hosts are left alone (their
    processes cannot be seen from here). Returns the ids it ended."""
    host, namespace = socket.gethostname(), _pid_namespace()
    ended: list[str] = []
    try:
        stale = client.search_runs([exp_id], f"attributes.status = 'RUNNING' and tags.`segdet.host` = '{host}'")
        for run in stale:
            tags = run.data.tags
            if tags.get("segdet.pid_ns", namespace) != namespace:  # another container with this host name
                continue
            if _alive(tags.get("segdet.pid", ""), tags.get("segdet.pid_start", "")):
                continue
            client.set_tag(run.info.run_id, "segdet.ended_by",
                           "a later stage run: the process was gone (killed or crashed)")
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
            log.warning("MLflow run %s (%s) was still RUNNING but its process %s is gone: marked KILLED",
                        run.info.run_id, run.info.run_name, tags.get("segdet.pid"))
    except mlflow.exceptions.MlflowException as exc:  # tidying up must never stop a stage
        log.warning("could not look for MLflow runs left RUNNING by killed stages: %s", exc)
    return ended


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Mapping[str, Any] | None = None,
    *,
    root: str | Path | None = None,
    device: str = "cpu",
    tags: Mapping[str, Any] | None = None,
) -> Iterator[StageRun]:
    """Open the MLflow run of one stage; a failure (exception or Ctrl-C) marks it FAILED / KILLED.

    Args:
        stage: DVC stage name, also the run name prefix.
        params: flat ``{"key": value}`` of the stage's params sections (see ``segdet.config.flatten``).
        root: the repository root (default: found from the working directory).
        device: ``cpu`` or the accelerator's name, logged as ``segdet.device``.
    """
    root = repo_root(root)
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    with _store_lock(uri):
        exp_id = _experiment_id(MlflowClient(), os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT), uri)
    exp_name = os.environ.get("DVC_EXP_NAME") or "workspace"
    commit = git_commit(root)
    all_tags = {
        "segdet.stage": stage,
        "segdet.pipeline_run": pipeline_run_id(),
        "segdet.dvc_exp_name": exp_name,
        "segdet.device": device,
        "mlflow.source.git.commit": commit,
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    all_tags.update(_process_tags())
    _end_orphaned_runs(MlflowClient(), exp_id)
    if mlflow.active_run() is not None:  # never nest into a run left open by the caller
        mlflow.end_run()
    run = mlflow.start_run(experiment_id=exp_id, run_name=f"{stage} [{exp_name}]", tags=all_tags)
    handle = StageRun(run)
    try:
        if params:
            handle.log_params(params)
        yield handle
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")
