"""DVC stage ``unet_eval``: score the trained UNet on the test split at the original image sizes.

Reads ``models/unet.pt``, ``data/manifests/seg_test.txt`` and params ``base.device``, ``unet_eval``; writes
``reports/unet_eval.json`` (means over images), ``reports/unet_eval_info.json`` (device, hardware, variant,
images per second: the run, not DVC metrics), ``reports/unet_eval_per_image.csv`` and 0/255 PNG
predictions ``reports/unet/pred_test/<label file name>``. Logs the served model (``segdet.serving``) with these
settings and registers it as ``segdet-unet``.
"""

import argparse
import sys
from pathlib import Path

from segdet import serving, tracking
from segdet.config import load_params, load_section
from segdet.data.formats import read_gray, read_rgb
from segdet.data.pairs import resolve
from segdet.draw import overlay
from segdet.inference import settings_of
from segdet.io import atomic_dir, atomic_file, write_json
from segdet.nets.weights import load_checkpoint
from segdet.runtime import device_name, hardware, resolve_device
from segdet.schema import flatten
from segdet.segmentation.evaluate import evaluate_unet, load_unet
from segdet.stage import check_writable, run_stage


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="models/unet.pt", type=Path)
    ap.add_argument("--manifest", default="data/manifests/seg_test.txt", type=Path)
    ap.add_argument("--metrics", default="reports/unet_eval.json", type=Path)
    ap.add_argument("--info", default="reports/unet_eval_info.json", type=Path)
    ap.add_argument("--per-image", default="reports/unet_eval_per_image.csv", type=Path)
    ap.add_argument("--pred-dir", default="reports/unet/pred_test", type=Path)
    args = ap.parse_args(argv)
    check_writable(args.metrics, args.info, args.per_image, args.pred_dir)
    params = load_params(args.params)
    base, cfg = load_section("base", params), load_section("unet_eval", params)
    device = resolve_device(base.device)
    ckpt = load_checkpoint(args.model, map_location=device)
    model, train_cfg = load_unet(ckpt, str(args.model))
    root = Path.cwd()
    logged = {**flatten(base, "base."), **flatten(cfg, "unet_eval."), "unet_train.variant": train_cfg["variant"],
              "unet_train.input_size": train_cfg["input_size"]}
    with tracking.stage_run("unet_eval", logged, device=device_name(device)) as run, atomic_dir(args.pred_dir) as pred:
        result = evaluate_unet(model.to(device), args.manifest, root, input_size=train_cfg["input_size"],
                               device=device, batch_size=cfg.batch_size, tta=cfg.tta,
                               postprocess=cfg.postprocess, pred_dir=pred)
        summary = {**result.summary, "input_size": train_cfg["input_size"], "trained_epochs": ckpt["epoch"]}
        info = {"device": device_name(device), "hardware": hardware(device), "variant": train_cfg["variant"],
                "images_per_second": summary.pop("images_per_second")}  # the run, not a result: not a DVC metric
        with atomic_file(args.per_image) as fh:
            result.per_image.to_csv(fh, index=False, float_format="%.6g")
        write_json(args.metrics, summary)
        write_json(args.info, info)
        run.log_metrics({k: v for k, v in {**summary, **info}.items() if isinstance(v, (int, float))})
        run.log_artifact(args.per_image)
        for row in result.per_image.head(cfg.overlays).itertuples():
            truth = read_gray(resolve(row.label, root)) > 0
            guess = read_gray(pred / Path(row.label).name) > 0
            run.log_image(overlay(read_rgb(resolve(row.image, root)), truth, guess),
                          f"overlays/{Path(row.label).stem}.png")
        print("unet_eval: " + ", ".join(f"{k} {summary[k]:.4f}" for k in ("dice", "iou", "thresholded_jaccard"))
              + f", {info['images_per_second']:.1f} images/s (batch {cfg.batch_size}, {info['device']})")
        example = resolve(result.per_image["image"].iloc[0], root) if len(result.per_image) else None
        serving.log_model(run, "unet", [args.model], settings_of("unet", cfg), example)  # never raises


if __name__ == "__main__":
    sys.exit(run_stage(main))
