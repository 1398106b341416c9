"""The shared training loop: the exponential moving average of the weights (``ema_decay``) and the precision it
trains in (``base.cpu_bf16``)."""

import logging

import pytest
import torch
from torch import nn

from segdet.engine import fit
from segdet.nets.weights import load_checkpoint

CPU = torch.device("cpu")


def _fit(run_dir, epochs, ema_decay=0.0, seen=None, **kw):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x, y = torch.randn(4, 3), torch.randn(4, 1)

    def evaluate(m):
        if seen is not None:
            seen.append(m.weight.detach().clone())
        return {"val_loss": float(((m(x) - y) ** 2).mean().detach())}

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(model, optimizer, None, [(x, y)], step=lambda m, b, d: (((m(b[0]) - b[1]) ** 2).mean(), {}),
        evaluate=evaluate, epochs=epochs, device=CPU, run_dir=run_dir, monitor="val_loss", mode="min",
        progress=False, ema_decay=ema_decay, **kw)
    return load_checkpoint(run_dir / "last.pt")


def test_ema_averages_the_steps_and_is_what_is_evaluated_and_saved(tmp_path):
    w1 = _fit(tmp_path / "one", 1)["model"]["weight"]  # the weights after each plain step
    w2 = _fit(tmp_path / "two", 2)["model"]["weight"]
    seen = []
    ck = _fit(tmp_path / "ema", 2, ema_decay=0.25, seen=seen)
    assert torch.allclose(ck["train_model"]["weight"], w2)  # the average does not change the training
    expected = 0.25 * w1 + 0.75 * w2  # the first step copies, then ema = d * ema + (1 - d) * w
    assert torch.allclose(ck["model"]["weight"], expected)
    assert torch.allclose(seen[-1], expected)  # evaluate() saw the average
    assert ck["ema_updates"] == 2
    best = load_checkpoint(tmp_path / "ema" / "best.pt")
    assert "train_model" in best and best["metrics"]["monitor"] == "val_loss"


def test_without_ema_checkpoints_hold_only_the_trained_weights(tmp_path):
    ck = _fit(tmp_path / "plain", 2)
    assert "train_model" not in ck and "ema_updates" not in ck


def test_make_optimizer_is_fused_on_cpu_with_the_textbook_update():
    import pytest

    from segdet.engine import make_optimizer

    w = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = make_optimizer("adam", [w], lr=0.1)
    assert opt.defaults["fused"] is True
    for _ in range(2):  # Adam's first steps by hand: with a constant gradient g, m / sqrt(v) = sign(g) each step
        w.grad = torch.tensor([0.5, -4.0])
        opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([1.0 - 0.2, -2.0 + 0.2]), rtol=0, atol=1e-6)
    v = nn.Parameter(torch.tensor([1.0]))
    sgd = make_optimizer("sgd", [v], lr=0.1, momentum=0.9, weight_decay=0.5)
    for _ in range(2):  # buf = 1.5 then 0.9 * 1.5 + (1 + 0.5 * 0.85) = 2.775; w = 1 - 0.15 = 0.85 then 0.85 - 0.2775
        v.grad = torch.tensor([1.0])
        sgd.step()
    assert sgd.defaults["fused"] is True
    torch.testing.assert_close(v.detach(), torch.tensor([0.85 - 0.2775]), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="Available options are: adam, sgd"):
        make_optimizer("rmsprop", [v], lr=0.1)


_CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
model name\t: {model}
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw {extra}

