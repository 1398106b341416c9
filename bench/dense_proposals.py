"""Selective-search recall on dense scenes: which proposal settings find small, crowded objects.

Real detection sets often hold tens of objects per image, some under 20 px, at 640 x 480. This
benchmark builds such a set with the synthetic generator (``object_size`` small, ``max_objects`` high,
640 px) or reads a VOC folder you give, runs selective search with each setting of a grid, and prints
recall at IoU 0.5 (all objects and those under 32 px on the shorter side), proposals per image and
seconds per image (all cores). ``docs/benchmarks.md`` records the figures with the machine.

    python -m bench.dense_proposals                                   # dense synthetic, 30 images
    python -m bench.dense_proposals --voc ../shared/realdata/raccoon-voc --images 30
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import numpy as np

from segdet.data.formats import parse_voc_xml
from segdet.data.sources import find_voc_image
from segdet.data.synthetic.voc import generate_voc
from segdet.detection.proposals import propose_many, recall
from segdet.runtime import hardware
from segdet.sections import ProposalsConfig

SMALL = 32  # px: an object is "small" when its shorter box side is under this (COCO's small is area < 32^2)


def dense_voc(out: Path, images: int, size: int = 640, seed: int = 0) -> Path:
    """A dense synthetic VOC folder: up to 40 objects per image, sides 2.5 %-25 % of the image."""
    generate_voc(out, num_images=images, image_size=size, seed=seed, max_objects=40,
                 object_size=(0.025, 0.25), progress=False)
    return out


def load(folder: Path, limit: int) -> tuple[list[str], list[np.ndarray]]:
    """Image paths and non-difficult boxes ``[n, 4]`` of the first ``limit`` annotations of a VOC folder."""
    paths, boxes = [], []
    for xml in sorted((folder / "Annotations").glob("*.xml"))[:limit]:
        image = find_voc_image(folder, xml.stem)
        if image is None:
            continue
        ann = parse_voc_xml(xml)
        paths.append(str(image))
        boxes.append(np.array([o.box for o in ann.objects if not o.difficult], np.float32).reshape(-1, 4))
    return paths, boxes


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--voc", type=Path, help="a VOC folder (default: a dense synthetic one)")
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--modes", default="fast,quality")
    ap.add_argument("--max-sides", default="500,640,800")
    ap.add_argument("--max-proposals", default="2000,4000")
    ap.add_argument("--min-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=0)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.voc or dense_voc(Path(tmp) / "dense", args.images)
        paths, gt = load(folder, args.images)
        sides = np.concatenate([np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) for b in gt])
        small_gt = [b[np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) < SMALL] for b in gt]
        print(f"{folder.name}: {len(paths)} images, {len(sides)} objects ({len(sides) / len(paths):.1f}/image), "
              f"{int((sides < SMALL).sum())} under {SMALL} px, {int((sides < 20).sum())} under 20 px")
        print(f"hardware: {hardware('cpu')}")
        print(f"{'mode':8} {'max_side':>8} {'max_prop':>8} {'recall':>7} {'small':>7} {'boxes/img':>9} {'s/img':>6}")
        for mode, side in itertools.product(args.modes.split(","), map(int, args.max_sides.split(","))):
            settings = ProposalsConfig(mode=mode, max_side=side, min_size=args.min_size, max_proposals=10**6)
            t0 = time.perf_counter()
            found = [b for _, b, _ in propose_many(paths, settings, args.workers)]
            seconds = (time.perf_counter() - t0) / len(paths)
            for cap in map(int, args.max_proposals.split(",")):
                kept = [b[:cap] for b in found]
                print(f"{mode:8} {side:8d} {cap:8d} {recall(gt, kept, 0.5):7.3f} {recall(small_gt, kept, 0.5):7.3f} "
                      f"{np.mean([len(b) for b in kept]):9.0f} {seconds:6.2f}", flush=True)


if __name__ == "__main__":
    main()
