"""Tests for segdet.data.formats (VOC / COCO / ISIC readers and importers) and pipeline.assign_splits."""

from __future__ import annotations

import json
import random
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdet.data.formats import FormatError, parse_voc_xml, voc_to_xyxy, write_voc_xml, xyxy_to_voc
from segdet.data.manifest import assign_splits
from segdet.data.pairs import ManifestError, Pair
from segdet.data.sources import find_isic_pairs, import_coco, isic_split_folders, label_pairs_with
from segdet.sections import SplitConfig


def _image(path: Path, w: int = 8, h: int = 6, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (w, h), 128 if mode == "L" else (10, 20, 30)).save(path)
    return path


def _mask(path: Path, w: int = 8, h: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), np.uint8)
    m[1:3, 2:5] = 255
    Image.fromarray(m, "L").save(path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Pascal VOC boxes
# ----------------------------------------------------------------------------------------------------------


def test_parse_voc_xml_converts_boxes(tmp_path: Path) -> None:
    xml = tmp_path / "a.xml"
    write_voc_xml(xml, "a.jpg", 40, 30, [("cat", (1, 2, 10, 20)), ("dog", (5, 6, 40, 30))])
    ann = parse_voc_xml(xml)
    assert (ann.filename, ann.width, ann.height) == ("a.jpg", 40, 30)
    assert [o.name for o in ann.objects] == ["cat", "dog"]
    cat, dog = ann.objects
    # x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax
    assert cat.box == (0.0, 1.0, 10.0, 20.0)
    assert cat.voc == (1.0, 2.0, 10.0, 20.0)
    assert dog.box == (4.0, 5.0, 40.0, 30.0)
    # VOC xmin=1, xmax=10 covers 10 pixels
    assert cat.box[2] - cat.box[0] == 10.0
    assert cat.truncated and dog.truncated  # touch the image border
    assert not cat.difficult


def test_parse_voc_xml_reads_hand_written_files(tmp_path: Path) -> None:
    xml = tmp_path / "b.xml"
    xml.write_text(
        "<annotation><filename> b.png </filename>"
        "<object><name>bird</name><difficult>1</difficult>"
        "<bndbox><xmin>3.5</xmin><ymin>4</ymin><xmax>7</xmax><ymax>9.25</ymax></bndbox></object>"
        "</annotation>"
    )
    ann = parse_voc_xml(xml)
    assert (ann.filename, ann.width, ann.height) == ("b.png", None, None)  # no <size>
    (obj,) = ann.objects
    assert obj.box == (2.5, 3.0, 7.0, 9.25)
    assert obj.difficult and not obj.truncated


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("<annotation><object>", "not a readable XML file"),
        ("<svg></svg>", "root element is <svg>"),
        ("<annotation><object><bndbox/></object></annotation>", "object 1 has no <name>"),
        ("<annotation><object><name>cat</name></object></annotation>", "object 1 (cat) has no <bndbox>"),
        (
            "<annotation><object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>x</xmax>"
            "<ymax>4</ymax></bndbox></object></annotation>",
            "object 1 (cat) has a missing or non-numeric box corner",
        ),
        ("<annotation><size><width>ten</width></size></annotation>", "non-numeric width/height"),
    ],
    ids=["not-xml", "not-voc", "no-name", "no-bndbox", "bad-corner", "bad-size"],
)
def test_parse_voc_xml_rejects_malformed_files(tmp_path: Path, text: str, fragment: str) -> None:
    xml = tmp_path / "bad.xml"
    xml.write_text(text)
    with pytest.raises(FormatError) as info:
        parse_voc_xml(xml)
    assert str(info.value).startswith(f"{xml}: ")
    assert fragment in str(info.value)


def test_parse_voc_xml_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="not a readable XML file"):
        parse_voc_xml(tmp_path / "nope.xml")


@pytest.mark.parametrize("voc", [(1, 2, 10, 20), (1, 1, 1, 1), (5, 7, 640, 480), (100, 3, 101, 4)])
def test_voc_xyxy_round_trip(voc: tuple[int, int, int, int]) -> None:
    xyxy = voc_to_xyxy(*voc)
    assert xyxy == (voc[0] - 1, voc[1] - 1, voc[2], voc[3])
    assert xyxy_to_voc(*xyxy) == voc


@pytest.mark.parametrize(
    ("xyxy", "voc"),
    [
        ((0.0, 1.0, 10.0, 20.0), (1, 2, 10, 20)),
        ((0.5, 1.2, 9.1, 19.9), (1, 2, 10, 20)),  # rounded outwards
        ((2.999, 0.0, 3.001, 0.5), (3, 1, 4, 1)),
    ],
)
def test_xyxy_to_voc_rounds_outwards(xyxy: tuple, voc: tuple) -> None:
    assert xyxy_to_voc(*xyxy) == voc


