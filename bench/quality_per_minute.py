"""Quality per minute on real lesions: segdet's UNet against an off-the-shelf smp ``Unet`` (ResNet-18 encoder).

Both networks train with the same loop on the ISIC 2018 folder (``train/`` part, 1600 images at 512 px in
``../shared/realdata/isic2018-512``), resized once to ``--size`` and held in memory: Adam at 1e-3, batch
``--batch``, random horizontal and vertical flips, cross-entropy + soft Dice on 2-class logits (segdet's
``SegLoss``), channels-last, float32, no pretrained weights. Every ``--every`` seconds of training (evaluation
not counted) the thresholded Jaccard of the ``val/`` part (400 images, at the training size) is measured, so the
result is a curve: quality reached against training minutes. The benchmark-only dependency is
``segmentation-models-pytorch`` (``pip install segmentation-models-pytorch``).

    python -m bench.quality_per_minute --data ../shared/realdata/isic2018-512 [--minutes 8] [--size 128]
                                       [--models unet32 smp-resnet18] [--json PATH] [--plot PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from segdet.nets.unet import build_unet
from segdet.runtime import hardware
from segdet.segmentation.losses import SegLoss
from segdet.segmentation.metrics import scores

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load(folder: Path, size: int, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images ``[N, 3, size, size]`` and 0/1 masks ``[N, size, size]`` of an ISIC ``images/`` + ``masks/``
    folder (``ISIC_x.jpg`` with ``ISIC_x_segmentation.png``), paired by name."""
    paths = sorted((folder / "images").glob("*.jpg"))[:limit]
    images = np.empty((len(paths), size, size, 3), np.uint8)
    masks = np.empty((len(paths), size, size), np.uint8)
    for i, p in enumerate(tqdm(paths, desc=f"loading {folder.name}", unit="img")):
        rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        images[i] = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
        m = cv2.imread(str(folder / "masks" / f"{p.stem}_segmentation.png"), cv2.IMREAD_GRAYSCALE)
        masks[i] = cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) > 127
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(masks).long()


def normalise(x: torch.Tensor) -> torch.Tensor:
    return ((x.float() / 255 - MEAN) / STD).contiguous(memory_format=torch.channels_last)


def build(name: str) -> torch.nn.Module:
    if name.startswith("unet"):
        return build_unet(name, num_classes=2)
    if name == "smp-resnet18":
        import segmentation_models_pytorch as smp

        return smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=2)
    raise SystemExit(f"unknown model {name!r}: unet32 | unet64 | smp-resnet18")


@torch.inference_mode()
def thresholded_jaccard(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, batch: int = 32) -> float:
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        pred = model(normalise(images[i:i + batch])).argmax(1)
        out.append(scores(pred, masks[i:i + batch])["thresholded_jaccard"])
    model.train()
    return float(torch.cat(out).mean())


def train(name: str, data: dict, minutes: float, every: float, batch: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = build(name).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    loss_fn = SegLoss("ce+dice")
    x_all, y_all = data["train"]
    g = torch.Generator().manual_seed(seed)
    curve, trained, images_seen, next_eval = [], 0.0, 0, every
    bar = tqdm(total=round(minutes * 60), desc=name, unit="s")
    while trained < minutes * 60:
        for idx in torch.randperm(len(x_all), generator=g).split(batch):
            if len(idx) < batch:
                continue
            t0 = time.perf_counter()
            x, y = x_all[idx], y_all[idx]
            if torch.rand(1, generator=g) < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            if torch.rand(1, generator=g) < 0.5:
                x, y = x.flip(-2), y.flip(-2)
            loss = loss_fn(model(normalise(x)), y)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step = time.perf_counter() - t0
            trained += step
            images_seen += len(idx)
            bar.update(round(trained) - bar.n)
            if trained >= next_eval or trained >= minutes * 60:
                tj = thresholded_jaccard(model, *data["val"])
                curve.append({"minutes": trained / 60, "epochs": images_seen / len(x_all), "thresholded_jaccard": tj})
                bar.set_postfix(tj=f"{tj:.3f}")
                next_eval += every
            if trained >= minutes * 60:
                break
    bar.close()
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "parameters": params, "images_per_second": images_seen / trained, "curve": curve}


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in results:
        ax.plot([c["minutes"] for c in r["curve"]], [c["thresholded_jaccard"] for c in r["curve"]], marker="o",
                label=f"{r['model']} ({r['parameters'] / 1e6:.1f} M parameters, {r['images_per_second']:.1f} img/s)")
    ax.set(xlabel="training minutes (evaluation not counted)", ylabel="val thresholded Jaccard", title=title)
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/realdata/isic2018-512"))
    ap.add_argument("--models", nargs="+", default=["unet32", "smp-resnet18"])
    ap.add_argument("--minutes", type=float, default=8.0, help="training minutes per model")
    ap.add_argument("--every", type=float, default=60.0, help="seconds of training between evaluations")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help="use only the first N images of each part (a quick check)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args(argv)
    if not (args.data / "train" / "images").is_dir():
        raise SystemExit(f"{args.data}: not an ISIC folder with train/images and val/images")
    where = hardware("cpu")
    data = {part: load(args.data / part, args.size, args.limit) for part in ("train", "val")}
    results = [train(m, data, args.minutes, args.every, args.batch, args.seed) for m in args.models]
    print(f"\n{where}; {args.size} px, batch {args.batch}, {args.minutes:g} training minutes each")
    print(f"{'model':14} {'params (M)':>10} {'img/s':>7} " + " ".join(f"{c['minutes']:6.1f}m" for c in results[0]["curve"]))
    for r in results:
        print(f"{r['model']:14} {r['parameters'] / 1e6:10.2f} {r['images_per_second']:7.1f} "
              + " ".join(f"{c['thresholded_jaccard']:7.3f}" for c in r["curve"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"hardware": where, "size": args.size, "batch": args.batch,
                                         "minutes": args.minutes, "results": results}, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot, f"ISIC 2018 val, {args.size} px, same loop and budget; {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
