"""bench/roofline.py: the machine's measured peaks and each model's achieved share, in the JSON other tools read;
bench/cache_blocks.py: its block sweeps run and mark the blocks the stages use."""

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


def test_quick_cache_blocks_bench_marks_the_blocks_the_stages_use():
    done = subprocess.run([sys.executable, "-m", "bench.cache_blocks", "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("hardware: ") and "cores" in lines[0]
    # 16 regions at 24 px and 8 images at 64 px fit their cache budgets: both run in one pass
    rows = [line for line in lines if " px " in line]
    assert len(rows) == 2 and all("one pass: " in r and r.split("one pass: ")[1].split()[1] == "*" for r in rows)
    assert "Adam fused" in done.stdout and "SGD fused" in done.stdout
