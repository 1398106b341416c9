"""R-CNN costs: batched roi_align warping against a per-crop cv2.resize loop, and proposals per second.

1. Warping 2000 boxes of one image to 227 x 227 (16 px of context, the paper's settings) and to 48 x 48: one
   batched ``torchvision.ops.roi_align`` call with a fixed sampling ratio, the pipeline's ``warp`` (on the CPU:
   OpenCV ``warpAffine`` on roi_align's sample grid, each box with its own sample count up to the ratio:
   ``sampling_counts``) and a Python loop of crop + ``cv2.resize`` per box (the usual hand-written way, one
   sample per pixel), all producing the normalised float tensor the CNN takes.
2. Selective search throughput (images/s) with 1 worker against all cores.

    python -m bench.rcnn_warp                                    # synthetic images
    python -m bench.rcnn_warp --images ../shared/realdata/raccoon-voc/JPEGImages
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.ops import roi_align

from segdet.data.formats import read_rgb
from segdet.data.synthetic.voc import generate_voc
from segdet.detection.boxes import dilate
from segdet.detection.proposals import propose_many
from segdet.detection.rcnn.model import _MEAN, _STD, normalise, warp
from segdet.runtime import hardware
from segdet.sections import ProposalsConfig


def warp_loop(image: np.ndarray, boxes: torch.Tensor, crop: int, context: float) -> torch.Tensor:
    """Per-box crop (zero-padded where the dilated box leaves the image) + cv2.resize, then normalise."""
    h, w = image.shape[:2]
    out = []
    for x1, y1, x2, y2 in dilate(boxes, crop, context).tolist():
        x1, y1, x2, y2 = int(np.floor(x1)), int(np.floor(y1)), int(np.ceil(x2)), int(np.ceil(y2))
        patch = np.zeros((y2 - y1, x2 - x1, 3), np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if sx2 > sx1 and sy2 > sy1:
            patch[sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = image[sy1:sy2, sx1:sx2]
        resized = cv2.resize(patch, (crop, crop), interpolation=cv2.INTER_LINEAR)
        out.append((torch.from_numpy(resized).permute(2, 0, 1).float() / 255.0 - _MEAN) / _STD)
    return torch.stack(out)


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", help="a folder of images (default: synthetic 256 px scenes)")
    ap.add_argument("--boxes", type=int, default=2000)
    ap.add_argument("--crop", type=int, default=227)
    ap.add_argument("--context", type=float, default=16)
    ap.add_argument("--count", type=int, default=24, help="images for the proposal throughput")
    args = ap.parse_args()
    print(f"hardware: {hardware(torch.device('cpu'))}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            paths = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        else:
            generate_voc(Path(tmp), num_images=args.count, image_size=256, seed=0, progress=False)
            paths = sorted((Path(tmp) / "JPEGImages").glob("*.jpg"))
        paths = paths[: args.count]
        image = read_rgb(paths[0])
        h, w = image.shape[:2]
        rng = np.random.default_rng(0)
        xy = rng.uniform(0, 1, (args.boxes, 2)) * [w * 0.8, h * 0.8]
        wh = rng.uniform(0.05, 0.6, (args.boxes, 2)) * [w, h]
        boxes = torch.tensor(np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1), dtype=torch.float32)
        tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        print(f"image {w}x{h}, {args.boxes} boxes, warped with context (16 px at 227, 3.4 px at 48)")
        for crop, context in ((args.crop, args.context), (48, 3.4)):
            looped = best_of(lambda c=crop, x=context: warp_loop(image, boxes, c, x), 3)
            print(f"  {crop}x{crop} per-crop cv2.resize loop (1 sample)  : {looped * 1000:8.1f} ms")
            rois = dilate(boxes, crop, context)
            for sr in (2, 1):
                batched = best_of(lambda c=crop, r=sr, b=rois: roi_align(normalise(tensor)[None], [b], output_size=(c, c),
                                                                       spatial_scale=1.0, sampling_ratio=r,
                                                                       aligned=True), 3)
                ours = best_of(lambda c=crop, x=context, r=sr: warp(tensor, boxes, c, x, r), 3)
                print(f"  {crop}x{crop} sampling {sr}: batched roi_align {batched * 1000:8.1f} ms, pipeline warp "
                      f"(CPU: OpenCV) {ours * 1000:8.1f} ms (loop / pipeline = {looped / ours:.2f})")
        settings = ProposalsConfig("fast", max_side=256)
        cores = os.cpu_count() or 1
        for workers in sorted({1, cores}):
            t0 = time.perf_counter()
            n = sum(1 for _ in propose_many(paths, settings, workers))
            dt = time.perf_counter() - t0
            print(f"selective search, {workers} worker(s): {n / dt:6.2f} images/s ({n} images, fast, max side 256)")


if __name__ == "__main__":
    main()
