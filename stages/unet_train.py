"""DVC stage ``unet_train``: train a UNet on the segmentation manifests.

Reads ``data/manifests/seg_{train,val}.txt`` and params ``base``, ``unet_train``; writes
``models/unet.pt`` (best validation Dice) and ``reports/unet_train.csv`` (one row per epoch). The run
folder ``models/unet_run/`` keeps ``last.pt`` for resuming (``-S unet_train.weights=models/unet_run/last.pt``).
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from segdet import distributed, tracking
from segdet.config import load_params, load_section
from segdet.io import atomic_copy
from segdet.runtime import device_name, resolve_device, seed_everything
from segdet.schema import flatten
from segdet.segmentation.train import train_unet
from segdet.stage import check_writable, run_stage


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--manifests", default="data/manifests", type=Path)
    ap.add_argument("--model", default="models/unet.pt", type=Path)
    ap.add_argument("--run-dir", default="models/unet_run", type=Path)
    ap.add_argument("--plots", default="reports/unet_train.csv", type=Path)
    args = ap.parse_args(argv)
    check_writable(args.model, args.run_dir, args.plots)
    params = load_params(args.params)
    base, cfg = load_section("base", params), load_section("unet_train", params)
    device = distributed.init(resolve_device(base.device))  # cuda:LOCAL_RANK under torchrun
    seed_everything(base.seed)
    logged = {**flatten(base, "base."), **flatten(cfg, "unet_train.")}
    with (tracking.stage_run("unet_train", logged, device=device_name(device), system_metrics=True) as run,
          tracking.local_weights(cfg.weights, "unet_train.weights") as weights):
        cfg = dataclasses.replace(cfg, weights=weights)  # a runs:/ URI is now a downloaded file
        model, result = train_unet(
            cfg, train_manifest=args.manifests / "seg_train.txt", val_manifest=args.manifests / "seg_val.txt",
            root=Path.cwd(), device=device, run_dir=args.run_dir, seed=base.seed,
            on_epoch=run.epoch_logger(args.plots, args.run_dir), on_transfer=run.log_transfer, cpu_bf16=base.cpu_bf16,
        )
        if not distributed.is_main():  # rank 0 writes the outputs and logs
            return
        atomic_copy(result.best_checkpoint, args.model)
        run.log_metrics({"best_val_dice": result.best_value, "best_epoch": result.best_epoch})
        run.log_artifact(args.plots)
        run.log_checkpoint(args.model)  # for segdet predict --run
        print(f"unet_train: best val Dice {result.best_value:.4f} at epoch {result.best_epoch} -> {args.model}")


if __name__ == "__main__":
    sys.exit(run_stage(distributed.closing(main)))
