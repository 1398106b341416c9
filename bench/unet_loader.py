"""Is the data loader the bottleneck of UNet training?

Measures training throughput (images/s, forward + backward + optimizer step) twice over the same
images: fed by the real pipeline (``SegmentationDataset`` decoding JPEG/PNG files, resizing, flipping,
through a ``DataLoader``) and fed from tensors already in memory. A ratio close to 1 means the loader
keeps up with the model.

    python -m bench.unet_loader                                # synthetic lesions (made in a temp folder)
    python -m bench.unet_loader --data ../shared/realdata/isic2018-512/train --images 96 --size 128
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from segdet.data.datasets import SegmentationDataset
from segdet.data.pairs import Pair
from segdet.data.sources import find_isic_pairs
from segdet.data.synthetic.isic import generate_isic
from segdet.data.transforms import seg_transforms
from segdet.nets.unet import build_unet
from segdet.runtime import hardware, resolve_device
from segdet.segmentation.losses import SegLoss


def train_steps(model, optimizer, loss_fn, batches, device, amp: bool) -> tuple[int, float]:
    """Run one optimizer step per batch; returns (images, seconds)."""
    n, t0 = 0, time.perf_counter()
    for images, masks in batches:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=amp):
            loss, _ = loss_fn(model(images), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n += len(images)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="an ISIC folder (default: synthetic lesions)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=96, help="training input size")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variant", default="unet32")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data:
            folder = Path(args.data)
        else:
            folder = Path(tmp) / "isic"
            generate_isic(folder, num_images=args.images, image_size=128, seed=0, progress=False)
        pairs = [Pair(str(i), str(m), "") for i, m in find_isic_pairs(folder)[0][: args.images]]
        ds = SegmentationDataset(pairs, root="/", transforms=seg_transforms(args.size, train=True))
        model = build_unet(args.variant).to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        loss_fn = SegLoss("ce+dice")
        amp = device.type == "cuda"
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        memory = list(DataLoader(ds, args.batch))  # decoded and transformed once, kept in RAM
        train_steps(model, optimizer, loss_fn, memory[:2], device, amp)  # warm-up
        n, s = train_steps(model, optimizer, loss_fn, memory, device, amp)
        in_memory = n / s
        print(f"hardware: {hardware(device)}")
        print(f"data: {folder if args.data else 'synthetic lesions 128 px'}, {len(ds)} images, {args.variant} "
              f"at {args.size} px, batch {args.batch}")
        print(f"in-memory tensors        : {in_memory:8.1f} images/s")
        for w in args.workers:
            loader = DataLoader(ds, args.batch, shuffle=True, num_workers=w, pin_memory=device.type == "cuda",
                                persistent_workers=False)
            n, s = train_steps(model, optimizer, loss_fn, loader, device, amp)
            print(f"DataLoader, {w} worker(s)  : {n / s:8.1f} images/s  (loader / in-memory = {n / s / in_memory:.2f})")


if __name__ == "__main__":
    main()
