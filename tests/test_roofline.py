"""bench/roofline.py: the machine's measured peaks and each model's achieved share, in the JSON other tools read."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_quick_roofline_writes_the_documented_json(tmp_path):
    out = tmp_path / "roofline.json"
    done = subprocess.run([sys.executable, "-m", "bench.roofline", "--quick", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert "cores" in result["hardware"] and {"matmul", "conv"} <= set(result["peak_gflops"])
    peaks = result["peak_gflops"]
    models = result["models"]
    assert {m["mode"] for m in models} == {"train", "infer"}
    for family in ("unet", "yolo", "rcnn"):
        assert any(family in m["name"] for m in models), family
    for m in models:  # the share of the peak of the precision the case ran in
        suffix = "" if m["precision"] == "float32" else "_" + m["precision"]
        assert m["share"] == pytest.approx(m["gflops"] / max(peaks["matmul" + suffix], peaks["conv" + suffix]))
        assert m["gflops"] == pytest.approx(m["gflop"] / m["seconds"])
    # a training step counts forward and backward: about three forward passes of the same batch
    unet = {m["mode"]: m for m in models if m["name"] == "unet32" and m["precision"] == "float32"}
    assert 2.5 < unet["train"]["gflop"] / unet["infer"]["gflop"] < 3.5
    assert "of the float32 peak" in done.stdout and "peak GFLOP/s: matmul" in done.stdout
