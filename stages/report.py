"""DVC stage ``report``: one summary of the pipeline run, R-CNN against YOLOv1 beside the papers' figures.

Reads ``reports/{unet,rcnn,yolo}_eval.json``, ``reports/proposals.json``, their ``*_info.json`` files, params
``data.{seg,det}.{source,path}`` (to name the data) and each stage's seconds from its MLflow run (``stage_seconds``);
writes ``reports/summary.md`` and its plots ``reports/summary/*.png``, and logs both to MLflow.
"""

import argparse
import sys
from pathlib import Path

import cv2
import yaml

from segdet import tracking
from segdet.config import load_params, load_section
from segdet.io import atomic_dir, atomic_file, write_image
from segdet.report import build_summary, read_reports
from segdet.stage import check_writable, run_stage


def _describe(cfg) -> str:
    return "synthetic" if cfg.source == "synthetic" else f"{cfg.source} `{cfg.path}`"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--reports", default="reports", type=Path)
    ap.add_argument("--summary", default="reports/summary.md", type=Path)
    ap.add_argument("--figures", default="reports/summary", type=Path)
    args = ap.parse_args(argv)
    check_writable(args.summary, args.figures)
    data = load_section("data", load_params(args.params))
    pipeline = [s for s in yaml.safe_load(Path("dvc.yaml").read_text())["stages"] if s not in ("report", "track")]
    summary = build_summary(read_reports(args.reports), det_data=_describe(data.det), seg_data=_describe(data.seg),
                            timings=tracking.stage_seconds(pipeline))
    with tracking.stage_run("report", {"data.det.source": data.det.source, "data.seg.source": data.seg.source}) as run:
        with atomic_dir(args.figures) as out:
            for name, image in summary.figures.items():
                write_image(out / name, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        with atomic_file(args.summary) as fh:
            fh.write(summary.markdown)
        run.log_metrics(summary.metrics)
        run.log_artifact(args.summary)
        run.log_artifacts(args.figures, "summary")
    print(f"report: {args.summary} and {len(summary.figures)} plots in {args.figures}/")


if __name__ == "__main__":
    sys.exit(run_stage(main))
