"""MLflow tracking: the only module that imports mlflow (docs/architecture.md).

Every pipeline run (``dvc repro``, each ``dvc exp run`` experiment) is one MLflow parent run (``segdet.stage`` =
``pipeline``) in the experiment ``segdet`` (``MLFLOW_EXPERIMENT_NAME`` overrides); every stage run is a run nested
under it (``mlflow.parentRunId``) with its params section flattened, its metrics, artifacts and these tags
(the parent carries the shared ones; the ``track`` stage adds every parameter and headline metric to it):

===========================  ==========================================================================
``segdet.stage``             the DVC stage (``prepare``, ``manifest``, ...)
``segdet.pipeline_run``      one id shared by every stage run of the same ``dvc repro`` / ``dvc exp run``
``segdet.dvc_exp_name``      ``DVC_EXP_NAME`` when DVC runs an experiment (else ``workspace``)
``mlflow.source.git.commit``  the commit the run started from (``DVC_EXP_BASELINE_REV`` in experiments)
``segdet.git_dirty``         ``true`` when tracked files other than params.yaml, dvc.lock and outputs differ from it
``segdet.device``            ``cpu`` or the GPU's name
``segdet.host``, ``.pid``     the process that runs the stage (with ``segdet.pid_start``, :func:`process_start`, and
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
import sys
import tempfile
import time
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
        # a relative store (sqlite:///mlflow.db) is relative to the working directory, as for MLflow itself
        return (Path(uri[len("sqlite:///") :]).resolve().parent / "mlartifacts" / experiment).as_uri()
    return None


def _dvc_process() -> Any | None:
    """The ``dvc`` process (``psutil.Process``) that started this stage, or None (a stage run by hand)."""
    try:
        import psutil

        for proc in psutil.Process().parents():
            cmd = proc.cmdline()
            if any(Path(c).name == "dvc" for c in cmd[:2]) or cmd[1:3] == ["-m", "dvc"]:
                return proc
    except Exception as exc:  # pragma: no cover - process table unreadable
        log.debug("no dvc parent process found: %s", exc)
    return None


def process_start(proc: Any) -> str:
    """A start time of ``proc`` (a ``psutil.Process``) that stays the same for the process's whole life.

    On Linux ``ticks:<n>:<boot id>``: the clock ticks from boot to its start (``starttime`` in ``/proc/<pid>/stat``)
    and the boot's id (``/proc/sys/kernel/random/boot_id``, so that a pid and tick count reused after a reboot
    differ). psutil's ``create_time()`` adds the boot time from ``/proc/stat``, which the kernel derives from the
    wall clock, so it moves when that clock is stepped (time synchronisation, a virtual machine resumed: the stages
    of one fresh-clone ``dvc repro`` once got three pipeline run ids within minutes). Elsewhere ``create_time()`` to
    the millisecond."""
    try:
        with open(f"/proc/{proc.pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()  # after "pid (comm)": the comm may hold spaces
        ticks = int(fields[19])  # field 22 of proc(5), the 20th after the comm
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return f"ticks:{ticks}:{fh.read().strip()}"
    except (OSError, IndexError, ValueError):
        return f"{proc.create_time():.3f}"


_OWN_PIPELINE_RUN = uuid.uuid4().hex[:16]


def pipeline_run_id() -> str:
    """An id shared by all stage runs of one pipeline run.

    ``SEGDET_PIPELINE_RUN`` when set; else derived from the ``dvc`` process that started this stage
    (its pid and :func:`process_start`), so every stage of one ``dvc repro`` or of one queued experiment shares
    it; else an id of this process (a stage run by hand is its own pipeline run).
    """
    env = os.environ.get("SEGDET_PIPELINE_RUN")
    if env:
        return env
    proc = _dvc_process()
    if proc is not None:
        try:
            key = f"{proc.pid}-{process_start(proc)}-{' '.join(proc.cmdline())}"
            return hashlib.sha1(key.encode()).hexdigest()[:16]
        except Exception as exc:  # pragma: no cover - the dvc process ended meanwhile
            log.debug("dvc process unreadable: %s", exc)
    return _OWN_PIPELINE_RUN


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


def _dvc_outputs(root: Path) -> list[str]:
    """The paths dvc.yaml declares as outputs, metrics or plots (``reports/unet_eval.json`` ...)."""
    import yaml

    try:
        stages = yaml.safe_load((root / "dvc.yaml").read_text()).get("stages", {})
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    paths = []
    for spec in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for out in (spec or {}).get(kind, []) or []:
                paths.append(out if isinstance(out, str) else next(iter(out)))
    return paths


def git_dirty(root: Path) -> list[str] | None:
    """Tracked files that differ from the commit a pipeline run starts from: code or settings edited and not
    committed. What DVC itself changes in a run is not counted: ``params.yaml`` (``-S`` values are logged as
    params), ``dvc.lock`` and the outputs kept in git (``reports/...``). None when git cannot tell."""
    try:
        out = subprocess.run(["git", "diff", "--name-only", "-z", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    outputs = [p.rstrip("/") for p in _dvc_outputs(root)]

    def produced(path: str) -> bool:
        return path in ("params.yaml", "dvc.lock") or any(path == o or path.startswith(o + "/") for o in outputs)

    return sorted(p for p in out.split("\0") if p and not produced(p))


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

    def __init__(self, run: Any, parent_run_id: str | None = None):
        self.run = run
        self.run_id: str = run.info.run_id
        self.parent_run_id = parent_run_id  # the pipeline run's parent run

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

    def epoch_logger(self, csv_path: str | Path, run_dir: str | Path | None = None):
        """An ``on_epoch(history)`` callback for ``engine.fit``: rewrites the per-epoch CSV (a DVC plot)
        atomically and logs the last row as MLflow metrics with ``step`` = epoch.

        With ``run_dir``, the run's checkpoints ``last.pt`` (and ``best.pt`` when it changed) are logged too, as
        ``resume/`` artifacts: a run killed anywhere, a queued DVC experiment included (its temporary copy of
        the repository is gone with it), resumes with ``weights: runs:/<run id>/resume/last.pt``.
        """
        import pandas as pd

        from segdet.io import atomic_file

        logged: dict[str, int] = {}

        def on_epoch(history: list[dict]) -> None:
            with atomic_file(csv_path) as fh:
                pd.DataFrame(history).to_csv(fh, index=False, float_format="%.6g")
            row = history[-1]
            self.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
            if run_dir is None:
                return
            for name in ("best.pt", "last.pt"):
                path = Path(run_dir) / name
                try:
                    stamp = path.stat().st_mtime_ns
                    if logged.get(name) != stamp:
                        mlflow.log_artifact(str(path), artifact_path="resume")
                        logged[name] = stamp
                except (OSError, mlflow.exceptions.MlflowException) as exc:  # never stop training for it
                    log.warning("could not log %s to MLflow for resuming (%s); the local copy is intact", path, exc)

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


#: prefixes of ``weights`` values that name an MLflow artifact instead of a local file
MLFLOW_URIS = ("runs:/", "models:/", "mlflow-artifacts:/")


@contextlib.contextmanager
def local_weights(weights: str | None, key: str, root: str | Path | None = None) -> Iterator[str | None]:
    """``weights`` as a local file for the block: a local path or None as it is; an MLflow URI such as
    ``runs:/<run id>/resume/last.pt`` downloaded from the store of :func:`tracking_uri` (with the rest of its
    folder, so a resumed run finds ``best.pt`` beside ``last.pt``) into a temporary folder.

    Raises:
        UserError: the run, or the file in it, does not exist (naming ``key``, the URI and the store).
    """
    from segdet.stage import UserError

    if not weights or not weights.startswith(MLFLOW_URIS):
        yield weights
        return
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    folder, _, name = weights.rstrip("/").rpartition("/")
    with tempfile.TemporaryDirectory(prefix="segdet-weights-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=folder, dst_path=tmp))
        except Exception as exc:  # noqa: BLE001 - MLflow raises several types for a missing run or artifact
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{key} = {weights}: cannot download it from the MLflow store {uri} ({first[:300]})"
                            ) from None
        path = local / name
        if not path.is_file():
            found = sorted(p.name for p in local.iterdir()) if local.is_dir() else []
            raise UserError(f"{key} = {weights}: no file {name!r} there (found: {', '.join(found) or 'nothing'})")
        log.info("%s: %s downloaded from %s", key, weights, uri)
        yield str(path)


def _process_tags() -> dict[str, str]:
    """Which process runs the stage: ``segdet.host``, ``segdet.pid`` and the process's start time, so that a later
    run can tell whether the process of a run still marked RUNNING is gone (killed, crashed, out of memory)."""
    import psutil

    me = psutil.Process()
    return {"segdet.host": socket.gethostname(), "segdet.pid": str(me.pid), "segdet.pid_start": process_start(me),
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
        proc = psutil.Process(int(pid))
        if start.startswith("ticks:"):
            return process_start(proc) == start
        return f"{proc.create_time():.3f}" == start  # tags written before process_start existed
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


#: ``segdet.stage`` of the parent run that one pipeline run's stage runs are nested under
PIPELINE_STAGE = "pipeline"


def _run_tags(root: Path) -> dict[str, str]:
    """The tags a stage run and its parent share: pipeline run, DVC experiment, git commit and dirty state."""
    dirty = git_dirty(root)
    return {
        "segdet.pipeline_run": pipeline_run_id(),
        "segdet.dvc_exp_name": os.environ.get("DVC_EXP_NAME") or "workspace",
        "mlflow.source.git.commit": git_commit(root),
        "segdet.git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
        **({"segdet.git_dirty_files": " ".join(dirty)[:4000]} if dirty else {}),
    }


def _parent_run(client: MlflowClient, exp_id: str, shared: Mapping[str, str]) -> str:
    """The id of the parent run of this pipeline run (``segdet.stage`` = ``pipeline``), created by its first stage
    run. Reopened (RUNNING, with this process's tags) while a stage runs; each stage run ends it with its own
    status, so a pipeline run cut short, or a partial ``dvc repro``, never leaves it RUNNING."""
    pipeline = shared["segdet.pipeline_run"]
    found = client.search_runs(
        [exp_id], f"tags.`segdet.pipeline_run` = '{pipeline}' and tags.`segdet.stage` = '{PIPELINE_STAGE}'",
        max_results=1)
    tags = {**shared, **_process_tags()}
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        return run_id
    name = f"{PIPELINE_STAGE} [{shared['segdet.dvc_exp_name']}]"
    return client.create_run(exp_id, run_name=name, tags={**tags, "segdet.stage": PIPELINE_STAGE}).info.run_id


def _open_store(root: Path) -> tuple[str, str]:
    """Point MLflow at the store of ``root``; return ``(tracking uri, experiment id)``."""
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    with _store_lock(uri):
        exp_id = _experiment_id(MlflowClient(), os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT), uri)
    return uri, exp_id


class QuietRun(StageRun):
    """What a training process other than rank 0 gets from :func:`stage_run` under torchrun: every logging call
    does nothing (only rank 0 logs to MLflow, so a run of N processes is one MLflow run)."""

    def __init__(self) -> None:
        self.run, self.run_id, self.parent_run_id = None, None, None

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("log_") or name == "set_tags":
            return lambda *args, **kwargs: None
        if name == "epoch_logger":
            return lambda *args, **kwargs: (lambda history: None)
        return super().__getattribute__(name)


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Mapping[str, Any] | None = None,
    *,
    root: str | Path | None = None,
    device: str = "cpu",
    tags: Mapping[str, Any] | None = None,
    system_metrics: bool = False,
) -> Iterator[StageRun]:
    """Open the MLflow run of one stage, nested under its pipeline run's parent run; a failure (exception or
    Ctrl-C) marks both FAILED / KILLED.

    Args:
        stage: DVC stage name, also the run name prefix.
        params: flat ``{"key": value}`` of the stage's params sections (see ``segdet.config.flatten``).
        root: the repository root (default: found from the working directory).
        device: ``cpu`` or the accelerator's name, logged as ``segdet.device``.
        system_metrics: log CPU, memory (and GPU, with ``pynvml``) use as ``system/...`` metrics (training stages).

    Under torchrun only rank 0 opens a run; the other processes get a :class:`QuietRun`.
    """
    if os.environ.get("RANK", "0") != "0":
        yield QuietRun()
        return
    root = repo_root(root)
    _, exp_id = _open_store(root)
    client = MlflowClient()
    shared = _run_tags(root)
    all_tags = {
        "segdet.stage": stage,
        "segdet.device": device,
        **shared,
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    all_tags.update(_process_tags())
    if os.environ.get("SEGDET_CPU_SHARE"):  # the cores this stage took (its share under dvc queue start -j N)
        all_tags["segdet.cpu_share"] = os.environ["SEGDET_CPU_SHARE"]
    if os.environ.get("WORLD_SIZE", "1") != "1":
        all_tags["segdet.processes"] = os.environ["WORLD_SIZE"]  # torchrun: the processes this run trained with
    _end_orphaned_runs(client, exp_id)
    if mlflow.active_run() is not None:  # never nest into a run left open by the caller
        mlflow.end_run()
    parent = _parent_run(client, exp_id, shared)
    run = mlflow.start_run(experiment_id=exp_id, run_name=f"{stage} [{shared['segdet.dvc_exp_name']}]",
                           tags=all_tags, parent_run_id=parent, log_system_metrics=system_metrics)
    handle = StageRun(run, parent)
    status = "FAILED"
    try:
        if params:
            handle.log_params(params)
        yield handle
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _log_stage_seconds()
        mlflow.end_run(status=status)
        try:
            client.set_terminated(parent, status=status)
        except mlflow.exceptions.MlflowException as exc:  # the stage's own run is what matters
            log.warning("could not end the pipeline's parent run %s: %s", parent, exc)


def _log_stage_seconds() -> None:
    """Log ``stage_seconds``: wall-clock seconds since this stage's process started (imports included), and
    ``stage_peak_rss_mb``: the process's peak resident memory so far (``getrusage``'s ``ru_maxrss``), with
    ``stage_peak_rss_children_mb`` for the largest worker process it waited for (the proposals stage's pool)."""
    try:
        import resource

        import psutil

        unit = 2**20 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
        metrics = {"stage_seconds": time.time() - psutil.Process().create_time(),
                   "stage_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / unit}
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / unit
        if children:
            metrics["stage_peak_rss_children_mb"] = children
        mlflow.log_metrics(metrics)
    except Exception as exc:  # noqa: BLE001 (a timing never fails the stage)
        log.warning("could not log stage_seconds: %s", exc)


def stage_seconds(stages: list[str], root: str | Path | None = None) -> dict[str, dict]:
    """``{stage: {"seconds": s or None, "peak_rss_mb": m or None, "this_run": bool}}``: each stage's
    ``stage_seconds`` and ``stage_peak_rss_mb`` from this pipeline
    run (:func:`pipeline_run_id`), or else from its latest finished run (a stage DVC restored from its cache)."""
    root = repo_root(root)
    _, exp_id = _open_store(root)
    client = MlflowClient()
    current = pipeline_run_id()
    out = {}
    for stage in stages:
        found = client.search_runs([exp_id], f"tags.`segdet.stage` = '{stage}' and attributes.status = 'FINISHED'",
                                   order_by=["attributes.start_time DESC"], max_results=20)
        now = [r for r in found if r.data.tags.get("segdet.pipeline_run") == current]
        best = (now or found or [None])[0]
        metrics = best.data.metrics if best is not None else {}
        out[stage] = {"seconds": metrics.get("stage_seconds"), "peak_rss_mb": metrics.get("stage_peak_rss_mb"),
                      "this_run": bool(now)}
    return out


def _relative_uri(uri: str, root: Path) -> str:
    """``sqlite:///mlflow.db`` for the repository's own store (the file is the same on every clone)."""
    if uri.startswith("sqlite:///"):
        with contextlib.suppress(ValueError):
            return f"sqlite:///{Path(uri[len('sqlite:///'):]).relative_to(root)}"
    return uri


def _unchanged_rerun(client: MlflowClient, exp_id: str, shared: Mapping[str, str], previous: Mapping[str, Any] | None,
                     values: Mapping[str, str], metrics: Mapping[str, float]) -> bool:
    """True when this is a ``dvc repro`` of the workspace that ran no stage and changed nothing since the pipeline
    run ``previous`` (the last ``reports/mlflow.json``) recorded: same commit, params and metrics. Then that parent
    run stands for this one too, instead of a new parent run for every repeated ``dvc repro``. A DVC experiment
    always gets its own parent run, even when DVC restored all of it."""
    if not previous or shared["segdet.dvc_exp_name"] != "workspace" or previous.get("dvc_exp_name") != "workspace":
        return False
    if previous.get("git_commit") != shared["mlflow.source.git.commit"] or previous.get("experiment_id") != exp_id:
        return False
    ran = client.search_runs([exp_id], f"tags.`segdet.pipeline_run` = '{shared['segdet.pipeline_run']}'",
                             max_results=1)
    if ran:
        return False
    try:
        run = client.get_run(str(previous.get("parent_run_id")))
    except mlflow.exceptions.MlflowException:
        return False
    return (run.info.status == "FINISHED" and run.data.params == dict(values)
            and run.data.metrics == {k: float(v) for k, v in metrics.items()})


def record_pipeline(params: Mapping[str, Any], metrics: Mapping[str, float], stages: list[str], *,
                    root: str | Path | None = None, previous: Mapping[str, Any] | None = None,
                    tags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """What the ``track`` stage does at the end of every pipeline run: log every parameter (``section.key``) and
    every headline metric (``<stage>.<key>``, read from the metrics files, so stages DVC restored from its cache
    count too) to the pipeline's parent run, with ``tags`` (hardware, device ...), and end it FINISHED. DVC may have restored every stage, so that no
    stage code ran: the parent run is then created here, with no nested runs. A repeated ``dvc repro`` of the
    workspace that ran nothing and changed nothing keeps ``previous`` (see :func:`_unchanged_rerun`).

    Returns the ids that link the DVC experiment and MLflow (written to ``reports/mlflow.json``).
    """
    from mlflow.entities import Metric, Param

    root = repo_root(root)
    uri, exp_id = _open_store(root)
    client = MlflowClient()
    shared = _run_tags(root)
    _end_orphaned_runs(client, exp_id)
    values = {k: "null" if v is None else str(v)[:6000] for k, v in params.items()}
    if _unchanged_rerun(client, exp_id, shared, previous, values, metrics):
        log.info("nothing ran and nothing changed since pipeline run %s: its parent run %s stands for this one",
                 previous["pipeline_run"], previous["parent_run_id"])
        return dict(previous)
    parent = _parent_run(client, exp_id, shared)
    status = "FAILED"
    try:
        logged = client.get_run(parent).data.params
        changed = sorted(k for k, v in values.items() if k in logged and logged[k] != v)
        if changed:  # params.yaml edited while the pipeline ran: keep the first values, say so
            log.warning("params changed during the pipeline run, the parent run keeps the first values: %s",
                        ", ".join(changed))
        now = int(time.time() * 1000)
        client.log_batch(parent, params=[Param(k, v) for k, v in values.items() if k not in logged],
                         metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        nested = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent}'",
                                    order_by=["attributes.start_time ASC"])
        ran = {r.data.tags.get("segdet.stage", r.info.run_name): r.info.run_id for r in nested}
        restored = [s for s in stages if s not in ran]
        registered = {}  # the model versions the stage runs of this pipeline run registered
        for run_id in ran.values():
            for version in client.search_model_versions(f"run_id = '{run_id}'"):
                registered[version.name] = version.version
        for key, value in (tags or {}).items():  # what describes the run: hardware, device ...
            client.set_tag(parent, key, str(value)[:5000])
        client.set_tag(parent, "segdet.stages_run", " ".join(ran) or "none")
        client.set_tag(parent, "segdet.stages_restored", " ".join(restored) or "none")
        status = "FINISHED"
    finally:
        client.set_terminated(parent, status=status)
    exp = client.get_experiment(exp_id)
    return {
        "tracking_uri": _relative_uri(uri, root),
        "experiment": exp.name,
        "experiment_id": exp_id,
        "parent_run_id": parent,
        "pipeline_run": shared["segdet.pipeline_run"],
        "dvc_exp_name": shared["segdet.dvc_exp_name"],
        "git_commit": shared["mlflow.source.git.commit"],
        "git_dirty": shared["segdet.git_dirty"],
        "stage_runs": ran,
        "restored_stages": restored,
        "registered_models": registered,
    }
