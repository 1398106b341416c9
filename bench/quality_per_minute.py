"""Quality per minute on real lesions: training recipes for the UNet, and an off-the-shelf smp ``Unet`` as reference.

Every recipe trains with the same loop on the ISIC 2018 folder (``train/`` part, 1600 images at 512 px in
``../shared/realdata/isic2018-512``), resized once to each input size it uses and held in memory: Adam at 1e-3,
random horizontal and vertical flips, inputs in [0, 1] as the stages give them (ImageNet-normalised for the smp
``Unet``), cross-entropy + soft Dice on 2-class logits (segdet's ``SegLoss``), float32, no pretrained weights. Every ``--every`` seconds of training (evaluation not counted) the thresholded
Jaccard of the ``val/`` part (400 images) is measured at one common size (``--eval-size``: the network predicts
at the size it is training at and its logits are resized bilinearly), so recipes of different input sizes are
scored alike. The result is a curve per recipe: quality reached against training minutes.

A recipe is ``MODEL:SIZES:BATCH[:nchw]``:

- ``MODEL``: ``unet32``, ``unet64``, ``unet128`` or ``resnet18`` (segdet's UNets) or ``smp-resnet18`` (the smp ``Unet`` with a
  ResNet-18 encoder, the reference; ``pip install segmentation-models-pytorch``, a benchmark-only dependency);
- ``SIZES``: the input size, or ``SMALL,LARGE``: train small, then fine-tune large for the last ``--switch``
  share of the minutes;
- ``BATCH``: images a step; ``nchw``: keep PyTorch's default layout instead of channels-last.

With ``--schedule cosine`` the learning rate follows a cosine over the training minutes down to 1/100, so the
last point of each curve is what the recipe reaches in the budget; ``constant`` keeps 1e-3 throughout.

    python -m bench.quality_per_minute --data ../shared/realdata/isic2018-512 [--minutes 8] \\
        [--recipes resnet18:96:8 resnet18:64,128:8 ...] [--schedule cosine] [--json PATH] [--plot PATH]

Without ``--recipes``, ``--models`` at ``--size`` and ``--batch`` (``unet32`` and ``smp-resnet18`` at 128 px, batch
16: the first comparison in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from segdet.nets.unet import ENCODER_VARIANTS, VARIANTS, build_unet
from segdet.runtime import hardware
from segdet.segmentation.losses import SegLoss
from segdet.segmentation.metrics import scores

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
MODELS = (*VARIANTS, *ENCODER_VARIANTS, "smp-resnet18")
LR = 1e-3


@dataclass(frozen=True)
class Recipe:
    model: str
    sizes: tuple[int, ...]  # one size, or (small, large): train small, then fine-tune large
    batch: int
    channels_last: bool = True

    @property
    def name(self) -> str:
        return f"{self.model}:{','.join(map(str, self.sizes))}:{self.batch}" + ("" if self.channels_last else ":nchw")

    @classmethod
    def parse(cls, text: str) -> Recipe:
        """``MODEL:SIZES:BATCH[:nchw]``; a bad one names what is wrong and the allowed values."""
        parts = text.split(":")
        form = "MODEL:SIZES:BATCH[:nchw], e.g. resnet18:96:8 or resnet18:64,128:8"
        if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "nchw"):
            raise ValueError(f"recipe {text!r}: expected {form}")
        if parts[0] not in MODELS:
            raise ValueError(f"recipe {text!r}: unknown model {parts[0]!r}; available: {', '.join(MODELS)}")
        try:
            sizes, batch = tuple(int(s) for s in parts[1].split(",")), int(parts[2])
        except ValueError:
            raise ValueError(f"recipe {text!r}: sizes and batch must be integers ({form})") from None
        if not 1 <= len(sizes) <= 2 or min(sizes) < 32 or any(s % 32 for s in sizes) or batch < 1:
            raise ValueError(f"recipe {text!r}: one or two input sizes, each a multiple of 32 (a UNet halves the "
                             f"size five times), and a batch >= 1 ({form})")
        return cls(parts[0], sizes, batch, len(parts) == 3)


def load(folder: Path, sizes: set[int], limit: int | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """For each size, uint8 images ``[N, 3, size, size]`` and 0/1 masks ``[N, size, size]`` of an ISIC ``images/`` +
    ``masks/`` folder (``ISIC_x.jpg`` with ``ISIC_x_segmentation.png``), paired by name; each file decoded once."""
    paths = sorted((folder / "images").glob("*.jpg"))[:limit]
    images = {s: np.empty((len(paths), s, s, 3), np.uint8) for s in sizes}
    masks = {s: np.empty((len(paths), s, s), np.uint8) for s in sizes}
    for i, p in enumerate(tqdm(paths, desc=f"loading {folder.name}", unit="img")):
        rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        m = cv2.imread(str(folder / "masks" / f"{p.stem}_segmentation.png"), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise SystemExit(f"{folder / 'masks' / (p.stem + '_segmentation.png')}: missing or unreadable mask of {p}")
        for s in sizes:
            images[s][i] = cv2.resize(rgb, (s, s), interpolation=cv2.INTER_AREA)
            masks[s][i] = cv2.resize(m, (s, s), interpolation=cv2.INTER_NEAREST) > 127
    return {s: (torch.from_numpy(images[s]).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(masks[s]).long())
            for s in sizes}


def normalise(x: torch.Tensor, channels_last: bool = True, imagenet: bool = False) -> torch.Tensor:
    """uint8 images -> float in [0, 1] as the stages feed segdet's UNets (``resnet18`` normalises inside), or
    ImageNet-normalised (``imagenet``) as the smp ``Unet`` expects."""
    x = x.float() / 255
    if imagenet:
        x = (x - MEAN) / STD
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def build(name: str) -> torch.nn.Module:
    if name == "smp-resnet18":
        import segmentation_models_pytorch as smp

        return smp.Unet("resnet18", encoder_weights=None, in_channels=3, classes=2)
    return build_unet(name, num_classes=2)


@torch.inference_mode()
def thresholded_jaccard(model: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, channels_last: bool = True,
                        imagenet: bool = False, batch: int = 32) -> float:
    """Mean thresholded Jaccard of ``images`` (at the size the model trains at) against ``masks`` (at the
    evaluation size: the logits are resized to it bilinearly when the sizes differ)."""
    model.eval()
    out = []
    for i in range(0, len(images), batch):
        logits = model(normalise(images[i:i + batch], channels_last, imagenet))
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        out.append(scores(logits.argmax(1), masks[i:i + batch])["thresholded_jaccard"])
    model.train()
    return float(torch.cat(out).mean())


def train(recipe: Recipe, data: dict, minutes: float, every: float, seed: int, *, schedule: str = "constant",
          switch: float = 0.4, eval_size: int = 128) -> dict:
    """Train ``recipe`` for ``minutes`` of step time; the val curve every ``every`` seconds and at the end."""
    torch.manual_seed(seed)
    fmt = torch.channels_last if recipe.channels_last else torch.contiguous_format
    model = build(recipe.model).to(memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), LR)
    loss_fn = SegLoss("ce+dice")
    imagenet = recipe.model.startswith("smp-")
    budget = minutes * 60
    # the (small, large) recipe trains at the large size for the last `switch` of the budget
    starts = [0.0] if len(recipe.sizes) == 1 else [0.0, budget * (1 - switch)]
    val_masks = data["val"][eval_size][1]
    g = torch.Generator().manual_seed(seed)
    curve, trained, images_seen, next_eval, seconds_at = [], 0.0, 0, every, {s: [0.0, 0] for s in recipe.sizes}
    bar = tqdm(total=round(budget), desc=recipe.name, unit="s")

    def size_now() -> int:
        return recipe.sizes[max(i for i, s in enumerate(starts) if trained >= s)]

    while trained < budget:
        size = size_now()
        x_all, y_all = data["train"][size]
        if len(x_all) < recipe.batch:
            raise SystemExit(f"{recipe.name}: {len(x_all)} training images, fewer than one batch of {recipe.batch}")
        for idx in torch.randperm(len(x_all), generator=g).split(recipe.batch):
            if len(idx) < recipe.batch:
                continue
            if schedule == "cosine":
                for group in opt.param_groups:
                    group["lr"] = LR / 100 + (LR - LR / 100) * 0.5 * (1 + math.cos(math.pi * min(trained / budget, 1)))
            t0 = time.perf_counter()
            x, y = x_all[idx], y_all[idx]
            if torch.rand(1, generator=g) < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            if torch.rand(1, generator=g) < 0.5:
                x, y = x.flip(-2), y.flip(-2)
            loss = loss_fn(model(normalise(x, recipe.channels_last, imagenet)), y)[0]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step = time.perf_counter() - t0
            trained += step
            images_seen += len(idx)
            seconds_at[size][0] += step
            seconds_at[size][1] += len(idx)
            bar.update(round(trained) - bar.n)
            if trained >= next_eval or trained >= budget:
                tj = thresholded_jaccard(model, data["val"][size][0], val_masks, recipe.channels_last, imagenet)
                curve.append({"minutes": trained / 60, "epochs": images_seen / len(x_all), "size": size,
                              "thresholded_jaccard": tj})
                bar.set_postfix(tj=f"{tj:.3f}")
                next_eval += every
            if trained >= budget or size_now() != size:
                break
    bar.close()
    params = sum(p.numel() for p in model.parameters())
    return {"recipe": recipe.name, **asdict(recipe), "parameters": params,
            "images_per_second": images_seen / trained,
            "images_per_second_by_size": {str(s): n / t for s, (t, n) in seconds_at.items() if t > 0},
            "curve": curve}


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for r in results:
        ax.plot([c["minutes"] for c in r["curve"]], [c["thresholded_jaccard"] for c in r["curve"]], marker="o",
                label=f"{r['recipe']} ({r['parameters'] / 1e6:.1f} M parameters, {r['images_per_second']:.1f} img/s)")
    ax.set(xlabel="training minutes (evaluation not counted)", ylabel="val thresholded Jaccard", title=title)
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/realdata/isic2018-512"))
    ap.add_argument("--recipes", nargs="+", help="MODEL:SIZES:BATCH[:nchw] each (see above)")
    ap.add_argument("--models", nargs="+", default=["unet32", "smp-resnet18"], help="without --recipes")
    ap.add_argument("--size", type=int, default=128, help="without --recipes")
    ap.add_argument("--batch", type=int, default=16, help="without --recipes")
    ap.add_argument("--minutes", type=float, default=8.0, help="training minutes per recipe")
    ap.add_argument("--every", type=float, default=60.0, help="seconds of training between evaluations")
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="constant")
    ap.add_argument("--switch", type=float, default=0.4,
                    help="SMALL,LARGE recipes: the share of the minutes trained at LARGE, at the end (default 0.4)")
    ap.add_argument("--eval-size", type=int, default=128, help="the size the val masks are scored at")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, help="use only the first N images of each part (a quick check)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args(argv)
    try:
        recipes = [Recipe.parse(r) for r in args.recipes or [f"{m}:{args.size}:{args.batch}" for m in args.models]]
    except ValueError as exc:
        ap.error(str(exc))
    if not 0 < args.switch < 1:
        ap.error(f"--switch {args.switch}: the share of the minutes at the large size must be in (0, 1)")
    if not (args.data / "train" / "images").is_dir():
        raise SystemExit(f"{args.data}: not an ISIC folder with train/images and val/images")
    where = hardware("cpu")
    sizes = {s for r in recipes for s in r.sizes}
    data = {"train": load(args.data / "train", sizes, args.limit),
            "val": load(args.data / "val", sizes | {args.eval_size}, args.limit)}
    results = [train(r, data, args.minutes, args.every, args.seed, schedule=args.schedule, switch=args.switch,
                     eval_size=args.eval_size) for r in recipes]
    print(f"\n{where}; {args.minutes:g} training minutes each, learning rate {args.schedule}, val thresholded Jaccard "
          f"at {args.eval_size} px")
    width = max(len(r["recipe"]) for r in results)
    print(f"{'recipe':{width}} {'params (M)':>10} {'img/s':>7}  curve (minutes: value)")
    for r in results:
        print(f"{r['recipe']:{width}} {r['parameters'] / 1e6:10.2f} {r['images_per_second']:7.1f}  "
              + " ".join(f"{c['minutes']:.2f}: {c['thresholded_jaccard']:.3f}" for c in r["curve"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "hardware": where, "minutes": args.minutes, "schedule": args.schedule, "switch": args.switch,
            "eval_size": args.eval_size, "seed": args.seed, "results": results}, indent=2) + "\n")
    if args.plot:
        plot(results, args.plot, f"ISIC 2018 val at {args.eval_size} px, {args.minutes:g} training minutes each, "
             f"learning rate {args.schedule}\n{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
