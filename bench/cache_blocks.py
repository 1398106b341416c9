"""Cache-sized blocks and fused optimizers on a CPU: the measurements behind ``RegionCNN.cpu_block``,
``YOLOv1``'s blocked frozen layers and ``engine.make_optimizer``.

1. R-CNN region features (``RegionCNN._embed``, channels-last, no autograd) of ``--regions`` crops run in one pass
   or in blocks of 256, 128, ... regions, at each ``--crops`` size; the row marks the block ``cpu_block`` picks.
2. YOLOv1's frozen first layers (conv, folded norm, activation, pooling of the ``small`` backbone) for a batch of 8
   in one pass or in blocks, at each ``--yolo-sizes`` input; the row marks the block the stage uses.
3. One Adam and one SGD step over the trainable parameters of YOLOv1 and UNet32: the for-loop, ``foreach`` and
   fused implementations.

Best of ``--repeats`` timings after warm-up, the threads torch uses. Prints milliseconds and the hardware.

    python -m bench.cache_blocks [--crops 48,96,227] [--regions 512] [--yolo-sizes 128,256,448] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from segdet.detection.rcnn.model import RegionCNN
from segdet.nets.fuse import cache_block, fused_forward
from segdet.nets.unet import build_unet
from segdet.nets.yolo import FROZEN_BLOCK_BYTES, YOLOv1
from segdet.runtime import hardware


def best_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def blocked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, block: int) -> torch.Tensor:
    return torch.cat([fn(part) for part in x.split(block)])


def region_features(crops: list[int], regions: int, backbone: str, repeats: int) -> None:
    torch.manual_seed(0)
    model = RegionCNN(backbone, 20).eval().to(memory_format=torch.channels_last)
    print(f"R-CNN region features, {backbone}, {regions} regions, channels-last: ms for all of them by block size")
    for crop in crops:
        x = torch.randn(regions, 3, crop, crop).contiguous(memory_format=torch.channels_last)
        chosen = min(model.cpu_block(crop), regions)  # a batch within the block runs in one pass
        blocks = [b for b in (regions, 256, 128, 64, 32, 16, 8, 4, 2) if b <= regions]
        with torch.inference_mode():
            cells = []
            for b in dict.fromkeys(blocks):
                ms = best_ms(lambda b=b, x=x: blocked(model._embed, x, b), repeats)
                cells.append(f"{'one pass' if b == regions else b}: {ms:.1f}{' *' if b == chosen else ''}")
        print(f"  {crop:4d} px  " + "   ".join(cells), flush=True)
    print("  * the block RegionCNN.cpu_block picks (what rcnn_features and rcnn_eval run)")


def yolo_frozen(sizes: list[int], repeats: int) -> None:
    torch.manual_seed(0)
    model = YOLOv1("small", 20, input_size=256).to(memory_format=torch.channels_last)
    model.freeze_backbone(1)
    model.train()
    prefix = model._frozen_prefix
    print(f"YOLOv1 frozen first layers (the first {prefix} modules of the small backbone), batch of 8: ms by block")
    for size in sizes:
        x = torch.randn(8, 3, size, size).contiguous(memory_format=torch.channels_last)
        chosen = min(cache_block(model.features, size, 4, FROZEN_BLOCK_BYTES), 8)
        cells = []
        with torch.no_grad():
            for b in (8, 4, 2, 1):
                ms = best_ms(lambda b=b, x=x: blocked(lambda t: fused_forward(model.features, t, stop=prefix), x, b),
                             repeats)
                cells.append(f"{'one pass' if b == 8 else b}: {ms:.2f}{' *' if b == chosen else ''}")
        print(f"  {size:4d} px  " + "   ".join(cells), flush=True)
    print("  * the block yolo_train's step uses")


def optimizers(repeats: int) -> None:
    print("One optimizer step over the trainable parameters: ms")
    for name, model in (("YOLOv1 small", YOLOv1("small", 5, input_size=256)),
                        ("UNet32", build_unet("unet32", num_classes=2))):
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p)
        cells = []
        for kind, cls, extra in (("Adam", torch.optim.Adam, {}), ("SGD", torch.optim.SGD, {"momentum": 0.9})):
            for impl, kw in (("for-loop", {"foreach": False}), ("foreach", {"foreach": True}),
                             ("fused", {"fused": True})):
                opt = cls(params, lr=1e-3, **extra, **kw)
                cells.append(f"{kind} {impl} {best_ms(opt.step, repeats * 4, warmup=3):.2f}")
        print(f"  {name} ({sum(p.numel() for p in params) / 1e6:.1f} M): " + ", ".join(cells), flush=True)
    print("  (engine.make_optimizer uses the fused ones on CPU and CUDA)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", default="48,96,227", help="R-CNN crop sizes, comma-separated")
    ap.add_argument("--regions", type=int, default=512)
    ap.add_argument("--backbone", default="small", help="R-CNN backbone: small, alexnet or vgg16")
    ap.add_argument("--yolo-sizes", default="128,256,448", help="YOLOv1 input sizes, comma-separated")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, two repeats (a smoke test)")
    args = ap.parse_args(argv)
    if args.quick:
        args.crops, args.regions, args.yolo_sizes, args.repeats = "24", 16, "64", 2
    print(f"hardware: {hardware(torch.device('cpu'))}")
    region_features([int(c) for c in args.crops.split(",")], args.regions, args.backbone, args.repeats)
    yolo_frozen([int(s) for s in args.yolo_sizes.split(",")], args.repeats)
    optimizers(args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
