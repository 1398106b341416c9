"""Two queued experiments running at once (``dvc queue start -j 2``) lose and duplicate nothing in MLflow.

Run once per store, with the same assertions:

- ``postgres``: an ``mlflow server`` backed by a real PostgreSQL, both started here in a temporary folder
  (``initdb`` and ``pg_ctl`` of the Debian ``postgresql`` package; ``make postgres`` installs it, and
  ``make test`` runs it first). The stages log to the server (``MLFLOW_TRACKING_URI=http://...``).
- ``sqlite``: the default store, ``<repository>/mlflow.db`` (no ``MLFLOW_TRACKING_URI``).

The two experiments differ in their data seed and epochs, so each runs all four stages of the UNet branch
(``prepare``, ``manifest``, ``unet_train``, ``unet_eval``) at the same time as the other. Every stage run must
be in the store once, FINISHED, with the values the stage wrote to its files: the eval metrics file DVC
shows, one metric history entry per epoch equal to the training CSV, and no metric step logged twice (checked
in the database itself too).
"""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import math
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from segdet import tracking
from tests.stages.conftest import TINY, make_repo, queue_start, sh, stop_leftover_workers

pytestmark = pytest.mark.slow

#: the stages `dvc exp run unet_eval` runs, in order (dvc.yaml)
STAGES = ("prepare", "manifest", "unet_train", "unet_eval")
#: two experiments that differ from the first stage on (so neither can reuse the other's outputs)
EXPERIMENTS = {"cc-seed0": {"data.seed": 0, "unet_train.epochs": 2},
               "cc-seed1": {"data.seed": 1, "unet_train.epochs": 3}}
#: two experiments share the CPU: one thread each instead of two each fighting for every core; their runs go to
#: the experiment ``segdet`` whatever the caller's MLFLOW_EXPERIMENT_NAME
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MLFLOW_EXPERIMENT_NAME": None}
QUEUE_TIMEOUT_S = 600
STATUS_EVERY_S = 15
SERVER_TIMEOUT_S = 120
MAKE_POSTGRES = "run `make postgres` (installs the Debian package `postgresql`; CI's `make test` does it first)"