def test_write_then_parse_keeps_every_box(tmp_path: Path) -> None:
    rng = random.Random(3)
    objects = []
    for k in range(10):
        x1, y1 = rng.randint(1, 50), rng.randint(1, 40)
        objects.append((f"c{k % 3}", (x1, y1, rng.randint(x1, 64), rng.randint(y1, 48))))
    write_voc_xml(tmp_path / "r.xml", "r.jpg", 64, 48, objects)
    ann = parse_voc_xml(tmp_path / "r.xml")
    assert [(o.name, tuple(int(v) for v in o.voc)) for o in ann.objects] == objects
    assert [xyxy_to_voc(*o.box) for o in ann.objects] == [b for _, b in objects]


def test_write_voc_xml_difficult_flag(tmp_path: Path) -> None:
    write_voc_xml(tmp_path / "a.xml", "a.jpg", 40, 30, [("cat", (2, 3, 10, 20))])
    write_voc_xml(tmp_path / "b.xml", "a.jpg", 40, 30, [("cat", (2, 3, 10, 20), False)])
    # the two-field form writes what it always wrote: <difficult>0</difficult>
    assert (tmp_path / "a.xml").read_bytes() == (tmp_path / "b.xml").read_bytes()
    assert "<difficult>0</difficult>" in (tmp_path / "a.xml").read_text()
    write_voc_xml(tmp_path / "c.xml", "c.jpg", 40, 30, [("cat", (2, 3, 10, 20), True), ("dog", (5, 6, 9, 9))])
    assert [(o.name, o.difficult) for o in parse_voc_xml(tmp_path / "c.xml").objects] == [("cat", True), ("dog", False)]


# ----------------------------------------------------------------------------------------------------------
# ISIC folders
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "label", "pairs"),
    [
        ("ISIC_0000001.jpg", "ISIC_0000001_segmentation.png", True),
        ("a/b/x.png", "c/x_mask.png", True),
        ("x.jpg", "x.png", True),
        ("a.jpg", "b_segmentation.png", False),
        ("ISIC_1.jpg", "ISIC_10_segmentation.png", False),
    ],
)
def test_label_pairs_with(image: str, label: str, pairs: bool) -> None:
    assert label_pairs_with(image, label) is pairs


def test_find_isic_pairs_in_two_folders(tmp_path: Path) -> None:
    inp = tmp_path / "ISIC2018_Task1-2_Training_Input"
    gt = tmp_path / "ISIC2018_Task1_Training_GroundTruth"
    for i in (1, 2, 3):
        _image(inp / f"ISIC_000000{i}.jpg")
    _mask(gt / "ISIC_0000001_segmentation.png")
    _mask(gt / "ISIC_0000003_segmentation.png")
    _mask(gt / "ISIC_0000009_segmentation.png")  # orphan mask
    (inp / "LICENSE.txt").write_text("not an image")  # ignored
    _image(inp / ".ISIC_0000004.jpg")  # hidden file: ignored

    pairs, problems = find_isic_pairs(tmp_path)
    assert pairs == [
        (inp / "ISIC_0000001.jpg", gt / "ISIC_0000001_segmentation.png"),
        (inp / "ISIC_0000003.jpg", gt / "ISIC_0000003_segmentation.png"),
    ]
    assert len(problems) == 2
    missing_mask = next(p for p in problems if "no mask" in p)
    orphan = next(p for p in problems if "no image" in p)
    assert missing_mask.startswith(f"{inp / 'ISIC_0000002.jpg'}: ")
    assert "ISIC_0000002_segmentation.png" in missing_mask
    assert orphan.startswith(f"{gt / 'ISIC_0000009_segmentation.png'}: ")


def test_find_isic_pairs_reports_ids_found_twice(tmp_path: Path) -> None:
    _image(tmp_path / "a" / "ISIC_0000001.jpg")
    _image(tmp_path / "b" / "ISIC_0000001.png")
    _mask(tmp_path / "m" / "ISIC_0000001_segmentation.png")
    pairs, problems = find_isic_pairs(tmp_path)
    assert pairs == []
    assert len(problems) == 1 and "found more than once" in problems[0]


def test_find_isic_pairs_in_an_empty_folder(tmp_path: Path) -> None:
    pairs, problems = find_isic_pairs(tmp_path)
    assert pairs == [] and len(problems) == 1 and "no images found" in problems[0]