"""


def test_cpu_bf16_trains_in_bfloat16_only_where_the_cpu_has_native_bfloat16(monkeypatch, tmp_path, caplog):
    """``base.cpu_bf16`` autocasts to bfloat16 on AMX (Intel Xeon 4th gen) and AVX512-BF16 (AMD EPYC Zen 4/5) and
    stays float32 on an AVX-512 CPU without either, where oneDNN would emulate bfloat16 more slowly than float32."""
    from segdet import runtime
    from segdet.engine import autocast_dtype

    cases = {"Intel(R) Xeon(R) Platinum 8481C": ("amx_bf16 amx_tile avx512_bf16", "AMX", torch.bfloat16),
             "AMD EPYC 9B14": ("avx512_bf16 avx512_vnni", "AVX512-BF16", torch.bfloat16),
             "Intel(R) Xeon(R) Platinum 8259CL": ("avx512_vnni", None, None)}
    for k, (model, (extra, units, dtype)) in enumerate(cases.items()):
        info = tmp_path / f"cpuinfo{k}"
        info.write_text(_CPUINFO.format(vendor="x", model=model, extra=extra) * 2)
        monkeypatch.setattr(runtime, "CPUINFO", str(info))
        assert runtime.cpu_bf16_units() == units, model
        assert autocast_dtype(CPU, cpu_bf16=True) == dtype, model
        assert autocast_dtype(CPU, cpu_bf16=False) is None  # float32 unless asked
        assert runtime.cpu_has_amx() == (units == "AMX")
    monkeypatch.setattr(runtime, "CPUINFO", str(tmp_path / "none"))  # not Linux: no flags, float32
    assert runtime.cpu_flags() == set() and autocast_dtype(CPU, cpu_bf16=True) is None
    # training says so when the parameter cannot act here: without flags (above) it cannot tell ...
    with caplog.at_level(logging.INFO, logger="segdet.engine"):
        _fit(tmp_path / "fp32", 1, amp=True, cpu_bf16=True)
    assert "base.cpu_bf16 = true has no effect here: this system shows no CPU flags" in caplog.text
    caplog.clear()
    monkeypatch.setattr(runtime, "CPUINFO", str(tmp_path / "cpuinfo2"))  # ... on the AVX-512 Xeon without bf16
    with caplog.at_level(logging.INFO, logger="segdet.engine"):
        _fit(tmp_path / "fp32b", 1, amp=True, cpu_bf16=True)
    assert "no effect here: this CPU has neither AMX nor AVX512-BF16" in caplog.text
    assert "bfloat16 autocast" not in caplog.text
    caplog.clear()
    info = tmp_path / "cpuinfo1"  # ... and trains in bfloat16 where it can
    monkeypatch.setattr(runtime, "CPUINFO", str(info))
    with caplog.at_level(logging.INFO, logger="segdet.engine"):
        _fit(tmp_path / "bf16", 1, amp=True, cpu_bf16=True)
    assert "mixed precision: bfloat16 autocast on cpu" in caplog.text and "no effect" not in caplog.text


def test_resume_checks_compare_what_the_checkpoint_recorded(tmp_path):
    """A checkpoint trained with another variant stops the resume with a message naming both values; a key older
    checkpoints lack takes its old meaning (``legacy``); a file without a training config (another network's) is
    not judged here."""
    from segdet.engine import check_resumable
    from segdet.stage import UserError

    path = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "config": {"variant": "unet32", "upsample": "transpose"}}, path)
    check_resumable(str(path), "unet_train", {"variant": "unet32", "upsample": "transpose"})
    with pytest.raises(UserError, match="was trained with variant unet32 but unet_train.variant is unet64"):
        check_resumable(str(path), "unet_train", {"variant": "unet64", "upsample": "transpose"})
    torch.save({"model": {}, "config": {"variant": "unet32"}}, path)  # from before unet_train.upsample
    with pytest.raises(UserError, match="trained with upsample bilinear but unet_train.upsample is transpose"):
        check_resumable(str(path), "unet_train", {"variant": "unet32", "upsample": "transpose"},
                        legacy={"upsample": "bilinear"})
    torch.save({"model": {}}, path)  # no config: nothing recorded to compare
    check_resumable(str(path), "unet_train", {"variant": "unet32", "upsample": "transpose"},
                    legacy={"upsample": "bilinear"})
    check_resumable(None, "unet_train", {"variant": "unet64"})  # nothing to resume