# --------------------------------------------------------------------------------------------------------------
# PostgreSQL and the MLflow server, started by the test


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path:
    """The folder holding ``initdb`` and ``pg_ctl``: from PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = [Path(p).parent for p in (shutil.which("initdb"), shutil.which("pg_ctl")) if p]
    if len(found) == 2 and (found[0] / "pg_ctl").exists():
        return found[0]
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: [int(x) for x in Path(p).parent.name
                         .split(".") if x.isdigit()], reverse=True):
        if (Path(folder) / "initdb").exists() and (Path(folder) / "pg_ctl").exists():
            return Path(folder)
    pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) are neither on PATH nor under "
                f"/usr/lib/postgresql/*/bin: {MAKE_POSTGRES}", pytrace=False)


def db_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as: None (this one) unless we are root, which initdb refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    pytest.fail("running as root and there is neither a `postgres` nor a `nobody` account to run PostgreSQL as",
                pytrace=False)


def as_user(cmd: list[str], user: pwd.struct_passwd | None) -> list[str]:
    if user is None:
        return cmd
    if shutil.which("runuser"):
        return ["runuser", "-u", user.pw_name, "--", *cmd]
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *cmd]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """A PostgreSQL cluster in a temporary folder on a free 127.0.0.1 port; yields its SQLAlchemy URI and
    stops it (``pg_ctl stop -m fast``) and removes the folder afterwards, whatever happened."""
    bindir, user = postgres_bin(), db_user()
    # not under pytest's tmp_path: as root that is private to root, and PostgreSQL then runs as another account
    base = Path(tempfile.mkdtemp(prefix="segdet-pg-", dir="/tmp" if user is not None else None))
    if user is not None:
        os.chown(base, user.pw_uid, user.pw_gid)
    data, log, port = base / "data", base / "server.log", free_port()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(as_user([str(bindir / args[0]), *args[1:]], user), cwd=base, capture_output=True,
                              text=True, timeout=120)

    try:
        out = run("initdb", "-D", str(data), "-U", "segdet", "--auth=trust", "-E", "UTF8", "--no-sync")
        assert out.returncode == 0, f"initdb failed ({bindir}):\n{out.stdout}\n{out.stderr}"
        opts = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={base} -c fsync=off"
        out = run("pg_ctl", "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60", "start")
        assert out.returncode == 0, (f"pg_ctl start failed:\n{out.stdout}\n{out.stderr}\n"
                                     f"{log.read_text() if log.exists() else '(no server log)'}")
        # explicit driver: SQLAlchemy 2.1 defaults to psycopg 3, the dev extras install psycopg2-binary
        yield f"postgresql+psycopg2://segdet@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():  # started, even if pg_ctl gave up waiting for it
            run("pg_ctl", "-D", str(data), "stop", "-m", "fast", "-w", "-t", "60")
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend: str, folder: Path) -> Iterator[str]:
    """``mlflow server`` on ``backend`` (artifacts served from ``folder/artifacts``) on a free port; yields its
    URL once ``/health`` answers, and stops it afterwards."""
    port, log = free_port(), folder / "mlflow-server.log"
    mlflow_cmd = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_cmd)] if mlflow_cmd.exists() else [sys.executable, "-m", "mlflow"]
    cmd += ["server", "--backend-store-uri", backend, "--serve-artifacts",
            "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
            "--workers", "2"]
    # no job runner (its consumers are for MLflow's GenAI jobs, and each one imports MLflow: CPU the stages need)
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, cwd=folder, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.time() + SERVER_TIMEOUT_S
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                    if resp.status == 200:
                        break
            if proc.poll() is not None or time.time() > deadline:
                state = f"exited {proc.returncode}" if proc.poll() is not None else f"no answer in {SERVER_TIMEOUT_S} s"
                pytest.fail(f"mlflow server on {backend} ({url}): {state}\n{' '.join(cmd)}\n"
                            f"--- server log ---\n{log.read_text()[-6000:]}", pytrace=False)
            time.sleep(1)
        yield url
    finally:  # the server and its workers: the process group it leads (start_new_session)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


# --------------------------------------------------------------------------------------------------------------
# the two queued experiments


@dataclass
class Experiment:
    name: str
    params: dict
    rev: str = ""
    eval_metrics: dict = field(default_factory=dict)  # reports/unet_eval.json as `dvc exp show` has it
    eval_info: dict = field(default_factory=dict)  # reports/unet_eval_info.json of the experiment's commit
    train_rows: list[dict] = field(default_factory=list)  # reports/unet_train.csv of the experiment's commit


@dataclass
class Queued:
    """One store and the repository whose two queued experiments log to it."""

    store: str
    repo: Path
    tracking_uri: str = ""  # what the stages log to
    db_uri: str = ""  # the database under it
    env: dict = field(default_factory=dict)  # for every dvc command of this repository
    server_log: Path | None = None  # the MLflow server's log, if any
    exps: dict[str, Experiment] = field(default_factory=dict)
    status: str = ""  # the last `dvc queue status`
    error: str = ""  # why this store has no result (its tests fail with it)

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)

    def diagnostics(self) -> str:
        logs = "".join(f"\n--- dvc queue logs {n} ---\n" + sh(["dvc", "queue", "logs", n], self.repo, check=False).stdout
                       for n in EXPERIMENTS)
        server = f"\n--- mlflow server log ---\n{self.server_log.read_text()[-6000:]}" if self.server_log else ""
        return f"{self.status}{logs}{server}"


def start_queue(q: Queued, log: Path) -> None:
    """Queue EXPERIMENTS and start two workers (``dvc queue start -j 2``)."""
    for name, params in EXPERIMENTS.items():
        q.exps[name] = Experiment(name, params)
        sets = [a for k, v in params.items() for a in ("-S", f"{k}={v}")]
        sh(["dvc", "exp", "run", "--queue", "-n", name, *sets, "unet_eval"], q.repo, env=q.env)
    queue_start(q.repo, log, q.env)


def finished_exps(repo: Path) -> set[str]:
    """Names of the experiments whose commits DVC has made (``refs/exps/...``): a cheap progress check."""
    refs = sh(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout.split()
    return {ref.rsplit("/", 1)[-1] for ref in refs}


def wait_for_queues(queues: list[Queued]) -> None:
    """Wait until nothing is queued or running in any repository (``dvc queue status``), or the deadline.

    ``dvc queue status`` costs a second of CPU, which the experiments need: it runs every STATUS_EVERY_S, and
    as soon as both experiments of a repository have their commits."""
    deadline, pending = time.time() + QUEUE_TIMEOUT_S, list(queues)
    last = dict.fromkeys((q.store for q in queues), 0.0)
    while pending:
        for q in list(pending):
            if set(EXPERIMENTS) <= finished_exps(q.repo) or time.time() - last[q.store] >= STATUS_EVERY_S:
                last[q.store] = time.time()
                q.status = sh(["dvc", "queue", "status"], q.repo).stdout
                if not any(s in q.status for s in ("Running", "Queued")):
                    pending.remove(q)
        if pending and time.time() > deadline:
            for q in pending:
                sh(["dvc", "queue", "kill", *EXPERIMENTS], q.repo, check=False)
                q.error = f"{q.store}: the queue did not finish in {QUEUE_TIMEOUT_S} s:\n{q.diagnostics()}"
            return
        time.sleep(1)


def collect(q: Queued) -> None:
    """Check both experiments succeeded; read what DVC shows of them and their training CSVs."""
    if q.status.count("Success") != len(EXPERIMENTS):
        q.error = f"{q.store}: not every experiment succeeded:\n{q.diagnostics()}"
        return
    shown = json.loads(sh(["dvc", "exp", "show", "--json"], q.repo).stdout)
    revs = {r["name"]: r for entry in shown for e in (entry.get("experiments") or []) for r in e["revs"]}
    for exp in q.exps.values():
        assert exp.name in revs, f"{exp.name} not in dvc exp show: {sorted(revs)}"
        exp.rev = revs[exp.name]["rev"]
        exp.eval_metrics = revs[exp.name]["data"]["metrics"]["reports/unet_eval.json"]["data"]
        exp.eval_info = json.loads(sh(["git", "show", f"{exp.rev}:reports/unet_eval_info.json"], q.repo).stdout)
        text = sh(["git", "show", f"{exp.rev}:reports/unet_train.csv"], q.repo).stdout
        exp.train_rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def guarded(q: Queued, step, *args) -> None:
    """Run ``step(q, ...)`` unless the store already failed; a failure becomes the store's error."""
    if q.error:
        return
    try:
        step(q, *args)
    except (AssertionError, subprocess.SubprocessError, pytest.fail.Exception) as exc:
        q.error = f"{q.store}: {exc}"


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> Iterator[dict[str, Queued]]:
    """Both stores with their two queued experiments each, run side by side to keep the test short: the default
    SQLite store (no ``MLFLOW_TRACKING_URI``: ``<repository>/mlflow.db``), started first, and the MLflow server
    on PostgreSQL (``MLFLOW_TRACKING_URI=http://...``). A store that cannot be set up or whose experiments fail
    fails its own tests only."""
    logs = tmp_path_factory.mktemp("concurrency-logs")
    with contextlib.ExitStack() as stack:
        sqlite = Queued("sqlite", make_repo(tmp_path_factory.mktemp("concurrency-sqlite")))
        sqlite.tracking_uri = sqlite.db_uri = f"sqlite:///{sqlite.repo / 'mlflow.db'}"
        sqlite.env = {**ONE_THREAD, "MLFLOW_TRACKING_URI": None}
        stack.callback(stop_leftover_workers, sqlite.repo)
        guarded(sqlite, start_queue, logs / "queue-start-sqlite.log")

        pg = Queued("postgres", make_repo(tmp_path_factory.mktemp("concurrency-postgres")))
        try:
            pg.db_uri = stack.enter_context(postgres_server())
            pg.server_log = logs / "mlflow-server.log"
            pg.tracking_uri = stack.enter_context(mlflow_server(pg.db_uri, logs))
            pg.env = {**ONE_THREAD, "MLFLOW_TRACKING_URI": pg.tracking_uri}
        except (AssertionError, subprocess.SubprocessError, pytest.fail.Exception) as exc:
            pg.error = str(exc)
        stack.callback(stop_leftover_workers, pg.repo)  # before the servers stop (last in, first out)
        guarded(pg, start_queue, logs / "queue-start-postgres.log")

        out = {"postgres": pg, "sqlite": sqlite}
        wait_for_queues([q for q in out.values() if not q.error])
        for q in out.values():
            guarded(q, collect)
        yield out


