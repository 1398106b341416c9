import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from segdet.detection.proposals import proposal_table, propose_many, recall, selective_search
from segdet.sections import ProposalsConfig


def _scene(h=120, w=160):
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), 90, np.uint8) + rng.integers(0, 10, (h, w, 3), dtype=np.uint8)
    img[20:60, 30:90] = (220, 40, 40)
    img[70:110, 100:150] = (40, 200, 60)
    return img


def test_selective_search_boxes_are_valid_and_find_the_objects():
    img = _scene()
    boxes = selective_search(img, ProposalsConfig("fast", max_side=200, min_size=4, max_proposals=500))
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and 0 < len(boxes) <= 500
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 120).all()
    assert ((boxes[:, 2] - boxes[:, 0]) >= 4).all() and ((boxes[:, 3] - boxes[:, 1]) >= 4).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    gt = np.array([[30, 20, 90, 60], [100, 70, 150, 110]], np.float32)
    assert recall([gt], [boxes], 0.7) == 1.0


def test_cap_and_minimum_size():
    img = _scene()
    assert len(selective_search(img, ProposalsConfig("fast", 200, 4, max_proposals=7))) == 7
    big = selective_search(img, ProposalsConfig("fast", 200, min_size=50))
    assert ((big[:, 2] - big[:, 0]) >= 50).all() and ((big[:, 3] - big[:, 1]) >= 50).all()
    with pytest.raises(ValueError, match="Available options are: fast, quality"):
        selective_search(img, ProposalsConfig("slow"))


def test_boxes_map_back_to_original_pixels_when_resized():
    img = _scene()
    boxes = selective_search(img, ProposalsConfig("fast", max_side=80, min_size=2))
    # found in the 80-px image, reported in the 160-px one: inside it, and each object has a box at IoU >= 0.7
    # (torchvision's IoU) there; boxes left at the search's scale or scaled twice would miss them
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 160).all() and (boxes[:, 3] <= 120).all()
    gt = torch.tensor([[30, 20, 90, 60], [100, 70, 150, 110]], dtype=torch.float32)
    assert (box_iou(gt, torch.from_numpy(boxes)).max(dim=1).values >= 0.7).all()


def test_pool_gives_the_same_boxes_as_one_process(tmp_path):
    paths = []
    for i in range(3):
        Image.fromarray(np.roll(_scene(), 10 * i, axis=1)).save(tmp_path / f"{i}.png")
        paths.append(tmp_path / f"{i}.png")
    s = ProposalsConfig("fast", 160, 4, 300)
    one = list(propose_many(paths, s, workers=1))
    two = list(propose_many(paths, s, workers=2))
    assert [p for p, _, _ in one] == [str(p) for p in paths] == [p for p, _, _ in two]
    for (_, a, _), (_, b, _) in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    table = proposal_table([p for p, _, _ in one], [b for _, b, _ in one])
    assert list(table.columns) == ["image", "x1", "y1", "x2", "y2"] and len(table) == sum(len(b) for _, b, _ in one)


def test_recall_hand_computed():
    gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)]
    props = [np.array([[0, 0, 10, 12]], np.float32)]  # IoU 100/120 with the first box, 0 with the second
    assert recall(gt, props, 0.5) == 0.5 and recall(gt, props, 0.9) == 0.0


def test_streamed_proposals_file_reads_back_per_image_in_any_order(tmp_path):
    """The proposals parquet is written and read one image at a time (a split's proposals are never all in
    memory): rows that straddle row groups and read batches, images without rows, and an order other than the
    file's all come back exactly."""
    import pandas as pd

    from segdet.detection.proposals import ProposalWriter, iter_proposals

    rng = np.random.default_rng(1)
    images = [f"data/raw/voc/JPEGImages/img {i}.jpg" for i in range(7)]
    boxes = {name: rng.uniform(0, 200, (int(n), 4)).astype(np.float32)
             for name, n in zip(images, [5, 0, 13, 1, 7, 0, 9], strict=True)}
    with ProposalWriter(tmp_path / "train.parquet", group_images=3) as writer:
        for name in images:
            writer.add(name, boxes[name])
    frame = pd.read_parquet(tmp_path / "train.parquet")  # the file contract: one row per box, image order kept
    assert list(frame.columns) == ["image", "x1", "y1", "x2", "y2"] and len(frame) == 35
    assert list(dict.fromkeys(frame["image"])) == [n for n in images if len(boxes[n])]
    for order in (images, images[::-1], [images[4], "not/in/the/file.jpg", images[0], images[2]]):
        got = list(iter_proposals(tmp_path / "train.parquet", order, batch_rows=4))
        assert len(got) == len(order)
        for name, props in zip(order, got, strict=True):
            np.testing.assert_array_equal(props, boxes.get(name, np.zeros((0, 4), np.float32)))
            assert props.dtype == np.float32 and props.shape[1] == 4



def _fake_search(gt, quality_finds_both):
    """A stand-in for propose_many: fast mode finds the first object of each image, quality mode both objects of the
    images in ``quality_finds_both``; records which images each mode searched."""
    searched = {}

    def search(paths, settings, workers=0):
        searched.setdefault(settings.mode, []).extend(paths)
        for p in paths:
            i = int(p[3:-4])
            n = 2 if settings.mode == "quality" and i in quality_finds_both else 1
            yield p, gt[i][:n], 1.0 if settings.mode == "fast" else 3.0

    return search, searched


