"""DVC stage ``proposals``: selective search boxes for every image of the detection splits.

Reads ``data/manifests/det_{train,val,test}.txt`` and params ``proposals``; writes
``data/proposals/{train,val,test}.parquet`` (columns ``image, x1, y1, x2, y2``) and
``reports/proposals.json`` (recall of the ground-truth boxes at IoU 0.5 and 0.7, boxes per image) and
``reports/proposals_info.json`` (mode, workers, seconds per image: the run, not DVC metrics; with ``mode: auto``
the mode chosen on training images and the recalls it was chosen on, ``mode_auto``; the training images searched
for that choice are not searched again).
"""

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from segdet import tracking
from segdet.config import load_params, load_section
from segdet.data.formats import SPLITS
from segdet.data.pairs import box_targets, read_classes, read_manifest
from segdet.detection.proposals import ProposalWriter, choose_mode, covered, propose_reusing
from segdet.io import atomic_dir, write_json
from segdet.runtime import cpu_share
from segdet.schema import flatten
from segdet.stage import check_writable, run_stage


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifests", default="data/manifests", type=Path)
    ap.add_argument("--out", default="data/proposals", type=Path)
    ap.add_argument("--report", default="reports/proposals.json", type=Path)
    ap.add_argument("--info", default="reports/proposals_info.json", type=Path)
    args = ap.parse_args(argv)
    check_writable(args.out, args.report, args.info)
    cfg = load_section("proposals", load_params(args.params))
    settings = cfg
    workers = cfg.workers or cpu_share()
    classes = read_classes(args.manifests / "det_classes.txt")
    report = {"max_side": cfg.max_side}
    info = {"mode": cfg.mode, "workers": workers}  # and the timings: the run, not results (no DVC metrics)
    sampled: dict = {}  # mode auto: the sampled training images' boxes in the chosen mode, not searched again
    with tracking.stage_run("proposals", flatten(cfg, "proposals.")) as run, atomic_dir(args.out) as out:
        if cfg.mode == "auto":  # chosen on training images; rcnn_eval and segdet predict read it from info
            pairs = read_manifest(args.manifests / "det_train.txt")
            gt = [t.boxes for t in box_targets(pairs, classes, Path("."))]
            mode, chosen_on = choose_mode([p.image for p in pairs], gt, cfg, workers, progress=True, keep=sampled)
            settings = replace(cfg, mode=mode)
            info.update(mode=mode, mode_auto=chosen_on)
            run.set_tags({"proposals_mode": mode})
            found = ", ".join(f"{m} {r:.3f}" for m, r in chosen_on["recall_0.5"].items())
            print(f"proposals: mode auto -> {mode} (recall@0.5 on {chosen_on['images']} training images: {found}; "
                  f"quality is chosen when it gains at least {chosen_on['min_gain']})")
        for split in SPLITS:
            pairs = read_manifest(args.manifests / f"det_{split}.txt")
            targets = box_targets(pairs, classes, Path("."))  # DVC runs the stage in the repository root
            paths = [p.image for p in pairs]
            # streamed: each image's boxes go to the parquet and the recall counts, never a split's worth in memory
            hits = {0.5: 0, 0.7: 0}
            objects = boxes = 0
            seconds = 0.0
            t0 = time.perf_counter()
            found = tqdm(propose_reusing(paths, settings, workers, sampled if split == "train" else None),
                         total=len(paths), unit="img", desc=f"selective search {split}")
            with ProposalWriter(out / f"{split}.parquet") as writer:
                for (path, props, took), target in zip(found, targets, strict=True):
                    writer.add(path, props)
                    gt = target.boxes
                    objects, boxes, seconds = objects + len(gt), boxes + len(props), seconds + took
                    for iou in hits:
                        hits[iou] += covered(gt, props, iou)
            wall = time.perf_counter() - t0
            n = len(paths)
            report[split] = {
                "images": n,
                "recall_0.5": hits[0.5] / objects if objects else float("nan"),
                "recall_0.7": hits[0.7] / objects if objects else float("nan"),
                "boxes_per_image": boxes / n if n else 0.0,
                "seconds_per_image": seconds / n if n else 0.0,
                "images_per_second_all_workers": n / wall if wall else 0.0,
            }
            info[split] = {k: report[split].pop(k) for k in ("seconds_per_image", "images_per_second_all_workers")}
            logged = {**report[split], **info[split]}
            run.log_metrics({f"{split}_{k.replace('.', '')}": v for k, v in logged.items()})
            print(f"proposals {split}: " + ", ".join(f"{k} {v:.3g}" for k, v in logged.items()))
        write_json(args.report, report)
        write_json(args.info, info)
        run.log_artifact(args.report)


if __name__ == "__main__":
    sys.exit(run_stage(main))
