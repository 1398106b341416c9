"""The detector seam: loading each family from its files, and the shared evaluation loop."""

import dataclasses
import inspect
import time

import numpy as np
import pytest
import torch

from segdet.data.formats import coco_annotation
from segdet.detection.detector import run_detector
from segdet.detection.rcnn.detect import load_rcnn
from segdet.detection.rcnn.model import RegionCNN
from segdet.detection.yolo.detect import TTA_PASSES, YoloDetector, load_yolo_detector, save_with_thresholds
from segdet.nets.unet import build_unet
from segdet.nets.weights import CheckpointError, save_checkpoint
from segdet.nets.yolo import YOLOv1
from segdet.sections import YoloTrainConfig
from segdet.segmentation.evaluate import load_unet


class _Fake:
    """Two boxes per image, scores 0.9 and 0.1; counts its calls."""

    classes, thresholds, needs_proposals = ["a", "b"], [0.5, 0.5], False

    def __init__(self):
        self.calls = 0

    def detect(self, image, proposals=None):
        self.calls += 1
        dets = {"boxes": torch.tensor([[0.0, 0.0, 4.0, 2.0], [1.0, 1.0, 3.0, 3.0]]),
                "scores": torch.tensor([0.9, 0.1]), "labels": torch.tensor([1, 2])}
        return dets, {"a": 1.0 * self.calls, "b": 2.0}


def test_run_detector_numbers_images_from_1_warms_up_and_averages_each_part():
    fake = _Fake()
    items = ((torch.zeros(3, 8, 8, dtype=torch.uint8), None, torch.zeros(0, 4)) for _ in range(3))
    run = run_detector(fake, items, cut=0.5, samples=2, warmup=2, total=3)
    assert fake.calls == 5  # 2 untimed, then all 3
    assert run.seconds == {"a": (3 + 4 + 5) / 3, "b": 2.0}
    assert [r["image_id"] for r in run.results] == [1, 1, 2, 2, 3, 3]
    assert run.results[0]["bbox"] == [0.0, 0.0, 4.0, 2.0] and run.results[1]["category_id"] == 2
    assert len(run.samples) == 2 and run.samples[0].shape == (8, 8, 3)


def test_yolov1_defaults_are_the_params_defaults():
    defaults = {k: p.default for k, p in inspect.signature(YOLOv1).parameters.items()
                if p.default is not inspect.Parameter.empty and k != "num_classes"}
    cfg = YoloTrainConfig()
    assert defaults == {k: getattr(cfg, k) for k in defaults}


def test_loaders_name_the_file_that_is_not_their_model(tmp_path):
    unet = tmp_path / "unet.pt"
    save_checkpoint(unet, model=build_unet("unet32"), epoch=1, config={"variant": "unet32", "input_size": 32},
                    classes=["background", "lesion"], metrics={})
    with pytest.raises(CheckpointError, match=r"unet\.pt: not an R-CNN region CNN"):
        load_rcnn(unet, {}, device=torch.device("cpu"))
    with pytest.raises(CheckpointError, match=r"unet\.pt: not a YOLOv1 checkpoint"):
        load_yolo_detector(unet, device=torch.device("cpu"), min_score=0.1, nms_iou=0.5)
    model, cfg = load_unet(torch.load(unet, weights_only=True), str(unet))
    assert cfg["variant"] == "unet32" and not model.training
    cnn = tmp_path / "cnn.pt"
    save_checkpoint(cnn, model=RegionCNN("small", 2), epoch=1,
                    config={"backbone": "small", "crop_size": 16, "context": 0.0}, classes=["a", "b"], metrics={})
    with pytest.raises(CheckpointError, match=r"missing\.npz: not an R-CNN SVM file"):
        load_rcnn(cnn, tmp_path / "missing.npz", device=torch.device("cpu"))
    np.savez(tmp_path / "svm.npz", classes=np.array(["a", "b"]), svm_weight=np.zeros((2, 256), np.float32),
             svm_bias=np.zeros(2, np.float32), reg_weight=np.zeros((2, 4, 256), np.float32),
             reg_bias=np.zeros((2, 4), np.float32), feature_scale=np.float32(1.0),
             score_threshold=np.array([0.25, -0.5], np.float32))
    detector = load_rcnn(cnn, tmp_path / "svm.npz", device=torch.device("cpu"), min_score=-1.0)
    assert detector.classes == ["a", "b"] and detector.thresholds == [0.25, -0.5] and detector.crop_size == 16
    assert detector.nms_iou == 0.3  # a file from before nms_iou: auto stores none: the paper's
    with pytest.raises(CheckpointError, match=r"cnn\.pt: not a UNet checkpoint"):
        load_unet(torch.load(cnn, weights_only=True), str(cnn))


