"""DVC stage ``track``: one MLflow parent run per pipeline run, holding every parameter and headline metric.

Runs last, every time (``always_changed``): when DVC restores every other stage from its cache, no stage code
runs, and this stage still gives the experiment its parent run. Reads ``params.yaml`` (all of it) and the
metrics files that ``dvc.yaml`` declares; logs them to the parent run as ``section.key`` params and
``<file stem>.<key>`` metrics (``unet_train.lr``, ``unet_eval.dice``, ``rcnn_eval.map50`` ...), ends it
FINISHED and writes ``reports/mlflow.json``: the MLflow run ids of this experiment (the parent, and the stage
runs nested under it), so a DVC experiment finds its MLflow runs and an MLflow run its DVC experiment.
"""

import argparse
import json
import math
import sys
from pathlib import Path

import yaml

from segdet import tracking
from segdet.config import SECTIONS, load_params, load_section
from segdet.io import write_json
from segdet.schema import flatten
from segdet.stage import check_writable, run_stage


def all_params(params_path: Path) -> dict:
    """Every parameter of ``params.yaml`` as ``section.key`` (validated, so ``1e-3`` is logged as 0.001)."""
    params = load_params(params_path)
    out: dict = {}
    for name in SECTIONS:
        out.update(flatten(load_section(name, params), f"{name}."))
    return out


def headline_metrics(root: Path, reports: Path) -> tuple[dict[str, float], dict[str, str]]:
    """The numbers of every metrics file in ``dvc.yaml`` under ``reports`` as ``<file stem>.<key>`` (nested keys
    joined with dots), and those of the info files beside them (``unet_eval_info.json``: speed figures) under the
    same prefix (``unet_eval.images_per_second``); the info files' text (``hardware``, ``device`` ...) as tags
    ``segdet.<file stem>.<key>``. A file that does not exist yet (a stage not run) is skipped."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    numbers: dict[str, float] = {}
    text: dict[str, str] = {}

    def walk(value, key):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            numbers[key] = float(value)
        elif isinstance(value, str):
            text[f"segdet.{key}"] = value

    for spec in stages.values():
        outs = [e if isinstance(e, str) else next(iter(e)) for e in (spec.get("outs", []) or [])]
        files = [e if isinstance(e, str) else next(iter(e)) for e in (spec.get("metrics", []) or [])]
        files += [o for o in outs if o.endswith("_info.json")]
        for name in files:
            path = root / name
            if path.suffix == ".json" and path.is_file() and path.is_relative_to(root / reports):
                walk(json.loads(path.read_text()), path.stem.removesuffix("_info"))
    return numbers, text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml", type=Path)
    ap.add_argument("--reports", default="reports", type=Path, help="folder of the metrics files")
    ap.add_argument("--out", default="reports/mlflow.json", type=Path)
    args = ap.parse_args(argv)
    check_writable(args.out)
    root = Path.cwd()
    stages = [s for s in yaml.safe_load((root / "dvc.yaml").read_text())["stages"] if s != "track"]
    params = all_params(args.params)
    metrics, descriptions = headline_metrics(root, args.reports)
    previous = None
    if args.out.is_file():  # the last pipeline run's record (a repeated dvc repro that changed nothing keeps it)
        try:
            previous = json.loads(args.out.read_text())
        except ValueError:
            previous = None
    info = tracking.record_pipeline(params, metrics, stages, root=root, previous=previous, tags=descriptions)
    write_json(args.out, info)
    if info == previous:
        print(f"track: nothing ran and nothing changed: MLflow parent run {info['parent_run_id']} of the last pipeline "
              f"run stands for this one -> {args.out}")
        return
    print(f"track: MLflow parent run {info['parent_run_id']} ({len(params)} params, {len(metrics)} metrics; "
          f"stages run: {', '.join(info['stage_runs']) or 'none'}; restored by DVC: "
          f"{', '.join(info['restored_stages']) or 'none'}) -> {args.out}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
