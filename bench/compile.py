"""Does ``torch.compile`` or batch-norm folding pay off within a stage? Eager against compiled steps.

For each model as its stage runs it (UNet32 training and evaluation at the default 96 px, YOLOv1 training at 256 px
and batch-1 inference, the R-CNN region CNN on 48 px crops): the eager step time, ``torch.compile``'s first call
(the compile, measured), its steady step time, and the break-even: how many steps the compile needs to be paid
back, against how many steps the stage runs with the default params. Inference is also timed with the batch
norms folded into the convolutions (``torch.fx.experimental.optimization.fuse``), which costs nothing to build.

    python -m bench.compile [--json PATH] [--device cuda] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from bench.roofline import best_seconds, sync
from segdet.detection.rcnn.model import RegionCNN
from segdet.detection.yolo.loss import YoloLoss
from segdet.nets.unet import build_unet
from segdet.nets.yolo import YOLOv1
from segdet.runtime import hardware
from segdet.segmentation.losses import SegLoss

CL = torch.channels_last


def default_steps() -> dict[str, int]:
    """Steps each stage runs with ``params.yaml``'s defaults (training: epochs x batches; evaluation: batches)."""
    p = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    seg_train = round(p["data"]["seg"]["num_images"] * p["data"]["split"]["train"])
    det_train = round(p["data"]["det"]["num_images"] * p["data"]["split"]["train"])
    seg_test = round(p["data"]["seg"]["num_images"] * p["data"]["split"]["test"])
    det_test = round(p["data"]["det"]["num_images"] * p["data"]["split"]["test"])
    u, y, r = p["unet_train"], p["yolo_train"], p["rcnn_finetune"]
    return {"unet32 train": u["epochs"] * math.ceil(seg_train / u["batch_size"]),
            "unet32 infer": math.ceil(seg_test / p["unet_eval"]["batch_size"]),
            "yolo train": y["epochs"] * math.ceil(det_train / y["batch_size"]),
            "yolo infer": det_test,
            "rcnn train": r["epochs"] * r["batches_per_epoch"],
            "rcnn infer": det_train * p["proposals"]["max_proposals"] // 512}  # features: 512 regions a batch


def train_step(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module], torch.Tensor]) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def run():
        model.train()
        loss = loss_fn(model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return run


def infer_step(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run():
        with torch.inference_mode():
            model(x)
    return run


def cases(device: torch.device) -> list[tuple[str, Callable[[], torch.nn.Module], Callable, torch.Tensor | None]]:
    """``(name, build model, step maker, inference input or None)``; the step maker takes the (compiled) model."""
    torch.manual_seed(0)
    x_u = torch.randn(8, 3, 96, 96, device=device).contiguous(memory_format=CL)
    y_u = torch.randint(0, 2, (8, 96, 96), device=device)
    seg = SegLoss("ce+dice")
    x_y = torch.randn(8, 3, 256, 256, device=device).contiguous(memory_format=CL)
    g = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(8):
        xy = torch.rand(3, 2, generator=g) * 180
        targets.append({"boxes": torch.cat([xy, xy + torch.rand(3, 2, generator=g) * 60 + 8], 1),
                        "labels": torch.randint(1, 6, (3,), generator=g)})
    yolo = lambda: YOLOv1("small", 5, input_size=256, head="conv", head_channels=128, hidden=1024)  # noqa: E731
    yloss = YoloLoss(8, 2, 5, 256)
    x_r = torch.rand(128, 3, 48, 48, device=device).contiguous(memory_format=CL)
    y_r = torch.randint(0, 6, (128,), device=device)
    rcnn = lambda: RegionCNN("small", 5)  # noqa: E731
    return [
        ("unet32 train", lambda: build_unet("unet32", 2), lambda m: train_step(m, lambda m: seg(m(x_u), y_u)[0]), None),
        ("unet32 infer", lambda: build_unet("unet32", 2), None, x_u),
        ("yolo train", yolo, lambda m: train_step(m, lambda m: yloss(m(x_y), targets)[0]), None),
        ("yolo infer", yolo, None, x_y[:1]),
        ("rcnn train", rcnn, lambda m: train_step(m, lambda m: torch.nn.functional.cross_entropy(m(x_r), y_r)), None),
        ("rcnn infer", rcnn, None, torch.rand(512, 3, 48, 48, device=device).contiguous(memory_format=CL)),
    ]


def fold_bn(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` (in eval mode) with every batch norm that follows a convolution inside an
    ``nn.Sequential`` folded into that convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``)."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                seq._modules[a] = fuse_conv_bn_eval(conv, bn)
                seq._modules[b] = torch.nn.Identity()
    return model


def measure(name, build, make_step, x, device, repeats: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = build().to(device, memory_format=CL)
    if x is not None:
        model.eval()
    step = make_step(model) if make_step else infer_step(model, x)
    eager = best_seconds(step, device, 3, repeats, inner=3)
    torch.manual_seed(0)
    compiled_model = torch.compile(build().to(device, memory_format=CL))
    if x is not None:
        compiled_model.eval()
    cstep = make_step(compiled_model) if make_step else infer_step(compiled_model, x)
    t0 = time.perf_counter()
    cstep()  # the compile (forward and, for training, backward)
    cstep()
    sync(device)
    first = time.perf_counter() - t0
    compiled = best_seconds(cstep, device, 2, repeats, inner=3)
    out = {"name": name, "eager_ms": eager * 1e3, "compiled_ms": compiled * 1e3, "compile_s": first,
           "speedup": eager / compiled, "stage_steps": steps}
    gain = eager - compiled
    out["break_even_steps"] = math.ceil(first / gain) if gain > 0 else None
    out["pays_off"] = out["break_even_steps"] is not None and out["break_even_steps"] < steps
    if x is not None:
        folded = fold_bn(model)
        with torch.inference_mode():
            out["bn_folded_max_diff"] = float((folded(x) - model(x)).abs().max())
        out["bn_folded_ms"] = best_seconds(infer_step(folded, x), device, 3, repeats, inner=3) * 1e3
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--only", nargs="*", help="case names to run (default: all)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--warm-cache", action="store_true",
                    help="let inductor reuse its on-disk cache (a later run of the same stage); default: a cold compile")
    args = ap.parse_args(argv)
    if not args.warm_cache:
        import torch._inductor.config

        torch._inductor.config.force_disable_caches = True  # the compile a fresh machine (or a changed model) pays
    device = torch.device(args.device)
    steps = default_steps()
    where = hardware(device)
    print(f"{where}; {'warm' if args.warm_cache else 'cold'} inductor cache")
    print(f"{'case':14} {'eager ms':>9} {'compiled':>9} {'speedup':>8} {'compile s':>10} {'break-even':>11} "
          f"{'stage steps':>12} {'BN folded ms':>13}")
    rows = []
    for name, build, make_step, x in cases(device):
        if args.only and name not in args.only:
            continue
        r = measure(name, build, make_step, x, device, args.repeats, steps[name])
        rows.append(r)
        print(f"{name:14} {r['eager_ms']:9.1f} {r['compiled_ms']:9.1f} {r['speedup']:8.2f} {r['compile_s']:10.1f} "
              f"{r['break_even_steps'] or '-':>11} {r['stage_steps']:12d} "
              f"{r.get('bn_folded_ms', float('nan')):13.1f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"hardware": where, "warm_cache": args.warm_cache, "cases": rows}, indent=2)
                             + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