class _SlowFixedYolo(torch.nn.Module):
    """A YOLOv1 stand-in (S=2, B=2, C=2, 64 px input) whose forward pass takes 50 ms and always predicts one box in
    cell (0, 0): x .5, y .5, w .25, h .5, confidence .9, class 2 -> (8, 0, 24, 32) in input pixels."""

    input_size, B, C, S = 64, 2, 2, 2

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        time.sleep(0.05)
        pred = torch.zeros(len(x), 2, 2, 12)
        pred[:, 0, 0, :5] = torch.tensor([0.5, 0.5, 0.25, 0.5, 0.9])
        pred[:, 0, 0, 10:] = torch.tensor([0.0, 1.0])
        return pred


def test_yolo_detector_times_the_forward_pass_and_maps_boxes_back_to_the_image():
    model = _SlowFixedYolo()
    detector = YoloDetector(model, device=torch.device("cpu"), min_score=0.1, nms_iou=0.5)
    image = torch.zeros(3, 48, 80, dtype=torch.uint8)  # 80 wide, 48 high: resized to 64 x 64 for the network
    start = time.perf_counter()
    dets, seconds = detector.detect(image)
    wall = time.perf_counter() - start
    assert model.seen == [(1, 3, 64, 64)]
    # (8, 0, 24, 32) at 64 px, scaled by (80 / 64, 48 / 64) -> (10, 0, 30, 24) in the image's pixels
    assert dets["boxes"].tolist() == [pytest.approx([10.0, 0.0, 30.0, 24.0])]
    assert dets["labels"].tolist() == [2] and dets["scores"].tolist() == pytest.approx([0.9])
    # the 50 ms forward pass is inside the "forward" part, and the parts are disjoint pieces of the call
    # (what forward_fps = 1 / forward and fps = 1 / sum of the parts in yolo_eval.json rest on)
    assert set(seconds) == {"preprocess", "forward", "decode"}
    assert seconds["forward"] >= 0.05 and sum(seconds.values()) <= wall


def test_detectors_use_the_nms_iou_stored_with_the_model_unless_given(tmp_path):
    """rcnn_eval.nms_iou / yolo_eval.nms_iou: auto -> the detectors get None and take the IoU the training stage
    chose on val and stored (rcnn_svm.npz ``nms_iou``, yolo.pt ``nms_iou``); a number given wins."""
    cnn = tmp_path / "cnn.pt"
    save_checkpoint(cnn, model=RegionCNN("small", 1), epoch=1,
                    config={"backbone": "small", "crop_size": 16, "context": 0.0}, classes=["a"], metrics={})
    svm = {"classes": np.array(["a"]), "svm_weight": np.zeros((1, 256), np.float32),
           "svm_bias": np.zeros(1, np.float32), "reg_weight": np.zeros((1, 4, 256), np.float32),
           "reg_bias": np.zeros((1, 4), np.float32), "feature_scale": np.float32(1.0),
           "score_threshold": np.zeros(1, np.float32), "nms_iou": np.float32(0.6)}
    np.savez(tmp_path / "svm.npz", **svm)
    assert load_rcnn(cnn, tmp_path / "svm.npz", device=torch.device("cpu")).nms_iou == pytest.approx(0.6)
    assert load_rcnn(cnn, tmp_path / "svm.npz", device=torch.device("cpu"), nms_iou=0.4).nms_iou == 0.4
    yolo = tmp_path / "yolo.pt"
    model = YOLOv1("small", 1, input_size=64, head_channels=8, hidden=8)
    config = {"backbone": "small", "boxes_per_cell": 2, "input_size": 64, "head_channels": 8, "hidden": 8,
              "dropout": 0.0, "head": "conv"}
    save_checkpoint(yolo, model=model, epoch=1, config=config, classes=["a"], metrics={})
    assert load_yolo_detector(yolo, device=torch.device("cpu"), min_score=0.1).nms_iou == 0.5  # none stored
    ckpt = torch.load(yolo, weights_only=True)
    torch.save({**ckpt, "nms_iou": 0.7}, yolo)
    assert load_yolo_detector(yolo, device=torch.device("cpu"), min_score=0.1).nms_iou == 0.7
    assert load_yolo_detector(yolo, device=torch.device("cpu"), min_score=0.1, nms_iou=0.45).nms_iou == 0.45
    # test-time augmentation likewise (yolo_eval.tta: auto -> None): stored, else off; a bool given wins
    assert not load_yolo_detector(yolo, device=torch.device("cpu"), min_score=0.1, tta=None).tta  # none stored
    torch.save({**ckpt, "tta": True}, yolo)
    assert load_yolo_detector(yolo, device=torch.device("cpu"), min_score=0.1, tta=None).tta
    assert not load_yolo_detector(yolo, device=torch.device("cpu"), min_score=0.1, tta=False).tta