def test_isic_split_folders(tmp_path: Path) -> None:
    for name in ("train", "Validation", "test", "extra"):
        (tmp_path / name).mkdir()
    (tmp_path / "val").write_text("a file, not a folder")
    assert isic_split_folders(tmp_path) == {
        "train": tmp_path / "train",
        "val": tmp_path / "Validation",
        "test": tmp_path / "test",
    }


def test_isic_split_folders_without_splits(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    assert isic_split_folders(tmp_path) == {None: tmp_path}


# ----------------------------------------------------------------------------------------------------------
# COCO json -> VOC layout
# ----------------------------------------------------------------------------------------------------------


def _coco(tmp_path: Path, images: list[dict] | None = None) -> Path:
    coco = {
        "images": images
        or [
            {"id": 1, "file_name": "a.jpg", "width": 20, "height": 16},
            {"id": 7, "file_name": "b.png", "width": 30, "height": 10},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 2, 8, 9], "area": 72, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [0.5, 0, 10.2, 10.4], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 16], "iscrowd": 1},
        ],
        # categories out of id order: classes.txt must follow the ids (2 apple, 5 zebra)
        "categories": [{"id": 5, "name": "zebra"}, {"id": 2, "name": "apple"}],
    }
    path = tmp_path / "coco" / "instances.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(coco))
    return path


