"""The detector seam: loading each family from its files, and the shared evaluation loop."""

import inspect
import time

import numpy as np
import pytest
import torch

from segdet.detection.detector import run_detector
from segdet.detection.rcnn.detect import load_rcnn
from segdet.detection.rcnn.model import RegionCNN
from segdet.detection.yolo.detect import YoloDetector, load_yolo_detector
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
