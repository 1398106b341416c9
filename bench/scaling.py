"""How time and memory grow with the data: every stage of ``dvc repro`` at 1x, 2x and 4x the default images.

Each scale runs the whole pipeline in its own throw-away copy of the project (git + DVC, the synthetic data of
``params.yaml`` with ``data.seg.num_images`` and ``data.det.num_images`` multiplied), and reads each stage's
wall-clock seconds and peak resident memory from the MLflow run the stage logged (``stage_seconds``,
``stage_peak_rss_mb``, the figures of the report's "Stage times"). ``--short`` trains fewer epochs (the time of an
epoch grows with the images; the epoch count does not change with them), so the three runs fit in an hour on
two cores.

    python -m bench.scaling [--scales 1 2 4] [--short] [--json docs/figures/scaling.json]
                            [--plot docs/figures/scaling.png] [--work /tmp/segdet-scaling]

Prints one row per stage: seconds and peak MB at each scale, and their ratios to 1x. A stage that holds a
split's features, proposals or predictions in memory shows up as peak memory growing with the scale.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
#: --short: epochs per training stage (the defaults: UNet 16, R-CNN fine-tuning 10, YOLOv1 60)
SHORT = {"unet_train": {"epochs": 2, "step_size": 1}, "rcnn_finetune": {"epochs": 2, "step_size": 1},
         "yolo_train": {"epochs": 3, "warmup_epochs": 1}}
#: the stages whose peak memory must not grow with the split (issue: at 4x at most 1.2x that at 1x)
FLAT = ("rcnn_features", "rcnn_eval")


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def make_copy(dest: Path, scale: float, short: bool) -> Path:
    """A git + DVC copy of the project in ``dest`` with the default params, the image counts times ``scale``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ("stages", "src"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy2(REPO / "dvc.yaml", dest / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for task in ("seg", "det"):
        params["data"][task]["num_images"] = round(params["data"][task]["num_images"] * scale)
    if short:
        params = merge(params, SHORT)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".gitignore").write_text("/data/\n/models/\n/mlflow.db\n/mlartifacts/\n")
    env = environment(dest)
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
    if (REPO / ".dvc" / "plots").is_dir():  # the plot templates dvc.yaml names
        shutil.copytree(REPO / ".dvc" / "plots", dest / ".dvc" / "plots")
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", f"scaling {scale:g}x"],
                # create the MLflow store now: its schema migration would count in the first stage's memory
                [sys.executable, "-c", "import mlflow; mlflow.search_experiments()"]):
        subprocess.run(cmd, cwd=dest, env=env, check=True, capture_output=True)
    return dest


def environment(repo: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(repo / "src"), "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
            "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost"}


def stage_figures(repo: Path) -> dict[str, dict[str, float]]:
    """``{stage: {"seconds": s, "peak_mb": m}}`` from the stages' MLflow runs in ``repo``'s store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    found = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'", max_results=1000):
            stage, metrics = run.data.tags.get("segdet.stage"), run.data.metrics
            if stage and "stage_seconds" in metrics:
                found[stage] = {"seconds": metrics["stage_seconds"], "peak_mb": metrics.get("stage_peak_rss_mb")}
    order = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]  # pipeline order
    return {stage: found[stage] for stage in order if stage in found}


def run_scale(work: Path, scale: float, short: bool) -> dict:
    repo = make_copy(work / f"x{scale:g}", scale, short)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=repo, env=environment(repo),
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (work / f"x{scale:g}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"dvc repro at {scale:g}x failed (exit {done.returncode}); see {work / f'x{scale:g}.log'}")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    return {"scale": scale, "seg_images": params["data"]["seg"]["num_images"],
            "det_images": params["data"]["det"]["num_images"], "repro_seconds": wall, "stages": stage_figures(repo)}


def table(results: list[dict]) -> str:
    stages = [s for s in results[0]["stages"] if all(s in r["stages"] for r in results)]
    heads = [f"{r['scale']:g}x" for r in results]
    lines = ["| stage | " + " | ".join(f"s {h}" for h in heads) + " | " + " | ".join(f"MB {h}" for h in heads)
             + " | time ratio | memory ratio |", "|---" * (1 + 2 * len(heads) + 2) + "|"]
    for s in stages:
        sec = [r["stages"][s]["seconds"] for r in results]
        mem = [r["stages"][s]["peak_mb"] for r in results]
        lines.append(f"| {s} | " + " | ".join(f"{x:.1f}" for x in sec) + " | " + " | ".join(f"{x:.0f}" for x in mem)
                     + f" | {sec[-1] / sec[0]:.2f} | {mem[-1] / mem[0]:.2f} |")
    lines.append("| `dvc repro` | " + " | ".join(f"{r['repro_seconds']:.0f}" for r in results) + " |" * len(heads)
                 + f" | {results[-1]['repro_seconds'] / results[0]['repro_seconds']:.2f} | |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path, hardware: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [r["scale"] for r in results]
    stages = [s for s in results[0]["stages"] if all(s in r["stages"] for r in results)]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.get_cmap("tab20").colors
    for i, s in enumerate(stages):
        a.plot(scales, [r["stages"][s]["seconds"] for r in results], marker="o", label=s, color=colours[i])
        b.plot(scales, [r["stages"][s]["peak_mb"] for r in results], marker="o", label=s, color=colours[i])
    for ax, title, unit in ((a, "wall-clock seconds", "s"), (b, "peak resident memory", "MB")):
        ax.set(xlabel="images (x the default 300 per task)", ylabel=unit, title=title, xticks=scales)
        ax.grid(alpha=0.3)
    a.set_yscale("log")
    b.legend(fontsize=7, ncol=2)
    fig.suptitle(f"segdet stages at {', '.join(f'{s:g}x' for s in scales)} the images; {hardware}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", type=float, nargs="+", default=[1, 2, 4])
    ap.add_argument("--short", action="store_true", help="fewer training epochs (see SHORT)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/segdet-scaling"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    from segdet.runtime import hardware

    where = hardware("cpu")
    results = []
    for scale in args.scales:
        results.append(run_scale(args.work, scale, args.short))
        print(f"{scale:g}x: dvc repro {results[-1]['repro_seconds']:.0f} s", flush=True)
    print(f"\n{where}; {'--short epochs ' + json.dumps(SHORT) if args.short else 'default epochs'}\n")
    print(table(results))
    for s in FLAT:
        mem = [r["stages"][s]["peak_mb"] for r in results if s in r["stages"]]
        if len(mem) == len(results):
            print(f"{s}: peak memory at {results[-1]['scale']:g}x is {mem[-1] / mem[0]:.2f}x that at "
                  f"{results[0]['scale']:g}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"hardware": where, "short": args.short, "results": results}, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot, where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