@pytest.fixture(params=["postgres", "sqlite"])
def queued(request, stores) -> Queued:
    q = stores[request.param]
    if q.error:
        pytest.fail(q.error, pytrace=False)
    return q


def stage_runs(q: Queued, name: str) -> dict[str, list]:
    """The runs of experiment ``name`` in the store, by stage (every status, deleted ones included)."""
    client = q.client()
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    assert exp is not None, f"no MLflow experiment {tracking.EXPERIMENT!r} in {q.tracking_uri}"
    found = client.search_runs([exp.experiment_id], f"tags.`segdet.dvc_exp_name` = '{name}'",
                               run_view_type=ViewType.ALL, max_results=1000)
    by_stage: dict[str, list] = {}
    for run in found:
        by_stage.setdefault(run.data.tags.get("segdet.stage", "?"), []).append(run)
    return by_stage


def one_run(q: Queued, name: str, stage: str):
    runs = stage_runs(q, name).get(stage, [])
    assert len(runs) == 1, f"{q.store}: {name}: {len(runs)} runs of {stage}"
    return runs[0]


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


# --------------------------------------------------------------------------------------------------------------
# tests


def test_every_stage_run_is_in_the_store_once_and_finished(queued):
    client = queued.client()
    head = sh(["git", "rev-parse", "HEAD"], queued.repo).stdout.strip()
    groups = {}
    for name, exp in queued.exps.items():
        by_stage = stage_runs(queued, name)
        counts = Counter({stage: len(runs) for stage, runs in by_stage.items()})
        # one parent run per experiment ("pipeline"), every stage run nested under it
        assert counts == Counter(dict.fromkeys([*STAGES, "pipeline"], 1)), \
            f"{queued.store}: {name}: runs per stage {dict(counts)}"
        parent = by_stage["pipeline"][0].info.run_id
        assert all(by_stage[s][0].data.tags["mlflow.parentRunId"] == parent for s in STAGES), name
        for stage, (run,) in by_stage.items():
            assert run.info.status == "FINISHED", f"{queued.store}: {name}: {stage} is {run.info.status}"
            assert run.info.lifecycle_stage == "active"
            assert run.data.tags["mlflow.source.git.commit"] == head
        assert by_stage["prepare"][0].data.params["data.seed"] == str(exp.params["data.seed"])
        assert by_stage["unet_train"][0].data.params["unet_train.epochs"] == str(exp.params["unet_train.epochs"])
        groups[name] = {runs[0].data.tags["segdet.pipeline_run"] for runs in by_stage.values()}
        assert len(groups[name]) == 1, f"{name}: several pipeline runs {groups[name]}"
    assert len(set.union(*groups.values())) == len(groups), groups
    # nothing else in the store: no third copy of a run, nothing left RUNNING anywhere
    every = [r for e in client.search_experiments(view_type=ViewType.ALL)
             for r in client.search_runs([e.experiment_id], run_view_type=ViewType.ALL, max_results=1000)]
    assert len(every) == (len(STAGES) + 1) * len(queued.exps), [(r.info.run_name, r.info.status) for r in every]
    assert all(r.info.status == "FINISHED" for r in every), [(r.info.run_name, r.info.status) for r in every]


