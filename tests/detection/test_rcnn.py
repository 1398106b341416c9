import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segdet.detection.rcnn.detect import RCNNDetector
from segdet.detection.rcnn.features import extract_features, iter_chunks
from segdet.detection.rcnn.model import RegionCNN, warp
from segdet.detection.rcnn.regions import RegionBatches, label_regions
from segdet.detection.rcnn.svm import load_svm, save_svm, train_svms
from segdet.nets.weights import transfer_weights
from segdet.sections import RcnnSvmConfig


def test_region_cnn_shapes_and_torchvision_names():
    for backbone, dim in (("small", 256), ("alexnet", 4096)):
        m = RegionCNN(backbone, num_classes=5).eval()
        x = torch.randn(2, 3, 64, 64)
        assert m.embed(x).shape == (2, dim) and m(x).shape == (2, 6)
    # torchvision's ImageNet AlexNet names load; only the 1000-way layer is skipped and reported
    from torchvision.models import alexnet

    report = transfer_weights(RegionCNN("alexnet", 5), alexnet(weights=None).state_dict())
    assert report.mismatched == [("classifier.6.weight", (1000, 4096), (6, 4096)), ("classifier.6.bias", (1000,), (6,))]
    assert not report.missing and not report.unexpected
    with pytest.raises(ValueError, match="Available options are: small, alexnet, vgg16"):
        RegionCNN("resnet18", 2)


def test_warp_is_one_batched_call_matching_per_box_resize():
    image = torch.arange(3 * 40 * 60, dtype=torch.float32).reshape(3, 40, 60)
    boxes = torch.tensor([[0.0, 0.0, 60.0, 40.0], [10.0, 5.0, 30.0, 25.0]])
    crops = warp(image, boxes, crop_size=20, context=0)
    assert crops.shape == (2, 3, 20, 20)
    # box 2 is exactly 20 x 20 pixels: warped without context it is the pixels themselves
    assert torch.allclose(crops[1], image[:, 5:25, 10:30], atol=1e-3)
    # the whole image resized to 20 x 20 matches an area-style bilinear downscale on average
    ref = F.interpolate(image[None], size=(20, 20), mode="area")[0]
    assert torch.allclose(crops[0].mean(), ref.mean(), rtol=1e-3)
    # context pads with zeros (the normalised image mean) outside the image
    padded = warp(torch.ones(3, 40, 60), torch.tensor([[0.0, 0.0, 60.0, 40.0]]), crop_size=20, context=2)
    assert padded[0, :, 0, 0].abs().max() < 0.5 and padded[0, :, 10, 10].min() > 0.99


def test_label_regions_hand_computed():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 12.0], [20.0, 20.0, 40.0, 30.0], [50.0, 50.0, 60.0, 60.0]])
    out = label_regions(boxes, gt, torch.tensor([2, 1]), num_classes=2)
    assert out["iou"].tolist() == pytest.approx([100 / 120, 0.5, 0.0])
    assert out["label"].tolist() == [2, 1, 0]
    assert out["iou_class"].flatten().tolist() == pytest.approx([0.0, 100 / 120, 0.5, 0.0, 0.0, 0.0])
    assert out["gt_box"][1].tolist() == [20.0, 20.0, 30.0, 30.0]


def test_region_batches_hold_32_positives_and_96_background():
    image = torch.zeros(3, 50, 50, dtype=torch.uint8)
    regions = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 40.0, 40.0], [1.0, 1.0, 9.0, 9.0]])
    labels = torch.tensor([1, 0, 2])
    batches = RegionBatches([image], [regions], [labels], fg=32, bg=96, batches=3, crop_size=16, context=2)
    out = list(batches)
    assert len(out) == 3
    crops, lab = out[0]
    assert crops.shape == (128, 3, 16, 16)
    assert int((lab > 0).sum()) == 32 and int((lab == 0).sum()) == 96
    with pytest.raises(ValueError, match="needs positive and background regions"):
        RegionBatches([image], [regions[1:2]], [labels[1:2]], fg=1, bg=1, batches=1, crop_size=16, context=2)


class _Identity(RegionCNN):
    """A 'CNN' whose features are the mean colour of the warped region (3 numbers): SVM-separable scenes."""

    def __init__(self, num_classes):
        super().__init__("small", num_classes)
        self.feature_dim = 3

    def embed(self, x):
        return x.mean(dim=(2, 3))


def _scene(rng, colours):
    """An 80 x 80 grey image with one 20 x 20 square per class, coloured by class; GT and proposals."""
    image = torch.full((3, 80, 80), 128, dtype=torch.uint8)
    gt, labels = [], []
    for c, colour in enumerate(colours, 1):
        x, y = rng.integers(0, 60, 2)
        image[:, y:y + 20, x:x + 20] = torch.tensor(colour, dtype=torch.uint8)[:, None, None]
        gt.append([x, y, x + 20, y + 20])
        labels.append(c)
    gt = torch.tensor(gt, dtype=torch.float32)
    jitter = torch.from_numpy(rng.normal(0, 1.5, (len(gt) * 6, 4)).astype(np.float32))
    props = torch.cat([gt.repeat(6, 1) + jitter, torch.tensor([[0.0, 0.0, 30.0, 30.0], [40.0, 40.0, 80.0, 80.0]])])
    return image, props.clamp(0, 80), gt, torch.tensor(labels)


def test_features_svms_and_detector_find_coloured_squares(tmp_path):
    rng = np.random.default_rng(0)
    colours = [(250, 20, 20), (20, 20, 250)]
    items = [_scene(rng, colours) for _ in range(12)]
    model = _Identity(2)
    meta = extract_features(model, iter(items), tmp_path / "f", crop_size=16, context=0, device=torch.device("cpu"),
                            chunk_images=5, progress=False)
    assert meta["images"] == 12 and meta["chunks"] == 3 and meta["dim"] == 3
    chunk = next(iter_chunks(tmp_path / "f"))
    assert chunk["features"].dtype == np.float16 and chunk["is_gt"].sum() == 10  # 5 images x 2 boxes

    settings = RcnnSvmConfig(C=1.0, rounds=1, init_negatives=50, max_negatives=200, reg_alpha=1.0)
    arrays = train_svms(tmp_path / "f", ["red", "blue"], settings, progress=False)
    assert arrays["svm_weight"].shape == (2, 3) and arrays["reg_weight"].shape == (2, 4, 3)
    assert list(arrays["positives"]) == [12, 12] and (arrays["regression_samples"] > 0).all()
    save_svm(tmp_path / "svm.npz", arrays)
    loaded = load_svm(tmp_path / "svm.npz")  # allow_pickle=False
    assert [str(c) for c in loaded["classes"]] == ["red", "blue"]

    detector = RCNNDetector(model, loaded, crop_size=16, context=0, device=torch.device("cpu"), min_score=0.0,
                            nms_iou=0.3)
    image, props, gt, labels = _scene(np.random.default_rng(99), colours)
    dets, secs = detector.detect(image, props)
    assert set(secs) == {"warp_cnn", "svm_regression", "nms"}
    assert sorted(dets["labels"].tolist()) == [1, 2]  # one detection per square after NMS
    from torchvision.ops import box_iou

    for box, lab in zip(dets["boxes"], dets["labels"], strict=True):
        assert box_iou(box[None], gt[lab - 1][None]).item() > 0.5
