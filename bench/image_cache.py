"""What the training datasets' image cache saves: one epoch of loading, without and with it.

``unet_train`` and ``yolo_train`` read every image once an epoch. Without the cache each read decodes the file
and resizes it to the input size before the random augmentation; with it (``cache=True``, the stages' setting)
the first epoch decodes and resizes and keeps the result, the next ones only augment. This times one epoch of
``dataset[i]`` over a folder's images in the training process (``workers: 0``, the CPU default): uncached,
the cache's first epoch, and a cached epoch; the tensors are the same either way (tests/data/test_image_cache.py).

    python -m bench.image_cache                                   # synthetic lesions and scenes, default sizes
    python -m bench.image_cache --isic ../shared/realdata/isic2018-512/train --images 1318 \\
        --rotate 20 --scale 0.15 --color-jitter 0.15                # the isic2018 preset's augmentation
    python -m bench.image_cache --voc ../shared/realdata/raccoon-voc --det-size 448
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from segdet.data.datasets import DetectionDataset, SegmentationDataset
from segdet.data.formats import parse_voc_xml
from segdet.data.pairs import Pair
from segdet.data.sources import find_isic_pairs, find_voc_image
from segdet.data.synthetic.isic import generate_isic
from segdet.data.synthetic.voc import generate_voc
from segdet.data.transforms import seg_transforms, yolo_transforms
from segdet.runtime import hardware


def epoch_seconds(ds) -> float:
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return time.perf_counter() - t0


def row(name: str, plain, cached) -> str:
    n = len(plain)
    base, first, again = epoch_seconds(plain), epoch_seconds(cached), epoch_seconds(cached)
    return (f"{name:34s} {n:6d} {base:9.2f} {first:9.2f} {again:9.2f} {base / max(again, 1e-9):7.1f}x "
            f"{(base - again) / n * 1e3:8.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--isic", type=Path, help="an ISIC folder (default: synthetic lesions, 128 px)")
    ap.add_argument("--voc", type=Path, help="a VOC folder (default: synthetic scenes, 256 px)")
    ap.add_argument("--images", type=int, default=210, help="images of each kind (default: the default train split)")
    ap.add_argument("--seg-size", type=int, default=96)
    ap.add_argument("--det-size", type=int, default=256)
    ap.add_argument("--rotate", type=float, default=0.0)
    ap.add_argument("--scale", type=float, default=0.0)
    ap.add_argument("--color-jitter", type=float, default=0.0)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        isic, voc = args.isic, args.voc
        if isic is None:
            isic = Path(tmp) / "isic"
            generate_isic(isic, num_images=args.images, image_size=128, seed=0, progress=False)
        if voc is None:
            voc = Path(tmp) / "voc"
            generate_voc(voc, num_images=args.images, image_size=256, max_objects=8, seed=0, progress=False)
        seg = [Pair(str(i), str(m), "") for i, m in find_isic_pairs(isic)[0][: args.images]]
        ids = sorted(p.stem for p in (voc / "Annotations").glob("*.xml"))[: args.images]
        det = [Pair(str(find_voc_image(voc, k)), str(voc / "Annotations" / f"{k}.xml"), "") for k in ids]
        classes = sorted({o.name for p in det for o in parse_voc_xml(p.label).objects})
        s, d = args.seg_size, args.det_size
        aug = {"rotate": args.rotate, "scale": args.scale, "color_jitter": args.color_jitter}
        print(f"hardware: {hardware(torch.device('cpu'))}")
        print(f"{'dataset (one epoch, seconds)':34s} {'images':>6s} {'uncached':>9s} {'1st epoch':>9s} "
              f"{'cached':>9s} {'speedup':>8s} {'ms saved/image':>8s}")
        print(row(f"UNet train, {s} px", SegmentationDataset(seg, "/", seg_transforms(s, True, **aug), s),
                  SegmentationDataset(seg, "/", seg_transforms(s, True, **aug, resize=False), s, resize_to=s,
                                      cache=True)))
        print(row(f"UNet val, {s} px", SegmentationDataset(seg, "/", seg_transforms(s, False), s),
                  SegmentationDataset(seg, "/", seg_transforms(s, False, resize=False), s, resize_to=s, cache=True)))
        for train in (True, False):
            tf = yolo_transforms(d, train, 0.5)
            print(row(f"YOLOv1 {'train' if train else 'val'}, {d} px",
                      DetectionDataset(det, classes, "/", tf, use_difficult=not train),
                      DetectionDataset(det, classes, "/", tf, use_difficult=not train, resize_to=d, cache=True)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