def test_eval_metrics_are_the_ones_dvc_shows(queued):
    for name, exp in queued.exps.items():
        logged = dict(one_run(queued, name, "unet_eval").data.metrics)
        assert logged.pop("stage_seconds") > 0  # every stage run's own wall time (the summary's Stage times)
        assert logged.pop("stage_peak_rss_mb") > 100  # and its peak memory in MB
        logged.pop("stage_peak_rss_children_mb", None)  # the largest child process it waited for, if any
        expected = {k: float(v) for k, v in {**exp.eval_metrics, **exp.eval_info}.items() if isinstance(v, (int, float))}
        assert {"dice", "iou", "thresholded_jaccard", "images_per_second"} <= set(expected)
        best_epoch = max(exp.train_rows, key=lambda row: row["val_dice"])["epoch"]
        assert expected["trained_epochs"] == best_epoch  # unet.pt is the best epoch's checkpoint
        assert set(logged) == set(expected), f"{name}: logged {sorted(logged)}, file {sorted(expected)}"
        wrong = {k: (logged[k], v) for k, v in expected.items() if not close(logged[k], v)}
        assert not wrong, f"{queued.store}: {name}: MLflow (logged, file) differ: {wrong}"
    scores = {name: exp.eval_metrics["pixel_accuracy"] for name, exp in queued.exps.items()}
    assert len(set(scores.values())) == len(scores), f"the experiments should differ: {scores}"