class _TwoBoxYolo(torch.nn.Module):
    """A YOLOv1 stand-in (S=2, B=2, C=1, 64 px input): cell (0, 0) predicts (8, 0, 24, 32) at confidence 0.9 and
    (12.5, 0, 28.5, 32) at 0.8, which overlap at IoU 368 / 656 = 0.56."""

    input_size, B, C, S = 64, 2, 1, 2

    def forward(self, x):
        pred = torch.zeros(len(x), 2, 2, 11)
        pred[:, 0, 0, :10] = torch.tensor([0.5, 0.5, 0.25, 0.5, 0.9, 20.5 / 32, 0.5, 0.25, 0.5, 0.8])
        pred[:, 0, 0, 10] = 1.0
        return pred


def test_yolo_auto_nms_iou_is_chosen_on_val_and_stored_with_the_thresholds(tmp_path):
    """Two objects at IoU 0.56 and the two boxes on them: NMS at 0.3 to 0.5 keeps one (val AP 0.5), at 0.6 and
    0.7 both (AP 1): auto stores 0.6 (the lowest of the best), and the thresholds are chosen at 0.6, so the second
    object's box (0.8) is inside the operating point; a given nms_iou stores none."""
    best = tmp_path / "best.pt"
    save_checkpoint(best, model=torch.nn.Linear(1, 1), epoch=3, config={}, classes=["a"], metrics={})
    gt = {"images": [{"id": 1, "width": 64, "height": 64}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [coco_annotation(1, 1, 1, (8.0, 0.0, 24.0, 32.0)),
                          coco_annotation(2, 1, 1, (12.5, 0.0, 28.5, 32.0))]}
    val = [(torch.zeros(3, 64, 64, dtype=torch.uint8), None)]
    settings = {"device": torch.device("cpu"), "min_score": 0.01, "max_detections": 100}
    thresholds, nms_iou, tried, tta, tta_tried = save_with_thresholds(_TwoBoxYolo(), best, tmp_path / "auto.pt",
                                                                      val, gt, nms_iou=None, **settings)
    assert (tta, tta_tried) == (False, {})
    assert nms_iou == 0.6 and tried == pytest.approx({0.3: 0.5, 0.4: 0.5, 0.5: 0.5, 0.6: 1.0, 0.7: 1.0})
    assert thresholds == pytest.approx([0.8])
    saved = torch.load(tmp_path / "auto.pt", weights_only=True)
    assert saved["nms_iou"] == 0.6 and saved["score_thresholds"] == pytest.approx([0.8]) and saved["epoch"] == 3
    assert "tta" not in saved
    thresholds, nms_iou, tried, _, _ = save_with_thresholds(_TwoBoxYolo(), best, tmp_path / "fixed.pt", val, gt,
                                                            nms_iou=0.5, **settings)
    assert (nms_iou, tried, thresholds) == (0.5, {}, pytest.approx([0.9]))
    assert "nms_iou" not in torch.load(tmp_path / "fixed.pt", weights_only=True)


def test_predict_settings_carry_auto_nms_iou_as_the_models_own():
    """``segdet predict`` and a served model with ``nms_iou: auto`` pass None to the detector (the model's stored
    IoU); the served model's config keeps it as null, and a number as that number."""
    from segdet.inference import settings_config, settings_from_config, settings_of
    from segdet.sections import ProposalsConfig, RcnnEvalConfig, YoloEvalConfig

    auto = settings_of("yolo", YoloEvalConfig(nms_iou="auto"))
    assert auto.nms_iou is None and settings_config("yolo", auto)["nms_iou"] is None
    assert settings_from_config("yolo", settings_config("yolo", auto)) == auto
    fixed = settings_of("rcnn", RcnnEvalConfig(nms_iou=0.4, box_voting=0.5), ProposalsConfig())
    assert (fixed.nms_iou, fixed.box_voting) == (0.4, 0.5)
    assert settings_config("rcnn", fixed)["nms_iou"] == 0.4 and settings_config("rcnn", fixed)["box_voting"] == 0.5
    assert settings_from_config("rcnn", settings_config("rcnn", fixed)) == dataclasses.replace(
        fixed, proposals=settings_config("rcnn", fixed)["proposals"])
    older = {k: v for k, v in settings_config("rcnn", fixed).items() if k != "box_voting"}  # served before voting
    assert settings_from_config("rcnn", older).box_voting == 0.0
    tta = settings_of("yolo", YoloEvalConfig(tta=True))
    assert tta.tta and settings_config("yolo", tta)["tta"] is True
    assert settings_from_config("yolo", settings_config("yolo", tta)) == tta
    assert not settings_from_config("yolo", {"score_threshold": None, "nms_iou": None, "max_detections": 100}).tta
    auto_tta = settings_of("yolo", YoloEvalConfig(tta="auto"))  # the model's own choice
    assert auto_tta.tta is None and settings_config("yolo", auto_tta)["tta"] is None
    assert settings_from_config("yolo", settings_config("yolo", auto_tta)) == auto_tta


class _BrightBoxYolo(torch.nn.Module):
    """A YOLOv1 stand-in (S=4, B=1, C=1, 64 px input) that finds the one bright rectangle of each input exactly:
    its box, in input pixels, on the cell of its centre at confidence 1 (a flipped or shrunk input moves it)."""

    input_size, B, C, S = 64, 1, 1, 4

    def forward(self, x):
        pred = torch.zeros(len(x), 4, 4, 6)
        for n, image in enumerate(x):
            ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)  # normalised red above 0.5: bright
            x1, y1, x2, y2 = xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1
            cx, cy = (x1 + x2) / 2 / 16, (y1 + y2) / 2 / 16  # in cells of 16 px
            i, j = int(cy), int(cx)
            pred[n, i, j] = torch.tensor([cx - j, cy - i, (x2 - x1) / 64, (y2 - y1) / 64, 1.0, 1.0])
        return pred


