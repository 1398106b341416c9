"""bench/quality_per_minute.py: recipes parse or are refused by name, a train-small-then-large recipe switches size
when its share of the minutes says, and the val score is computed at one size for every recipe."""

import json
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from bench.quality_per_minute import Recipe, thresholded_jaccard
from tests.conftest import REPO


def _isic(root, part: str, n: int, rng: np.random.Generator) -> None:
    """``n`` photos of one dark ellipse on skin colour, with its 0/255 mask, in the ISIC layout."""
    (root / part / "images").mkdir(parents=True)
    (root / part / "masks").mkdir(parents=True)
    for i in range(n):
        rgb = np.full((80, 96, 3), (200, 160, 140), np.uint8)
        mask = np.zeros((80, 96), np.uint8)
        centre = (int(rng.integers(30, 66)), int(rng.integers(25, 55)))
        axes = (int(rng.integers(10, 25)), int(rng.integers(8, 20)))
        cv2.ellipse(mask, centre, axes, 0, 0, 360, 255, -1)
        rgb[mask > 0] = (90, 50, 40)
        cv2.imwrite(str(root / part / "images" / f"ISIC_{i:07d}.jpg"), rgb[..., ::-1])
        cv2.imwrite(str(root / part / "masks" / f"ISIC_{i:07d}_segmentation.png"), mask)


@pytest.mark.parametrize(("text", "expected"), [
    ("resnet18:96:8", Recipe("resnet18", (96,), 8, True)),
    ("unet32:64,128:16:nchw", Recipe("unet32", (64, 128), 16, False)),
])
def test_recipes_parse(text, expected):
    assert Recipe.parse(text) == expected
    assert expected.name == text


@pytest.mark.parametrize(("text", "named"), [
    ("resnet34:96:8", "available: unet32, unet64, unet128, resnet18, smp-resnet18"),
    ("resnet18:96", "expected MODEL:SIZES:BATCH[:nchw]"),
    ("resnet18:96:8:nhwc", "expected MODEL:SIZES:BATCH[:nchw]"),
    ("resnet18:100:8", "multiple of 32"),
    ("resnet18:64,96,128:8", "one or two input sizes"),
    ("resnet18:ninety:8", "must be integers"),
])
def test_bad_recipes_are_refused_with_what_is_allowed(text, named):
    with pytest.raises(ValueError, match=re.escape(named)):
        Recipe.parse(text)


class _Halves(torch.nn.Module):
    """Predicts the left half of every image as lesion, at the input's own size."""

    def forward(self, x):
        logits = torch.zeros(len(x), 2, *x.shape[-2:])
        logits[:, 1, :, : x.shape[-1] // 2] = 1.0
        logits[:, 0, :, x.shape[-1] // 2 :] = 1.0
        return logits


def test_val_score_is_taken_at_the_mask_size_from_a_smaller_prediction():
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    masks = torch.zeros(2, 64, 64, dtype=torch.long)
    masks[0, :, :32] = 1  # exactly the predicted half: IoU 1
    masks[1, :, :16] = 1  # half of the predicted half: IoU 0.5, under ISIC's 0.65 threshold, so 0
    assert thresholded_jaccard(_Halves(), images, masks) == pytest.approx(0.5)


def test_small_then_large_recipe_switches_size_and_writes_the_curves(tmp_path):
    rng = np.random.default_rng(0)
    for part, n in (("train", 12), ("val", 6)):
        _isic(tmp_path / "isic", part, n, rng)
    out = tmp_path / "q.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.quality_per_minute", "--data", str(tmp_path / "isic"), "--minutes", "0.1",
         "--every", "2", "--switch", "0.5", "--eval-size", "64", "--schedule", "cosine",
         "--recipes", "unet32:32,64:4", "unet32:64:4:nchw", "--json", str(out), "--plot", str(tmp_path / "q.png")],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert "cores" in result["hardware"] and result["eval_size"] == 64 and result["schedule"] == "cosine"
    mixed, nchw = result["results"]
    assert (mixed["recipe"], nchw["recipe"]) == ("unet32:32,64:4", "unet32:64:4:nchw")
    sizes = [c["size"] for c in mixed["curve"]]
    assert sizes[0] == 32 and sizes[-1] == 64 and sizes == sorted(sizes)  # small first, large at the end
    switched = next(c["minutes"] for c in mixed["curve"] if c["size"] == 64)
    assert switched > 0.05 * 0.99  # not before half of the 0.1 minutes
    assert set(mixed["images_per_second_by_size"]) == {"32", "64"}
    assert nchw["channels_last"] is False and {c["size"] for c in nchw["curve"]} == {64}
    for r in (mixed, nchw):
        assert r["curve"][-1]["minutes"] >= 0.1 * 0.99
        assert all(0.0 <= c["thresholded_jaccard"] <= 1.0 for c in r["curve"])
    assert (tmp_path / "q.png").stat().st_size > 0
    assert "unet32:32,64:4" in done.stdout


def test_a_bad_recipe_on_the_command_line_names_it(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bench.quality_per_minute", "--data", str(tmp_path),
                           "--recipes", "unet32:96"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "recipe 'unet32:96'" in done.stderr
