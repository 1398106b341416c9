"""UNet training: resume equivalence, transfer, non-finite loss stop, evaluation outputs."""

import dataclasses
import math
import time

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, recall_score

from segdet.data.pairs import Pair, read_manifest, write_manifest
from segdet.data.synthetic.isic import generate_isic
from segdet.engine import NonFiniteLossError, fit
from segdet.nets.weights import load_checkpoint
from segdet.sections import UnetTrainConfig
from segdet.segmentation.evaluate import evaluate_unet, load_unet
from segdet.segmentation.train import train_unet
from segdet.stage import UserError

CPU = torch.device("cpu")


def _lesion_manifests(root, image_size: int, train: int, val: int, test: int):
    """Synthetic lesions in ``root/isic`` and ``train.txt``, ``val.txt``, ``test.txt`` listing them in order."""
    n = train + val + test
    generate_isic(root / "isic", num_images=n, image_size=image_size, seed=3, progress=False)
    pairs = [Pair(f"isic/images/ISIC_{i:07d}.jpg", f"isic/masks/ISIC_{i:07d}_segmentation.png", "") for i in range(n)]
    write_manifest(root / "train.txt", pairs[:train])
    write_manifest(root / "val.txt", pairs[train:train + val])
    write_manifest(root / "test.txt", pairs[train + val:])
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _lesion_manifests(tmp_path_factory.mktemp("seg"), 40, 6, 2, 2)


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
    assert list(row) == ["epoch", "train_loss", "train_ce", "train_dice", "val_loss", "val_dice", "val_iou", "lr",
                         "seconds"]
    assert [r["epoch"] for r in result.history] == [1, 2]
    # the loss is ce + dice, each a sample-weighted mean over the epoch: the parts add up to the loss
    for r in result.history:
        assert r["train_loss"] == pytest.approx(r["train_ce"] + r["train_dice"])
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


def test_resnet18_variant_trains_resumes_and_evaluates_from_its_checkpoint(tiny, tmp_path):
    # the checkpoint names its variant, so unet_eval rebuilds the ResNet-18 UNet and gets the same masks as the
    # model that trained; a resume refuses a checkpoint of another variant
    model, result = _train(tiny, tmp_path / "r18", _cfg(variant="resnet18", epochs=1))
    ckpt = load_checkpoint(tmp_path / "r18" / "best.pt")
    assert ckpt["config"]["variant"] == "resnet18"
    loaded, _ = load_unet(ckpt)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x).argmax(1), model.eval()(x).argmax(1))
    with pytest.raises(UserError, match="variant"):
        _train(tiny, tmp_path / "u32", _cfg(epochs=2, weights=str(tmp_path / "r18" / "last.pt")))


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
    assert result.per_image["label"].tolist() == [p.label for p in read_manifest(tiny / "test.txt")]
    # every metric, per image and averaged, recomputed by scikit-learn from the PNG written and the label file
    expected = []
    for label in result.per_image["label"]:
        png = np.asarray(Image.open(tmp_path / "pred" / label.split("/")[-1]))
        assert png.shape == (40, 40) and set(np.unique(png)) <= {0, 255}
        p, t = png.ravel() > 0, np.asarray(Image.open(tiny / label)).ravel() > 0
        iou = jaccard_score(t, p, zero_division=1.0)
        expected.append({"dice": f1_score(t, p, zero_division=1.0), "iou": iou,
                         "thresholded_jaccard": iou if iou >= 0.65 else 0.0, "pixel_accuracy": accuracy_score(t, p),
                         "sensitivity": recall_score(t, p, zero_division=1.0),
                         "specificity": recall_score(t, p, pos_label=False, zero_division=1.0)})
    for k in expected[0]:
        assert result.per_image[k].tolist() == pytest.approx([e[k] for e in expected]), k
        assert result.summary[k] == pytest.approx(np.mean([e[k] for e in expected])), k
    assert result.summary["images"] == 2 and result.summary["batch_size"] == 2


