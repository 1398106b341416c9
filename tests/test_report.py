"""The summary is built from the eval JSONs (metrics and info files) only, and a missing or stale input is named."""

import json

import numpy as np
import pytest

from segdet.report import INFO_FILES, REPORT_FILES, ReportError, build_summary, read_reports

DET = {"map50": 0.5, "coco_map": 0.25, "precision": 0.8, "recall": 0.6, "score_threshold": 0.0, "images": 10,
       "ground_truth_boxes": 30, "device": "cpu", "hardware": "Test CPU, 2 cores"}
REPORTS = {
    "unet": {"dice": 0.91, "iou": 0.84, "thresholded_jaccard": 0.8, "sensitivity": 0.9, "specificity": 0.99,
             "images_per_second": 12.5, "batch_size": 4, "device": "cpu", "hardware": "Test CPU, 2 cores",
             "variant": "unet32", "input_size": 64, "trained_epochs": 3},
    "rcnn": {**DET, "seconds_per_image": 2.0, "seconds_proposals": 1.5, "seconds_warp_cnn": 0.4},
    "yolo": {**DET, "map50": 0.4, "seconds_per_image": 0.05, "fps": 20.0, "forward_fps": 25.0, "backbone": "small",
             "input_size": 224},
    "proposals": {s: {"images": 10, "recall_0.5": 0.95, "recall_0.7": 0.8, "boxes_per_image": 300.0,
                      "seconds_per_image": 1.5} for s in ("train", "val", "test")},
}


#: the keys each stage writes to its info file (the rest are its DVC metrics)
INFO = {"unet": {"device", "hardware", "variant", "images_per_second"},
        "rcnn": {"device", "hardware", "backbone", "seconds_per_image", "seconds_proposals", "seconds_warp_cnn"},
        "yolo": {"device", "hardware", "backbone", "seconds_per_image", "fps", "forward_fps"}}
SPLIT_INFO = {"seconds_per_image"}


def _write(tmp_path, reports, split=True):
    """The reports as the stages write them: metrics and info files (``split``), or all in the metrics file (as
    before the info files)."""
    for key, name in REPORT_FILES.items():
        data, info = dict(reports[key]), {}
        if split and key == "proposals":
            info = {s: {k: v for k, v in d.items() if k in SPLIT_INFO} for s, d in data.items()}
            data = {s: {k: v for k, v in d.items() if k not in SPLIT_INFO} for s, d in data.items()}
        elif split:
            info = {k: data.pop(k) for k in INFO[key] if k in data}
        (tmp_path / name).write_text(json.dumps(data))
        if split:
            (tmp_path / INFO_FILES[key]).write_text(json.dumps(info))


@pytest.mark.parametrize("split", [True, False], ids=["with-info-files", "old-layout"])
def test_summary_figures_come_from_the_reports(tmp_path, split):
    _write(tmp_path, REPORTS, split)
    summary = build_summary(read_reports(tmp_path), det_data="synthetic", seg_data="isic `x`")
    md = summary.markdown
    assert "| R-CNN (segdet) | 0.500 | 0.250 | 2.000 | 0.500 | Test CPU, 2 cores | synthetic |" in md
    assert "| YOLOv1 (segdet, small, 224 px) | 0.400 | 0.250 | 0.050 | 20.0 | Test CPU, 2 cores |" in md
    assert "**40.0x** faster" in md and "(the papers: 2115x)" in md
    assert "| unet32 at 64 px, 3 epochs | 0.910 | 0.840 | 0.800 |" in md
    assert "| test | 10 | 0.950 | 0.800 | 300 | 1.500 |" in md
    assert summary.metrics["yolo_speedup"] == pytest.approx(40.0)
    assert summary.metrics["rcnn_map50"] == 0.5 and summary.metrics["unet_dice"] == 0.91
    assert "forward pass alone: 25.0 FPS" in md  # yolo forward_fps, beside the end-to-end 20.0
    assert set(summary.figures) == {"detection_map.png", "detection_speed.png", "proposal_recall.png", "unet.png"}
    for image in summary.figures.values():
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    # each figure draws its own figures: another R-CNN mAP redraws the accuracy plot and no other one
    other = {k: dict(v) for k, v in REPORTS.items()}
    other["rcnn"]["map50"] = 0.2
    again = build_summary(other, det_data="synthetic", seg_data="isic `x`").figures
    changed = {name for name in again if not np.array_equal(again[name], summary.figures[name])}
    assert changed == {"detection_map.png"}
    for name in summary.figures:  # every plot is linked from the markdown
        assert f"(summary/{name})" in md


def test_missing_report_names_the_file_and_the_stage(tmp_path):
    _write(tmp_path, REPORTS)
    (tmp_path / "yolo_eval.json").unlink()
    with pytest.raises(ReportError, match=r"yolo_eval.json: missing; run its stage first"):
        read_reports(tmp_path)


def test_stale_report_names_the_missing_keys(tmp_path):
    old = {k: dict(v) for k, v in REPORTS.items()}
    del old["rcnn"]["hardware"]
    _write(tmp_path, old)
    with pytest.raises(ReportError, match=r"rcnn_eval.json with rcnn_eval_info.json: missing hardware; "
                                          r".*dvc repro --force rcnn_eval"):
        read_reports(tmp_path)


def test_metrics_without_their_info_file_name_both(tmp_path):
    _write(tmp_path, REPORTS)
    (tmp_path / "proposals_info.json").unlink()
    with pytest.raises(ReportError, match=r"proposals.json \(and no proposals_info.json beside it\): missing "
                                          r"test.seconds_per_image; .*dvc repro --force proposals"):
        read_reports(tmp_path)


def test_stage_times_table_totals_and_marks_cached_stages():
    from segdet.report import timing_lines

    lines = timing_lines({"prepare": {"seconds": 2.0, "peak_rss_mb": 310.4, "this_run": False},
                          "unet_train": {"seconds": 10.25, "peak_rss_mb": 1020.6, "this_run": True},
                          "unet_eval": {"seconds": None, "peak_rss_mb": None, "this_run": False}})
    assert "| prepare | 2.0 | 310 | cached: its last run |" in lines
    assert "| unet_train | 10.2 | 1021 | this run |" in lines
    assert "| unet_eval | - | - | no run logged |" in lines
    assert "| **all stages** | 12.2 | | 10.2 s of it in this run (the stages before this report) |" in lines
