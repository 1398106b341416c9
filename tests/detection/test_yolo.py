import math

import pytest
import torch
from torchvision.ops import nms

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


def _second_is_better():
    """Like :func:`_pred`, but both predictors of cell (0, 0) overlap the object and the second one more."""
    pred = torch.zeros(1, 2, 2, 12)
    pred[0, 0, 0, 0:5] = torch.tensor([0.5, 0.6, 0.1, 0.1, 0.7])  # predictor 0: (20, 25, 30, 35)
    pred[0, 0, 0, 5:10] = torch.tensor([0.5, 0.5, 0.25, 0.36, 0.4])  # predictor 1: (12.5, 7, 37.5, 43)
    pred[0, 0, 0, 10:12] = torch.tensor([0.2, 0.6])
    return pred


def test_responsible_predictor_is_the_one_with_the_higher_iou_not_the_first():
    # object (10, 10, 40, 50), class 2, in cell (0, 0): x .5, y .6, w .3, h .4 (as above)
    target = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([2])}]
    # predictor 0 (20, 25, 30, 35) lies inside the object: IoU 100 / 1200 = 1/12;
    # predictor 1 (12.5, 7, 37.5, 43): IoU 825 / 1275 = 0.647 -> predictor 1 is responsible
    pred = _second_is_better().requires_grad_(True)
    loss, parts = YoloLoss(S=2, B=2, C=2, input_size=100)(pred, target)
    iou = 825 / 1275
    coord = 5 * ((0.5 - 0.5) ** 2 + (0.5 - 0.6) ** 2 + (0.5 - math.sqrt(0.3)) ** 2 + (0.6 - math.sqrt(0.4)) ** 2)
    assert parts["coord"] == pytest.approx(coord)
    assert parts["obj"] == pytest.approx((0.4 - iou) ** 2)
    assert parts["noobj"] == pytest.approx(0.5 * 0.7**2)  # predictor 0 is now the non-responsible one
    assert parts["class"] == pytest.approx(0.2**2 + 0.4**2)
    # had the first predictor been taken: coord 5 * (0 + 0 + (sqrt .1 - sqrt .3)^2 + (sqrt .1 - sqrt .4)^2) = 0.93
    assert parts["coord"] != pytest.approx(5 * ((math.sqrt(0.1) - math.sqrt(0.3)) ** 2
                                                + (math.sqrt(0.1) - math.sqrt(0.4)) ** 2))
    loss.backward()
    g = pred.grad[0, 0, 0]
    assert g[0:4].abs().max() == 0  # predictor 0's box is not fitted to the object ...
    assert float(g[4]) == pytest.approx(0.5 * 2 * 0.7)  # ... its confidence is pushed to 0 (noobj)
    # predictor 1's box and confidence are fitted: d/dy 5 (y - .6)^2 = 10 (.5 - .6); d/dC (C - IoU)^2
    assert g[5:10].tolist() == pytest.approx([0.0, -1.0, 10 * (0.5 - math.sqrt(0.3)) / (2 * 0.5),
                                              10 * (0.6 - math.sqrt(0.4)) / (2 * 0.6), 2 * (0.4 - iou)], abs=1e-4)


