"""DVC stage ``rcnn_features``: CNN features of every ground-truth box and proposal of the train split.

Reads ``models/rcnn_cnn.pt``, ``data/manifests/det_train.txt``, ``data/proposals/train.parquet`` and params
``base``, ``data.det.use_difficult`` (difficult objects among the ground-truth boxes);
writes ``data/features/train/chunk_NNNNN.npz`` (float16 features with their boxes, labels and IoUs) and
``meta.json``. The SVM stage streams these chunks, so changing only ``rcnn_svm`` params reuses them.
"""

import argparse
import sys
from pathlib import Path

from segdet import tracking
from segdet.config import load_params, load_section
from segdet.data.datasets import read_classes
from segdet.detection.rcnn.features import extract_features
from segdet.detection.rcnn.model import RegionCNN
from segdet.detection.rcnn.regions import iter_split
from segdet.io import atomic_dir
from segdet.nets.weights import load_checkpoint
from segdet.runtime import device_name, resolve_device
from segdet.schema import flatten
from segdet.stage import check_writable, run_stage


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="models/rcnn_cnn.pt", type=Path)
    ap.add_argument("--manifests", default="data/manifests", type=Path)
    ap.add_argument("--proposals", default="data/proposals/train.parquet", type=Path)
    ap.add_argument("--out", default="data/features/train", type=Path)
    args = ap.parse_args(argv)
    check_writable(args.out)
    params = load_params(args.params)
    base = load_section("base", params)
    use_difficult = load_section("data", params).det.use_difficult
    device = resolve_device(base.device)
    model, cfg = RegionCNN.from_checkpoint(load_checkpoint(args.model), str(args.model))
    classes = read_classes(args.manifests / "det_classes.txt")
    items = (item for _, item in iter_split(args.manifests / "det_train.txt", classes, Path.cwd(), args.proposals,
                                            use_difficult))
    logged = {**flatten(base, "base."), "data.det.use_difficult": use_difficult,
              "rcnn_finetune.backbone": cfg["backbone"], "rcnn_finetune.crop_size": cfg["crop_size"],
              "rcnn_finetune.context": cfg["context"]}
    with tracking.stage_run("rcnn_features", logged, device=device_name(device)) as run, atomic_dir(args.out) as out:
        meta = extract_features(model, items, out, crop_size=cfg["crop_size"], context=cfg["context"], device=device)
        run.log_metrics({k: v for k, v in meta.items()})
        print(f"rcnn_features: {meta['regions']} regions of {meta['images']} images, {meta['dim']} dimensions")


if __name__ == "__main__":
    sys.exit(run_stage(main))
