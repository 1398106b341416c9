"""Importing the folder layouts users bring, through the importers and the manifest stage (issue 13).

Pascal VOC devkits (``ImageSets/Main/{train,val,trainval,test}.txt``, per-class lists beside them, PNG
images, a stale ``<filename>``), COCO json quirks (crowd regions, images in sub-folders, category ids with
gaps) and ISIC folder layouts (flat, split sub-folders, ``images/`` with ``masks/`` of the same stem,
0/1 and 0/255 masks). Each test writes a tiny dataset in ``tmp_path`` (PIL images of a few pixels, VOC
XML via ``write_voc_xml``), imports it as ``prepare`` would and runs ``build_manifests``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdet.config import load_section
from segdet.data.datasets import SegmentationDataset
from segdet.data.formats import FormatError, parse_voc_xml, write_voc_xml
from segdet.data.manifest import build_manifests
from segdet.data.pairs import read_manifest
from segdet.data.sources import (
    find_isic_pairs,
    import_coco,
    import_isic,
    import_voc,
    import_yolo,
    resolve_trainval,
    voc_split_lists,
)

SPLITS = ("train", "val", "test")
W, H = 20, 16


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


def _rgb(path: Path, seed: int = 0, w: int = W, h: int = H) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(path)
    return path


def _mask(path: Path, fg: int = 255, w: int = W, h: int = H) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = fg
    Image.fromarray(m, "L").save(path)
    return path


def make_isic(folder: Path, n: int = 4) -> Path:
    """A flat ISIC folder: ISIC_k.jpg beside ISIC_k_segmentation.png."""
    for k in range(n):
        _rgb(folder / f"ISIC_{k}.jpg", k)
        _mask(folder / f"ISIC_{k}_segmentation.png")
    return folder


def make_voc(folder: Path, ids: list[str], lists: dict[str, list[str]], ext: str = ".jpg",
             filename: dict[str, str] | None = None) -> Path:
    """A VOC folder: one image and one 'cat' box per id, split lists ``ImageSets/Main/<name>.txt``."""
    for k, i in enumerate(ids):
        _rgb(folder / "JPEGImages" / f"{i}{ext}", 100 + k)
        (folder / "Annotations").mkdir(parents=True, exist_ok=True)
        name = (filename or {}).get(i, f"{i}{ext}")
        write_voc_xml(folder / "Annotations" / f"{i}.xml", name, W, H, [("cat", (2, 3, 10, 12))])
    main = folder / "ImageSets" / "Main"
    main.mkdir(parents=True, exist_ok=True)
    for name, listed in lists.items():
        (main / f"{name}.txt").write_text("".join(f"{i}\n" for i in listed))
    return folder


def run(tmp_path: Path, isic: Path | None = None, voc: Path | None = None, coco: Path | None = None,
        **data) -> tuple[dict, Path]:
    """Import as the prepare stage does (a tiny default for the other dataset), then build the manifests."""
    raw = tmp_path / "raw"
    isic = isic or make_isic(tmp_path / "isic_src")
    import_isic(isic, raw / "isic")
    if coco is not None:
        import_coco(coco, raw / "voc")
        det = {"source": "coco", "path": str(coco)}
    else:
        voc = voc or make_voc(tmp_path / "voc_src", [f"d{k}" for k in range(4)], {})
        import_voc(voc, raw / "voc")
        det = {"source": "voc", "path": str(voc)}
    cfg = load_section("data", {"data": {"seg": {"source": "isic", "path": str(isic)}, "det": det, **data}})
    out = tmp_path / "manifests"
    return build_manifests(cfg, raw, out, tmp_path, progress=False), out


def ids_of(manifest: Path) -> list[str]:
    return [Path(p.image).stem for p in read_manifest(manifest)]


# ----------------------------------------------------------------------------------------------------------
# Pascal VOC devkit split lists
# ----------------------------------------------------------------------------------------------------------

TRAIN = [f"t{k}" for k in range(10)]
VAL = [f"v{k}" for k in range(5)]
TEST = [f"e{k}" for k in range(4)]
TRAINVAL = sorted(TRAIN + VAL)  # as the devkit lists it: sorted ids, train and val interleaved


def _per_class_lists(folder: Path) -> None:
    """VOC 2007-style ``<class>_<split>.txt`` lists (``id  1`` / ``id -1``) beside the main lists."""
    main = folder / "ImageSets" / "Main"
    for cls in ("cat", "dog"):
        for name, listed in (("train", TRAIN), ("val", VAL), ("trainval", TRAINVAL), ("test", TEST)):
            flag = " 1" if cls == "cat" else "-1"
            (main / f"{cls}_{name}.txt").write_text("".join(f"{i} {flag}\n" for i in listed))


@pytest.mark.parametrize("use_source_splits", [True, False], ids=["source-splits", "pooled"])
@pytest.mark.parametrize("layout", ["devkit", "devkit-per-class", "trainval-test"])
def test_voc_devkit_lists_import(tmp_path: Path, layout: str, use_source_splits: bool) -> None:
    if layout == "trainval-test":
        lists = {"trainval": TRAINVAL, "test": TEST}
    else:
        lists = {"train": TRAIN, "val": VAL, "trainval": TRAINVAL, "test": TEST}
    voc = make_voc(tmp_path / "VOC2007", TRAIN + VAL + TEST, lists)
    if layout == "devkit-per-class":
        _per_class_lists(voc)
        assert set(voc_split_lists(voc)) == {"train", "val", "trainval", "test"}  # per-class lists are not splits

    summary, out = run(tmp_path, voc=voc, use_source_splits=use_source_splits)

    split_ids = {s: ids_of(out / f"det_{s}.txt") for s in SPLITS}
    every = [i for s in SPLITS for i in split_ids[s]]
    assert sorted(every) == sorted(TRAIN + VAL + TEST)  # each image exactly once
    if not use_source_splits:
        # 19 pooled by 0.7/0.15/0.15: round(2.85) = 3 for val and test
        assert [len(split_ids[s]) for s in SPLITS] == [13, 3, 3]
        assert "seeded shuffle of 19" in summary["det"]["how"]
    elif layout == "trainval-test":
        assert split_ids["test"] == TEST
        # val carved from trainval: 0.15 / 0.85 of 15 = 2.65 -> 3
        assert [len(split_ids[s]) for s in SPLITS] == [12, 3, 4]
        assert sorted(split_ids["train"] + split_ids["val"]) == TRAINVAL
    else:
        assert split_ids == {"train": TRAIN, "val": VAL, "test": TEST}
        assert summary["det"]["how"] == "the source's train/val/test lists"


def test_voc_trainval_ids_beyond_train_and_val_go_to_train_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    extra = ["x0", "x1"]
    voc = make_voc(tmp_path / "voc", TRAIN + VAL + TEST + extra,
                   {"train": TRAIN, "val": VAL, "trainval": sorted(TRAINVAL + extra), "test": TEST})
    with caplog.at_level(logging.WARNING, logger="segdet"):
        summary, out = run(tmp_path, voc=voc)
    assert sorted(ids_of(out / "det_train.txt")) == sorted(TRAIN + extra)
    assert ids_of(out / "det_val.txt") == VAL and ids_of(out / "det_test.txt") == TEST
    (warning,) = [r.getMessage() for r in caplog.records if "trainval" in r.getMessage()]
    assert "raw/voc/ImageSets/Main/trainval.txt: 2 id(s) are in neither the train nor the val list" in warning
    assert "added to train: x0, x1" in warning


def test_a_vocdevkit_folder_names_the_voc_folders_inside_it(tmp_path: Path) -> None:
    for year in ("VOC2007", "VOC2012"):
        make_voc(tmp_path / "VOCdevkit" / year, ["a"], {"trainval": ["a"]})
    with pytest.raises(FormatError) as err:
        import_voc(tmp_path / "VOCdevkit", tmp_path / "out")
    assert str(err.value).endswith(f"; the VOC folders inside it: {tmp_path / 'VOCdevkit' / 'VOC2007'}, "
                                   f"{tmp_path / 'VOCdevkit' / 'VOC2012'} (set data.det.path to one)")


def test_resolve_trainval_rules() -> None:
    tv = ["a", "b", "c", "d"]
    # train and val given: trainval dropped
    assert resolve_trainval({"train": ["a", "b"], "val": ["c", "d"], "trainval": tv, "test": ["t"]}) == {
        "train": ["a", "b"], "val": ["c", "d"], "test": ["t"]}
    # one of them given: the other is trainval minus it
    assert resolve_trainval({"train": ["a", "c"], "trainval": tv}) == {"train": ["a", "c"], "val": ["b", "d"]}
    assert resolve_trainval({"val": ["d"], "trainval": tv}) == {"val": ["d"], "train": ["a", "b", "c"]}
    # neither: trainval kept (split by the ratios later); without trainval nothing changes
    assert resolve_trainval({"trainval": tv, "test": ["t"]}) == {"trainval": tv, "test": ["t"]}
    assert resolve_trainval({"train": ["a"], "test": ["t"]}) == {"train": ["a"], "test": ["t"]}


def test_voc_png_images_and_a_filename_that_differs_from_the_id(tmp_path: Path) -> None:
    ids = [f"p{k}" for k in range(6)]
    # <filename> as a labelling tool left it: another name and extension than the image the id names
    voc = make_voc(tmp_path / "voc", ids, {"train": ids[:4], "test": ids[4:]}, ext=".png",
                   filename={i: f"photo {i}.jpg" for i in ids})
    assert parse_voc_xml(voc / "Annotations" / "p0.xml").filename == "photo p0.jpg"
    summary, out = run(tmp_path, voc=voc)
    pairs = [p for s in SPLITS for p in read_manifest(out / f"det_{s}.txt")]
    assert sorted((p.image, p.label) for p in pairs) == [
        (f"raw/voc/JPEGImages/{i}.png", f"raw/voc/Annotations/{i}.xml") for i in ids]
    assert [summary["det"][s] for s in SPLITS] == [3, 1, 2]
    coco = json.loads((out / "det_test_coco.json").read_text())
    assert [im["file_name"] for im in coco["images"]] == ["raw/voc/JPEGImages/p4.png", "raw/voc/JPEGImages/p5.png"]


@pytest.mark.parametrize("use_difficult", [False, True])
def test_a_class_without_training_objects_is_named_before_any_training(tmp_path: Path, caplog,
                                                                      use_difficult: bool) -> None:
    # 'dog' is in the train split only as a difficult object, and in test: the detectors cannot learn it
    # unless difficult objects train; the manifest stage says so, long before the R-CNN's SVMs would
    voc = make_voc(tmp_path / "voc_src", TRAIN + TEST, {"train": TRAIN, "test": TEST})
    write_voc_xml(voc / "Annotations" / "t0.xml", "t0.jpg", W, H, [("cat", (2, 3, 10, 12)), ("dog", (11, 2, 19, 9), True)])
    write_voc_xml(voc / "Annotations" / "e0.xml", "e0.jpg", W, H, [("dog", (2, 3, 10, 12))])
    with caplog.at_level("WARNING", logger="segdet.data.manifest"):
        summary, out = run(tmp_path, voc=voc, det={"source": "voc", "path": str(voc), "use_difficult": use_difficult})
    assert summary["det"]["classes"] == ["cat", "dog"]
    assert "t0" in ids_of(out / "det_train.txt")  # data.seed's carve of val leaves it in train
    assert ("no object of class 'dog' trains (objects in train / val / test: dog 1 / 0 / 1; difficult ones train "
            "only with data.det.use_difficult)" in caplog.text) == (not use_difficult), caplog.text
    assert "'cat'" not in caplog.text


# ----------------------------------------------------------------------------------------------------------
# COCO json
# ----------------------------------------------------------------------------------------------------------


def _coco_json(folder: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _ann(k: int, image_id: int, category_id: int, bbox: list[float], crowd: int = 0) -> dict:
    return {"id": k, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": crowd,
            "area": bbox[2] * bbox[3]}


def test_coco_crowd_regions_become_ignored_ground_truth(tmp_path: Path) -> None:
    images = [{"id": k, "file_name": f"c{k}.jpg", "width": W, "height": H} for k in range(1, 7)]
    anns = [_ann(k, k, 1, [1, 2, 8, 9]) for k in range(1, 7)]
    anns.append(_ann(7, 1, 1, [10, 0, 10, 16], crowd=1))
    path = _coco_json(tmp_path / "coco", images, anns, [{"id": 1, "name": "person"}])
    for k in range(1, 7):
        _rgb(tmp_path / "coco" / "images" / f"c{k}.jpg", k)
    summary, out = run(tmp_path, coco=path)

    objects = parse_voc_xml(tmp_path / "raw" / "voc" / "Annotations" / "c1.xml").objects
    assert [(o.voc, o.difficult) for o in objects] == [((2, 3, 9, 11), False), ((11, 1, 20, 16), True)]
    crowd = []
    for s in SPLITS:
        coco = json.loads((out / f"det_{s}_coco.json").read_text())
        crowd += [a for a in coco["annotations"] if a["iscrowd"]]
    assert [(a["bbox"], a["category_id"]) for a in crowd] == [([10.0, 0.0, 10.0, 16.0], 1)]
    assert sum(summary["det"][f"{s}_difficult"] for s in SPLITS) == 1


def test_coco_images_in_sub_folders_import(tmp_path: Path) -> None:
    images = [
        {"id": 1, "file_name": "2017/a.jpg", "width": W, "height": H},
        {"id": 2, "file_name": "2017/night/b.png", "width": W, "height": H},
        {"id": 3, "file_name": "2018\\c.jpg", "width": W, "height": H},  # written on Windows
    ]
    anns = [_ann(k, k, 1, [1, 2, 8, 9]) for k in (1, 2, 3)]
    path = _coco_json(tmp_path / "coco", images, anns, [{"id": 1, "name": "cat"}])
    _rgb(tmp_path / "pics" / "2017" / "a.jpg")
    _rgb(tmp_path / "pics" / "2017" / "night" / "b.png")
    _rgb(tmp_path / "pics" / "2018" / "c.jpg")
    info = import_coco(path.parent, tmp_path / "voc", images_dir=tmp_path / "pics")  # the json's folder: that json
    assert info["images"] == 3
    assert sorted(p.name for p in (tmp_path / "voc" / "JPEGImages").iterdir()) == ["a.jpg", "b.png", "c.jpg"]
    assert parse_voc_xml(tmp_path / "voc" / "Annotations" / "b.xml").filename == "b.png"
    assert (tmp_path / "voc" / "ImageSets" / "Main" / "trainval.txt").read_text() == "a\nb\nc\n"


def test_coco_category_ids_with_gaps_map_to_class_lines_in_id_order(tmp_path: Path) -> None:
    cats = [{"id": 7, "name": "zebra"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}]
    images = [{"id": k, "file_name": f"g{k}.jpg", "width": W, "height": H} for k in range(1, 7)]
    anns = [_ann(k, k, (1, 3, 7)[k % 3], [1, 2, 8, 9]) for k in range(1, 7)]
    path = _coco_json(tmp_path / "coco", images, anns, cats)
    for k in range(1, 7):
        _rgb(tmp_path / "coco" / f"g{k}.jpg", k)
    summary, out = run(tmp_path, coco=path)
    assert (tmp_path / "raw" / "voc" / "classes.txt").read_text() == "person\ncar\nzebra\n"
    assert (out / "det_classes.txt").read_text() == "person\ncar\nzebra\n"
    line = {1: 1, 3: 2, 7: 3}  # COCO id -> line of det_classes.txt
    expected = {f"g{k}": line[(1, 3, 7)[k % 3]] for k in range(1, 7)}
    for s in SPLITS:
        coco = json.loads((out / f"det_{s}_coco.json").read_text())
        assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
        files = {im["id"]: Path(im["file_name"]).stem for im in coco["images"]}
        for a in coco["annotations"]:
            assert a["category_id"] == expected[files[a["image_id"]]]


def _coco_split(json_path: Path, image_folder: Path, stems: list[str], first_id: int, categories: list[dict],
                category: Callable[[int], int] = lambda k: 1) -> None:
    """One split's instances json naming ``<stem>.jpg`` files (written into ``image_folder``), a box each, of
    category ``category(k)`` for the k-th."""
    images = [{"id": first_id + k, "file_name": f"{s}.jpg", "width": W, "height": H} for k, s in enumerate(stems)]
    anns = [_ann(first_id + k, first_id + k, category(k), [1, 2, 8, 9]) for k in range(len(stems))]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    for k, stem in enumerate(stems):
        _rgb(image_folder / f"{stem}.jpg", first_id + k)


def test_coco_release_layout_keeps_its_train_and_val_split(tmp_path: Path) -> None:
    # annotations/instances_{train,val}2017.json with train2017/ and val2017/ beside, as the COCO release ships;
    # captions and the unannotated test file lie beside them and are not instances of a split
    root = tmp_path / "coco2017"
    cats = [{"id": 1, "name": "person"}]
    train, val = [f"{k:012d}" for k in range(1, 11)], [f"{k:012d}" for k in range(101, 105)]
    _coco_split(root / "annotations" / "instances_train2017.json", root / "train2017", train, 1, cats)
    _coco_split(root / "annotations" / "instances_val2017.json", root / "val2017", val, 101, cats)
    (root / "annotations" / "captions_train2017.json").write_text("{}")
    (root / "annotations" / "image_info_test2017.json").write_text("{}")
    summary, out = run(tmp_path, coco=root)
    info = import_coco(root, tmp_path / "again")
    assert info["split_lists"] == ["train", "val"] and info["images"] == 14
    # as for every source with train and val lists: the source's held-out val is the test split
    assert sorted(ids_of(out / "det_test.txt")) == val
    assert sorted(ids_of(out / "det_train.txt") + ids_of(out / "det_val.txt")) == train
    assert summary["det"]["how"].startswith("the source's held-out val list became test")


def test_coco_export_split_folders_import_with_their_splits(tmp_path: Path, caplog) -> None:
    # an annotation tool's COCO export: train/, valid/, test/, each a json among its images; the export's
    # category 0 names the project and holds no annotation
    root = tmp_path / "export"
    cats = [{"id": 0, "name": "animals", "supercategory": "none"}, {"id": 1, "name": "cat", "supercategory": "animals"},
            {"id": 2, "name": "dog", "supercategory": "animals"}]
    parts = {"train": [f"tr{k}" for k in range(8)], "valid": [f"va{k}" for k in range(3)],
             "test": [f"te{k}" for k in range(3)]}
    for n, (folder, stems) in enumerate(parts.items()):  # cat, dog, cat, dog ... in each
        _coco_split(root / folder / "_annotations.coco.json", root / folder, stems, 1 + 100 * n, cats, lambda k: 1 + k % 2)
    with caplog.at_level("WARNING", logger="segdet.data.sources"):
        summary, out = run(tmp_path, coco=root)
    assert "left out of the classes: animals" in caplog.text
    assert (out / "det_classes.txt").read_text() == "cat\ndog\n"
    for split, folder in (("train", "train"), ("val", "valid"), ("test", "test")):
        assert sorted(ids_of(out / f"det_{split}.txt")) == sorted(parts[folder])
    coco = json.loads((out / "det_test_coco.json").read_text())
    files = {im["id"]: Path(im["file_name"]).stem for im in coco["images"]}
    assert sorted((files[a["image_id"]], a["category_id"]) for a in coco["annotations"]) == [
        ("te0", 1), ("te1", 2), ("te2", 1)]


def test_coco_folder_problems_are_named(tmp_path: Path) -> None:
    cats = [{"id": 1, "name": "cat"}]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FormatError, match="no COCO instances json found; expected annotations/instances_<split>"):
        import_coco(empty, tmp_path / "o1")
    # one image in two splits
    root = tmp_path / "twice"
    _coco_split(root / "train" / "a.json", root / "train", ["x0", "x1"], 1, cats)
    _coco_split(root / "val" / "a.json", root / "val", ["x1"], 10, cats)
    with pytest.raises(FormatError, match=r"two images share the file name 'x1.jpg' .*\(image ids 2 of .*train.*, 10\)"):
        import_coco(root, tmp_path / "o2")
    # splits that disagree on a category
    root = tmp_path / "clash"
    _coco_split(root / "train" / "a.json", root / "train", ["y0"], 1, cats)
    _coco_split(root / "test" / "a.json", root / "test", ["y1"], 10, [{"id": 1, "name": "dog"}])
    with pytest.raises(FormatError, match="category id 1 is 'dog', but 'cat' in another split's json"):
        import_coco(root, tmp_path / "o3")
    # two jsons in one split folder, and valid/ beside val/
    root = tmp_path / "two"
    _coco_split(root / "train" / "a.json", root / "train", ["z0"], 1, cats)
    (root / "train" / "b.json").write_text("{}")
    with pytest.raises(FormatError, match="2 json files .*one instances json beside its images"):
        import_coco(root, tmp_path / "o4")
    root = tmp_path / "val_valid"
    _coco_split(root / "val" / "a.json", root / "val", ["w0"], 1, cats)
    _coco_split(root / "valid" / "a.json", root / "valid", ["w1"], 10, cats)
    with pytest.raises(FormatError, match="are all the val split"):
        import_coco(root, tmp_path / "o5")


# ----------------------------------------------------------------------------------------------------------
# YOLO txt labels
# ----------------------------------------------------------------------------------------------------------

BOX_LINE = "1 0.5 0.5 0.4 0.5"  # dog: x 0.3..0.7 of 20 px = 6..14, y 0.25..0.75 of 16 px = 4..12
POLYGON_LINE = "0 0.1 0.125 0.3 0.125 0.2 0.5"  # cat, a segment label: its box x 2..6, y 2..8


def _yolo_image(images: Path, labels: Path | None, stem: str, lines: list[str], seed: int = 0) -> None:
    _rgb(images / f"{stem}.jpg", seed)
    if labels is not None:
        labels.mkdir(parents=True, exist_ok=True)
        (labels / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))


def _coco_boxes(out: Path, split: str) -> dict[str, list[tuple[list[float], int]]]:
    coco = json.loads((out / f"det_{split}_coco.json").read_text())
    files = {im["id"]: Path(im["file_name"]).stem for im in coco["images"]}
    boxes: dict[str, list] = {files[i]: [] for i in files}
    for a in coco["annotations"]:
        boxes[files[a["image_id"]]].append((a["bbox"], a["category_id"]))
    return boxes


def run_yolo(tmp_path: Path, src: Path) -> tuple[dict, Path]:
    raw = tmp_path / "raw"
    isic = make_isic(tmp_path / "isic_src")
    import_isic(isic, raw / "isic")
    import_yolo(src, raw / "voc")
    cfg = load_section("data", {"data": {"seg": {"source": "isic", "path": str(isic)},
                                         "det": {"source": "yolo", "path": str(src)}}})
    return build_manifests(cfg, raw, tmp_path / "manifests", tmp_path, progress=False), tmp_path / "manifests"


def test_yolo_ultralytics_yaml_layout_imports_boxes_polygons_and_background_images(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    root.mkdir()
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames:\n  0: cat\n  1: dog\n")
    for k in range(8):
        _yolo_image(root / "images" / "train", root / "labels" / "train", f"t{k}", [BOX_LINE, POLYGON_LINE], k)
    _yolo_image(root / "images" / "train", None, "t_background", [], 50)  # no label file: no objects
    for k in range(3):
        _yolo_image(root / "images" / "val", root / "labels" / "val", f"v{k}", [BOX_LINE], 60 + k)
    summary, out = run_yolo(tmp_path, root)
    assert (out / "det_classes.txt").read_text() == "cat\ndog\n"
    assert parse_voc_xml(tmp_path / "raw" / "voc" / "Annotations" / "t0.xml").objects[0].voc == (7, 5, 14, 12)
    # the source's val is the test split (train and val given), as for VOC and ISIC; val is carved from train
    assert sorted(ids_of(out / "det_test.txt")) == ["v0", "v1", "v2"]
    assert sorted(ids_of(out / "det_train.txt") + ids_of(out / "det_val.txt")) == [f"t{k}" for k in range(8)] + [
        "t_background"]
    boxes = {**_coco_boxes(out, "train"), **_coco_boxes(out, "val")}
    # category_id = YOLO class + 1; COCO [x, y, w, h] equal to the YOLO box in pixels
    assert sorted(boxes["t3"]) == [([2.0, 2.0, 4.0, 6.0], 1), ([6.0, 4.0, 8.0, 8.0], 2)]
    assert boxes["t_background"] == []


def test_yolo_boxes_written_with_six_decimals_come_back_to_the_same_pixels(tmp_path: Path) -> None:
    # a VOC box exported as YOLO fractions with 6 decimals (as exporters write them) lands a hair off its pixel
    # edges; rounding outwards alone would grow such a box by a pixel. Image 1999 x 1333, as photos come
    root = tmp_path / "round_trip"
    (root / "labels").mkdir(parents=True)
    (root / "classes.txt").write_text("cat\n")
    w, h = 1999, 1333
    boxes = [(11, 21, 1500, 900), (1, 1, 1999, 1333), (640, 7, 1237, 1111)]  # VOC corners
    lines = [f"0 {(x1 - 1 + x2) / 2 / w:.6f} {(y1 - 1 + y2) / 2 / h:.6f} {(x2 - x1 + 1) / w:.6f} {(y2 - y1 + 1) / h:.6f}"
             for x1, y1, x2, y2 in boxes]
    _rgb(root / "images" / "p.jpg", w=w, h=h)
    (root / "labels" / "p.txt").write_text("\n".join(lines) + "\n")
    import_yolo(root, tmp_path / "voc")
    assert [o.voc for o in parse_voc_xml(tmp_path / "voc" / "Annotations" / "p.xml").objects] == boxes


def test_yolo_export_with_split_folders_and_a_yaml_pointing_one_folder_up(tmp_path: Path) -> None:
    # Roboflow's YOLO export: train/ valid/ test/ with images/ and labels/, data.yaml says ../train/images
    root = tmp_path / "export"
    root.mkdir()
    (root / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\ntest: ../test/images\n"
                                    "nc: 2\nnames: ['cat', 'dog']\n")
    parts = {"train": 6, "valid": 2, "test": 2}
    for folder, n in parts.items():
        for k in range(n):
            _yolo_image(root / folder / "images", root / folder / "labels", f"{folder}{k}", [BOX_LINE], k)
    summary, out = run_yolo(tmp_path, root / "data.yaml")
    for split, folder in (("train", "train"), ("val", "valid"), ("test", "test")):
        assert sorted(ids_of(out / f"det_{split}.txt")) == [f"{folder}{k}" for k in range(parts[folder])]


def test_yolo_folders_without_a_yaml_take_classes_txt(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    (root / "classes.txt").write_text("cat\ndog\n")
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for k in range(n):
            _yolo_image(root / "images" / split, root / "labels" / split, f"{split}{k}", [POLYGON_LINE], k)
    summary, out = run_yolo(tmp_path, root)
    assert [len(ids_of(out / f"det_{s}.txt")) for s in SPLITS] == [6, 2, 2]
    assert _coco_boxes(out, "test")["test0"] == [([2.0, 2.0, 4.0, 6.0], 1)]


def test_yolo_val_that_repeats_train_is_left_out(tmp_path: Path, caplog) -> None:
    root = tmp_path / "demo"  # as coco128.yaml: val is the train folder
    root.mkdir()
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames: [cat, dog]\n")
    for k in range(10):
        _yolo_image(root / "images" / "train", root / "labels" / "train", f"t{k}", [BOX_LINE], k)
    (root / "images" / "test").mkdir()  # an empty split folder
    (root / "data.yaml").write_text((root / "data.yaml").read_text() + "test: images/test\n")
    with caplog.at_level("WARNING", logger="segdet.data.sources"):
        summary, out = run_yolo(tmp_path, root)
    assert "the val split is the train split's images again" in caplog.text
    assert "the test split has no images; it is left out" in caplog.text
    assert sum(len(ids_of(out / f"det_{s}.txt")) for s in SPLITS) == 10


def test_yolo_label_problems_name_the_file_and_line(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "classes.txt").write_text("cat\ndog\n")
    labels = root / "labels" / "train"
    _yolo_image(root / "images" / "train", labels, "a", [BOX_LINE, "2 0.5 0.5 0.1 0.1"])
    _yolo_image(root / "images" / "train", labels, "b", ["0 0.5 0.5 0.1", "0 1.2 0.5 0.2 0.2", "x 0.5 0.5 0.1 0.1"])
    with pytest.raises(FormatError) as err:
        import_yolo(root, tmp_path / "out")
    lines = str(err.value).splitlines()
    assert lines[0] == f"{labels / 'a.txt'}:2: class 2 is not one of 0..1 (2 names)"
    assert lines[1].startswith(f"{labels / 'b.txt'}:1: expected 5 numbers 'class cx cy w h'")
    assert lines[2].startswith(f"{labels / 'b.txt'}:2: box 1.1,0.4,1.3,0.6 is outside the image")
    assert lines[3].startswith(f"{labels / 'b.txt'}:3: expected 'class cx cy w h' numbers")
    (root / "classes.txt").unlink()
    with pytest.raises(FormatError, match="no class names: add a dataset yaml with 'names', or classes.txt"):
        import_yolo(root, tmp_path / "out2")
    with pytest.raises(FormatError, match="not a YOLO dataset"):
        import_yolo(root / "labels", tmp_path / "o3")


# ----------------------------------------------------------------------------------------------------------
# ISIC folders
# ----------------------------------------------------------------------------------------------------------


def _seg_split_stems(out: Path) -> list[str]:
    return sorted(Path(p.image).stem for s in SPLITS for p in read_manifest(out / f"seg_{s}.txt"))


def test_isic_flat_folder(tmp_path: Path) -> None:
    src = make_isic(tmp_path / "flat", n=5)
    summary, out = run(tmp_path, isic=src)
    assert _seg_split_stems(out) == [f"ISIC_{k}" for k in range(5)]
    assert "seeded shuffle of 5" in summary["seg"]["how"]


def test_isic_split_sub_folders(tmp_path: Path) -> None:
    src = tmp_path / "isic"
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for k in range(n):
            _rgb(src / split / "images" / f"ISIC_{split}{k}.jpg", k)
            _mask(src / split / "masks" / f"ISIC_{split}{k}_segmentation.png")
    summary, out = run(tmp_path, isic=src)
    assert summary["seg"]["how"] == "the source's train/val/test lists"
    for split in SPLITS:
        stems = [Path(p.image).stem for p in read_manifest(out / f"seg_{split}.txt")]
        assert stems and all(s.startswith(f"ISIC_{split}") for s in stems)


@pytest.mark.parametrize(
    "mask_folder",
    ["masks", "mask", "labels", "Label", "ground_truth", "GroundTruth", "gt", "ISIC2018_Task1_Training_GroundTruth"],
)
def test_isic_images_and_masks_folders_with_the_same_stem(tmp_path: Path, mask_folder: str) -> None:
    src = tmp_path / "isic"
    for k in range(4):
        _rgb(src / "images" / f"ISIC_{k}.jpg", k)
        _mask(src / mask_folder / f"ISIC_{k}.png")  # the mask has the image's stem
    pairs, problems = find_isic_pairs(src)
    assert problems == []
    assert pairs == [(src / "images" / f"ISIC_{k}.jpg", src / mask_folder / f"ISIC_{k}.png") for k in range(4)]
    summary, out = run(tmp_path, isic=src)
    pairs = [p for s in SPLITS for p in read_manifest(out / f"seg_{s}.txt")]
    assert sorted((p.image, p.label) for p in pairs) == [
        (f"raw/isic/images/ISIC_{k}.jpg", f"raw/isic/masks/ISIC_{k}.png") for k in range(4)]


def test_isic_images_and_masks_folders_with_segmentation_suffix(tmp_path: Path) -> None:
    src = tmp_path / "isic"
    for k in range(4):
        _rgb(src / "images" / f"ISIC_{k}.jpg", k)
        _mask(src / "masks" / f"ISIC_{k}_segmentation.png")
    summary, out = run(tmp_path, isic=src)
    assert _seg_split_stems(out) == [f"ISIC_{k}" for k in range(4)]


def test_isic_mask_folder_name_counts_only_below_the_source(tmp_path: Path) -> None:
    # the source itself sits in a folder called gt/: its images are still images
    src = make_isic(tmp_path / "gt" / "isic")
    pairs, problems = find_isic_pairs(src)
    assert problems == [] and len(pairs) == 4


@pytest.mark.parametrize("fg", [255, 1], ids=["0-255", "0-1"])
def test_isic_masks_stored_as_0_255_or_0_1(tmp_path: Path, fg: int) -> None:
    src = tmp_path / "isic"
    for k in range(4):
        _rgb(src / "images" / f"ISIC_{k}.jpg", k)
        _mask(src / "masks" / f"ISIC_{k}.png", fg=fg)
    summary, out = run(tmp_path, isic=src)
    assert sum(summary["seg"][s] for s in SPLITS) == 4
    ds = SegmentationDataset(out / "seg_train.txt", root=tmp_path)
    _, mask = ds[0]
    assert set(mask.unique().tolist()) == {0, 1}
    assert int(mask.sum()) == (H // 2) * (W // 2)