@pytest.mark.parametrize(("quality_finds_both", "min_gain", "chosen"), [
    (range(10), 0.02, "quality"),   # recall 1.0 against 0.5
    ({0}, 0.02, "quality"),         # 5 of 8 objects against 4 of 8: +0.125
    ({0}, 0.2, "fast"),             # the same gain under a higher bar
    ((), 0.02, "fast"),             # no gain: the cheaper mode
])
def test_auto_mode_takes_quality_only_when_it_covers_enough_more_training_objects(monkeypatch, quality_finds_both,
                                                                                min_gain, chosen):
    from segdet.detection import proposals

    gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)] * 10 + [np.zeros((0, 4), np.float32)] * 5
    paths = [f"img{i}.jpg" for i in range(15)]
    search, searched = _fake_search(gt, set(quality_finds_both))
    monkeypatch.setattr(proposals, "propose_many", search)
    mode, info = proposals.choose_mode(paths, gt, ProposalsConfig("auto"), images=4, min_gain=min_gain)
    assert mode == chosen
    # four images evenly spread over the ten with objects (the five without none would count nothing), both modes
    assert searched == {"fast": ["img0.jpg", "img3.jpg", "img6.jpg", "img9.jpg"],
                        "quality": ["img0.jpg", "img3.jpg", "img6.jpg", "img9.jpg"]}
    found = len([i for i in (0, 3, 6, 9) if i in set(quality_finds_both)])
    assert info == {"images": 4, "min_gain": min_gain, "recall_0.5": {"fast": 0.5, "quality": (4 + found) / 8},
                    "seconds_per_image": {"fast": 1.0, "quality": 3.0}}


def test_auto_mode_measures_each_modes_recall_with_the_real_search(tmp_path):
    from dataclasses import replace

    from segdet.detection.proposals import MODES, choose_mode

    img = _scene()
    paths, gt = [], []
    for k in range(2):  # the scene and its mirror image, as files (the search reads them like the stage does)
        path = tmp_path / f"scene{k}.png"
        Image.fromarray(img[:, ::-1] if k else img).save(path)
        paths.append(str(path))
        boxes = np.array([[30, 20, 90, 60], [100, 70, 150, 110]], np.float32)
        gt.append(np.stack([160 - boxes[:, 2], boxes[:, 1], 160 - boxes[:, 0], boxes[:, 3]], 1) if k else boxes)
    cfg = ProposalsConfig("auto", max_side=100, min_size=4, max_proposals=20)
    kept = {}
    mode, info = choose_mode(paths, gt, cfg, workers=1, keep=kept)
    assert mode in MODES and info["images"] == 2
    for m in MODES:  # each recall is what the search of that mode gives on the images, counted independently
        found = [selective_search(np.asarray(Image.open(p))[:, :, ::-1], replace(cfg, mode=m)) for p in paths]
        assert info["recall_0.5"][m] == recall(gt, found, 0.5)
        if m == mode:  # the sample's boxes in the chosen mode, which the stage writes instead of searching again
            assert list(kept) == paths
            for p, boxes in zip(paths, found, strict=True):
                np.testing.assert_array_equal(kept[p][0], boxes)


def test_reused_search_results_keep_the_order_and_only_the_rest_is_searched(monkeypatch):
    from segdet.detection import proposals

    gt = [np.array([[i, 0, i + 10, 10]], np.float32) for i in range(6)]
    search, searched = _fake_search(gt, set())
    monkeypatch.setattr(proposals, "propose_many", search)
    paths = [f"img{i}.jpg" for i in range(6)]
    done = {"img1.jpg": (np.ones((3, 4), np.float32), 7.0), "img4.jpg": (np.zeros((0, 4), np.float32), 8.0)}
    out = list(proposals.propose_reusing(paths, ProposalsConfig("fast"), 1, done))
    assert [p for p, _, _ in out] == paths
    assert searched == {"fast": ["img0.jpg", "img2.jpg", "img3.jpg", "img5.jpg"]}
    assert [s for _, _, s in out] == [1.0, 7.0, 1.0, 1.0, 8.0, 1.0]
    np.testing.assert_array_equal(out[1][1], done["img1.jpg"][0])
    np.testing.assert_array_equal(out[2][1], gt[2])
    assert [len(b) for _, b, _ in proposals.propose_reusing(paths[:2], ProposalsConfig("fast"), 1)] == [1, 1]


def test_auto_mode_resolves_to_what_the_proposals_stage_chose(tmp_path):
    import json

    from segdet.detection.proposals import resolve_mode

    info = tmp_path / "proposals_info.json"
    with pytest.raises(FileNotFoundError, match=r"proposals.mode is auto, and .*proposals_info.json .* run the "
                                                r"proposals stage first, or set proposals.mode to fast or quality"):
        resolve_mode("auto", info)
    info.write_text(json.dumps({"mode": "quality", "workers": 2}))
    assert resolve_mode("auto", info) == "quality"
    assert resolve_mode("fast", tmp_path / "absent.json") == "fast"  # a mode as given: nothing read
    info.write_text(json.dumps({"mode": "auto"}))
    with pytest.raises(ValueError, match="mode 'auto' is not one of fast, quality"):
        resolve_mode("auto", info)
