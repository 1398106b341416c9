"""YOLOv1 training on a handful of tiny synthetic scenes: resume, transfer from the R-CNN CNN, augmentation."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import tv_tensors

from segdet.data.datasets import DetectionDataset
from segdet.data.formats import write_voc_xml
from segdet.data.pairs import Pair, write_manifest
from segdet.data.synthetic.shapes import DET_CLASSES
from segdet.data.synthetic.voc import generate_voc
from segdet.data.transforms import YoloAugment, yolo_transforms
from segdet.detection.rcnn.model import RegionCNN
from segdet.detection.yolo import train as yolo_train
from segdet.detection.yolo.train import build_model, collate, schedule, train_yolo, transfer_from_rcnn, validate
from segdet.nets.backbones import IMAGENET_MEAN, IMAGENET_STD
from segdet.nets.weights import load_checkpoint, save_checkpoint
from segdet.nets.yolo import YOLOv1
from segdet.schema import ConfigError
from segdet.sections import YoloTrainConfig

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    generate_voc(root / "voc", num_images=8, image_size=64, seed=1, max_objects=3, progress=False)
    pairs = [Pair(f"voc/JPEGImages/{i:06d}.jpg", f"voc/Annotations/{i:06d}.xml", "") for i in range(8)]
    write_manifest(root / "train.txt", pairs[:6])
    write_manifest(root / "val.txt", pairs[6:])
    return root


def _cfg(**kw):
    base = dict(input_size=64, batch_size=4, epochs=3, warmup_epochs=1, head_channels=16, hidden=32, lr=0.001)
    return YoloTrainConfig(**{**base, **kw})


def _train(scenes, run_dir, cfg, **kw):
    return train_yolo(cfg, train_manifest=scenes / "train.txt", val_manifest=scenes / "val.txt",
                      classes=list(DET_CLASSES), root=scenes, device=CPU, run_dir=run_dir, progress=False, **kw)


def test_resume_with_warmup_schedule_matches_uninterrupted(scenes, tmp_path):
    _, straight = _train(scenes, tmp_path / "a", _cfg())
    _train(scenes, tmp_path / "b", _cfg(epochs=2))
    _, resumed = _train(scenes, tmp_path / "b", _cfg(weights=str(tmp_path / "b" / "last.pt")))
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert [r["lr"] for r in resumed.history] == pytest.approx([r["lr"] for r in straight.history])
    for row in straight.history:
        assert list(row) == ["epoch", "train_loss", "train_coord", "train_obj", "train_noobj", "train_class",
                             "val_loss", "val_map50", "lr", "seconds"]
        # the loss is the sum of its four parts (each a sample-weighted mean over the epoch)
        parts = row["train_coord"] + row["train_obj"] + row["train_noobj"] + row["train_class"]
        assert row["train_loss"] == pytest.approx(parts)


def test_ema_weights_are_saved_evaluated_and_resumed(scenes, tmp_path):
    decay = 0.5
    _train(scenes, tmp_path / "a", _cfg(ema_decay=decay))
    _train(scenes, tmp_path / "b", _cfg(ema_decay=decay, epochs=2))
    _, resumed = _train(scenes, tmp_path / "b", _cfg(ema_decay=decay, weights=str(tmp_path / "b" / "last.pt")))
    a, b = load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["ema_updates"] == b["ema_updates"] == 3 * 2  # 6 images / batch 4: two steps an epoch
    for key in ("model", "train_model"):  # resumed = uninterrupted, for the average and for the trained weights
        for k, v in a[key].items():
            assert torch.equal(v, b[key][k]), (key, k)
    w = "head.0.weight"
    assert not torch.equal(a["model"][w], a["train_model"][w])  # "model" is the average, not the last step
    assert load_checkpoint(tmp_path / "b" / "best.pt")["metrics"]["best_epoch"] == resumed.best_epoch


@pytest.mark.parametrize("keep", ["best", "last"])
def test_keep_returns_the_best_or_the_last_epochs_weights(scenes, tmp_path, monkeypatch, keep):
    """Validation made to peak at epoch 1 of 3: ``keep: best`` returns best.pt's weights (epoch 1), ``keep: last``
    last.pt's (epoch 3)."""
    calls = []

    def falling(model, *args, **kwargs):
        calls.append(1)
        return {"val_loss": float(len(calls)), "val_map50": 1.0 / len(calls)}

    monkeypatch.setattr(yolo_train, "validate", falling)
    model, result = _train(scenes, tmp_path / keep, _cfg(keep=keep))
    assert result.best_epoch == 1
    best, last = load_checkpoint(result.best_checkpoint), load_checkpoint(result.last_checkpoint)
    assert best["epoch"] == 1 and last["epoch"] == 3
    kept = last if keep == "last" else best
    other = best if keep == "last" else last
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in kept["model"].items())
    assert not all(torch.equal(state[k], v) for k, v in other["model"].items())


