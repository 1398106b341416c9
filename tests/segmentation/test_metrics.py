import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, jaccard_score

from segdet.segmentation.losses import SegLoss, soft_dice_loss
from segdet.segmentation.metrics import scores


def test_hand_computed_scores():
    # 4x4: truth = left half (8 px); prediction = left 3 columns (12 px) -> TP 8, FP 4, FN 0, TN 4
    truth = torch.zeros(1, 4, 4, dtype=torch.bool)
    truth[:, :, :2] = True
    pred = torch.zeros(1, 4, 4, dtype=torch.bool)
    pred[:, :, :3] = True
    s = {k: float(v[0]) for k, v in scores(pred, truth).items()}
    assert s["dice"] == pytest.approx(16 / 20)
    assert s["iou"] == pytest.approx(8 / 12)
    assert s["thresholded_jaccard"] == pytest.approx(8 / 12)  # 0.667 >= 0.65 keeps its value
    assert s["pixel_accuracy"] == pytest.approx(12 / 16)
    assert s["sensitivity"] == 1.0
    assert s["specificity"] == pytest.approx(4 / 8)


def test_thresholded_jaccard_zeroes_images_below_065():
    truth = torch.zeros(1, 4, 4, dtype=torch.bool)
    truth[:, :, :2] = True
    pred = torch.zeros(1, 4, 4, dtype=torch.bool)
    pred[:, :, :4] = True  # IoU 8/16 = 0.5
    s = scores(pred, truth)
    assert float(s["iou"][0]) == 0.5 and float(s["thresholded_jaccard"][0]) == 0.0


def test_empty_truth_and_empty_prediction_is_perfect():
    z = torch.zeros(1, 3, 3, dtype=torch.bool)
    s = scores(z, z)
    assert float(s["dice"][0]) == float(s["iou"][0]) == float(s["sensitivity"][0]) == 1.0


def test_matches_scikit_learn_per_image():
    rng = np.random.default_rng(0)
    pred = torch.from_numpy(rng.random((5, 9, 7)) > 0.5)
    truth = torch.from_numpy(rng.random((5, 9, 7)) > 0.4)
    s = scores(pred, truth)
    for i in range(5):
        p, t = pred[i].flatten().numpy(), truth[i].flatten().numpy()
        assert float(s["dice"][i]) == pytest.approx(f1_score(t, p))
        assert float(s["iou"][i]) == pytest.approx(jaccard_score(t, p))


def test_losses():
    target = torch.zeros(1, 4, 4, dtype=torch.int64)
    target[:, 1:3, 1:3] = 1
    perfect = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float() * 40 - 20
    assert float(soft_dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    wrong = -perfect
    assert float(soft_dice_loss(wrong, target)) > 0.7
    logits = torch.randn(2, 2, 4, 4)
    loss, parts = SegLoss("ce+dice")(logits, target.expand(2, 4, 4))
    assert parts["ce"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, target.expand(2, 4, 4))))
    assert float(loss) == pytest.approx(parts["ce"] + parts["dice"])
    with pytest.raises(ValueError, match="Available options are: ce, dice, ce\\+dice"):
        SegLoss("focal")


def test_ce_loss_is_cross_entropy_alone():
    logits, target = torch.randn(2, 2, 4, 4), torch.randint(0, 2, (2, 4, 4))
    loss, parts = SegLoss("ce")(logits, target)
    assert set(parts) == {"ce"} and float(loss) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, target)))


def test_dice_loss_is_soft_dice_alone():
    logits, target = torch.randn(2, 2, 4, 4), torch.randint(0, 2, (2, 4, 4))
    loss, parts = SegLoss("dice")(logits, target)
    assert set(parts) == {"dice"}
    assert float(loss) == pytest.approx(float(soft_dice_loss(logits, target)))
