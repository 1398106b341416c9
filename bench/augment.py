"""YOLOv1 training augmentation: torchvision's v2 ops against segdet's OpenCV version, per image.

Times one training item of ``DetectionDataset`` (decode, resize, the paper's augmentation: scaling and
translation up to 20%, exposure and saturation up to 1.5x, horizontal flips; float, normalisation) with
three transforms: none (decode only), torchvision ``v2`` (``RandomAffine`` + ``ColorJitter`` +
``RandomHorizontalFlip``, the pipeline ``yolo_train`` used before) and
:class:`segdet.data.transforms.YoloAugment` (what ``yolo_train`` uses). One thread, as in a DataLoader
worker or between the training steps.

    python -m bench.augment                      # synthetic scenes, 256 px (the default pipeline's data)
    python -m bench.augment --image-size 640     # photos larger than the input, resized first
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from segdet.data.datasets import DetectionDataset, box_labels
from segdet.data.pairs import Pair
from segdet.data.synthetic.shapes import DET_CLASSES
from segdet.data.synthetic.voc import generate_voc
from segdet.data.transforms import YoloAugment
from segdet.nets.backbones import IMAGENET_MEAN, IMAGENET_STD
from segdet.runtime import hardware


def torchvision_augment(size: int, hflip: float) -> v2.Compose:
    """The same augmentation with torchvision's v2 ops."""
    return v2.Compose([v2.Resize((size, size), antialias=True),
                       v2.RandomAffine(degrees=0.0, translate=(0.2, 0.2), scale=(0.8, 1.2)),
                       v2.ColorJitter(brightness=(1 / 1.5, 1.5), saturation=(1 / 1.5, 1.5)),
                       v2.RandomHorizontalFlip(hflip),
                       v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                       v2.SanitizeBoundingBoxes(min_size=2.0, labels_getter=box_labels)])


def per_image_ms(ds: DetectionDataset, rounds: int) -> float:
    for i in range(min(10, len(ds))):  # warm-up
        ds[i]
    t0 = time.perf_counter()
    for _ in range(rounds):
        for i in range(len(ds)):
            ds[i]
    return (time.perf_counter() - t0) / (rounds * len(ds)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--image-size", type=int, default=256, help="side of the generated scenes")
    ap.add_argument("--input-size", type=int, default=256, help="YOLOv1 input (yolo_train.input_size)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        generate_voc(Path(tmp), num_images=args.images, image_size=args.image_size, seed=0, progress=False)
        pairs = [Pair(f"JPEGImages/{k:06d}.jpg", f"Annotations/{k:06d}.xml", "") for k in range(args.images)]
        print(f"hardware: {hardware(torch.device('cpu'))}")
        print(f"{args.images} synthetic scenes of {args.image_size} px, YOLOv1 input {args.input_size} px")
        rows = {}
        for name, tf in [("decode only", None),
                         ("torchvision v2", torchvision_augment(args.input_size, 0.5)),
                         ("segdet YoloAugment", YoloAugment(args.input_size, 0.5))]:
            rows[name] = per_image_ms(DetectionDataset(pairs, list(DET_CLASSES), tmp, tf), args.rounds)
            print(f"{name:20s} {rows[name]:6.2f} ms/image")
        base = rows["decode only"]
        tv, ours = rows["torchvision v2"] - base, rows["segdet YoloAugment"] - base
        print(f"augmentation alone: torchvision {tv:.2f} ms, segdet {ours:.2f} ms ({tv / max(ours, 1e-9):.1f}x)")


if __name__ == "__main__":
    main()