def test_keep_names_its_values():
    with pytest.raises(ConfigError, match="yolo_train.keep = .final. is not allowed; choose one of: best, last"):
        from segdet.schema import _build

        _build(YoloTrainConfig, {"keep": "final"}, "yolo_train")


def _lrs(cfg, lr=0.01):
    """The learning rate of each epoch under ``schedule`` (the optimizer built with ``lr``)."""
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=lr)
    sched = schedule(opt, cfg)
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_schedule_warms_up_then_steps_down():
    lrs = _lrs(_cfg(epochs=135, warmup_epochs=5, lr_scheduler="step"))
    assert lrs[0] == pytest.approx(0.001) and lrs[5] == pytest.approx(0.01)
    assert lrs[74] == pytest.approx(0.01) and lrs[75] == pytest.approx(0.001)
    assert lrs[104] == pytest.approx(0.001) and lrs[105] == pytest.approx(0.0001)


def test_cosine_schedule_warms_up_then_falls_to_a_hundredth():
    lrs = _lrs(_cfg(epochs=60, warmup_epochs=3, lr_scheduler="cosine"))
    assert lrs[0] == pytest.approx(0.001) and lrs[3] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))  # never rises after the warm-up
    assert lrs[31] == pytest.approx(0.01 * (0.01 + 0.99 * 0.5), rel=0.05)  # half-way: about the mean of lr and lr/100
    assert lrs[-1] == pytest.approx(0.0001)


def test_backbone_transfer_from_the_rcnn_cnn(tmp_path):
    rcnn = RegionCNN("small", 5)
    save_checkpoint(tmp_path / "rcnn.pt", model=rcnn, epoch=1, config={"backbone": "small"}, classes=[], metrics={})
    yolo = YOLOv1("small", 5, input_size=64, head_channels=16, hidden=32)
    report = transfer_from_rcnn(yolo, tmp_path / "rcnn.pt")
    features = [k for k in rcnn.state_dict() if k.startswith("features.")]
    assert sorted(report.loaded) == sorted(features) and not report.mismatched
    assert torch.equal(yolo.features[0].weight, rcnn.features[0].weight)
    other = YOLOv1("resnet18", 5, input_size=64, head_channels=16, hidden=32)
    report = transfer_from_rcnn(other, tmp_path / "rcnn.pt")
    assert not report.loaded and "nothing transferred" in report.note


def test_training_transfers_from_rcnn_and_reports(scenes, tmp_path):
    rcnn = RegionCNN("small", 5)
    save_checkpoint(tmp_path / "rcnn.pt", model=rcnn, epoch=1, config={"backbone": "small"}, classes=[], metrics={})
    reports = []
    _train(scenes, tmp_path / "run", _cfg(epochs=2), rcnn_checkpoint=tmp_path / "rcnn.pt", on_transfer=reports.append)
    features = [k for k in rcnn.state_dict() if k.startswith("features.")]
    assert len(reports) == 1 and sorted(reports[0].loaded) == sorted(features) and not reports[0].mismatched


def test_frozen_backbone_layers_keep_the_rcnn_weights_and_resume(scenes, tmp_path):
    rcnn = RegionCNN("small", 5)
    save_checkpoint(tmp_path / "rcnn.pt", model=rcnn, epoch=1, config={"backbone": "small"}, classes=[], metrics={})
    cfg = _cfg(freeze_backbone=2)
    _train(scenes, tmp_path / "a", cfg, rcnn_checkpoint=tmp_path / "rcnn.pt")
    _train(scenes, tmp_path / "b", _cfg(freeze_backbone=2, epochs=2), rcnn_checkpoint=tmp_path / "rcnn.pt")
    _train(scenes, tmp_path / "b", _cfg(freeze_backbone=2, weights=str(tmp_path / "b" / "last.pt")))
    a, b = load_checkpoint(tmp_path / "a" / "last.pt")["model"], load_checkpoint(tmp_path / "b" / "last.pt")["model"]
    theirs = rcnn.state_dict()
    for k in ("features.0.weight", "features.1.weight", "features.1.running_var", "features.4.weight"):
        assert torch.equal(a[k], theirs[k]), k  # frozen: still the R-CNN weights and statistics
    assert not torch.equal(a["features.8.weight"], theirs["features.8.weight"])  # the third conv trained
    for k, v in a.items():
        assert torch.equal(v, b[k]), k  # resume with frozen layers = uninterrupted


