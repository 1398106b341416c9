"""DVC stage ``rcnn_finetune``: fine-tune the R-CNN region CNN on warped proposals.

Reads the detection manifests, ``data/proposals/{train,val}.parquet`` and params ``base``,
``rcnn_finetune``, ``data.det.use_difficult``; writes ``models/rcnn_cnn.pt`` (lowest validation loss) and
``reports/rcnn_finetune.csv``.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from segdet import distributed, tracking
from segdet.config import load_params, load_section
from segdet.data.datasets import read_classes
from segdet.detection.rcnn.regions import load_split
from segdet.detection.rcnn.train import finetune_rcnn
from segdet.io import atomic_copy
from segdet.runtime import device_name, resolve_device, seed_everything
from segdet.schema import flatten
from segdet.stage import check_writable, run_stage


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifests", default="data/manifests", type=Path)
    ap.add_argument("--proposals", default="data/proposals", type=Path)
    ap.add_argument("--model", default="models/rcnn_cnn.pt", type=Path)
    ap.add_argument("--run-dir", default="models/rcnn_run", type=Path)
    ap.add_argument("--plots", default="reports/rcnn_finetune.csv", type=Path)
    args = ap.parse_args(argv)
    check_writable(args.model, args.run_dir, args.plots)
    params = load_params(args.params)
    base, cfg = load_section("base", params), load_section("rcnn_finetune", params)
    use_difficult = load_section("data", params).det.use_difficult
    device = distributed.init(resolve_device(base.device))  # cuda:LOCAL_RANK under torchrun
    seed_everything(base.seed)
    classes = read_classes(args.manifests / "det_classes.txt")
    root = Path.cwd()
    _, train = load_split(args.manifests / "det_train.txt", classes, root, args.proposals / "train.parquet",
                          use_difficult)
    _, val = load_split(args.manifests / "det_val.txt", classes, root, args.proposals / "val.parquet", use_difficult)
    logged = {**flatten(base, "base."), **flatten(cfg, "rcnn_finetune."), "data.det.use_difficult": use_difficult}
    with (tracking.stage_run("rcnn_finetune", logged, device=device_name(device), system_metrics=True) as run,
          tracking.local_weights(cfg.weights, "rcnn_finetune.weights") as weights):
        cfg = dataclasses.replace(cfg, weights=weights)  # a runs:/ URI is now a downloaded file
        _, result = finetune_rcnn(cfg, train_items=train, val_items=val, classes=classes, device=device,
                                  run_dir=args.run_dir, seed=base.seed, on_epoch=run.epoch_logger(args.plots, args.run_dir),
                                  on_transfer=run.log_transfer, cpu_bf16=base.cpu_bf16)
        if not distributed.is_main():  # rank 0 writes the outputs and logs
            return
        atomic_copy(result.best_checkpoint, args.model)
        best = result.history[result.best_epoch - 1]
        run.log_metrics({"best_epoch": result.best_epoch, "best_val_loss": result.best_value,
                         "best_val_acc": best["val_acc"]})
        run.log_artifact(args.plots)
        print(f"rcnn_finetune: best val loss {result.best_value:.4f}, accuracy {best['val_acc']:.3f} "
              f"(objects {best['val_fg_acc']:.3f}) at epoch {result.best_epoch} -> {args.model}")


if __name__ == "__main__":
    sys.exit(run_stage(distributed.closing(main)))
