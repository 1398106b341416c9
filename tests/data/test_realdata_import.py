"""Importing the real datasets in ../shared/realdata (see its README.md) through prepare + manifest.

Skipped when that folder is absent (a fresh clone has no ../shared). The other dataset of each config is
synthetic and tiny, so each test takes about a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdet.config import load_section
from segdet.data.manifest import build_manifests
from segdet.data.pairs import ManifestError
from segdet.data.prepare import prepare_data
from tests.conftest import REALDATA

ISIC_SAMPLE = REALDATA / "isic-sample"
ISIC_512 = REALDATA / "isic2018-512"
RACCOON = REALDATA / "raccoon-voc"
SPLITS = ("train", "val", "test")

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not REALDATA.is_dir(), reason=f"real data not found at {REALDATA}"),
]

TINY_SEG = {"source": "synthetic", "num_images": 6, "image_size": 32}
TINY_DET = {"source": "synthetic", "num_images": 6, "image_size": 64, "max_objects": 2}


def _run(tmp_path: Path, seg: dict, det: dict) -> tuple[dict, dict, Path]:
    cfg = load_section("data", {"data": {"seg": seg, "det": det}})
    prepared = prepare_data(cfg, tmp_path / "raw", tmp_path, progress=False)
    summary = build_manifests(cfg, tmp_path / "raw", tmp_path / "manifests", tmp_path, progress=False)
    return prepared, summary, tmp_path / "manifests"


def _pairs(manifest: Path) -> list[tuple[str, str]]:
    return [tuple(ln.split(" ")) for ln in manifest.read_text().splitlines() if ln and not ln.startswith("#")]


def _ids(paths: list[str]) -> set[str]:
    return {Path(p).stem for p in paths}


def _link_pairs(src: Path, dst: Path, n: int) -> set[str]:
    """Symlink the first n image/mask pairs of an ISIC split folder into dst/{images,masks}."""
    (dst / "images").mkdir(parents=True)
    (dst / "masks").mkdir(parents=True)
    images = sorted((src / "images").glob("ISIC_*.jpg"))[:n]
    for img in images:
        mask = src / "masks" / f"{img.stem}_segmentation.png"
        (dst / "images" / img.name).symlink_to(img)
        (dst / "masks" / mask.name).symlink_to(mask)
    return {img.stem for img in images}


@pytest.mark.skipif(not ISIC_SAMPLE.is_dir(), reason="isic-sample missing")
def test_isic_sample_pool_is_split_by_ratios(tmp_path: Path) -> None:
    prepared, summary, out = _run(tmp_path, {"source": "isic", "path": str(ISIC_SAMPLE)}, TINY_DET)
    assert prepared["seg"]["images"] == 40
    assert prepared["seg"]["splits"] == {"all": 40}
    # 40 by 0.7/0.15/0.15 -> 28/6/6
    assert [summary["seg"][s] for s in SPLITS] == [28, 6, 6]
    assert "seeded shuffle of 40" in summary["seg"]["how"]

    pairs = [p for s in SPLITS for p in _pairs(out / f"seg_{s}.txt")]
    assert [len(_pairs(out / f"seg_{s}.txt")) for s in SPLITS] == [28, 6, 6]
    source_ids = {p.stem for p in (ISIC_SAMPLE / "images").glob("*.jpg")}
    assert len(source_ids) == 40
    assert _ids([img for img, _ in pairs]) == source_ids  # every pair once
    for img, mask in pairs:
        assert not Path(img).is_absolute()  # relative to the root
        assert Path(mask).name == f"{Path(img).stem}_segmentation.png"
        assert (tmp_path / img).is_file() and (tmp_path / mask).is_file()
        # the copy is the real file
        assert (tmp_path / mask).read_bytes() == (ISIC_SAMPLE / "masks" / Path(mask).name).read_bytes()


@pytest.mark.skipif(not ISIC_SAMPLE.is_dir(), reason="isic-sample missing")
def test_isic_real_masks_are_validated(tmp_path: Path) -> None:
    cfg = load_section("data", {"data": {"seg": {"source": "isic", "path": str(ISIC_SAMPLE)}, "det": TINY_DET}})
    raw = tmp_path / "raw"
    prepare_data(cfg, raw, tmp_path, progress=False)
    # spoil one real mask after import: a soft edge (value 128) as a resized mask would have
    mask_path = sorted((raw / "isic" / "masks").glob("*.png"))[7]
    mask = np.asarray(Image.open(mask_path)).copy()
    assert set(np.unique(mask).tolist()) == {0, 255}  # real masks are 0/255
    mask[mask == 255] = 128
    Image.fromarray(mask).save(mask_path)
    with pytest.raises(ManifestError) as info:
        build_manifests(cfg, raw, tmp_path / "manifests", tmp_path, progress=False)
    (problem,) = info.value.problems
    image_rel = f"raw/isic/images/{mask_path.name.replace('_segmentation.png', '.jpg')}"
    assert problem.startswith(f"{image_rel}: mask raw/isic/masks/{mask_path.name} has values [0, 128]")
    assert not (tmp_path / "manifests").exists()


@pytest.mark.skipif(not ISIC_512.is_dir(), reason="isic2018-512 missing")
def test_isic_train_val_folders_val_becomes_test(tmp_path: Path) -> None:
    src = tmp_path / "user_isic"
    train_ids = _link_pairs(ISIC_512 / "train", src / "train", 10)
    val_ids = _link_pairs(ISIC_512 / "val", src / "val", 5)
    assert len(train_ids) == 10 and len(val_ids) == 5 and not train_ids & val_ids

    prepared, summary, out = _run(tmp_path, {"source": "isic", "path": str(src)}, TINY_DET)
    assert prepared["seg"]["splits"] == {"train": 10, "val": 5}
    # val = 0.15 / 0.85 of train: round(10 * 0.176) = 2
    assert [summary["seg"][s] for s in SPLITS] == [8, 2, 5]
    assert "held-out val list became test" in summary["seg"]["how"]

    split_ids = {s: _ids([img for img, _ in _pairs(out / f"seg_{s}.txt")]) for s in SPLITS}
    assert split_ids["test"] == val_ids
    assert split_ids["train"] | split_ids["val"] == train_ids
    assert not split_ids["train"] & split_ids["val"]
    for img, mask in _pairs(out / "seg_test.txt"):
        assert img.startswith("raw/isic/val/images/") and mask.startswith("raw/isic/val/masks/")
        assert not (tmp_path / img).is_symlink()  # imported as a copy


@pytest.mark.skipif(not RACCOON.is_dir(), reason="raccoon-voc missing")
def test_raccoon_voc_uses_its_split_lists(tmp_path: Path) -> None:
    prepared, summary, out = _run(tmp_path, TINY_SEG, {"source": "voc", "path": str(RACCOON)})
    assert prepared["det"]["images"] == 200
    assert prepared["det"]["split_lists"] == ["test", "train"]

    train_ids = set((RACCOON / "ImageSets" / "Main" / "train.txt").read_text().split())
    test_ids = set((RACCOON / "ImageSets" / "Main" / "test.txt").read_text().split())
    assert (len(train_ids), len(test_ids)) == (160, 40)
    # val = 0.15 / 0.85 of 160 = 28.2 -> 28 carved from train
    assert [summary["det"][s] for s in SPLITS] == [132, 28, 40]
    split_ids = {s: _ids([img for img, _ in _pairs(out / f"det_{s}.txt")]) for s in SPLITS}
    assert split_ids["test"] == test_ids
    assert split_ids["train"] | split_ids["val"] == train_ids
    assert not split_ids["train"] & split_ids["val"]

    assert summary["det"]["classes"] == ["raccoon"]
    assert (out / "det_classes.txt").read_text() == "raccoon\n"
    assert summary["det"]["degenerate_boxes_dropped"] == 0
    assert sum(summary["det"][f"{s}_objects"]["raccoon"] for s in SPLITS) == 217  # README: 217 boxes

    greyscale = {p.stem for p in (RACCOON / "JPEGImages").glob("*.jpg") if Image.open(p).mode == "L"}
    assert len(greyscale) == 3  # README: 3 greyscale JPEGs, accepted like the others
    assert greyscale <= split_ids["train"] | split_ids["val"] | split_ids["test"]

    n_boxes = 0
    for s in SPLITS:
        manifest = _pairs(out / f"det_{s}.txt")
        coco = json.loads((out / f"det_{s}_coco.json").read_text())
        assert [im["id"] for im in coco["images"]] == list(range(1, len(manifest) + 1))
        assert [im["file_name"] for im in coco["images"]] == [img for img, _ in manifest]
        sizes = {}
        for im in coco["images"]:
            with Image.open(tmp_path / im["file_name"]) as real:
                assert (im["width"], im["height"]) == real.size, im["file_name"]
            sizes[im["id"]] = real.size
        for a in coco["annotations"]:
            x, y, w, h = a["bbox"]
            iw, ih = sizes[a["image_id"]]
            assert a["category_id"] == 1
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= iw and y + h <= ih
        n_boxes += len(coco["annotations"])
    assert n_boxes == 217


@pytest.mark.skipif(not RACCOON.is_dir(), reason="raccoon-voc missing")
def test_raccoon_box_matches_its_xml(tmp_path: Path) -> None:
    # raccoon-1.xml: 650x417, one box xmin=81 ymin=88 xmax=522 ymax=408
    # -> COCO [80, 87, 522 - 81 + 1, 408 - 88 + 1] = [80, 87, 442, 321]
    _, _, out = _run(tmp_path, TINY_SEG, {"source": "voc", "path": str(RACCOON)})
    for s in SPLITS:
        coco = json.loads((out / f"det_{s}_coco.json").read_text())
        ids = [im["id"] for im in coco["images"] if im["file_name"].endswith("/raccoon-1.jpg")]
        if ids:
            (im,) = [im for im in coco["images"] if im["id"] == ids[0]]
            assert (im["width"], im["height"]) == (650, 417)
            assert [a["bbox"] for a in coco["annotations"] if a["image_id"] == ids[0]] == [[80.0, 87.0, 442.0, 321.0]]
            return
    pytest.fail("raccoon-1.jpg not in any split")


@pytest.mark.skipif(not RACCOON.is_dir(), reason="raccoon-voc missing")
def test_raccoon_as_a_full_voc_devkit_imports(tmp_path: Path) -> None:
    # the devkit layout: train, val, trainval (= train + val) and test lists, plus VOC2007-style
    # per-class lists beside them; images and annotations linked from the real folder, untouched
    src = tmp_path / "VOC"
    main = src / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for sub in ("JPEGImages", "Annotations"):
        (src / sub).symlink_to(RACCOON / sub)
    train_ids = (RACCOON / "ImageSets" / "Main" / "train.txt").read_text().split()
    test_ids = (RACCOON / "ImageSets" / "Main" / "test.txt").read_text().split()
    val_ids, train_ids = train_ids[::5], [i for k, i in enumerate(train_ids) if k % 5]
    lists = {"train": train_ids, "val": val_ids, "trainval": sorted(train_ids + val_ids), "test": test_ids}
    for name, ids in lists.items():
        (main / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        (main / f"raccoon_{name}.txt").write_text("".join(f"{i}  1\n" for i in ids))
    for pooled in (False, True):
        run = tmp_path / ("pooled" if pooled else "lists")
        cfg = load_section("data", {"data": {"seg": TINY_SEG, "det": {"source": "voc", "path": str(src)},
                                             "use_source_splits": not pooled}})
        prepare_data(cfg, run / "raw", run, progress=False)
        summary = build_manifests(cfg, run / "raw", run / "manifests", run, progress=False)
        split_ids = {s: _ids([img for img, _ in _pairs(run / "manifests" / f"det_{s}.txt")]) for s in SPLITS}
        assert sum(len(v) for v in split_ids.values()) == 200  # every image once, none twice
        assert sum(summary["det"][f"{s}_objects"]["raccoon"] for s in SPLITS) == 217
        if not pooled:
            assert {s: split_ids[s] for s in SPLITS} == {"train": set(train_ids), "val": set(val_ids),
                                                         "test": set(test_ids)}
