"""UNet training: resume equivalence, transfer, non-finite loss stop, evaluation outputs."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image

from segdet.data.pairs import Pair, write_manifest
from segdet.data.synthetic.isic import generate_isic
from segdet.engine import NonFiniteLossError, fit
from segdet.nets.weights import load_checkpoint
from segdet.sections import UnetTrainConfig
from segdet.segmentation.evaluate import evaluate_unet
from segdet.segmentation.train import train_unet

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    generate_isic(root / "isic", num_images=10, image_size=40, seed=3, progress=False)
    pairs = [Pair(f"isic/images/ISIC_{i:07d}.jpg", f"isic/masks/ISIC_{i:07d}_segmentation.png", "")
             for i in range(10)]
    write_manifest(root / "train.txt", pairs[:6])
    write_manifest(root / "val.txt", pairs[6:8])
    write_manifest(root / "test.txt", pairs[8:])
    return root


def _cfg(**kw):
    base = dict(input_size=32, batch_size=4, epochs=3, step_size=2, augment=True, lr=0.01)
    return UnetTrainConfig(**{**base, **kw})


def _train(tiny, run_dir, cfg, seed=0):
    return train_unet(cfg, train_manifest=tiny / "train.txt", val_manifest=tiny / "val.txt", root=tiny,
                      device=CPU, run_dir=run_dir, seed=seed, progress=False)


def test_resumed_run_ends_with_the_same_weights_as_an_uninterrupted_one(tiny, tmp_path):
    straight, r1 = _train(tiny, tmp_path / "a", _cfg())
    _train(tiny, tmp_path / "b", _cfg(epochs=2))  # "killed" after epoch 2
    resumed, r2 = _train(tiny, tmp_path / "b", _cfg(weights=str(tmp_path / "b" / "last.pt")))
    last_a = load_checkpoint(tmp_path / "a" / "last.pt")
    last_b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert last_a["epoch"] == last_b["epoch"] == 3
    for k, v in last_a["model"].items():
        assert torch.equal(v, last_b["model"][k]), k
    assert last_a["optimizer"]["param_groups"][0]["lr"] == last_b["optimizer"]["param_groups"][0]["lr"] == 0.001
    # the history survives the resume, so the per-epoch CSV is complete
    assert [row["epoch"] for row in r2.history] == [1, 2, 3]
    assert [row["val_dice"] for row in r2.history] == pytest.approx([row["val_dice"] for row in r1.history])
    assert r1.best_epoch == r2.best_epoch


def test_different_seed_gives_different_weights(tiny, tmp_path):
    _train(tiny, tmp_path / "a", _cfg(epochs=1), seed=0)
    _train(tiny, tmp_path / "b", _cfg(epochs=1), seed=1)
    a, b = (load_checkpoint(tmp_path / x / "last.pt")["model"]["inc.0.weight"] for x in "ab")
    assert not torch.equal(a, b)


def test_history_has_the_documented_columns_and_checkpoint_contract(tiny, tmp_path):
    _, result = _train(tiny, tmp_path, _cfg(epochs=2))
    row = result.history[-1]
    for key in ("epoch", "train_loss", "train_ce", "train_dice", "val_loss", "val_dice", "val_iou", "lr", "seconds"):
        assert key in row
    assert result.history[0]["lr"] == 0.01 and result.history[1]["lr"] == 0.01  # StepLR(2): decays after epoch 2
    ckpt = torch.load(result.best_checkpoint, weights_only=True)
    assert ckpt["config"]["variant"] == "unet32" and ckpt["classes"] == ["background", "lesion"]
    assert ckpt["epoch"] == result.best_epoch and ckpt["metrics"]["best_value"] == pytest.approx(result.best_value)


def test_init_from_another_variant_reports_transfer(tiny, tmp_path):
    _train(tiny, tmp_path / "u32", _cfg(epochs=1))
    reports = []
    model, _ = train_unet(_cfg(variant="unet64", epochs=1, init_from=str(tmp_path / "u32" / "best.pt")),
                          train_manifest=tiny / "train.txt", val_manifest=tiny / "val.txt", root=tiny, device=CPU,
                          run_dir=tmp_path / "u64", on_transfer=reports.append, progress=False)
    [report] = reports
    assert report.mismatched and "outc.bias" in report.loaded
    assert model.base_channel == 64


def test_non_finite_loss_stops_with_a_clear_message(tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = [(torch.ones(2, 2), torch.ones(2, 1))] * 3

    def step(m, batch, device):
        x, _ = batch
        return m(x).sum() * math.inf, {}

    with pytest.raises(NonFiniteLossError, match=r"loss became (-?inf|nan) at epoch 1, batch 1; training stopped"):
        fit(model, opt, None, loader, step=step, evaluate=lambda m: {"v": 0.0}, epochs=2, device=CPU,
            run_dir=tmp_path, monitor="v", progress=False)
    assert not (tmp_path / "last.pt").exists()


def test_evaluation_writes_full_size_0_255_masks_named_like_labels(tiny, tmp_path):
    model, _ = _train(tiny, tmp_path / "run", _cfg(epochs=1))
    result = evaluate_unet(model, tiny / "test.txt", tiny, input_size=32, device=CPU, batch_size=2,
                           pred_dir=tmp_path / "pred", progress=False)
    assert len(result.per_image) == 2
    for label in result.per_image["label"]:
        name = label.split("/")[-1]
        pred = np.asarray(Image.open(tmp_path / "pred" / name))
        assert pred.shape == (40, 40) and set(np.unique(pred)) <= {0, 255}
    for k in ("dice", "iou", "thresholded_jaccard", "pixel_accuracy", "sensitivity", "specificity"):
        assert 0.0 <= result.summary[k] <= 1.0
        assert result.summary[k] == pytest.approx(result.per_image[k].mean())
    assert result.summary["images_per_second"] > 0 and result.summary["batch_size"] == 2


def test_config_dataclass_round_trips_through_checkpoint_config(tiny, tmp_path):
    cfg = _cfg(epochs=1)
    _train(tiny, tmp_path, cfg)
    assert UnetTrainConfig(**load_checkpoint(tmp_path / "last.pt")["config"]) == dataclasses.replace(cfg)
