"""bench/cells_voc.py: overlapping discs of one colour as a VOC devkit that segdet's VOC import reads as it is."""

import numpy as np

from bench.cells_voc import build, scene
from segdet.data.formats import parse_voc_xml


def test_scenes_overlap_and_boxes_hold_their_objects():
    img, objects = scene(np.random.default_rng(0))
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8
    rbc = np.array([box for name, box in objects if name == "rbc"])
    assert len(rbc) >= 10 and {name for name, _ in objects} <= {"rbc", "wbc", "platelet"}
    assert (rbc[:, :2] >= 0).all() and (rbc[:, 2] <= 639).all() and (rbc[:, 3] <= 479).all()
    # some discs overlap: the case the devkit is for
    x1 = np.maximum(rbc[:, None, 0], rbc[None, :, 0])
    x2 = np.minimum(rbc[:, None, 2], rbc[None, :, 2])
    y1 = np.maximum(rbc[:, None, 1], rbc[None, :, 1])
    y2 = np.minimum(rbc[:, None, 3], rbc[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    np.fill_diagonal(inter, 0)
    assert (inter > 0).any()
    # a disc's box centre is disc-coloured (reddish: red channel above blue in BGR) unless a later object covers it
    cx, cy = int((rbc[-1, 0] + rbc[-1, 2]) / 2), int((rbc[-1, 1] + rbc[-1, 3]) / 2)
    b, _, r = img[min(cy, 479), min(cx, 639)].astype(int)
    assert r > b


def test_the_devkit_has_the_lists_of_a_voc_release(tmp_path):
    names = build(tmp_path, {"train": 3, "val": 2, "test": 2}, seed=1)
    main = tmp_path / "ImageSets" / "Main"
    assert sorted(p.name for p in main.iterdir()) == ["test.txt", "train.txt", "trainval.txt", "val.txt"]
    assert main.joinpath("trainval.txt").read_text().split() == names["train"] + names["val"]
    assert len(set(sum(names.values(), []))) == 7
    for name in names["test"]:
        ann = parse_voc_xml(tmp_path / "Annotations" / f"{name}.xml")
        assert (ann.width, ann.height) == (640, 480) and ann.objects
        assert (tmp_path / "JPEGImages" / f"{name}.jpg").is_file()