def _objects(xml: Path) -> list[tuple[str, tuple[int, ...]]]:
    root = ET.parse(xml).getroot()
    return [
        (o.findtext("name"), tuple(int(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")))
        for o in root.findall("object")
    ]


def test_import_coco_writes_voc_layout(tmp_path: Path) -> None:
    path = _coco(tmp_path)
    _image(path.parent / "images" / "a.jpg", 20, 16)  # found in the images/ sibling of the json
    _image(path.parent / "images" / "b.png", 30, 10)
    dst = tmp_path / "voc"
    info = import_coco(path, dst)

    assert info == {"images": 2, "annotations": 2, "crowd_as_difficult": 1}
    assert (dst / "classes.txt").read_text() == "apple\nzebra\n"
    assert sorted(p.name for p in (dst / "JPEGImages").iterdir()) == ["a.jpg", "b.png"]
    assert (dst / "ImageSets" / "Main" / "trainval.txt").read_text() == "a\nb\n"
    # [1, 2, 8, 9] -> x1..x2 = 1..9, y1..y2 = 2..11 -> VOC (2, 3, 9, 11); the crowd box is kept as an
    # ignore region: a difficult object
    assert _objects(dst / "Annotations" / "a.xml") == [("zebra", (2, 3, 9, 11)), ("apple", (1, 1, 20, 16))]
    assert [o.difficult for o in parse_voc_xml(dst / "Annotations" / "a.xml").objects] == [False, True]
    # [0.5, 0, 10.2, 10.4] -> 0.5..10.7, 0..10.4 -> outwards (1, 1, 11, 11) -> ymax clamped to height 10
    assert _objects(dst / "Annotations" / "b.xml") == [("apple", (1, 1, 11, 10))]
    a = parse_voc_xml(dst / "Annotations" / "a.xml")
    b = parse_voc_xml(dst / "Annotations" / "b.xml")
    assert (a.filename, a.width, a.height) == ("a.jpg", 20, 16)
    assert (b.filename, b.width, b.height) == ("b.png", 30, 10)


def test_import_coco_with_images_dir(tmp_path: Path) -> None:
    path = _coco(tmp_path)
    _image(tmp_path / "pics" / "a.jpg", 20, 16)
    _image(tmp_path / "pics" / "b.png", 30, 10)
    info = import_coco(path, tmp_path / "voc", images_dir=tmp_path / "pics")
    assert info["images"] == 2


def test_import_coco_missing_image_names_it(tmp_path: Path) -> None:
    path = _coco(tmp_path)
    _image(path.parent / "a.jpg", 20, 16)  # the json's own folder also works; b.png is missing
    with pytest.raises(FormatError) as info:
        import_coco(path, tmp_path / "voc")
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "image id 7" in message and "'b.png' not found" in message
    assert "a.jpg" not in message


def test_import_coco_rejects_non_coco_json(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"images": []}))
    with pytest.raises(FormatError, match="no 'annotations' list"):
        import_coco(path, tmp_path / "voc")
    path.write_text("{not json")
    with pytest.raises(FormatError, match="not a readable COCO json"):
        import_coco(path, tmp_path / "voc")


# ----------------------------------------------------------------------------------------------------------
# assign_splits
# ----------------------------------------------------------------------------------------------------------


def _pairs(prefix: str, n: int) -> list[Pair]:
    return [Pair(f"{prefix}/{i:03d}.jpg", f"{prefix}/{i:03d}.png", f"{prefix}.txt:{i + 1}") for i in range(n)]


def _images(pairs: list[Pair]) -> set[str]:
    return {p.image for p in pairs}


def _check_partition(splits: dict[str, list[Pair]], every: list[Pair]) -> None:
    got = [p for s in ("train", "val", "test") for p in splits[s]]
    assert len(got) == len(every)  # sizes add up
    assert set(got) == set(every)  # nothing lost, no overlap


def test_assign_splits_pool_by_ratios() -> None:
    pool = _pairs("img", 20)
    splits, how = assign_splits({None: pool}, SplitConfig(), seed=0)
    # 20 by 0.7/0.15/0.15 -> 14/3/3
    assert [len(splits[s]) for s in ("train", "val", "test")] == [14, 3, 3]
    _check_partition(splits, pool)
    assert "seeded shuffle of 20" in how

    again, _ = assign_splits({None: list(reversed(pool))}, SplitConfig(), seed=0)
    assert again == splits  # same seed -> same splits, whatever the input order
    other, _ = assign_splits({None: pool}, SplitConfig(), seed=1)
    assert other != splits
    assert [len(other[s]) for s in ("train", "val", "test")] == [14, 3, 3]
    _check_partition(other, pool)


def test_assign_splits_other_ratios() -> None:
    pool = _pairs("img", 20)
    splits, _ = assign_splits({None: pool}, SplitConfig(train=0.5, val=0.25, test=0.25), seed=3)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [10, 5, 5]
    _check_partition(splits, pool)


def test_assign_splits_tiny_pool_gives_every_split_an_item() -> None:
    pool = _pairs("img", 4)
    splits, _ = assign_splits({None: pool}, SplitConfig(), seed=0)
    # round(4 * 0.15) = 1 for val and test
    assert [len(splits[s]) for s in ("train", "val", "test")] == [2, 1, 1]


def test_assign_splits_train_and_test_lists_carve_val_from_train() -> None:
    train, test = _pairs("tr", 20), _pairs("te", 5)
    splits, how = assign_splits({"train": train, "test": test}, SplitConfig(), seed=0)
    assert splits["test"] == test
    # val = 0.15 / (0.7 + 0.15) = 17.6% of train: round(3.53) = 4
    assert [len(splits[s]) for s in ("train", "val")] == [16, 4]
    assert _images(splits["train"]) | _images(splits["val"]) == _images(train)
    assert not _images(splits["train"]) & _images(splits["val"])
    assert "train/test lists" in how


def test_assign_splits_train_and_val_lists_make_val_the_test() -> None:
    train, val = _pairs("tr", 20), _pairs("va", 5)
    splits, how = assign_splits({"train": train, "val": val}, SplitConfig(), seed=0)
    assert splits["test"] == val  # the source's held-out val becomes test
    assert [len(splits[s]) for s in ("train", "val")] == [16, 4]
    assert _images(splits["train"]) | _images(splits["val"]) == _images(train)
    assert not _images(splits["val"]) & _images(val)
    assert "held-out val list became test" in how


def test_assign_splits_keeps_all_three_source_lists() -> None:
    train, val, test = _pairs("tr", 10), _pairs("va", 3), _pairs("te", 2)
    splits, _ = assign_splits({"train": train, "val": val, "test": test}, SplitConfig(), seed=5)
    assert splits == {"train": train, "val": val, "test": test}


def test_assign_splits_without_source_splits_pools_everything() -> None:
    train, val, test = _pairs("tr", 20), _pairs("va", 5), _pairs("te", 5)
    splits, how = assign_splits(
        {"train": train, "val": val, "test": test}, SplitConfig(), seed=0, use_source_splits=False
    )
    # 30 by 0.7/0.15/0.15: round(4.5) = 4 (half to even) for val and test -> 22/4/4
    assert [len(splits[s]) for s in ("train", "val", "test")] == [22, 4, 4]
    _check_partition(splits, train + val + test)
    assert splits["test"] != test
    assert _images(splits["train"]) & (_images(val) | _images(test)), "source val/test not pooled"
    assert "seeded shuffle of 30" in how


def test_assign_splits_trainval_only_is_a_pool() -> None:
    tv = _pairs("tv", 20)
    splits, _ = assign_splits({"trainval": tv}, SplitConfig(), seed=0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [14, 3, 3]
    _check_partition(splits, tv)


def test_assign_splits_needs_a_train_list() -> None:
    with pytest.raises(ManifestError, match="no train list"):
        assign_splits({"val": _pairs("va", 5), "test": _pairs("te", 5)}, SplitConfig(), seed=0)
