"""Datasets read manifests; joint transforms keep masks and boxes on the image content."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from segdet.data.datasets import DetectionDataset, SegmentationDataset, detection_collate
from segdet.data.formats import reduction, write_voc_xml
from segdet.data.pairs import Pair, box_targets, coco_ground_truth, read_manifest, validate_det
from segdet.data.transforms import det_transforms, seg_transforms
from segdet.stage import UserError
from tests.conftest import REPO

H, W = 24, 40


def _seg_pair(tmp_path, mask_high=255):
    """A dark image with a bright block at rows 4..11, cols 2..9; the mask marks exactly that block."""
    img = np.full((H, W, 3), 20, np.uint8)
    img[4:12, 2:10] = 230
    mask = np.zeros((H, W), np.uint8)
    mask[4:12, 2:10] = mask_high
    Image.fromarray(img).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_segmentation.png")
    return [Pair("a.png", "a_segmentation.png", "m:1")]


def _det_pair(tmp_path):
    """Bright block at cols 2..9, rows 4..11 = VOC box (3, 5, 10, 12) = xyxy (2, 4, 10, 12)."""
    img = np.full((H, W, 3), 20, np.uint8)
    img[4:12, 2:10] = 230
    Image.fromarray(img).save(tmp_path / "b.png")
    write_voc_xml(tmp_path / "b.xml", "b.png", W, H, [("dog", (3, 5, 10, 12))])
    return [Pair("b.png", "b.xml", "m:1")]


def test_segmentation_item_reads_mask_as_0_1(tmp_path):
    for high in (255, 1):
        image, mask = SegmentationDataset(_seg_pair(tmp_path, high), root=tmp_path)[0]
        assert image.shape == (3, H, W) and image.dtype == torch.uint8
        assert mask.shape == (H, W) and mask.dtype == torch.int64
        assert set(mask.unique().tolist()) == {0, 1} and int(mask.sum()) == 64


def test_flip_moves_mask_with_image_content(tmp_path):
    ds = SegmentationDataset(_seg_pair(tmp_path), root=tmp_path, transforms=seg_transforms((H, W), True, 1.0, 0.0))
    image, mask = ds[0]
    assert image.dtype == torch.float32  # scaled to [0, 1]: the block's 230 and the background's 20
    assert (float(image.max()), float(image.min())) == pytest.approx((230 / 255, 20 / 255))
    expected = torch.zeros(H, W, dtype=torch.int64)
    expected[4:12, W - 10 : W - 2] = 1  # hand-computed mirror of cols 2..9
    assert torch.equal(mask, expected)
    bright = image.mean(0) > 0.5
    assert torch.equal(bright, mask.bool())


def test_resize_keeps_mask_binary_and_aligned(tmp_path):
    ds = SegmentationDataset(_seg_pair(tmp_path), root=tmp_path, transforms=seg_transforms((48, 80), False))
    image, mask = ds[0]
    assert mask.shape == (48, 80) and set(mask.unique().tolist()) == {0, 1}
    assert torch.equal(mask[8:24, 4:20], torch.ones(16, 16, dtype=torch.int64))
    assert float(image[:, mask.bool()].mean()) > 0.8 and float(image[:, ~mask.bool()].mean()) < 0.2


def test_detection_item_boxes_and_labels(tmp_path):
    image, target = DetectionDataset(_det_pair(tmp_path), ["cat", "dog"], root=tmp_path)[0]
    assert target["boxes"].tolist() == [[2.0, 4.0, 10.0, 12.0]]
    assert target["labels"].tolist() == [2]  # 1-based line of the class list
    assert target["image_id"] == 1 and target["orig_size"] == (H, W)


def test_flip_moves_boxes_with_image_content(tmp_path):
    ds = DetectionDataset(_det_pair(tmp_path), ["dog"], root=tmp_path, transforms=det_transforms((H, W), True, 1.0))
    image, target = ds[0]
    x1, y1, x2, y2 = target["boxes"][0].tolist()
    assert (x1, y1, x2, y2) == (W - 10, 4, W - 2, 12)  # hand-computed mirror
    bright = image.mean(0) > 0.5
    inside = torch.zeros_like(bright)
    inside[int(y1) : int(y2), int(x1) : int(x2)] = True
    assert torch.equal(bright, inside)


def test_resize_scales_boxes(tmp_path):
    ds = DetectionDataset(_det_pair(tmp_path), ["dog"], root=tmp_path, transforms=det_transforms((48, 120), False))
    image, target = ds[0]
    assert target["boxes"][0].tolist() == [6.0, 8.0, 30.0, 24.0]
    assert float(image[:, 8:24, 6:30].mean()) > 0.8
    images, targets = detection_collate([ds[0], ds[0]])
    assert len(images) == 2 and targets[1]["labels"].tolist() == [1]


def _difficult_pair(tmp_path):
    """b.png with a dog (3, 5, 10, 12), a difficult cat (20, 2, 30, 20) and a tiny difficult dog (35, 1, 35, 2)."""
    img = np.full((H, W, 3), 20, np.uint8)
    Image.fromarray(img).save(tmp_path / "b.png")
    objects = [("dog", (3, 5, 10, 12)), ("cat", (20, 2, 30, 20), True), ("dog", (34, 1, 35, 2), True)]
    write_voc_xml(tmp_path / "b.xml", "b.png", W, H, objects)
    return [Pair("b.png", "b.xml", "m:1")]


def test_difficult_objects_are_dropped_unless_asked_for(tmp_path):
    pairs = _difficult_pair(tmp_path)
    _, target = DetectionDataset(pairs, ["cat", "dog"], root=tmp_path)[0]
    assert target["boxes"].tolist() == [[2.0, 4.0, 10.0, 12.0]] and target["labels"].tolist() == [2]
    assert "difficult" not in target
    _, target = DetectionDataset(pairs, ["cat", "dog"], root=tmp_path, use_difficult=True)[0]
    assert target["labels"].tolist() == [2, 1, 2]
    assert target["difficult"].tolist() == [False, True, True]


def test_box_targets_are_the_hand_written_boxes_without_pytorch(tmp_path):
    """The proposals stage's ground truth (numpy, no PyTorch): the same boxes, labels and difficult rule, and an
    unknown class names the manifest line."""
    pairs = _difficult_pair(tmp_path)
    (t,) = box_targets(pairs, ["cat", "dog"], tmp_path)
    assert t.boxes.dtype == np.float32 and t.boxes.tolist() == [[2.0, 4.0, 10.0, 12.0]] and t.labels.tolist() == [2]
    (t,) = box_targets(pairs, ["cat", "dog"], tmp_path, use_difficult=True)
    assert t.labels.tolist() == [2, 1, 2] and t.difficult.tolist() == [False, True, True]
    assert t.boxes[1].tolist() == [19.0, 1.0, 30.0, 20.0]
    with pytest.raises(UserError, match=r"m:1: classes \['cat'\] are not in the class list"):
        box_targets(pairs, ["dog"], tmp_path, use_difficult=True)


def test_the_proposals_stage_does_not_import_pytorch():
    """Selective search and recall need no PyTorch: the stage's process skips its 2-4 s import."""
    code = ("import runpy, sys; sys.argv = ['proposals', '--help']\n"
            "try:\n    runpy.run_path('stages/proposals.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_transforms_drop_difficult_flags_with_their_boxes(tmp_path):
    # scaled to a quarter, the 1 x 1 difficult dog becomes degenerate and is dropped: its flag goes with it
    ds = DetectionDataset(_difficult_pair(tmp_path), ["cat", "dog"], root=tmp_path,
                          transforms=det_transforms((H // 4, W // 4), False), use_difficult=True)
    _, target = ds[0]
    assert target["labels"].tolist() == [2, 1]
    assert target["difficult"].tolist() == [False, True]


# ----------------------------------------------------------------------------------------------------------
# the line order of a manifest is the order of the dataset and of the COCO image ids, sorted or not
# ----------------------------------------------------------------------------------------------------------

# (name, grey level of the image, VOC box of its one object): listed out of alphabetical order on purpose
UNSORTED = [("c", 30, (2, 2, 6, 6)), ("a", 90, (10, 3, 20, 9)), ("e", 150, (5, 8, 9, 20)), ("b", 210, (30, 1, 40, 4))]


def _unsorted_manifests(tmp_path):
    """seg.txt and det.txt listing the images c, a, e, b (each image one grey level, each XML one box)."""
    seg, det = [], []
    for name, grey, box in UNSORTED:
        Image.fromarray(np.full((H, W, 3), grey, np.uint8)).save(tmp_path / f"{name}.png")
        Image.fromarray(np.full((H, W), 255 if grey > 100 else 0, np.uint8)).save(tmp_path / f"{name}_m.png")
        write_voc_xml(tmp_path / f"{name}.xml", f"{name}.png", W, H, [("dog", box)])
        seg.append(f"{name}.png {name}_m.png\n")
        det.append(f"{name}.png {name}.xml\n")
    (tmp_path / "seg.txt").write_text("".join(seg))
    (tmp_path / "det.txt").write_text("".join(det))
    return tmp_path / "seg.txt", tmp_path / "det.txt"


def test_datasets_follow_the_manifest_line_order(tmp_path):
    seg, det = _unsorted_manifests(tmp_path)
    seg_ds = SegmentationDataset(seg, root=tmp_path)
    det_ds = DetectionDataset(det, ["dog"], root=tmp_path)
    assert len(seg_ds) == len(det_ds) == 4
    for i, (_, grey, (xmin, ymin, xmax, ymax)) in enumerate(UNSORTED):
        image, mask = seg_ds[i]
        assert int(image[0, 0, 0]) == grey and int(mask.sum()) == (H * W if grey > 100 else 0)
        image, target = det_ds[i]
        assert int(image[0, 0, 0]) == grey
        assert target["image_id"] == i + 1  # the COCO id of line i + 1
        assert target["boxes"].tolist() == [[xmin - 1.0, ymin - 1.0, float(xmax), float(ymax)]]


def test_coco_ground_truth_ids_follow_the_manifest_line_order(tmp_path):
    _, det = _unsorted_manifests(tmp_path)
    pairs = read_manifest(det)
    check = validate_det(pairs, tmp_path)
    assert check.problems == []
    gt = coco_ground_truth(pairs, check.annotations, ["dog"])
    assert [(im["id"], im["file_name"]) for im in gt["images"]] == [(1, "c.png"), (2, "a.png"), (3, "e.png"),
                                                                     (4, "b.png")]
    # image k's annotation is the box of line k: VOC (xmin, ymin, xmax, ymax) -> COCO [xmin - 1, ymin - 1, w, h]
    assert [(a["image_id"], a["bbox"]) for a in gt["annotations"]] == [
        (1, [1.0, 1.0, 5.0, 5.0]), (2, [9.0, 2.0, 11.0, 7.0]), (3, [4.0, 7.0, 5.0, 13.0]), (4, [29.0, 0.0, 11.0, 4.0])]
    # and the dataset of the same manifest gives image k the same box
    ds = DetectionDataset(pairs, ["dog"], root=tmp_path)
    for k, a in enumerate(gt["annotations"]):
        _, target = ds[k]
        x, y, w, h = a["bbox"]
        assert target["image_id"] == a["image_id"] and target["boxes"].tolist() == [[x, y, x + w, y + h]]


@pytest.mark.parametrize(("width", "height", "side", "factor"), [
    (4000, 3000, 96, 4),  # 3000 / 4 = 750 >= 4 x 96; 3000 / 8 = 375 < 384
    (6000, 4000, 96, 8),  # 4000 / 8 = 500
    (800, 800, 100, 2),  # 400 = 4 x 100 exactly
    (512, 512, 96, 1),  # the isic2018-512 images at the preset's 96 px: decoded whole
    (4000, 300, 96, 1),  # the shorter side decides
])
def test_reduction_keeps_four_source_pixels_for_each_resized_pixel(width, height, side, factor):
    assert reduction(width, height, side) == factor


def _photo(path, width, height):
    """A smooth colour photo with fine noise, as a JPEG, and a disc mask of the same size as a PNG."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([np.sin(xx / 90) * 60 + 120, np.cos(yy / 70) * 60 + 120, (xx + yy) / (width + height) * 200], -1)
    rgb = np.clip(rgb + rng.normal(0, 10, rgb.shape), 0, 255).astype(np.uint8)
    Image.fromarray(rgb).save(path / "photo.jpg", quality=92)
    mask = (((xx - width / 2) ** 2 + (yy - height / 2) ** 2) < (height / 3) ** 2).astype(np.uint8) * 255
    Image.fromarray(mask).save(path / "photo_segmentation.png")
    return Pair("photo.jpg", "photo_segmentation.png", "")


def test_a_large_photo_is_decoded_reduced_and_resizes_as_the_whole_one(tmp_path):
    pair = _photo(tmp_path, 1600, 1200)  # at 96 px: decoded at 1/2 (600 >= 384), the mask whole
    whole = SegmentationDataset([pair], tmp_path)
    reduced = SegmentationDataset([pair], tmp_path, decode_at_least=96)
    image, mask = reduced.read(0)
    assert tuple(image.shape) == (3, 600, 800) and tuple(mask.shape) == (1200, 1600)
    resize = seg_transforms(96, train=False)
    a, ma = resize(*whole.read(0))
    b, mb = resize(image, mask)
    diff = (a - b).abs() * 255
    assert diff.max() <= 4 and diff.mean() < 0.5  # within JPEG rounding of the whole photo's resize
    assert torch.equal(ma, mb)


def test_an_image_near_the_input_size_is_decoded_whole(tmp_path):
    pair = _photo(tmp_path, 512, 384)
    image, _ = SegmentationDataset([pair], tmp_path, decode_at_least=96).read(0)
    assert torch.equal(image, SegmentationDataset([pair], tmp_path).read(0)[0])
