"""Objects of one colour that touch and overlap: a Pascal VOC devkit of blood-smear-like scenes.

The mosaics of real photos (``bench/mosaic_voc.py``) keep each object in its own tile, on its own background.
Many real detection sets do not: cells in a smear, fruit on a tree, people in a crowd are objects of one colour
pressed against each other. Selective search starts from a segmentation by colour, so touching objects of one
colour become one region, and its fast mode (two colour spaces, two segmentation scales) misses many of them.
These scenes are built for that case: each 640x480 image holds 12 to 25 overlapping pale-red discs with a paler
centre ("rbc", about 56 to 90 px across, drawn in a random order so later ones cover parts of earlier ones), a
large stained cell ("wbc") in most images and up to three small dark ones ("platelet", 12 to 24 px), on a
textured background. A box is the object's whole extent, covered parts included (as cell annotators draw them).
The devkit has ``train``, ``val``, ``trainval`` and ``test`` lists, so it runs through the ``voc`` preset as it
is. ``docs/real-data.md`` records what it measured.

    python -m bench.cells_voc /tmp/cells-voc --images 120,30,30
    python -m bench.dense_proposals --voc /tmp/cells-voc --images 30 --modes fast,quality --max-sides 640
    segdet preset voc -S data.det.path=/tmp/cells-voc --run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from segdet.data.formats import write_voc_xml, xyxy_to_voc

SPLITS = ("train", "val", "test")
SIZE = (640, 480)
#: the smallest box side kept for a disc cut by the image border (pixels)
MIN_SIDE = 10


def scene(rng: np.random.Generator, size: tuple[int, int] = SIZE) -> tuple[np.ndarray, list[tuple[str, tuple]]]:
    """One BGR image and its objects ``(class, (x1, y1, x2, y2))`` in continuous pixel coordinates."""
    w, h = size
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.array([215, 200, 225], np.float32) + rng.normal(0, 6, 3)  # pale violet background (BGR)
    img += rng.normal(0, 5, (h, w, 1))
    img = cv2.GaussianBlur(img, (0, 0), 2)
    objects: list[tuple[str, tuple]] = []
    if rng.random() < 0.9:  # a large stained cell with a lobed nucleus
        r = rng.uniform(45, 75)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        cv2.circle(img, (int(cx), int(cy)), int(r), (190, 150, 190), -1, cv2.LINE_AA)
        for _ in range(3):
            a = rng.uniform(0.35, 0.6) * r
            centre = (int(cx + rng.uniform(-0.4, 0.4) * r), int(cy + rng.uniform(-0.4, 0.4) * r))
            cv2.ellipse(img, centre, (int(a), int(a * rng.uniform(0.6, 1))), rng.uniform(0, 180), 0, 360,
                        (140, 40, 110), -1, cv2.LINE_AA)
        objects.append(("wbc", (cx - r, cy - r, cx + r, cy + r)))
    for _ in range(int(rng.integers(12, 26))):  # discs of one colour, overlapping, some cut by the border
        rx = rng.uniform(28, 45)
        ry = rx * rng.uniform(0.8, 1.0)
        angle = rng.uniform(0, 180)
        cx, cy = rng.uniform(-0.3 * rx, w + 0.3 * rx), rng.uniform(-0.3 * ry, h + 0.3 * ry)
        colour = np.array([150, 140, 215]) + rng.normal(0, 6, 3)
        cv2.ellipse(img, (int(cx), int(cy)), (int(rx), int(ry)), angle, 0, 360, colour.tolist(), -1, cv2.LINE_AA)
        cv2.ellipse(img, (int(cx), int(cy)), (int(rx * 0.55), int(ry * 0.55)), angle, 0, 360,
                    (colour + 30).tolist(), -1, cv2.LINE_AA)
        x1, y1, x2, y2 = max(cx - rx, 0), max(cy - ry, 0), min(cx + rx, w - 1), min(cy + ry, h - 1)
        if x2 - x1 > MIN_SIDE and y2 - y1 > MIN_SIDE:
            objects.append(("rbc", (x1, y1, x2, y2)))
    for _ in range(int(rng.integers(0, 4))):  # small dark ones
        r = rng.uniform(6, 12)
        cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
        cv2.ellipse(img, (int(cx), int(cy)), (int(r), int(r * rng.uniform(0.6, 1))), rng.uniform(0, 180), 0, 360,
                    (150, 70, 130), -1, cv2.LINE_AA)
        objects.append(("platelet", (cx - r, cy - r, cx + r, cy + r)))
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    return img, objects


def build(out: Path, images: dict[str, int], seed: int = 0, size: tuple[int, int] = SIZE) -> dict[str, list[str]]:
    """Write the devkit to ``out`` (JPEGImages, Annotations, ImageSets/Main lists); returns each split's names."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {}
    k = 0
    for split, n in images.items():
        names[split] = []
        for _ in range(n):
            img, objects = scene(rng, size)
            name = f"cells_{k:05d}"
            cv2.imwrite(str(out / "JPEGImages" / f"{name}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 92])
            write_voc_xml(out / "Annotations" / f"{name}.xml", f"{name}.jpg", size[0], size[1],
                          [(c, xyxy_to_voc(*box)) for c, box in objects])
            names[split].append(name)
            k += 1
        (out / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{x}\n" for x in names[split]))
    if "train" in names and "val" in names:
        (out / "ImageSets" / "Main" / "trainval.txt").write_text(
            "".join(f"{x}\n" for x in names["train"] + names["val"]))
    return names


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the devkit folder to write")
    ap.add_argument("--images", default="120,30,30", help="scenes for train,val,test")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.images.split(",")]
    if len(counts) != len(SPLITS) or min(counts) < 1:
        raise SystemExit(f"ERROR: --images {args.images!r}: give three positive counts, train,val,test")
    names = build(args.out, dict(zip(SPLITS, counts, strict=True)), args.seed)
    objects = sum(len(_objects(args.out, n)) for split in names.values() for n in split)
    print(f"{args.out}: " + ", ".join(f"{s} {len(v)}" for s, v in names.items())
          + f" scenes, {objects / sum(counts):.1f} objects a scene")


def _objects(out: Path, name: str) -> list:
    from segdet.data.formats import parse_voc_xml

    return parse_voc_xml(out / "Annotations" / f"{name}.xml").objects


if __name__ == "__main__":
    main()