class _Slow(torch.nn.Module):
    """The model, 50 ms slower per forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        time.sleep(0.05)
        return self.model(x)


def test_throughput_times_the_forward_pass(tiny, tmp_path):
    model, _ = _train(tiny, tmp_path / "run", _cfg(epochs=1))
    # 2 images, batch 1: two forward passes of >= 50 ms each inside the timed part, and nothing outside the
    # call: 2 / wall <= images_per_second <= 2 / 0.1
    start = time.perf_counter()
    result = evaluate_unet(_Slow(model), tiny / "test.txt", tiny, input_size=32, device=CPU, batch_size=1,
                           progress=False)
    wall = time.perf_counter() - start
    assert 2 / wall <= result.summary["images_per_second"] <= 2 / 0.1


@pytest.fixture(scope="module")
def lesions(tmp_path_factory):
    """60 synthetic 32 x 32 lesion images: 48 to train on, 4 to validate, 8 held out."""
    return _lesion_manifests(tmp_path_factory.mktemp("lesions"), 32, 48, 4, 8)


def test_trained_unet_beats_the_chance_baselines_on_held_out_images(lesions, tmp_path):
    cfg = UnetTrainConfig(input_size=32, batch_size=4, epochs=4, step_size=100, augment=False, lr=0.001)
    model, _ = train_unet(cfg, train_manifest=lesions / "train.txt", val_manifest=lesions / "val.txt", root=lesions,
                          device=CPU, run_dir=tmp_path, seed=0, progress=False)
    dice = evaluate_unet(model, lesions / "test.txt", lesions, input_size=32, device=CPU, batch_size=4,
                         progress=False).summary["dice"]

    def masks(manifest):
        return np.stack([np.asarray(Image.open(lesions / p.label)) > 0 for p in read_manifest(manifest)])

    truth = masks(lesions / "test.txt")
    assert truth.any(axis=(1, 2)).all()  # every held-out image has a lesion: all-background scores Dice 0

    def mean_dice(pred):
        return np.mean([f1_score(t.ravel(), p.ravel(), zero_division=1.0) for t, p in zip(truth, pred, strict=True)])

    all_lesion = mean_dice(np.ones_like(truth))  # 2 |T| / (|T| + H W): about 0.4 on these images
    prior = mean_dice(np.broadcast_to(masks(lesions / "train.txt").mean(0) >= 0.5, truth.shape))  # where lesions lie
    assert mean_dice(np.zeros_like(truth)) == 0.0
    # 48 steps of training: Dice ~0.8 (0.75 to 0.82 over seeds 0 to 2), against ~0.39 and ~0.52
    assert dice >= all_lesion + 0.2, (dice, all_lesion)
    assert dice >= prior + 0.1, (dice, prior)


def test_config_dataclass_round_trips_through_checkpoint_config(tiny, tmp_path):
    cfg = _cfg(epochs=1)
    _train(tiny, tmp_path, cfg)
    assert UnetTrainConfig(**load_checkpoint(tmp_path / "last.pt")["config"]) == dataclasses.replace(cfg)


def test_transposed_upsampling_trains_and_loads_its_checkpoint_while_old_checkpoints_stay_bilinear(tiny, tmp_path):
    model, _ = _train(tiny, tmp_path / "t", _cfg(upsample="transpose", epochs=1))
    ckpt = load_checkpoint(tmp_path / "t" / "best.pt")
    assert ckpt["config"]["upsample"] == "transpose" and "up1.up.weight" in ckpt["model"]
    loaded, _ = load_unet(ckpt)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # the trained model runs channels-last, the loaded one not: the same up to rounding
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    # a checkpoint written before unet_train.upsample existed has no such key: its decoder was bilinear
    _train(tiny, tmp_path / "b", _cfg(epochs=1))
    old = load_checkpoint(tmp_path / "b" / "best.pt")
    del old["config"]["upsample"]
    assert isinstance(load_unet(old)[0].up1.up, torch.nn.Upsample)
    with pytest.raises(UserError, match="was trained with upsample transpose but unet_train.upsample is bilinear"):
        _train(tiny, tmp_path / "b2", _cfg(epochs=2, weights=str(tmp_path / "t" / "last.pt")))
    # ... so resuming such a checkpoint with the learned up-convolutions stops with the same message
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(UserError, match="was trained with upsample bilinear but unet_train.upsample is transpose"):
        _train(tiny, tmp_path / "b3", _cfg(epochs=2, upsample="transpose", weights=str(tmp_path / "old.pt")))