def test_training_history_is_one_entry_per_epoch_equal_to_the_csv(queued):
    client = queued.client()
    for name, exp in queued.exps.items():
        run = one_run(queued, name, "unet_train")
        epochs = exp.params["unet_train.epochs"]
        assert [row["epoch"] for row in exp.train_rows] == list(range(1, epochs + 1)), exp.train_rows
        for key in (k for k in exp.train_rows[0] if k != "epoch"):
            history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
            assert [m.step for m in history] == list(range(1, epochs + 1)), f"{name}: {key} steps {history}"
            for m, row in zip(history, exp.train_rows, strict=True):  # the CSV keeps 6 significant digits
                assert close(m.value, row[key], rel=1e-5), f"{name}: {key} epoch {m.step}: {m.value} != {row[key]}"
        best = max(exp.train_rows, key=lambda row: row["val_dice"])
        assert close(run.data.metrics["best_val_dice"], best["val_dice"], rel=1e-5)
        assert run.data.metrics["best_epoch"] == best["epoch"]


def test_data_stage_metrics_count_the_tiny_datasets(queued):
    for name in queued.exps:
        manifest = one_run(queued, name, "manifest").data.metrics
        for kind in ("seg", "det"):
            counts = [manifest[f"{kind}_{split}_images"] for split in ("train", "val", "test")]
            assert sum(counts) == TINY["data"][kind]["num_images"] and min(counts) > 0, (name, kind, counts)
        assert one_run(queued, name, "prepare").data.metrics, f"{name}: prepare logged no metrics"


def test_the_database_holds_each_metric_step_once(queued):
    """Straight from the database under the store (PostgreSQL behind the server): the runs the client sees, all
    FINISHED, every metric of a run once, a training curve once per epoch, and no (run, metric, step) twice."""
    runs = {r.info.run_id: (name, stage, r) for name in queued.exps for stage, rs in stage_runs(queued, name).items()
            for r in rs}
    engine = sqlalchemy.create_engine(queued.db_uri)
    try:
        with engine.connect() as db:
            rows = db.execute(sqlalchemy.text("SELECT run_uuid, status FROM runs")).all()
            dup = db.execute(sqlalchemy.text(
                "SELECT run_uuid, key, step, COUNT(*) FROM metrics GROUP BY run_uuid, key, step HAVING COUNT(*) > 1"
            )).all()
            stored = db.execute(sqlalchemy.text("SELECT run_uuid, key, COUNT(*) FROM metrics GROUP BY run_uuid, key")
                                ).all()
    finally:
        engine.dispose()
    assert {r.run_uuid for r in rows} == set(runs)
    assert {r.status for r in rows} == {"FINISHED"}
    assert not dup, f"{queued.store}: metric steps stored more than once: {dup}"
    counts: dict[str, dict[str, int]] = {}
    for run_id, key, n in stored:
        counts.setdefault(run_id, {})[key] = n
    for run_id, (name, stage, run) in runs.items():
        if stage == "pipeline":  # the parent: its metrics come from the track stage, not run here (unet_eval target)
            assert counts.get(run_id) is None, f"{queued.store}: {name}: parent run metrics {counts.get(run_id)}"
            continue
        exp = queued.exps[name]
        per_epoch = set(exp.train_rows[0]) - {"epoch"} if stage == "unet_train" else set()
        expected = {k: exp.params["unet_train.epochs"] if k in per_epoch else 1 for k in run.data.metrics}
        assert len(expected) > 0 and counts.get(run_id) == expected, f"{queued.store}: {name}: {stage}: {counts.get(run_id)}"
