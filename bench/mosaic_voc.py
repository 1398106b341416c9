"""Dense scenes of real photos: a Pascal VOC devkit of mosaics built from the photos of another VOC folder.

The synthetic dense scenes (``bench/dense_proposals.py``) have flat shapes that selective search separates
easily. These are made of real photos instead: each 640x480 scene is a g x g grid (g drawn from 3 to 6) of
photos of the source folder, each scaled into its tile with its boxes, so a scene holds tens of real objects,
many of them small, with real textures around them. Each split draws its tiles from its own share of the source
photos (no photo is in two splits), and the devkit has ``train``, ``val``, ``trainval`` and ``test`` lists, so it
runs through the ``voc`` preset as it is. With ``--overlap F`` each tile grows by the fraction F and shifts by up
to F of a tile, in a random order, so tiles cover parts of the ones drawn before them: objects then overlap
(and are occluded) as in crowded photos; an occluded object's box is the extent of its visible part (VOC's
rule), one with under 30 % of its box visible is marked difficult (evaluation ignores it, training leaves it out,
as VOC's hardest objects), and one not visible at all is left out. ``docs/real-data.md`` records what it measured.

    python -m bench.mosaic_voc ../shared/realdata/raccoon-voc /tmp/mosaic-voc --images 120,30,30
    python -m bench.mosaic_voc ../shared/realdata/raccoon-voc /tmp/overlap-voc --images 120,30,30 --overlap 0.5
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
#: an occluded object with less of its box visible than this is marked difficult
MIN_VISIBLE = 0.3


def build(source: Path, out: Path, images: dict[str, int], grids: tuple[int, ...] = (3, 4, 5, 6),
          size: tuple[int, int] = (640, 480), seed: int = 0, overlap: float = 0.0) -> dict[str, list[str]]:
    """Write the mosaic devkit to ``out``; returns the image names of each split.

    The source photos (every annotated image of ``source``, difficult objects left out) are shuffled with
    ``seed`` and shared among the splits in proportion to ``images``; each tile is a photo of the split's share,
    flipped horizontally half of the time. ``overlap`` > 0: tiles ``1 + overlap`` times a grid cell, shifted
    by up to ``overlap`` of a cell, drawn in a random order (the module's docstring).
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
            owner = np.full((height, width), -1, np.int32)  # the tile that drew each pixel last
            cells = [(r, c) for r in range(g) for c in range(g)]
            if overlap > 0:
                rng.shuffle(cells)
            objects = []  # (label, box, tile)
            for tile, (r, c) in enumerate(cells):
                path, boxes = rng.choice(shares[split])
                photo = cv2.imread(str(path), cv2.IMREAD_COLOR)
                h, w = photo.shape[:2]
                if rng.random() < 0.5:
                    photo = np.ascontiguousarray(photo[:, ::-1])
                    boxes = [(name, (w - x2, y1, w - x1, y2)) for name, (x1, y1, x2, y2) in boxes]
                x0, y0, pw, ph = c * tw, r * th, tw, th
                if overlap > 0:
                    pw, ph = round(tw * (1 + overlap)), round(th * (1 + overlap))
                    x0 -= round(rng.uniform(0, overlap) * tw)
                    y0 -= round(rng.uniform(0, overlap) * th)
                resized = cv2.resize(photo, (pw, ph), interpolation=cv2.INTER_AREA)
                cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(width, x0 + pw), min(height, y0 + ph)
                canvas[cy0:cy1, cx0:cx1] = resized[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
                owner[cy0:cy1, cx0:cx1] = tile
                sx, sy = pw / w, ph / h
                objects += [(name, (x0 + x1 * sx, y0 + y1 * sy, x0 + x2 * sx, y0 + y2 * sy), tile)
                            for name, (x1, y1, x2, y2) in boxes]
            name = f"mosaic_{sum(map(len, names.values())):05d}"
            names[split].append(name)
            cv2.imwrite(str(out / "JPEGImages" / f"{name}.jpg"), canvas, [cv2.IMWRITE_JPEG_QUALITY, 90])
            kept = [(label, *(visible(owner, box, tile) if overlap > 0 else (clip(box, width, height), False)))
                    for label, box, tile in objects]
            voc = [(label, xyxy_to_voc(*box), int(difficult)) for label, box, difficult in kept if box is not None]
            write_voc_xml(out / "Annotations" / f"{name}.xml", f"{name}.jpg", width, height,
                          [obj for obj in voc if obj[1][2] > obj[1][0] and obj[1][3] > obj[1][1]])
        (out / "ImageSets/Main" / f"{split}.txt").write_text("".join(f"{x}\n" for x in names[split]))
    if "train" in names and "val" in names:
        (out / "ImageSets/Main/trainval.txt").write_text("".join(f"{x}\n" for x in names["train"] + names["val"]))
    return names


def clip(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    """``box`` (x1, y1, x2, y2) clipped to the canvas."""
    x1, y1, x2, y2 = box
    return max(0.0, x1), max(0.0, y1), min(width, x2), min(height, y2)


def visible(owner: np.ndarray, box: tuple[float, float, float, float], tile: int
            ) -> tuple[tuple[float, float, float, float] | None, bool]:
    """``(extent, difficult)``: the extent of the part of ``box`` that ``tile`` still shows in ``owner`` (the tile
    of each pixel; None when no pixel of it is shown), and whether under :data:`MIN_VISIBLE` of the box is."""
    height, width = owner.shape
    x1, y1, x2, y2 = clip(box, width, height)
    ix1, iy1, ix2, iy2 = int(x1), int(y1), int(np.ceil(x2)), int(np.ceil(y2))
    shown = owner[iy1:iy2, ix1:ix2] == tile
    if not shown.any():
        return None, True
    rows, cols = np.flatnonzero(shown.any(1)), np.flatnonzero(shown.any(0))
    extent = (max(x1, ix1 + cols[0]), max(y1, iy1 + rows[0]), min(x2, ix1 + cols[-1] + 1), min(y2, iy1 + rows[-1] + 1))
    return extent, bool(shown.mean() < MIN_VISIBLE)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="a VOC folder whose photos make the tiles")
    ap.add_argument("out", type=Path, help="the devkit folder to write")
    ap.add_argument("--images", default="120,30,30", help="scenes in train,val,test")
    ap.add_argument("--grids", default="3,4,5,6", help="tiles a side, one drawn per scene")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--overlap", type=float, default=0.0,
                    help="tiles grow and shift by up to this fraction of a cell and cover each other (0: a plain grid)")
    args = ap.parse_args(argv)
    if not 0 <= args.overlap <= 1:
        ap.error("--overlap: a fraction in [0, 1]")
    counts = [int(x) for x in args.images.split(",")]
    if len(counts) != len(SPLITS) or min(counts) < 1:
        ap.error("--images: three positive counts, train,val,test")
    names = build(args.source, args.out, dict(zip(SPLITS, counts, strict=True)),
                  tuple(int(g) for g in args.grids.split(",")), seed=args.seed, overlap=args.overlap)
    objects = sum(len(parse_voc_xml(x).objects) for x in (args.out / "Annotations").glob("*.xml"))
    print(f"{args.out}: {', '.join(f'{k} {len(v)}' for k, v in names.items())} scenes, "
          f"{objects / sum(map(len, names.values())):.1f} objects a scene")


if __name__ == "__main__":
    main()
