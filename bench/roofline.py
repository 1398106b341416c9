"""How close the models come to what this machine can do: achieved GFLOP/s as a share of the measured peak.

Peak: a large matrix product and a large 3x3 convolution with torch, on the same threads, in float32 and in the
precision the stages' ``amp: true`` can train in here (bfloat16 on a CPU with AMX or AVX512-BF16 and
``base.cpu_bf16``, float16 on CUDA). Models: each model's training step (forward, backward, optimizer step) and
inference (no autograd) in the layout its stage uses, FLOPs counted with
``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products; what the peak measures too), time
the best of ``--repeats`` timed runs after warm-up. ``share`` = achieved / the higher of the two peaks of the same
precision. Training steps run in float32 and, with such an ``amp``, under autocast too; inference runs in float32,
as the evaluation stages do. On a CPU, glibc's malloc keeps freed blocks for reuse as every stage has it
(``segdet.runtime.keep_freed_memory``); ``--glibc-defaults`` measures without that.

    python -m bench.roofline [--json reports/roofline.json] [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import replace as dataclass_replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from segdet.detection.rcnn.model import RegionCNN
from segdet.detection.yolo.loss import YoloLoss
from segdet.engine import autocast_dtype, make_optimizer
from segdet.nets.unet import build_unet
from segdet.nets.yolo import YOLOv1
from segdet.runtime import hardware, keep_freed_memory
from segdet.sections import YoloTrainConfig
from segdet.segmentation.losses import SegLoss

#: the backbone convolutions ``yolo_train`` keeps frozen after its transfer from the R-CNN CNN (its default)
STAGE_FROZEN = YoloTrainConfig().freeze_backbone


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int, inner: int = 1) -> float:
    """The fastest of ``repeats`` timings of ``inner`` calls of ``fn`` (after ``warmup`` calls), per call."""
    for _ in range(warmup):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def count_flops(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def peaks(device: torch.device, quick: bool, dtype: torch.dtype = torch.float32) -> dict[str, float]:
    n = 1024 if quick else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    matmul = 2 * n**3 / best_seconds(lambda: a @ b, device, 2, 5 if quick else 10)
    x = torch.randn(8, 128, 56, 56, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(device, dtype, memory_format=torch.channels_last).eval()
    with torch.no_grad():
        flops = count_flops(lambda: conv(x))
        seconds = best_seconds(lambda: conv(x), device, 2, 5 if quick else 10)
    return {"matmul": matmul / 1e9, "conv": flops / seconds / 1e9}


@dataclass
class Case:
    name: str
    mode: str  # train | infer
    setting: str
    run: Callable[[], object]
    precision: str = "float32"


#: the precision the next training steps built run in (main sets it to the stages' amp for a second pass)
AMP: list[torch.dtype | None] = [None]


def _train_step(model, optimizer, forward_loss):
    dtype = AMP[0]
    device = next(model.parameters()).device

    def run():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = forward_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return run


def unet_cases(device, variant: str, size: int, batch: int, channels_last: bool, upsample: str = "bilinear"
               ) -> list[Case]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = build_unet(variant, num_classes=2, upsample=upsample).to(device, memory_format=fmt)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch, size, size), device=device)
    loss = SegLoss("ce+dice")
    opt = make_optimizer("adam", model.parameters(), lr=1e-3)
    layout = "channels-last" if channels_last else "NCHW"
    train = _train_step(model, opt, lambda: (model.train(), loss(model(x), y)[0])[1])

    def infer():
        model.eval()
        with torch.inference_mode():
            model(x)
    name = variant if variant.startswith("unet") else f"unet-{variant}"  # resnet18 -> unet-resnet18
    if upsample != "bilinear":
        name += f"-{upsample}"  # unet32-transpose: unet_train.upsample
    return [Case(name, "train", f"{size} px, batch {batch}, {layout}", train),
            Case(name, "infer", f"{size} px, batch {batch}, {layout}", infer)]


def yolo_cases(device, backbone: str, size: int, batch: int, frozen: int = 0) -> list[Case]:
    """Training and batch-1 inference; with ``frozen``, only the training step with the first ``frozen`` backbone
    convolutions frozen, as ``yolo_train`` runs after its transfer from the R-CNN CNN (``yolo_train.freeze_backbone``)."""
    torch.manual_seed(0)
    model = YOLOv1(backbone, 5, input_size=size, head="conv", head_channels=128, hidden=1024).to(
        device, memory_format=torch.channels_last)
    if frozen:
        model.freeze_backbone(frozen)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(batch):
        xy = torch.rand(3, 2, generator=g) * size * 0.7
        wh = torch.rand(3, 2, generator=g) * size * 0.25 + 8
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 6, (3,), generator=g)})
    loss = YoloLoss(model.S, model.B, model.C, size)
    opt = make_optimizer("adam", [p for p in model.parameters() if p.requires_grad], lr=1e-3)
    train = _train_step(model, opt, lambda: (model.train(), loss(model(x), targets)[0])[1])
    name = f"yolov1-{backbone}-{size}"
    if frozen:
        return [Case(name, "train", f"{size} px, batch {batch}, {frozen} convs frozen (yolo_train)", train)]
    x1 = x[:1]

    def infer():
        model.eval()
        with torch.inference_mode():
            model(x1)
    return [Case(name, "train", f"{size} px, batch {batch}, conv head, channels-last", train),
            Case(name, "infer", f"{size} px, batch 1, channels-last", infer)]


def rcnn_cases(device, crop: int, batch: int, feature_batch: int, channels_last: bool = False) -> list[Case]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = RegionCNN("small", 6).to(device, memory_format=fmt)
    x = torch.randn(batch, 3, crop, crop, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 6, (batch,), device=device)
    opt = make_optimizer("sgd", model.parameters(), lr=0.01, momentum=0.9)
    train = _train_step(model, opt, lambda: (model.train(), F.cross_entropy(model(x), y))[1])
    xf = torch.randn(feature_batch, 3, crop, crop, device=device).contiguous(memory_format=fmt)
    layout = "channels-last" if channels_last else "NCHW"

    def features():
        model.eval()
        with torch.inference_mode():
            model.embed(xf)
    return [Case("rcnn-small", "train", f"{crop} px crops, batch {batch}, {layout}", train),
            Case("rcnn-small", "infer", f"features of {feature_batch} regions at {crop} px, {layout}", features)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke test)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--glibc-defaults", action="store_true",
                    help="leave glibc's malloc thresholds as they are (every stage raises them)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    # as segdet.stage.run_stage does for every stage
    kept = device.type == "cpu" and not args.glibc_defaults and keep_freed_memory()
    quick = args.quick
    repeats = 2 if quick else args.repeats
    peak = peaks(device, quick)
    amp = autocast_dtype(device, cpu_bf16=True)  # what amp: true (with base.cpu_bf16 on a CPU) trains in here
    amp_name = str(amp).removeprefix("torch.") if amp is not None else None
    if amp is not None:
        peak.update({f"{k}_{amp_name}": v for k, v in peaks(device, quick, amp).items()})
    top = {"float32": max(peak["matmul"], peak["conv"])}
    if amp is not None:
        top[amp_name] = max(peak[f"matmul_{amp_name}"], peak[f"conv_{amp_name}"])
    if quick:
        cases = (unet_cases(device, "unet32", 32, 2, False) + yolo_cases(device, "small", 64, 2)
                 + yolo_cases(device, "small", 64, 2, frozen=STAGE_FROZEN) + rcnn_cases(device, 24, 8, 16))
    else:
        cases = (unet_cases(device, "unet32", 96, 8, False) + unet_cases(device, "unet32", 96, 8, True)
                 + unet_cases(device, "unet32", 96, 8, True, "transpose")
                 + unet_cases(device, "unet32", 128, 8, True) + unet_cases(device, "unet64", 96, 8, True)
                 + unet_cases(device, "resnet18", 96, 8, True) + unet_cases(device, "resnet18", 128, 8, True)
                 + yolo_cases(device, "small", 256, 8) + yolo_cases(device, "small", 256, 8, frozen=STAGE_FROZEN)
                 + yolo_cases(device, "small", 448, 8)
                 + rcnn_cases(device, 48, 128, 512) + rcnn_cases(device, 48, 128, 512, True))
    if amp is not None:  # the training steps again, as the stages run them: under autocast
        AMP[0] = amp
        extra = (unet_cases(device, "unet32", 32, 2, True) + yolo_cases(device, "small", 64, 2)
                 + rcnn_cases(device, 24, 8, 16, True)) if quick else (
            unet_cases(device, "unet32", 96, 8, True) + unet_cases(device, "unet32", 128, 8, True)
            + unet_cases(device, "unet64", 96, 8, True) + yolo_cases(device, "small", 256, 8)
            + yolo_cases(device, "small", 448, 8) + rcnn_cases(device, 48, 128, 512, True))
        cases += [dataclass_replace(c, precision=amp_name) for c in extra if c.mode == "train"]
    rows = []
    for case in cases:
        flops = count_flops(case.run)
        seconds = best_seconds(case.run, device, 2 if quick else 3, repeats)
        gflops = flops / seconds / 1e9
        share = gflops / top[case.precision]
        rows.append({"name": case.name, "mode": case.mode, "setting": case.setting, "precision": case.precision,
                     "gflop": flops / 1e9, "seconds": seconds, "gflops": gflops, "share": share})
        print(f"{case.name:17s} {case.mode:5s} {case.precision:8s} {case.setting:47s} {flops / 1e9:7.2f} GFLOP "
              f"{seconds * 1e3:7.1f} ms {gflops:7.1f} GFLOP/s {share:5.2f} of the {case.precision} peak", flush=True)
    result = {"hardware": hardware(device), "threads": torch.get_num_threads(),
              "allocator": "freed blocks kept" if kept else "glibc defaults",
              "peak_gflops": peak, "models": rows}
    print("peak GFLOP/s: " + ", ".join(f"{k} {v:.1f}" for k, v in peak.items()) + f" on {result['hardware']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
