"""bench/mosaic_voc.py: dense scenes of real photos as a VOC devkit, boxes carried into their tiles, splits apart."""

import cv2
import numpy as np
import pytest

from bench.mosaic_voc import build, visible
from segdet.data.formats import parse_voc_xml, write_voc_xml


def source_folder(root, photos=6):
    """VOC photos 100x50, each with one box at pixels 10..49 x 10..29 (xyxy 10, 10, 50, 30), class by index."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for i in range(photos):
        cv2.imwrite(str(root / "JPEGImages" / f"p{i}.jpg"), np.full((50, 100, 3), 40 * i, np.uint8))
        write_voc_xml(root / "Annotations" / f"p{i}.xml", f"p{i}.jpg", 100, 50, [(f"c{i}", (11, 11, 50, 30))])
    return root


def test_one_tile_scenes_carry_the_box_scaled_or_mirrored(tmp_path):
    names = build(source_folder(tmp_path / "src"), tmp_path / "out", {"train": 4, "val": 2, "test": 2}, grids=(1,),
                  size=(200, 100))
    for name in sum(names.values(), []):
        (obj,) = parse_voc_xml(tmp_path / "out" / "Annotations" / f"{name}.xml").objects
        # the 100x50 photo doubled into the 200x100 scene: (20, 20, 100, 60), or flipped: (100, 20, 180, 60)
        assert obj.box in {(20.0, 20.0, 100.0, 60.0), (100.0, 20.0, 180.0, 60.0)}
        assert cv2.imread(str(tmp_path / "out" / "JPEGImages" / f"{name}.jpg")).shape == (100, 200, 3)


def test_splits_draw_on_disjoint_photos_and_the_devkit_lists_them(tmp_path):
    out = tmp_path / "out"
    names = build(source_folder(tmp_path / "src"), out, {"train": 6, "val": 3, "test": 3}, grids=(2,), size=(80, 60))
    classes = {}
    for split, scenes in names.items():
        listed = (out / "ImageSets" / "Main" / f"{split}.txt").read_text().split()
        assert listed == scenes
        classes[split] = {o.name for n in scenes for o in parse_voc_xml(out / "Annotations" / f"{n}.xml").objects}
        assert all(len(parse_voc_xml(out / "Annotations" / f"{n}.xml").objects) == 4 for n in scenes)  # 2x2 tiles
    # each photo has its own class: a class in two splits would be a photo in both
    assert not (classes["train"] & classes["val"] or classes["train"] & classes["test"] or classes["val"] & classes["test"])
    assert (out / "ImageSets/Main/trainval.txt").read_text().split() == names["train"] + names["val"]


def test_a_lopsided_split_still_leaves_every_split_a_photo(tmp_path):
    names = build(source_folder(tmp_path / "src", photos=4), tmp_path / "out", {"train": 1, "val": 100, "test": 1},
                  grids=(1,), size=(20, 10))
    assert [len(v) for v in names.values()] == [1, 100, 1]


def test_too_few_photos_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="too few"):
        build(source_folder(tmp_path / "src", photos=2), tmp_path / "out", {"train": 1, "val": 1, "test": 1})



def test_an_occluded_box_shrinks_to_its_visible_part_or_is_left_out():
    owner = np.zeros((10, 10), np.int32)
    owner[:, 5:] = 1  # tile 1 drawn over the right half of tile 0
    assert visible(owner, (0.0, 0.0, 8.0, 10.0), 0) == ((0.0, 0.0, 5.0, 10.0), False)  # 50 of its 80 pixels shown
    assert visible(owner, (4.0, 0.0, 10.0, 10.0), 0) == ((4.0, 0.0, 5.0, 10.0), True)  # 10 of 60: under 30 %
    assert visible(owner, (6.0, 0.0, 10.0, 10.0), 0) == (None, True)  # nothing of it shown
    assert visible(owner, (2.0, 1.0, 9.0, 6.0), 1) == ((5.0, 1.0, 9.0, 6.0), False)
    owner[:] = 0
    owner[:, 3:5] = 1  # covered across the middle: the visible part still spans the whole box
    assert visible(owner, (0.0, 0.0, 8.0, 10.0), 0) == ((0.0, 0.0, 8.0, 10.0), False)


def test_overlapping_tiles_keep_boxes_in_the_scene_and_mark_hidden_objects_difficult(tmp_path):
    out = tmp_path / "out"
    names = build(source_folder(tmp_path / "src"), out, {"train": 6, "val": 3, "test": 3}, grids=(3,),
                  size=(90, 60), overlap=0.9)
    difficult = []
    for name in sum(names.values(), []):
        objects = parse_voc_xml(out / "Annotations" / f"{name}.xml").objects
        assert len(objects) <= 9
        difficult += [o.difficult for o in objects]
        for o in objects:
            x1, y1, x2, y2 = o.box
            assert 0 <= x1 < x2 <= 90 and 0 <= y1 < y2 <= 60
    assert 0 < sum(difficult) < len(difficult)  # tiles nearly twice a cell hide some of the objects under them
