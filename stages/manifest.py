"""DVC stage ``manifest``: pair, split and validate the data; write data/manifests/ (file contracts: docs/architecture.md).

Reads ``data/raw/`` (or the user's manifests) and params ``data``; writes
``data/manifests/{seg,det}_{train,val,test}.txt``, ``det_classes.txt`` and ``det_{split}_coco.json``.
Nothing is written unless every check passes; each problem names its manifest line or file.
"""

import argparse
import sys
from pathlib import Path

from segdet import tracking
from segdet.config import load_section
from segdet.data.formats import SPLITS, parse_voc_xml
from segdet.data.manifest import build_manifests
from segdet.data.pairs import read_manifest, resolve
from segdet.data.preview import det_sheet, seg_sheet
from segdet.runtime import repo_root
from segdet.schema import flatten
from segdet.stage import check_writable, run_stage


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--raw", default="data/raw", type=Path)
    ap.add_argument("--out", default="data/manifests", type=Path)
    args = ap.parse_args(argv)
    check_writable(args.out)
    cfg = load_section("data", args.params)
    root, source_root = Path.cwd(), repo_root()
    with tracking.stage_run("manifest", flatten(cfg, "data.")) as run:
        summary = build_manifests(cfg, args.raw, args.out, root, source_root=source_root)
        run.log_dict(summary, "manifest_summary.json")
        run.set_tags({"segdet.seg_splits": summary["seg"]["how"], "segdet.det_splits": summary["det"]["how"]})
        metrics = {f"{k}_{s}_images": summary[k][s] for k in ("seg", "det") for s in SPLITS}
        metrics.update({f"det_{s}_objects_{c}": n for s in SPLITS for c, n in summary["det"][f"{s}_objects"].items()})
        run.log_metrics(metrics)
        classes = summary["det"]["classes"]
        seg = read_manifest(args.out / "seg_train.txt")[:16]
        det = read_manifest(args.out / "det_train.txt")[:16]
        run.log_image(seg_sheet(seg, root), "samples/seg_train.png")
        run.log_image(det_sheet(det, [parse_voc_xml(resolve(p.label, root)) for p in det], classes, root),
                      "samples/det_train.png")
        for k in ("seg", "det"):
            print(f"manifest: {k}: " + ", ".join(f"{s} {summary[k][s]}" for s in SPLITS) + f" ({summary[k]['how']})")
        print(f"manifest: classes {classes}")


if __name__ == "__main__":
    sys.exit(run_stage(main))