def test_freezing_more_layers_than_the_backbone_has_names_the_key(scenes, tmp_path):
    save_checkpoint(tmp_path / "rcnn.pt", model=RegionCNN("small", 5), epoch=1, config={"backbone": "small"},
                    classes=[], metrics={})
    with pytest.raises(ConfigError, match=r"yolo_train.freeze_backbone = 9: .*5 convolutions"):
        _train(scenes, tmp_path / "run", _cfg(freeze_backbone=9), rcnn_checkpoint=tmp_path / "rcnn.pt")


def test_freeze_is_ignored_when_nothing_was_transferred(scenes, tmp_path):
    model, _ = _train(scenes, tmp_path / "run", _cfg(freeze_backbone=2, epochs=2))
    assert all(p.requires_grad for p in model.parameters())  # random layers are not kept fixed


def _block_scene(h: int, w: int, box: tuple[int, int, int, int]):
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 255
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([box], dtype=torch.float32), format="XYXY",
                                                canvas_size=(h, w)), "labels": torch.tensor([1])}
    return tv_tensors.Image(image), target


def _unnormalised(out: torch.Tensor) -> torch.Tensor:
    return out * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


@pytest.mark.parametrize("h, w", [(64, 64), (100, 140)])
def test_augmentation_moves_boxes_with_the_image(h, w):
    """Scaling, translation, flips and the resize: the box must still bound the white block exactly."""
    torch.manual_seed(0)
    aug = YoloAugment(64, hflip=0.5, vflip=0.5, exposure=1.0, saturation=1.0)
    moved = 0
    for _ in range(60):
        out, t = aug(*_block_scene(h, w, (30, 20, 60, 45)))
        ys, xs = torch.nonzero(_unnormalised(out)[0] > 0.5, as_tuple=True)
        if not len(t["boxes"]):  # pushed out of the image: then (almost) nothing of it is left either
            assert len(xs) == 0 or min(xs.max() - xs.min(), ys.max() - ys.min()) < 3
            continue
        seen = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        assert torch.allclose(seen, t["boxes"][0], atol=1.0), (seen, t["boxes"][0])
        moved += not torch.allclose(seen, torch.tensor([30.0, 20.0, 60.0, 45.0]) * torch.tensor([64 / w, 64 / h] * 2))
    assert moved > 40  # the augmentation did move it


def test_flips_mirror_the_boxes():
    def flip(h, v):
        return YoloAugment(64, hflip=h, vflip=v, translate=0.0, scale=0.0, exposure=1.0, saturation=1.0)

    image, target = _block_scene(64, 64, (4, 10, 16, 20))  # a block near the top left corner
    out, t = flip(1.0, 0.0)(image, target)
    assert t["boxes"][0].tolist() == [48.0, 10.0, 60.0, 20.0]
    out = _unnormalised(out)
    assert out[:, 10:20, 48:60].min() > 0.99 and out[:, :, :48].max() < 0.01
    out, t = flip(0.0, 1.0)(image, target)
    assert t["boxes"][0].tolist() == [4.0, 44.0, 16.0, 54.0]
    out = _unnormalised(out)
    assert out[:, 44:54, 4:16].min() > 0.99 and out[:, :44].max() < 0.01
    out, t = flip(0.0, 0.0)(image, target)
    assert t["boxes"][0].tolist() == [4.0, 10.0, 16.0, 20.0]
    evaluation = yolo_transforms(64, False)  # validation: no random operation
    assert torch.equal(evaluation(image, target)[0], evaluation(image, target)[0])
    assert torch.allclose(evaluation(image, target)[0], flip(0.0, 0.0)(image, target)[0], atol=1e-5)


