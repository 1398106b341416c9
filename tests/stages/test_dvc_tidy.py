"""DVC stays readable for people comparing experiments: the metrics files hold results only (numbers; what describes
the run, timings included, is in the ``*_info.json`` files), so ``dvc exp show --only-changed`` of two experiments
that differ in one parameter is a short table; ``dvc plots`` draws the precision/recall curves one line per class
and shows the report's summary figures as images."""

import csv
import io
import json
import re
import shutil

import pytest

from tests.stages.conftest import sh

pytestmark = pytest.mark.slow

MAX_COLUMNS = 20
#: stages that time themselves: their timings differ every time they run
TIMED = ["proposals", "unet_eval", "rcnn_eval", "yolo_eval"]
SUMMARY_PNGS = ["detection_map.png", "detection_speed.png", "proposal_recall.png", "unet.png"]


@pytest.fixture(scope="module")
def compared(pipeline_repo, tmp_path_factory):
    """A copy of the tiny project whose baseline commit holds a full ``dvc repro``, and two experiments: ``again``
    (the defaults, its timed stages run again, as on another day or machine: every timing differs from the
    baseline's) and ``lr`` (one UNet parameter changed: the UNet stages and the report run)."""
    repo = tmp_path_factory.mktemp("tidy") / "repo"
    shutil.copytree(pipeline_repo, repo, symlinks=True)
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-qm", "baseline: the pipeline's results"], repo)
    sh(["dvc", "exp", "run", "-n", "again", "--force", "--single-item", *TIMED], repo)
    sh(["dvc", "exp", "run", "-n", "lr", "-S", "unet_train.lr=0.002"], repo)
    return repo


def _header(repo, *args) -> list[str]:
    return next(csv.reader(io.StringIO(sh(["dvc", "exp", "show", "--csv", *args], repo).stdout)))


def _info(repo, rev: str, name: str) -> dict:
    return json.loads(sh(["git", "show", f"{rev}:reports/{name}"], repo).stdout)


def test_exp_show_only_changed_is_a_short_table(compared):
    head = sh(["git", "rev-parse", "HEAD"], compared).stdout.strip()
    shown = {r["name"]: r["rev"] for entry in json.loads(sh(["dvc", "exp", "show", "--json"], compared).stdout)
             for e in (entry.get("experiments") or []) for r in e["revs"]}
    assert {"again", "lr"} <= set(shown), shown
    # the scenario is real: the timed stages measured again, so their info files differ from the baseline's
    assert _info(compared, shown["again"], "yolo_eval_info.json")["fps"] != _info(compared, head,
                                                                                   "yolo_eval_info.json")["fps"]
    header = _header(compared, "--only-changed")
    print(f"dvc exp show --only-changed: {len(header)} columns {header}; "
          f"dvc exp show: {len(_header(compared))} columns")
    assert "unet_train.lr" in header
    timing = [c for c in header if re.search(r"seconds|fps|per_second", c)]
    assert not timing, f"timings shown as metrics (they change every run): {timing}"
    assert len(header) <= MAX_COLUMNS, f"{len(header)} columns: {header}"


def test_metrics_are_numbers_and_the_run_is_described_beside_them(compared):
    metrics = json.loads(sh(["dvc", "metrics", "show", "--json"], compared).stdout)
    files = next(iter(metrics.values()))["data"]
    assert set(files) == {f"reports/{n}.json" for n in ("unet_eval", "proposals", "rcnn_eval", "yolo_eval")}

    def numbers(value):
        return all(map(numbers, value.values())) if isinstance(value, dict) else (
            isinstance(value, (int, float)) and not isinstance(value, bool))

    for path, data in files.items():
        assert numbers(data["data"]), f"{path}: {data['data']}"
    for name in ("unet_eval", "rcnn_eval", "yolo_eval"):
        info = json.loads((compared / "reports" / f"{name}_info.json").read_text())
        assert info["device"] == "cpu" and info["hardware"], info


@pytest.fixture(scope="module")
def plots(compared):
    return json.loads(sh(["dvc", "plots", "show", "--json"], compared).stdout)["data"]


def test_pr_curves_are_drawn_one_line_per_class(plots):
    for title in ("R-CNN precision/recall (test)", "YOLOv1 precision/recall (test)"):
        assert title in plots
    [rcnn] = plots["R-CNN precision/recall (test)"]  # the tiny YOLOv1 may find nothing: its table can be empty
    spec = rcnn["content"]
    assert spec["encoding"]["color"]["field"] == "class"
    assert spec["encoding"]["strokeDash"]["field"] == "rev"
    assert (spec["encoding"]["x"]["field"], spec["encoding"]["y"]["field"]) == ("recall", "precision")
    classes = {row["class"] for row in spec["data"]["values"]}
    assert len(classes) >= 2 and classes <= {"circle", "square", "triangle", "star", "cross"}


def test_pr_curves_of_two_revisions_are_told_apart(compared):
    diff = json.loads(sh(["dvc", "plots", "diff", "HEAD", "lr", "--json"], compared).stdout)["data"]
    [spec] = [p["content"] for p in diff["R-CNN precision/recall (test)"]]
    revs = {row["rev"] for row in spec["data"]["values"]}
    assert len(revs) == 2 and spec["encoding"]["strokeDash"]["field"] == "rev"
    images = {name: [p["revisions"][0] for p in diff.get(f"reports/summary/{name}", [])] for name in SUMMARY_PNGS}
    assert all(len(revs) == 2 for revs in images.values()), images


def test_summary_figures_are_image_plots(plots):
    for name in SUMMARY_PNGS:
        entries = plots.get(f"reports/summary/{name}")
        assert entries and all(e["type"] == "image" for e in entries), (name, sorted(plots))
