import pickle

import pytest
import torch

from segdet.nets.unet import build_unet
from segdet.nets.weights import (
    CHECKPOINT_KEYS,
    CheckpointError,
    init_from,
    load_checkpoint,
    save_checkpoint,
    transfer_weights,
)


def test_checkpoint_round_trip_is_weights_only(tmp_path):
    m = build_unet("unet32")
    opt = torch.optim.Adam(m.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 3)
    save_checkpoint(tmp_path / "c.pt", model=m, optimizer=opt, scheduler=sched, epoch=4,
                    config={"variant": "unet32"}, classes=["background", "lesion"], metrics={"val_dice": 0.5})
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert tuple(raw) == CHECKPOINT_KEYS
    assert raw["epoch"] == 4 and raw["classes"] == ["background", "lesion"]
    m2 = build_unet("unet32")
    m2.load_state_dict(load_checkpoint(tmp_path / "c.pt")["model"])
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True))


def test_loading_something_that_is_not_a_checkpoint_fails_clearly(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a checkpoint"):
        load_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match=r"missing\.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")
    # a pickle that would run code is refused by weights_only loading
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump(print, fh)
    with pytest.raises(CheckpointError, match=r"evil\.pt: not a checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"holds a list"):
        load_checkpoint(tmp_path / "list.pt")


def test_unet32_into_unet64_reports_every_skipped_key(tmp_path):
    src, dst = build_unet("unet32"), build_unet("unet64")
    save_checkpoint(tmp_path / "u32.pt", model=src, epoch=1, config={}, classes=[], metrics={})
    report = init_from(dst, tmp_path / "u32.pt")
    keys = set(dst.state_dict())
    mismatched = {k for k, _, _ in report.mismatched}
    assert ("inc.0.weight", (32, 3, 3, 3), (64, 3, 3, 3)) in report.mismatched
    assert ("outc.weight", (2, 32, 1, 1), (2, 64, 1, 1)) in report.mismatched
    # every key is accounted for: loaded (same shape, e.g. outc.bias) or skipped with its shapes
    assert set(report.loaded) | mismatched | set(report.missing) == keys
    assert "outc.bias" in report.loaded and not report.unexpected
    assert torch.equal(dst.state_dict()["outc.bias"], src.state_dict()["outc.bias"])
    assert f"{len(report.mismatched)} skipped (shape differs)" in report.summary()


def test_transfer_reports_missing_and_unexpected_and_loads_matching():
    dst = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    state = {"0.weight": torch.ones(3, 2), "0.bias": torch.ones(5), "9.weight": torch.ones(1)}
    report = transfer_weights(dst, state, "hand-made")
    assert report.loaded == ["0.weight"]
    assert report.mismatched == [("0.bias", (5,), (3,))]
    assert report.missing == ["1.bias", "1.weight"]
    assert report.unexpected == ["9.weight"]
    assert torch.equal(dst[0].weight, torch.ones(3, 2))


def test_init_from_a_file_of_another_network_fails_when_nothing_fits(tmp_path):
    torch.save({"conv.weight": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no tensor fits this model"):
        init_from(build_unet("unet32"), tmp_path / "other.pt")
