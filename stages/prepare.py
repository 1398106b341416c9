"""DVC stage ``prepare``: synthetic datasets, or a user's ISIC / VOC / COCO data imported, into data/raw/.

Reads params ``data``; writes ``data/raw/isic`` and ``data/raw/voc``; logs one MLflow run.
"""

import argparse
import sys
from pathlib import Path

from segdet import tracking
from segdet.config import load_section
from segdet.data.formats import parse_voc_xml
from segdet.data.manifest import det_sources, seg_sources
from segdet.data.pairs import resolve
from segdet.data.prepare import prepare_data
from segdet.data.preview import det_sheet, seg_sheet
from segdet.runtime import repo_root
from segdet.schema import flatten
from segdet.stage import check_writable, run_stage


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/raw", type=Path)
    args = ap.parse_args(argv)
    check_writable(args.out / "isic", args.out / "voc")
    cfg = load_section("data", args.params)
    root, source_root = Path.cwd(), repo_root()
    with tracking.stage_run("prepare", flatten(cfg, "data.")) as run:

        def log_summary(folders, summary):  # runs before the new data/raw/* replaces the old
            run.log_dict(summary, "prepare_summary.json")
            metrics = {f"{k}_{m}": v for k in ("seg", "det") for m, v in summary[k].items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            metrics.update({f"det_objects_{c}": n for c, n in summary["det"].get("objects_per_class", {}).items()})
            run.log_metrics(metrics)
            seg = [p for ps in seg_sources(cfg, args.out, root, source_root, folders["isic"]).values() for p in ps]
            det = [p for ps in det_sources(cfg, args.out, root, source_root, folders["voc"]).values() for p in ps]
            anns = [parse_voc_xml(resolve(p.label, root)) for p in det[:16]]
            classes = sorted({o.name for a in anns for o in a.objects})
            run.log_image(seg_sheet(seg[:16], root), "samples/seg_raw.png")
            run.log_image(det_sheet(det[:16], anns, classes, root), "samples/det_raw.png")

        summary = prepare_data(cfg, args.out, root, source_root=source_root, before_commit=log_summary)
        print(f"prepare: seg {summary['seg']}\nprepare: det {summary['det']}")

if __name__ == "__main__":
    sys.exit(run_stage(main))