def test_exposure_and_saturation_jitter():
    """Exposure scales every channel by one factor in [1/1.5, 1.5]; saturation leaves a grey image grey."""
    torch.manual_seed(0)
    grey = tv_tensors.Image(torch.full((3, 16, 16), 100, dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(16, 16)),
              "labels": torch.zeros(0, dtype=torch.int64)}
    still = YoloAugment(16, translate=0.0, scale=0.0, exposure=1.0)
    for _ in range(10):
        assert torch.allclose(_unnormalised(still(grey, target)[0]) * 255, torch.full((3, 16, 16), 100.0), atol=1e-3)
    exposure = YoloAugment(16, translate=0.0, scale=0.0, saturation=1.0)
    ratios = [float(_unnormalised(exposure(grey, target)[0]).mean()) * 255 / 100 for _ in range(200)]
    assert 1 / 1.5 - 0.01 <= min(ratios) < 0.75 and 1.4 < max(ratios) <= 1.5 + 0.01


def test_augmentation_drops_degenerate_boxes_with_their_flags():
    image = tv_tensors.Image(torch.zeros(3, 32, 32, dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([[2.0, 2.0, 12.0, 12.0], [20.0, 4.0, 21.0, 14.0]]),
                                                format="XYXY", canvas_size=(32, 32)),
              "labels": torch.tensor([1, 2]), "difficult": torch.tensor([False, True])}
    _, t = YoloAugment(32, translate=0.0, scale=0.0)(image, target)
    assert t["labels"].tolist() == [1] and t["difficult"].tolist() == [False] and len(t["boxes"]) == 1


def test_validation_ignores_difficult_objects(tmp_path, monkeypatch):
    Image.fromarray(np.full((48, 80, 3), 90, np.uint8)).save(tmp_path / "a.png")
    write_voc_xml(tmp_path / "a.xml", "a.png", 80, 48, [("dog", (3, 5, 30, 40)), ("cat", (40, 2, 70, 30), True)])
    classes = ["cat", "dog"]
    ds = DetectionDataset([Pair("a.png", "a.xml", "m:1")], classes, tmp_path, yolo_transforms(64, False),
                          use_difficult=True)
    loader = DataLoader(ds, 2, collate_fn=collate)
    seen: dict = {}

    def evaluate(gt, results, score_threshold, coco=True):
        seen["gt"], seen["coco"] = gt, coco
        return SimpleNamespace(summary={"map50": 0.5})

    losses: list = []

    def loss_fn(pred, targets):
        losses.append([t["labels"].tolist() for t in targets])
        return torch.tensor(1.0), {}

    monkeypatch.setattr(yolo_train, "evaluate_detections", evaluate)
    model = build_model(_cfg(), len(classes))
    assert validate(model, loader, loss_fn, CPU, classes, 0.2) == {"val_loss": 1.0, "val_map50": 0.5}
    # the difficult cat is in the mAP's ground truth as iscrowd (ignored), and out of the loss as in training
    assert [(a["category_id"], a["iscrowd"]) for a in seen["gt"]["annotations"]] == [(2, 0), (1, 1)]
    assert seen["coco"] is False  # epochs are ranked by mAP@0.5 alone: no pycocotools evaluation every epoch
    assert losses == [[[2]]]
    validate(model, loader, loss_fn, CPU, classes, 0.2, use_difficult=True)
    assert losses[-1] == [[2, 1]]


