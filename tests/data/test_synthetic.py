"""Tests for segdet.data.synthetic (deterministic ISIC- and VOC-like datasets)."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segdet.data.synthetic import (
    _VOC_TAG,
    DET_CLASSES,
    _image_rng,
    _render_voc_scene,
    generate_isic,
    generate_voc,
)

ISIC_SIZE = 64
VOC_SIZE = 96
VOC_IMAGES = 30
VOC_MAX_OBJECTS = 8


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by relative posix path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read_voc(xml_path: Path) -> dict:
    root = ET.parse(xml_path).getroot()
    size = root.find("size")
    objects = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        objects.append(
            {
                "name": obj.findtext("name"),
                "truncated": int(obj.findtext("truncated")),
                "occluded": int(obj.findtext("occluded")),
                "difficult": int(obj.findtext("difficult")),
                "pose": obj.findtext("pose"),
                "box": tuple(int(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")),
            }
        )
    return {
        "folder": root.findtext("folder"),
        "filename": root.findtext("filename"),
        "width": int(size.findtext("width")),
        "height": int(size.findtext("height")),
        "depth": int(size.findtext("depth")),
        "segmented": root.findtext("segmented"),
        "objects": objects,
    }


@pytest.fixture(scope="module")
def isic_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("isic")
    stats = generate_isic(out, num_images=12, image_size=ISIC_SIZE, seed=7, progress=False)
    return out, stats


@pytest.fixture(scope="module")
def voc_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("voc")
    stats = generate_voc(
        out,
        num_images=VOC_IMAGES,
        image_size=VOC_SIZE,
        seed=3,
        max_objects=VOC_MAX_OBJECTS,
        progress=False,
    )
    return out, stats


# --------------------------------------------------------------------------- #
# Determinism
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("generate", [generate_isic, generate_voc])
def test_same_args_give_identical_files(tmp_path: Path, generate) -> None:
    kwargs = {"num_images": 3, "image_size": 48, "seed": 11, "progress": False}
    stats_a = generate(tmp_path / "a", **kwargs)
    stats_b = generate(tmp_path / "b", **kwargs)
    hashes_a, hashes_b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert hashes_a and hashes_a == hashes_b
    assert stats_a == stats_b

    generate(tmp_path / "c", **{**kwargs, "seed": 12})
    hashes_c = _hashes(tmp_path / "c")
    images = [k for k in hashes_a if k.endswith(".jpg")]
    assert len(images) == 3
    assert all(hashes_a[k] != hashes_c[k] for k in images)


@pytest.mark.parametrize("generate", [generate_isic, generate_voc])
def test_image_does_not_depend_on_dataset_length(tmp_path: Path, generate) -> None:
    kwargs = {"image_size": 48, "seed": 5, "progress": False}
    generate(tmp_path / "three", num_images=3, **kwargs)
    generate(tmp_path / "five", num_images=5, **kwargs)
    three, five = _hashes(tmp_path / "three"), _hashes(tmp_path / "five")
    per_image = [k for k in three if k.endswith((".jpg", ".png", ".xml"))]
    assert len(per_image) >= 6
    for key in per_image:
        assert three[key] == five[key], key
    assert len([k for k in five if k.endswith(".jpg")]) == 5


# --------------------------------------------------------------------------- #
# ISIC
# --------------------------------------------------------------------------- #
def test_isic_layout_masks_and_stats(isic_dir: tuple[Path, dict]) -> None:
    out, stats = isic_dir
    images = sorted((out / "images").iterdir())
    masks = sorted((out / "masks").iterdir())
    assert [p.name for p in images] == [f"ISIC_{i:07d}.jpg" for i in range(12)]
    assert [p.name for p in masks] == [f"ISIC_{i:07d}_segmentation.png" for i in range(12)]
    assert stats["images"] == 12

    fractions, darker = [], 0
    for img_path in images:
        image = Image.open(img_path)
        mask_img = Image.open(out / "masks" / f"{img_path.stem}_segmentation.png")
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == (ISIC_SIZE, ISIC_SIZE)
        assert mask_img.format == "PNG" and mask_img.mode == "L"
        assert mask_img.size == image.size
        mask = np.asarray(mask_img)
        assert set(np.unique(mask).tolist()) <= {0, 255}
        lesion = mask == 255
        fraction = float(lesion.mean())
        assert 0.0 < fraction < 1.0
        fractions.append(fraction)
        gray = np.asarray(image.convert("L"), dtype=np.float64)
        darker += gray[lesion].mean() < gray[~lesion].mean()

    assert darker >= 0.8 * len(images)
    assert stats["lesion_fraction_mean"] == pytest.approx(np.mean(fractions))
    assert stats["lesion_fraction_min"] == pytest.approx(min(fractions))
    assert stats["lesion_fraction_max"] == pytest.approx(max(fractions))


def test_isic_lesion_is_one_main_region(isic_dir: tuple[Path, dict]) -> None:
    """The mask is a single lesion: its largest component holds nearly all of it."""
    out, _ = isic_dir
    for mask_path in sorted((out / "masks").iterdir()):
        lesion = (np.asarray(Image.open(mask_path)) == 255).astype(np.uint8)
        n, _, cc_stats, _ = cv2.connectedComponentsWithStats(lesion, connectivity=8)
        areas = cc_stats[1:, cv2.CC_STAT_AREA]
        assert n >= 2
        assert areas.max() >= 0.9 * areas.sum()


def test_isic_lesion_sizes_vary(tmp_path: Path) -> None:
    stats = generate_isic(tmp_path, num_images=40, image_size=32, seed=1, progress=False)
    assert stats["lesion_fraction_min"] < 0.06
    assert stats["lesion_fraction_max"] > 0.4


# --------------------------------------------------------------------------- #
# VOC
# --------------------------------------------------------------------------- #
def test_voc_layout_and_annotations(voc_dir: tuple[Path, dict]) -> None:
    out, stats = voc_dir
    ids = [f"{i:06d}" for i in range(VOC_IMAGES)]
    assert (out / "ImageSets" / "Main" / "trainval.txt").read_text().splitlines() == ids
    assert tuple((out / "classes.txt").read_text().splitlines()) == DET_CLASSES
    assert sorted(p.name for p in (out / "JPEGImages").iterdir()) == [f"{i}.jpg" for i in ids]
    assert sorted(p.name for p in (out / "Annotations").iterdir()) == [f"{i}.xml" for i in ids]

    per_class = dict.fromkeys(DET_CLASSES, 0)
    truncated = occluded = touching = 0
    sides = []
    for image_id in ids:
        ann = _read_voc(out / "Annotations" / f"{image_id}.xml")
        assert ann["folder"] == "JPEGImages"
        assert ann["filename"] == f"{image_id}.jpg"
        image = Image.open(out / "JPEGImages" / ann["filename"])
        assert image.mode == "RGB"
        assert (ann["width"], ann["height"]) == image.size == (VOC_SIZE, VOC_SIZE)
        assert ann["depth"] == 3 and ann["segmented"] == "0"
        assert 1 <= len(ann["objects"]) <= VOC_MAX_OBJECTS
        for obj in ann["objects"]:
            assert obj["name"] in DET_CLASSES
            assert obj["pose"] == "Unspecified" and obj["difficult"] == 0
            assert obj["truncated"] in (0, 1) and obj["occluded"] in (0, 1)
            xmin, ymin, xmax, ymax = obj["box"]
            assert 1 <= xmin <= xmax <= ann["width"]
            assert 1 <= ymin <= ymax <= ann["height"]
            assert min(xmax - xmin, ymax - ymin) + 1 >= 4
            if obj["truncated"]:  # a border-cut box normally touches the border
                touching += xmin == 1 or ymin == 1 or xmax == ann["width"] or ymax == ann["height"]
            per_class[obj["name"]] += 1
            truncated += obj["truncated"]
            occluded += obj["occluded"]
            sides.append(max(xmax - xmin + 1, ymax - ymin + 1) / VOC_SIZE)

    assert all(count > 0 for count in per_class.values()), per_class
    assert truncated > 0 and occluded > 0
    assert touching >= 0.9 * truncated
    assert min(sides) < 0.12 and max(sides) > 0.4
    assert stats == {
        "images": VOC_IMAGES,
        "objects": sum(per_class.values()),
        "objects_per_class": per_class,
        "truncated": truncated,
        "occluded": occluded,
    }


def test_voc_xml_matches_rendered_scene(voc_dir: tuple[Path, dict]) -> None:
    """Annotations are exactly the boxes of the scene the image was rendered from."""
    out, _ = voc_dir
    for i in range(5):
        scene = _render_voc_scene(_image_rng(3, _VOC_TAG, i), VOC_SIZE, VOC_MAX_OBJECTS)
        ann = _read_voc(out / "Annotations" / f"{i:06d}.xml")
        expected = [(o.name, o.box, int(o.truncated), int(o.occluded)) for o in scene.objects]
        got = [(o["name"], o["box"], o["truncated"], o["occluded"]) for o in ann["objects"]]
        assert got == expected


@pytest.mark.parametrize("index", range(12))
def test_voc_boxes_enclose_visible_pixels(index: int) -> None:
    size = 80
    scene = _render_voc_scene(_image_rng(21, _VOC_TAG, index), size, 6)
    assert 1 <= len(scene.objects) <= 6
    union = np.zeros((size, size), np.uint8)
    for k, obj in enumerate(scene.objects):
        visible = scene.owner == k
        rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
        # VOC box = tight box of the visible pixels, 1-based inclusive
        assert obj.box == (cols[0] + 1, rows[0] + 1, cols[-1] + 1, rows[-1] + 1)
        assert visible.sum() >= 0.4 * obj.area
        assert obj.occluded == (visible.sum() < 0.95 * obj.area)
        xmin, ymin, xmax, ymax = obj.box
        union[ymin - 1 : ymax, xmin - 1 : xmax] = 1
        if not obj.occluded:
            # the object's own pixels really differ from the background there
            diff = np.abs(scene.image - scene.background).max(axis=2)
            assert (diff[visible] > 1.0).mean() > 0.5
    # nothing is drawn farther than the anti-aliased fringe outside the boxes
    near = cv2.dilate(union, np.ones((5, 5), np.uint8)).astype(bool)
    changed = np.abs(scene.image - scene.background).max(axis=2) > 0.5
    assert not (changed & ~near).any()


def test_empty_and_invalid_arguments(tmp_path: Path) -> None:
    stats = generate_voc(tmp_path / "voc", num_images=0, image_size=64, seed=0, progress=False)
    assert stats["images"] == 0 and stats["objects"] == 0
    assert (tmp_path / "voc" / "ImageSets" / "Main" / "trainval.txt").read_text() == ""
    stats = generate_isic(tmp_path / "isic", num_images=0, image_size=64, seed=0, progress=False)
    assert stats["images"] == 0
    with pytest.raises(ValueError):
        generate_isic(tmp_path / "x", num_images=1, image_size=64, seed=-1, progress=False)
    with pytest.raises(ValueError):
        generate_voc(tmp_path / "y", num_images=1, image_size=64, seed=0, max_objects=0, progress=False)
