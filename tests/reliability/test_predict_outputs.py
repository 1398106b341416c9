"""``segdet predict`` never writes two outputs to one name: ``x.jpg`` (mask ``x_mask.png``) beside ``x_mask.png``
(overlay ``x_mask.png``), and one stem in two folders."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from segdet.predict import output_names
from tests.reliability.conftest import run_in

pytestmark = pytest.mark.usefixtures("own_experiment")


def test_output_names_never_collide():
    images = [Path("a/x.jpg"), Path("a/x_mask.png"), Path("b/x.jpg"), Path("x_mask_1.png")]
    assert output_names(images, "unet") == ["x", "x_mask_1", "x_1", "x_mask_1_1"]
    assert output_names(images, "yolo") == ["x", "x_mask", "x_1", "x_mask_1"]
    stems = output_names(images, "unet")
    files = [f"{s}{suffix}" for s in stems for suffix in (".png", "_mask.png")]
    assert len(set(files)) == len(files)


def test_predict_keeps_each_images_outputs_apart(workspace, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    dark, bright = np.full((40, 40, 3), 20, np.uint8), np.full((40, 40, 3), 230, np.uint8)
    cv2.imwrite(str(folder / "x.jpg"), dark)
    cv2.imwrite(str(folder / "x_mask.png"), bright)  # a mask-like name given as an input image
    out = run_in(workspace, "cli", ["predict", "unet", str(folder), "--models", str(workspace / "models"),
                                    "--out", str(tmp_path / "out")])
    assert out.rc == 0, out.stderr
    records = {Path(r["image"]).name: r for r in json.loads((tmp_path / "out" / "predictions.json").read_text())["images"]}
    assert records["x.jpg"]["overlay"] == "x.png" and records["x.jpg"]["mask"] == "x_mask.png"
    assert records["x_mask.png"]["overlay"] == "x_mask_1.png" and records["x_mask.png"]["mask"] == "x_mask_1_mask.png"
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["predictions.json", "x.png", "x_mask.png", "x_mask_1.png", "x_mask_1_mask.png"]
    # each overlay shows its own image: the dark one is dark, the bright one bright
    assert cv2.imread(str(tmp_path / "out" / "x.png")).mean() < 100
    assert cv2.imread(str(tmp_path / "out" / "x_mask_1.png")).mean() > 150
    assert set(np.unique(cv2.imread(str(tmp_path / "out" / "x_mask.png"), cv2.IMREAD_GRAYSCALE))) <= {0, 255}
