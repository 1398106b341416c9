import math

import pytest
import torch

from segdet.detection.yolo.decode import decode
from segdet.detection.yolo.loss import YoloLoss
from segdet.nets.yolo import YOLOv1


def _pred():
    """S=2, B=2, C=2; only cell (row 0, col 0) predicts something."""
    pred = torch.zeros(1, 2, 2, 12)
    pred[0, 0, 0, 0:5] = torch.tensor([0.5, 0.5, 0.25, 0.36, 0.8])  # predictor 0
    pred[0, 0, 0, 5:10] = torch.tensor([0.1, 0.1, 0.1, 0.1, 0.3])  # predictor 1
    pred[0, 0, 0, 10:12] = torch.tensor([0.2, 0.6])  # class probabilities
    return pred


def test_loss_matches_hand_computed_value():
    # object (10, 10, 40, 50) of class 2 in a 100 px input: centre (25, 30) -> cell (0, 0), x 0.5, y 0.6, w .3, h .4
    target = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([2])}]
    loss, parts = YoloLoss(S=2, B=2, C=2, input_size=100)(_pred(), target)
    # predictor 0 is (12.5, 7, 37.5, 43): IoU 825 / 1275 with the object; predictor 1 does not overlap it
    iou = 825 / 1275
    coord = 5 * (0 + 0.1**2 + (0.5 - math.sqrt(0.3)) ** 2 + (0.6 - math.sqrt(0.4)) ** 2)
    assert parts["coord"] == pytest.approx(coord)
    assert parts["obj"] == pytest.approx((0.8 - iou) ** 2)
    assert parts["noobj"] == pytest.approx(0.5 * 0.3**2)  # the non-responsible predictor of the object's cell
    assert parts["class"] == pytest.approx(0.2**2 + 0.4**2)
    assert float(loss) == pytest.approx(coord + (0.8 - iou) ** 2 + 0.045 + 0.2)


def test_loss_without_objects_is_only_noobj_and_gradients_flow():
    pred = _pred().requires_grad_(True)
    loss, parts = YoloLoss(2, 2, 2, 100)(pred, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert parts["coord"] == parts["obj"] == parts["class"] == 0.0
    assert float(loss) == pytest.approx(0.5 * (0.8**2 + 0.3**2))
    loss.backward()
    assert pred.grad[0, 0, 0, 4] == pytest.approx(0.5 * 2 * 0.8)


def test_decode_class_specific_scores_and_nms():
    dets = decode(_pred(), B=2, input_size=100, score_threshold=0.1, nms_iou=0.5)[0]
    # predictor 0: 0.8 * (0.2, 0.6) -> 0.16 and 0.48; predictor 1: 0.3 * (0.2, 0.6) -> 0.06 (dropped), 0.18
    assert sorted(dets["scores"].tolist()) == pytest.approx([0.16, 0.18, 0.48])
    best = int(dets["scores"].argmax())
    assert dets["labels"][best] == 2
    assert dets["boxes"][best].tolist() == pytest.approx([12.5, 7.0, 37.5, 43.0])


def test_decode_clamps_confidence_and_class_outputs_to_probabilities():
    # the linear outputs of an empty cell: confidence -0.2 and class -1.5 would multiply to +0.30, above
    # the 0.2 operating threshold; as probabilities (clamped to [0, 1]) they score 0
    pred = torch.zeros(1, 2, 2, 12)
    pred[0, 1, 1, 0:5] = torch.tensor([0.5, 0.5, 0.2, 0.2, -0.2])
    pred[0, 1, 1, 10:12] = torch.tensor([-1.5, 0.1])
    assert decode(pred, B=2, input_size=100, score_threshold=0.2, nms_iou=0.5)[0]["scores"].numel() == 0
    # outputs above 1 count as certainty: confidence 1.3 and class 0.9 score 0.9, not 1.17
    pred[0, 1, 1, 4] = 1.3
    pred[0, 1, 1, 10:12] = torch.tensor([0.9, 2.0])
    dets = decode(pred, B=2, input_size=100, score_threshold=0.2, nms_iou=0.5)[0]
    assert sorted(dets["scores"].tolist()) == pytest.approx([0.9, 1.0])


@pytest.mark.parametrize(("backbone", "size"), [("darknet24", 448), ("vgg16", 448), ("resnet18", 448), ("small", 224)])
def test_paper_output_shape_7x7x30_for_voc(backbone, size):
    model = YOLOv1(backbone, num_classes=20, boxes_per_cell=2, input_size=size, head_channels=64, hidden=64).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, size, size))
    assert out.shape == (1, 7, 7, 30)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.head.modules())


def test_invalid_input_size_names_valid_ones():
    with pytest.raises(ValueError, match="input_size 300 is not a multiple of 64"):
        YOLOv1("darknet24", input_size=300)


def test_conv_head_predicts_each_cell_from_its_own_features():
    model = YOLOv1("small", num_classes=20, input_size=224, head_channels=32, hidden=16, head="conv").eval()
    feats = torch.randn(1, 32, 7, 7)
    with torch.no_grad():
        out = model.fc(feats).permute(0, 2, 3, 1)
        moved = feats.clone()
        moved[0, :, 3, 4] += 1.0  # change one cell's features
        changed = (model.fc(moved).permute(0, 2, 3, 1) - out).abs().sum(-1)[0]
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 7, 7, 30)
    assert changed[3, 4] > 0 and changed.sum() == changed[3, 4]
    fc = YOLOv1("small", num_classes=20, input_size=224, head_channels=32, hidden=16, head="fc")
    assert [n for n, _ in fc.named_parameters()][-1] == "fc.4.bias"  # the paper's two fully connected layers
    with pytest.raises(ValueError, match="Wrong YOLOv1 head 'mlp'. Available options are: fc, conv"):
        YOLOv1("small", head="mlp")


def test_freeze_backbone_keeps_the_first_convolutions_and_their_norms_fixed():
    model = YOLOv1("small", num_classes=5, input_size=64, head_channels=16, hidden=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = model.freeze_backbone(3)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.features if isinstance(m, torch.nn.BatchNorm2d)]
    assert frozen == sum(p.numel() for m in convs[:3] + norms[:3] for p in m.parameters())
    model.train()
    assert not any(m.training for m in norms[:3]) and all(m.training for m in norms[3:])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(2, 3, 64, 64)).square().sum().backward()
    opt.step()
    after = model.state_dict()
    assert torch.equal(after["features.0.weight"], before["features.0.weight"])
    assert torch.equal(after["features.1.running_mean"], before["features.1.running_mean"])  # stored statistics
    assert not torch.equal(after["features.12.weight"], before["features.12.weight"])  # 4th conv trains
    with pytest.raises(ValueError, match="more than the 5 convolutions"):
        YOLOv1("small", num_classes=5, input_size=64).freeze_backbone(6)