def test_yolo_tta_maps_each_flipped_and_shrunk_pass_back_to_the_image():
    """A white (20, 30, 60, 70) box left of the centre of a black 128x96 image: each of the four passes (itself,
    flipped, shrunk to 0.83 on a black border, both) finds it where it is in the image, to a pixel of the input
    (2 image pixels) and the 0.83 pass's rounding; a wrong flip would put it at x 68-108, a missed border 12 px
    off. NMS then keeps one box where the passes agree."""
    image = torch.zeros(3, 96, 128, dtype=torch.uint8)
    image[:, 30:70, 20:60] = 255
    settings = {"device": torch.device("cpu"), "min_score": 0.1, "max_detections": 100}
    every = YoloDetector(_BrightBoxYolo(), nms_iou=1.0, tta=True, **settings).detect(image)[0]  # nothing suppressed
    assert len(TTA_PASSES) == 4 and len(every["boxes"]) == 4
    for box in every["boxes"].tolist():
        assert box == pytest.approx([20.0, 30.0, 60.0, 70.0], abs=3.0)
    assert len({tuple(round(v, 3) for v in box) for box in every["boxes"].tolist()}) > 1  # four passes, not one
    one, seconds = YoloDetector(_BrightBoxYolo(), nms_iou=0.5, tta=True, **settings).detect(image)
    assert one["boxes"].tolist() == [pytest.approx([20.0, 30.0, 60.0, 70.0], abs=3.0)]
    assert one["scores"].tolist() == [1.0] and one["labels"].tolist() == [1]
    assert set(seconds) == {"preprocess", "forward", "decode"}
    plain = YoloDetector(_BrightBoxYolo(), nms_iou=1.0, **settings).detect(image)[0]
    assert plain["boxes"].tolist() == [pytest.approx([20.0, 30.0, 60.0, 70.0], abs=3.0)]


class _LeftBoxYolo(_BrightBoxYolo):
    """:class:`_BrightBoxYolo` blind to the right half of its input: a rectangle there scores 0."""

    def forward(self, x):
        pred = super().forward(x)
        pred[:, :, 2:, 4] = 0.0  # confidence of the cells of columns 2 and 3 (x >= 32 px)
        return pred


@pytest.mark.parametrize(("left", "expected"), [(False, True), (True, False)])
def test_yolo_auto_tta_is_chosen_on_val_and_stored(tmp_path, left, expected):
    """``yolo_eval.tta: auto``: a detector blind to the right half misses a box there (val AP 0) unless the flipped
    pass sees it (AP 1): auto turns TTA on and stores it. A box on the left is found either way (AP 1 both): the
    tie keeps TTA off."""
    best = tmp_path / "best.pt"
    save_checkpoint(best, model=torch.nn.Linear(1, 1), epoch=3, config={}, classes=["a"], metrics={})
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    box = (8.0, 20.0, 24.0, 40.0) if left else (40.0, 20.0, 56.0, 40.0)
    image[:, 20:40, int(box[0]):int(box[2])] = 255
    gt = {"images": [{"id": 1, "width": 64, "height": 64}], "categories": [{"id": 1, "name": "a"}],
          "annotations": [coco_annotation(1, 1, 1, box)]}
    choice = save_with_thresholds(_LeftBoxYolo(), best, tmp_path / "yolo.pt", [(image, None)], gt,
                                  device=torch.device("cpu"), min_score=0.01, nms_iou=0.5, max_detections=100, tta=None)
    assert choice.tta is expected and choice.nms_tried == {}
    assert choice.tta_tried == pytest.approx({False: 1.0 if left else 0.0, True: 1.0})
    assert torch.load(tmp_path / "yolo.pt", weights_only=True)["tta"] is expected
    assert choice.thresholds == pytest.approx([1.0])  # the one box found, at confidence 1
