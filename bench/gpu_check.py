"""The GPU check: what segdet does on one GPU (and on two with torchrun), in under 10 minutes.

1. UNet: unet64 at 256 px on the ISIC 2018 Task 1 images of ``<data>/isic2018-512`` (train 1600, val 400):
   training images/s and the best validation Dice after ``--unet-epochs``.
2. YOLOv1 as published: darknet24 at 448 px with the fully connected head, output 7x7x30 (20 classes; the
   raccoon set of ``<data>/raccoon-voc`` fills one of them), ``--yolo-epochs`` of training (images/s, val mAP@0.5),
   then frames per second at batch size 1 (forward pass, and with preprocessing and decoding).
3. R-CNN: seconds per image for ~2000 selective-search proposals warped to 227 px through AlexNet features, SVM
   scores, box regression and NMS (SVMs untrained: the time does not depend on their weights).
4. With 2 or more GPUs: the UNet epochs again under ``torchrun`` with 2 processes (images/s).

Every time is CUDA-synchronised. Writes ``<out>/gpu_check.json`` and prints a table for docs/benchmarks.md.
``--dry-run`` runs every step on CPU with tiny synthetic data and tiny settings (checks the script, not the GPU;
the torchrun step then runs 2 gloo processes). Usually started by ``bench/gpu_check.sh``.

    python -m bench.gpu_check --data ../shared/realdata --out reports/gpu_check [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from segdet import distributed
from segdet.data.datasets import DetectionDataset
from segdet.data.formats import read_bgr
from segdet.data.pairs import Pair, write_manifest
from segdet.data.sources import find_isic_pairs, isic_split_folders, voc_split_lists
from segdet.detection.proposals import selective_search
from segdet.detection.rcnn.detect import RCNNDetector
from segdet.detection.rcnn.model import RegionCNN
from segdet.detection.yolo.detect import YoloDetector
from segdet.detection.yolo.train import train_yolo
from segdet.runtime import hardware
from segdet.sections import ProposalsConfig, UnetTrainConfig, YoloTrainConfig
from segdet.segmentation.train import train_unet

#: Pascal VOC's 20 classes: YOLOv1's 7x7x30 output is S = 7, B = 2, C = 20
VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seg_manifests(data: Path, work: Path, dry: bool) -> tuple[Path, Path]:
    if dry:
        from segdet.data.synthetic.isic import generate_isic

        generate_isic(work / "isic", num_images=12, image_size=64, seed=0, progress=False)
        pairs, _ = find_isic_pairs(work / "isic")
        splits = {"train": pairs[:8], "val": pairs[8:]}
    else:
        folders = isic_split_folders(data / "isic2018-512")
        splits = {s: find_isic_pairs(folders[s])[0] for s in ("train", "val")}
    out = []
    for split, pairs in splits.items():
        path = work / f"seg_{split}.txt"
        write_manifest(path, [Pair(str(i), str(m), "") for i, m in pairs])
        out.append(path)
    return out[0], out[1]


def det_manifests(data: Path, work: Path, dry: bool) -> tuple[Path, Path, list[str]]:
    if dry:
        from segdet.data.synthetic.voc import generate_voc

        folder = work / "voc"
        generate_voc(folder, num_images=12, image_size=96, seed=0, max_objects=2, progress=False)
        ids = voc_split_lists(folder)["trainval"]
        splits = {"train": ids[:8], "val": ids[8:]}
        present = (folder / "classes.txt").read_text().split()
    else:
        folder = data / "raccoon-voc"
        lists = voc_split_lists(folder)
        splits = {"train": lists["train"], "val": lists["test"]}
        present = ["raccoon"]
    classes = present + [c for c in VOC_CLASSES if c not in present][: 20 - len(present)]
    out = []
    for split, ids in splits.items():
        path = work / f"det_{split}.txt"
        write_manifest(path, [Pair(str(folder / "JPEGImages" / f"{i}.jpg"), str(folder / "Annotations" / f"{i}.xml"), "")
                              for i in ids])
        out.append(path)
    return out[0], out[1], classes


def check_unet(args, device, work: Path) -> dict:
    train, val = seg_manifests(args.data, work, args.dry_run)
    cfg = UnetTrainConfig(variant="unet32" if args.dry_run else "unet64", input_size=32 if args.dry_run else 256,
                          batch_size=4 if args.dry_run else 32, epochs=args.unet_epochs, step_size=max(1, args.unet_epochs * 2 // 3),
                          augment=True, amp=True, workers="auto")
    n_train = len(train.read_text().splitlines())
    _, result = train_unet(cfg, train_manifest=train, val_manifest=val, root=Path("/"), device=device,
                           run_dir=work / "unet_run", seed=0, progress=False)
    seconds = sum(r["seconds"] for r in result.history)
    return {"variant": cfg.variant, "input_size": cfg.input_size, "batch_size": cfg.batch_size, "epochs": cfg.epochs,
            "processes": distributed.world(), "train_images": n_train,
            "images_per_second_train_and_val": n_train * cfg.epochs / seconds,
            "seconds": seconds, "best_val_dice": result.best_value, "best_epoch": result.best_epoch}


def check_yolo(args, device, work: Path) -> dict:
    train, val, classes = det_manifests(args.data, work, args.dry_run)
    dry = args.dry_run
    cfg = YoloTrainConfig(backbone="small" if dry else "darknet24", input_size=224 if dry else 448, head="fc",
                          head_channels=16 if dry else 1024, hidden=64 if dry else 4096, dropout=0.0 if dry else 0.5,
                          batch_size=4 if dry else 32, epochs=args.yolo_epochs, warmup_epochs=0 if dry else 1,
                          init_from_rcnn=False, freeze_backbone=0, amp=True, workers="auto")
    n_train = len(train.read_text().splitlines())
    model, result = train_yolo(cfg, train_manifest=train, val_manifest=val, classes=classes, root=Path("/"),
                               device=device, run_dir=work / "yolo_run", seed=0, progress=False)
    seconds = sum(r["seconds"] for r in result.history)
    shape = list(model.eval()(torch.zeros(1, 3, cfg.input_size, cfg.input_size, device=device)
                              .to(memory_format=torch.channels_last)).shape[1:])
    images = [DetectionDataset(val, classes)[i][0].as_subclass(torch.Tensor) for i in range(2 if dry else 20)]
    detector = YoloDetector(model, device=device, min_score=0.01, nms_iou=0.5, classes=classes)
    warm, timed = (1, 3) if dry else (20, 200)
    for i in range(warm):
        detector.detect(images[i % len(images)])
    parts = []
    for i in range(timed):
        parts.append(detector.detect(images[i % len(images)])[1])
    forward = float(np.mean([p["forward"] for p in parts]))
    total = float(np.mean([sum(p.values()) for p in parts]))
    return {"backbone": cfg.backbone, "input_size": cfg.input_size, "head": cfg.head, "output_shape": shape,
            "batch_size": cfg.batch_size, "epochs": cfg.epochs, "train_images": n_train,
            "images_per_second_train_and_val": n_train * cfg.epochs / seconds, "best_val_map50": result.best_value,
            "fps_forward_batch1": 1 / forward, "fps_end_to_end_batch1": 1 / total, "timed_frames": timed}


def check_rcnn(args, device, work: Path) -> dict:
    dry = args.dry_run
    _, val, classes = det_manifests(args.data, work, dry)
    backbone, crop = ("small", 24) if dry else ("alexnet", 227)
    model = RegionCNN(backbone, len(classes)).to(memory_format=torch.channels_last)
    d = model.feature_dim
    rng = np.random.default_rng(0)
    svm = {"classes": np.array(classes), "svm_weight": rng.normal(size=(len(classes), d)).astype(np.float32) * 0.01,
           "svm_bias": np.zeros(len(classes), np.float32), "reg_weight": np.zeros((len(classes), 4, d), np.float32),
           "reg_bias": np.zeros((len(classes), 4), np.float32), "feature_scale": np.float32(1.0)}
    settings = ProposalsConfig(mode="fast", max_side=128 if dry else 500, max_proposals=100 if dry else 2000)
    detector = RCNNDetector(model, svm, crop_size=crop, context=crop * 16 / 227, device=device, min_score=0.0,
                            proposals=settings)
    ds = DetectionDataset(val, classes)
    n = 2 if dry else 10
    detector.detect(ds[0][0].as_subclass(torch.Tensor))  # warm-up (cuDNN autotuning, allocator)
    rows = []
    for i in range(n):
        image = ds[i % len(ds)][0].as_subclass(torch.Tensor)
        t0 = time.perf_counter()
        proposals = torch.from_numpy(selective_search(read_bgr(ds.pairs[i % len(ds)].image), settings))
        t_search = time.perf_counter() - t0
        sync(device)
        _, parts = detector.detect(image, proposals)
        rows.append({"proposals": len(proposals), "selective_search": t_search, **parts})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    return {"backbone": backbone, "crop_size": crop, "images": n, "mean_proposals": mean.pop("proposals"),
            "seconds_per_image": sum(mean.values()), "seconds_by_part": mean,
            "selective_search_on": f"{os.cpu_count()} CPU cores (one process)"}


def check_torchrun(args) -> dict:
    """The UNet check again with 2 processes (torchrun through segdet.launch)."""
    gpus = torch.cuda.device_count()
    if not args.dry_run and gpus < 2:
        return {"skipped": f"{gpus} GPU on this machine: 2 are needed"}
    out = Path(args.out) / "torchrun"
    cmd = [sys.executable, "-m", "segdet.launch", "2", str(Path(__file__)), "--only", "unet", "--out", str(out),
           "--data", str(args.data), "--unet-epochs", str(args.unet_epochs)] + (["--dry-run"] if args.dry_run else [])
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return json.loads((out / "gpu_check.json").read_text())["unet"]


def table(results: dict) -> str:
    u, y, r = results.get("unet", {}), results.get("yolo", {}), results.get("rcnn", {})
    lines = [f"Hardware: {results['hardware']}" + (" (dry run: tiny CPU settings, not a GPU figure)"
                                                   if results["dry_run"] else ""), "",
             "| check | setting | figure |", "|---|---|---|"]
    if u:
        lines += [f"| UNet training | {u['variant']} at {u['input_size']} px, batch {u['batch_size']}, {u['epochs']} epochs, "
                  f"AMP | {u['images_per_second_train_and_val']:.0f} train images/s (with validation), best val Dice "
                  f"{u['best_val_dice']:.3f} |"]
    if y:
        lines += [f"| YOLOv1 training | {y['backbone']} at {y['input_size']} px, {y['head']} head, output "
                  f"{'x'.join(map(str, y['output_shape']))}, {y['epochs']} epochs | "
                  f"{y['images_per_second_train_and_val']:.0f} images/s, best val mAP@0.5 {y['best_val_map50']:.3f} |",
                  f"| YOLOv1 inference | batch 1 | {y['fps_forward_batch1']:.0f} FPS forward, "
                  f"{y['fps_end_to_end_batch1']:.0f} FPS with preprocessing and decoding |"]
    if r:
        lines += [f"| R-CNN inference | {r['mean_proposals']:.0f} proposals, {r['backbone']} at {r['crop_size']} px | "
                  f"{r['seconds_per_image']:.3f} s/image ("
                  + ", ".join(f"{k} {v:.3f}" for k, v in r["seconds_by_part"].items()) + ") |"]
    t = results.get("torchrun")
    if t:
        lines += ["| UNet, torchrun 2 processes | as above | " + (t["skipped"] if "skipped" in t else
                  f"{t['images_per_second_train_and_val']:.0f} train images/s, best val Dice {t['best_val_dice']:.3f}")
                  + " |"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/realdata"))
    ap.add_argument("--out", type=Path, default=Path("reports/gpu_check"))
    ap.add_argument("--dry-run", action="store_true", help="tiny synthetic data on CPU: checks the script")
    ap.add_argument("--only", choices=["unet", "yolo", "rcnn", "torchrun"], action="append")
    ap.add_argument("--unet-epochs", type=int, default=None)
    ap.add_argument("--yolo-epochs", type=int, default=None)
    args = ap.parse_args(argv)
    args.unet_epochs = args.unet_epochs or (1 if args.dry_run else 12)
    args.yolo_epochs = args.yolo_epochs or (1 if args.dry_run else 15)
    if args.dry_run:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print("ERROR: no CUDA device here; bench/gpu_check.sh --dry-run checks the script on CPU", file=sys.stderr)
        return 1
    else:
        device = torch.device("cuda")
    for name in ("isic2018-512", "raccoon-voc"):
        if not args.dry_run and not (args.data / name).is_dir():
            print(f"ERROR: {args.data / name} not found; give --data the folder holding isic2018-512 and raccoon-voc",
                  file=sys.stderr)
            return 1
    device = distributed.init(device)
    results: dict = {"hardware": hardware(device), "dry_run": args.dry_run, "torch": torch.__version__}
    steps = args.only or ["unet", "yolo", "rcnn", "torchrun"]
    try:
        with tempfile.TemporaryDirectory(prefix="segdet-gpu-check-") as tmp:
            for step in steps:
                t0 = time.perf_counter()
                if step == "torchrun":
                    results[step] = check_torchrun(args)
                else:
                    results[step] = {"unet": check_unet, "yolo": check_yolo, "rcnn": check_rcnn}[step](
                        args, device, Path(tmp))
                results[step]["wall_seconds"] = time.perf_counter() - t0
                print(f"gpu_check: {step} done in {results[step]['wall_seconds']:.0f} s", file=sys.stderr)
    finally:
        distributed.close()
    if distributed.is_main():
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))
        (args.out / "gpu_check.md").write_text(table(results) + "\n")
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
