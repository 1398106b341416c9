"""Dense scenes of real photos: a Pascal VOC devkit of mosaics built from the photos of another VOC folder.

The synthetic dense scenes (``bench/dense_proposals.py``) have flat shapes that selective search separates
easily. These are made of real photos instead: each 640x480 scene is a g x g grid (g drawn from 3 to 6) of
photos of the source folder, each scaled into its tile with its boxes, so a scene holds tens of real objects,
many of them small, with real textures around them. Each split draws its tiles from its own share of the source
photos (no photo is in two splits), and the devkit has ``train``, ``val``, ``trainval`` and ``test`` lists, so it
runs through the ``voc`` preset as it is. ``docs/real-data.md`` records what it measured.

    python -m bench.mosaic_voc ../shared/realdata/raccoon-voc /tmp/mosaic-voc --images 120,30,30
    python -m bench.dense_proposals --voc /tmp/mosaic-voc --images 30 --modes fast --max-sides 640
    segdet preset voc -S data.det.path=/tmp/mosaic-voc --run
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import cv2
import numpy as np

from segdet.data.formats import parse_voc_xml, write_voc_xml, xyxy_to_voc
from segdet.data.sources import find_voc_image

SPLITS = ("train", "val", "test")


def build(source: Path, out: Path, images: dict[str, int], grids: tuple[int, ...] = (3, 4, 5, 6),
          size: tuple[int, int] = (640, 480), seed: int = 0) -> dict[str, list[str]]:
    """Write the mosaic devkit to ``out``; returns the image names of each split.

    The source photos (every annotated image of ``source``, difficult objects left out) are shuffled with
    ``seed`` and shared among the splits in proportion to ``images``; each tile is a photo of the split's share,
    flipped horizontally half of the time.
    """
    photos = []
    for xml in sorted((source / "Annotations").glob("*.xml")):
        path = find_voc_image(source, xml.stem)
        objects = [(o.name, o.box) for o in parse_voc_xml(xml).objects if not o.difficult]
        if path is not None and objects:
            photos.append((path, objects))
    total = sum(images.values())
    if len(photos) < len(images) or total < 1:
        raise ValueError(f"{source}: {len(photos)} annotated photos, too few for {len(images)} splits")
    rng = random.Random(seed)
    rng.shuffle(photos)
    shares, start = {}, 0
    for i, (split, n) in enumerate(images.items()):
        stop = len(photos) if i == len(images) - 1 else start + max(1, round(len(photos) * n / total))
        stop = min(stop, len(photos) - (len(images) - 1 - i))  # leave at least one photo to each split after it
        shares[split], start = photos[start:stop], stop
    width, height = size
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {}
    for split, n in images.items():
        names[split] = []
        for _ in range(n):
            g = rng.choice(grids)
            tw, th = width // g, height // g
            canvas = np.zeros((height, width, 3), np.uint8)
            objects = []
            for r in range(g):
                for c in range(g):
                    path, boxes = rng.choice(shares[split])
                    photo = cv2.imread(str(path), cv2.IMREAD_COLOR)
                    h, w = photo.shape[:2]
                    if rng.random() < 0.5:
                        photo = np.ascontiguousarray(photo[:, ::-1])
                        boxes = [(name, (w - x2, y1, w - x1, y2)) for name, (x1, y1, x2, y2) in boxes]
                    canvas[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = cv2.resize(photo, (tw, th),
                                                                                  interpolation=cv2.INTER_AREA)
                    sx, sy = tw / w, th / h
                    objects += [(name, (c * tw + x1 * sx, r * th + y1 * sy, c * tw + x2 * sx, r * th + y2 * sy))
                                for name, (x1, y1, x2, y2) in boxes]
            name = f"mosaic_{sum(map(len, names.values())):05d}"
            names[split].append(name)
            cv2.imwrite(str(out / "JPEGImages" / f"{name}.jpg"), canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
            voc = [(label, xyxy_to_voc(max(0.0, x1), max(0.0, y1), min(width, x2), min(height, y2)))
                   for label, (x1, y1, x2, y2) in objects]
            write_voc_xml(out / "Annotations" / f"{name}.xml", f"{name}.jpg", width, height,
                          [(label, box) for label, box in voc if box[2] > box[0] and box[3] > box[1]])
        (out / "ImageSets/Main" / f"{split}.txt").write_text("".join(f"{x}\n" for x in names[split]))
    if "train" in names and "val" in names:
        (out / "ImageSets/Main/trainval.txt").write_text("".join(f"{x}\n" for x in names["train"] + names["val"]))
    return names


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="a VOC folder whose photos make the tiles")
    ap.add_argument("out", type=Path, help="the devkit folder to write")
    ap.add_argument("--images", default="120,30,30", help="scenes in train,val,test")
    ap.add_argument("--grids", default="3,4,5,6", help="tiles a side, one drawn per scene")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.images.split(",")]
    if len(counts) != len(SPLITS) or min(counts) < 1:
        ap.error("--images: three positive counts, train,val,test")
    names = build(args.source, args.out, dict(zip(SPLITS, counts, strict=True)),
                  tuple(int(g) for g in args.grids.split(",")), seed=args.seed)
    objects = sum(len(parse_voc_xml(x).objects) for x in (args.out / "Annotations").glob("*.xml"))
    print(f"{args.out}: {', '.join(f'{k} {len(v)}' for k, v in names.items())} scenes, "
          f"{objects / sum(map(len, names.values())):.1f} objects a scene")


if __name__ == "__main__":
    main()