def test_responsible_predictors_differ_per_image_of_a_batch():
    # image 0: _pred (predictor 0 responsible), image 1: _second_is_better (predictor 1); the batch loss is
    # the mean of the two hand-computed single-image losses
    t = {"boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([2])}
    iou = 825 / 1275
    sq = 0.1**2 + (0.5 - math.sqrt(0.3)) ** 2 + (0.6 - math.sqrt(0.4)) ** 2
    first = {"coord": 5 * sq, "obj": (0.8 - iou) ** 2, "noobj": 0.5 * 0.3**2, "class": 0.2}
    second = {"coord": 5 * sq, "obj": (0.4 - iou) ** 2, "noobj": 0.5 * 0.7**2, "class": 0.2}
    _, parts = YoloLoss(2, 2, 2, 100)(torch.cat([_pred(), _second_is_better()]), [t, t])
    assert parts == pytest.approx({k: (first[k] + second[k]) / 2 for k in first})


def _two_in_one_cell():
    """S=2, B=2, C=2, 100 px input; cell (0, 0) predicts (12.5, 7, 37.5, 43) with predictor 0 and
    (5, 5, 25, 25) with predictor 1."""
    pred = _pred()
    pred[0, 0, 0, 5:10] = torch.tensor([0.3, 0.3, 0.2, 0.2, 0.3])
    return pred


def test_cell_objects_two_objects_of_a_class_train_two_predictors():
    # big (10, 10, 40, 50) centre (25, 30) and small (4, 4, 24, 24) centre (14, 14): both in cell (0, 0), class 2.
    # The big one picks first: IoU 825/1275 with predictor 0, 225/1375 with predictor 1 -> predictor 0.
    # The small one gets predictor 1 (IoU 361/439 with (5, 5, 25, 25)), though predictor 0 overlaps it as well.
    target = [{"boxes": torch.tensor([[4.0, 4.0, 24.0, 24.0], [10.0, 10.0, 40.0, 50.0]]), "labels": torch.tensor([2, 2])}]
    pred = _two_in_one_cell()
    big_iou, small_iou = 825 / 1275, 361 / 439
    big = (0.5 - 0.5) ** 2 + (0.5 - 0.6) ** 2 + (0.5 - math.sqrt(0.3)) ** 2 + (0.6 - math.sqrt(0.4)) ** 2
    # small: x = 14/50 = 0.28, y 0.28, w = h = 0.2
    small = 2 * (0.3 - 0.28) ** 2 + 2 * (math.sqrt(0.2) - math.sqrt(0.2)) ** 2
    _, parts = YoloLoss(2, 2, 2, 100, cell_objects=2)(pred, target)
    assert parts["coord"] == pytest.approx(5 * (big + small))
    assert parts["obj"] == pytest.approx((0.8 - big_iou) ** 2 + (0.3 - small_iou) ** 2)
    assert parts["noobj"] == 0.0  # both predictors of the cell are responsible, no other cell predicts
    assert parts["class"] == pytest.approx(0.2**2 + 0.4**2)  # counted once for the cell
    # the paper's rule (cell_objects 1) trains the big one only; predictor 1 is pushed to 0
    _, paper = YoloLoss(2, 2, 2, 100)(pred, target)
    assert paper["coord"] == pytest.approx(5 * big)
    assert paper["noobj"] == pytest.approx(0.5 * 0.3**2)


def test_cell_objects_other_class_and_third_object_stay_lost():
    # in cell (0, 0): big (class 2), then a smaller one of class 1, then a smallest of class 2: only the big and
    # the smallest train; with a third object of class 2 and B = 2, the third is dropped as well
    boxes = torch.tensor([[10.0, 10.0, 40.0, 50.0], [5.0, 5.0, 30.0, 30.0], [4.0, 4.0, 24.0, 24.0], [20, 20, 26, 26]])
    loss = YoloLoss(2, 2, 2, 100, cell_objects=2)
    img, rows, cols, gts, labels, ranks = loss.assign([{"boxes": boxes, "labels": torch.tensor([2, 1, 2, 2])}])
    assert gts == [boxes[0].tolist(), boxes[2].tolist()]
    assert (labels, ranks, rows, cols) == ([2, 2], [0, 1], [0, 0], [0, 0])
    with pytest.raises(ValueError, match="cell_objects = 3 must lie in"):
        YoloLoss(2, 2, 2, 100, cell_objects=3)


def test_loss_without_objects_is_only_noobj_and_gradients_flow():
    pred = _pred().requires_grad_(True)
    loss, parts = YoloLoss(2, 2, 2, 100)(pred, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert parts["coord"] == parts["obj"] == parts["class"] == 0.0
    assert float(loss.detach()) == pytest.approx(0.5 * (0.8**2 + 0.3**2))
    loss.backward()
    assert pred.grad[0, 0, 0, 4] == pytest.approx(0.5 * 2 * 0.8)


def test_decode_class_specific_scores():
    # the two boxes do not overlap, so NMS keeps both: suppression is tested with overlapping boxes below
    dets = decode(_pred(), B=2, input_size=100, score_threshold=0.1, nms_iou=0.5)[0]
    # predictor 0: 0.8 * (0.2, 0.6) -> 0.16 and 0.48; predictor 1: 0.3 * (0.2, 0.6) -> 0.06 (dropped), 0.18
    assert sorted(dets["scores"].tolist()) == pytest.approx([0.16, 0.18, 0.48])
    best = int(dets["scores"].argmax())
    assert dets["labels"][best] == 2
    assert dets["boxes"][best].tolist() == pytest.approx([12.5, 7.0, 37.5, 43.0])


def _overlapping():
    """S=2, B=2, C=2 at 100 px. Cell (0, 0): predictors A (12.5, 7, 37.5, 43) conf .9 and A' (15, 7, 40, 43)
    conf .6, IoU (22.5 x 36) / (900 + 900 - 810) = 810 / 990 = 0.818, class outputs (.5, 1). Cell (1, 1):
    C (65, 65, 85, 85) conf .8 and D (75, 65, 95, 85) conf .7, IoU 200 / 600 = 1/3, class outputs (1, 0)."""
    pred = torch.zeros(1, 2, 2, 12)
    pred[0, 0, 0, :10] = torch.tensor([0.5, 0.5, 0.25, 0.36, 0.9, 0.55, 0.5, 0.25, 0.36, 0.6])
    pred[0, 0, 0, 10:] = torch.tensor([0.5, 1.0])
    pred[0, 1, 1, :10] = torch.tensor([0.5, 0.5, 0.2, 0.2, 0.8, 0.7, 0.5, 0.2, 0.2, 0.7])
    pred[0, 1, 1, 10:] = torch.tensor([1.0, 0.0])
    return pred


A, A2, C_, D = [12.5, 7.0, 37.5, 43.0], [15.0, 7.0, 40.0, 43.0], [65.0, 65.0, 85.0, 85.0], [75.0, 65.0, 95.0, 85.0]


def test_decode_nms_suppresses_overlaps_within_a_class_only():
    # candidates >= 0.2: A (class 1: .45, class 2: .9), A' (class 1: .3, class 2: .6), C (class 1: .8),
    # D (class 1: .7). At NMS IoU .5: A' (IoU .818 with A) goes in both classes; C and D (IoU 1/3) both
    # stay; A of class 1 stays although A of class 2 covers it exactly (NMS is per class)
    dets = decode(_overlapping(), B=2, input_size=100, score_threshold=0.2, nms_iou=0.5)[0]
    got = [(int(c), round(float(s), 4), b) for c, s, b in zip(dets["labels"], dets["scores"], dets["boxes"].tolist(),
                                                             strict=True)]
    assert [(c, s) for c, s, _ in got] == [(2, 0.9), (1, 0.8), (1, 0.7), (1, 0.45)]  # best first
    for (_, _, box), want in zip(got, [A, C_, D, A], strict=True):
        assert box == pytest.approx(want)
    # the same candidates through torchvision's NMS, one class at a time
    boxes = torch.tensor([A, A2, A, A2, C_, D])
    scores = torch.tensor([0.45, 0.3, 0.9, 0.6, 0.8, 0.7])
    labels = torch.tensor([1, 1, 2, 2, 1, 1])
    expected = set()
    for c in (1, 2):
        idx = torch.nonzero(labels == c).flatten()
        expected |= {(c, round(float(scores[i]), 4)) for i in idx[nms(boxes[idx], scores[idx], 0.5)].tolist()}
    assert {(c, s) for c, s, _ in got} == expected
    # a stricter NMS IoU (0.3 < 1/3) now suppresses D under C
    strict = decode(_overlapping(), B=2, input_size=100, score_threshold=0.2, nms_iou=0.3)[0]
    assert strict["scores"].tolist() == pytest.approx([0.9, 0.8, 0.45])


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