def _centres_manifest(tmp_path, images, side=4, name="m"):
    """A det manifest ``<name>.txt`` of 100x100 images whose objects are squares centred on the given integer
    points, ``side`` pixels wide (or the point's own third value)."""
    from segdet.data.formats import write_voc_xml

    lines = []
    for k, centres in enumerate(images):
        xml = tmp_path / f"{name}{k}.xml"
        boxes = []
        for x, y, *own in centres:
            a = own[0] if own else side
            boxes.append(("square", (x + 1 - a // 2, y + 1 - a // 2, x + a - a // 2, y + a - a // 2)))
        write_voc_xml(xml, f"{name}{k}.jpg", 100, 100, boxes)
        lines.append(f"{tmp_path / f'{name}{k}.jpg'} {xml}\n")
    (tmp_path / f"{name}.txt").write_text("".join(lines))
    return tmp_path / f"{name}.txt"


def test_lost_to_grid_and_auto_input_size_hand_computed(tmp_path):
    from segdet.detection.yolo.train import auto_input_size, lost_to_grid, training_objects

    # cells of 100 px: 12.5 px at S=8, 10 at S=10, 8.3 at S=12, 7.1 at S=14. Centres 10 and 15 straddle the
    # 12.5 px boundary (apart at S=8), share cell 1 at S=10 and S=12, and fall in cells 1 and 2 at S=14.
    # 14 px boxes: 36 px at 256 px, above two of the small backbone's 16 px strides (tested below)
    manifest = _centres_manifest(tmp_path, [[(10, 10), (15, 15)], [(60, 60)]], side=14)
    lost = lost_to_grid(training_objects(manifest, tmp_path), (8, 10, 12, 14))
    assert lost == {8: 0.0, 10: pytest.approx(1 / 3), 12: pytest.approx(1 / 3), 14: 0.0}
    cfg = YoloTrainConfig(backbone="small", input_size="auto")
    assert auto_input_size(cfg, manifest, tmp_path) == 8 * 32  # S=8 loses none: the smallest grid
    # centres 2 and 8 share cell 0 until S=14 (7.1 px cells): a third of the objects lost, then none
    dense = _centres_manifest(tmp_path, [[(2, 2), (8, 8)], [(60, 60)]])
    assert lost_to_grid(training_objects(dense, tmp_path), (8, 12, 14)) == {8: pytest.approx(1 / 3), 12: pytest.approx(1 / 3), 14: 0.0}
    assert auto_input_size(cfg, dense, tmp_path) == 14 * 32  # small backbone: 32 px of input a cell step
    # both are squares: two objects a cell would lose none at S=8, but auto counts by the paper's rule (a dense
    # scene needs the pixels of the larger input too)
    assert lost_to_grid(training_objects(dense, tmp_path), (8,), cell_objects=2) == {8: 0.0}
    assert auto_input_size(dataclasses.replace(cfg, cell_objects=2), dense, tmp_path) == 14 * 32


def test_auto_input_size_grows_until_few_objects_are_under_two_strides(tmp_path):
    from segdet.detection.yolo.train import auto_input_size, small_at_size, training_objects

    # 30 images of 100x100 px, one centred object each (no cell is shared on any grid): 28 of 50 px, one of 12 px
    # (30.7 px at 256, 38.4 at 320: under two 16 px strides only at 256) and one of 5 px (22.4 px even at 448)
    def manifest(sides, name):
        return _centres_manifest(tmp_path, [[(50, 50, a)] for a in sides], name=name)

    few = manifest([50] * 28 + [12, 5], "few")
    objects = training_objects(few, tmp_path)
    assert sorted(round(w * 100) for image in objects for _, _, w, _, _ in image) == [5, 12] + [50] * 28
    assert small_at_size(objects, (256, 320, 384, 448), 32) == {256: pytest.approx(2 / 30), 320: pytest.approx(1 / 30),
                                                                384: pytest.approx(1 / 30), 448: pytest.approx(1 / 30)}
    cfg = YoloTrainConfig(backbone="small", input_size="auto")
    # 6.7 % under 32 px at 256 px is above AUTO_MAX_SMALL (5 %): the next grid, 320 px (S = 10), has 3.3 %
    assert auto_input_size(cfg, few, tmp_path) == 10 * 32
    # a third of the objects 5 px wide stay under 32 px at every size: the largest grid
    assert auto_input_size(cfg, manifest([50] * 20 + [5] * 10, "many"), tmp_path) == 14 * 32
    # large objects only (raccoon-voc's kind): the smallest grid
    assert auto_input_size(cfg, manifest([50] * 30, "large"), tmp_path) == 8 * 32


def test_lost_to_grid_with_cell_objects_keeps_same_class_pairs(tmp_path):
    from segdet.data.formats import write_voc_xml
    from segdet.detection.yolo.train import lost_to_grid, training_objects

    # one 100 px image, all centres in cell (0, 0) at S=8 (12.5 px cells): a big square, a smaller square and a
    # circle. cell_objects 1 keeps the big one (2 of 3 lost); 2 keeps both squares (the circle is lost: the
    # cell's class is the big one's); at S=14 (7.1 px) the circle at (11, 11) has its own cell.
    write_voc_xml(tmp_path / "0.xml", "0.jpg", 100, 100, [("square", (1, 1, 12, 12)), ("square", (3, 3, 8, 8)),
                                                       ("circle", (9, 9, 13, 13))])
    (tmp_path / "m.txt").write_text(f"{tmp_path / '0.jpg'} {tmp_path / '0.xml'}\n")
    assert lost_to_grid(training_objects(tmp_path / "m.txt", tmp_path), (8, 14)) == {8: pytest.approx(2 / 3), 14: pytest.approx(1 / 3)}
    assert lost_to_grid(training_objects(tmp_path / "m.txt", tmp_path), (8, 14), cell_objects=2) == {8: pytest.approx(1 / 3), 14: 0.0}
