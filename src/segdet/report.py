"""The ``report`` stage's summary: R-CNN against YOLOv1 (accuracy and speed, beside the papers' figures),
the UNet results and the proposal recall, as ``reports/summary.md`` and comparison plots.

Every measured figure is read from the eval stages' JSON files (``reports/{unet,rcnn,yolo}_eval.json``,
``reports/proposals.json``: the DVC metrics) and their info files (``reports/{unet,rcnn,yolo}_eval_info.json``,
``reports/proposals_info.json``: device, hardware, model names, timings); nothing is recomputed here, so the
summary always matches them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segdet.draw import figure_image
from segdet.stage import UserError

#: published figures the measured ones are shown beside (Pascal VOC 2007 test; GPU timings)
PAPERS: list[dict[str, Any]] = [
    {"method": "R-CNN, AlexNet (Girshick et al. 2014)", "map50": 0.585, "seconds_per_image": None,
     "note": "VOC 2007 test, with bounding-box regression"},
    {"method": "R-CNN, VGG16 (Girshick et al. 2014)", "map50": 0.660, "seconds_per_image": 47.0,
     "note": "VOC 2007 test; 47 s/image on a GPU (Girshick 2015, Fast R-CNN, table 4)"},
    {"method": "YOLOv1 (Redmon et al. 2016)", "map50": 0.634, "seconds_per_image": 1 / 45,
     "note": "VOC 2007+2012 training, VOC 2007 test; 45 FPS on a Titan X"},
]
#: a plain U-Net on ISIC 2018 Task 1 (arXiv 1811.11314), thresholded Jaccard
UNET_PAPER_THRESHOLDED_JACCARD = 0.775

REPORT_FILES = {"unet": "unet_eval.json", "rcnn": "rcnn_eval.json", "yolo": "yolo_eval.json",
                "proposals": "proposals.json"}
#: what describes each run (text, timings), beside its metrics file; a metrics file written before the info
#: files existed holds these keys itself, and is still read
INFO_FILES = {key: name.replace(".json", "_info.json") for key, name in REPORT_FILES.items()}
_DET_KEYS = ("map50", "coco_map", "precision", "recall", "images", "ground_truth_boxes",
             "seconds_per_image", "device", "hardware")
#: the keys the summary reads from each pair of files (metrics and info, merged)
REQUIRED_KEYS = {
    "unet": ("dice", "iou", "thresholded_jaccard", "sensitivity", "specificity", "images_per_second", "batch_size",
             "device", "hardware", "variant", "input_size", "trained_epochs"),
    "rcnn": _DET_KEYS,
    "yolo": (*_DET_KEYS, "fps"),
    "proposals": ("test", ("test", "seconds_per_image")),  # a tuple: a nested key
}


def _cut(ev: dict) -> str:
    """The score threshold of an eval JSON: one value, or per class (the operating thresholds chosen on val)."""
    if "score_thresholds" in ev:
        return "the per-class thresholds chosen on val: " + ", ".join(
            f"{c} {_f(t)}" for c, t in ev["score_thresholds"].items())
    return f"{ev.get('score_threshold')}"


class ReportError(UserError):
    """A report input is missing or unreadable (names the file)."""


@dataclass
class Summary:
    markdown: str
    figures: dict[str, np.ndarray] = field(default_factory=dict)  # file name -> HxWx3 uint8
    metrics: dict[str, float] = field(default_factory=dict)  # flat figures for MLflow


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: missing; run its stage first (dvc repro)") from None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from None


def _merged(metrics: dict, info: dict) -> dict:
    """``metrics`` with ``info`` added, nested dicts (the proposal splits) merged key by key."""
    out = dict(metrics)
    for k, v in info.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _has(d: dict, key: str | tuple[str, ...]) -> bool:
    for k in (key,) if isinstance(key, str) else key:
        if not isinstance(d, dict) or k not in d:
            return False
        d = d[k]
    return True


def read_reports(reports_dir: str | Path) -> dict[str, dict]:
    """``{"unet", "rcnn", "yolo", "proposals"}`` -> each eval stage's metrics JSON merged with its info JSON
    (``INFO_FILES``; a metrics file from before the info files, with no info file beside it, holds those keys
    itself)."""
    out = {}
    for key, name in REPORT_FILES.items():
        path, info = Path(reports_dir) / name, Path(reports_dir) / INFO_FILES[key]
        out[key] = _read_json(path)
        where = f"{path} (and no {info.name} beside it)"
        if info.exists():
            out[key], where = _merged(out[key], _read_json(info)), f"{path} with {info.name}"
        missing = [k if isinstance(k, str) else ".".join(k) for k in REQUIRED_KEYS[key] if not _has(out[key], k)]
        if missing:
            raise ReportError(f"{where}: missing {', '.join(missing)}; rerun the stage that writes them "
                              f"(dvc repro --force {Path(name).stem})")
    return out


def _f(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _seconds(s: float | None) -> str:
    if s is None:
        return "n/a"
    return f"{s:.3f}" if s < 10 else f"{s:.0f}"


def _opt(d: dict, key: str, unit: str = "") -> str:
    return f", {d[key]}{unit}" if key in d else ""


def _fps(s: float | None) -> str:
    return "n/a" if not s else f"{1 / s:.1f}" if 1 / s >= 1 else f"{1 / s:.3f}"


def _bar_figure(groups: list[str], series: dict[str, list[float | None]], title: str, ylabel: str,
                log: bool = False) -> np.ndarray:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for k, (name, values) in enumerate(series.items()):
        vals = [np.nan if v is None else v for v in values]
        bars = ax.bar(x + (k - (len(series) - 1) / 2) * width, vals, width, label=name)
        for rect, v in zip(bars, values, strict=True):
            if v is not None:
                text = (f"{v:.3g}" if log else f"{v:.3f}")
                ax.annotate(text, (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center",
                            va="bottom", fontsize=7)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return figure_image(fig)


def timing_lines(timings: dict[str, dict]) -> list[str]:
    """The "Stage times" section: ``timings`` = ``{stage: {"seconds": s or None, "peak_rss_mb": m or None,
    "this_run": bool}}`` in pipeline order (``segdet.tracking.stage_seconds``)."""
    lines = ["## Stage times", "",
             "Wall-clock seconds of each stage's process (imports included) and its peak resident memory. Stages DVC "
             "restored from its cache did not run; their figures are those of their last run.", "",
             "| stage | seconds | peak memory (MB) | |", "|---|---|---|---|"]
    for stage, t in timings.items():
        note = "this run" if t["this_run"] else ("cached: its last run" if t["seconds"] is not None else "no run logged")
        seconds = "-" if t["seconds"] is None else f"{t['seconds']:.1f}"
        rss = "-" if t.get("peak_rss_mb") is None else f"{t['peak_rss_mb']:.0f}"
        lines.append(f"| {stage} | {seconds} | {rss} | {note} |")
    ran = [t["seconds"] for t in timings.values() if t["this_run"] and t["seconds"] is not None]
    every = [t["seconds"] for t in timings.values() if t["seconds"] is not None]
    lines += [f"| **all stages** | {sum(every):.1f} | | {sum(ran):.1f} s of it in this run (the stages before this "
              "report) |", ""]
    return lines


def build_summary(reports: dict[str, dict], *, det_data: str, seg_data: str,
                  timings: dict[str, dict] | None = None) -> Summary:
    """The summary of one pipeline run from :func:`read_reports`' dict; ``det_data`` and ``seg_data`` name the
    detection and segmentation data it ran on; ``timings`` adds the stage times (:func:`timing_lines`)."""
    unet, rcnn, yolo, props = reports["unet"], reports["rcnn"], reports["yolo"], reports["proposals"]
    r_s, y_s = rcnn["seconds_per_image"], yolo["seconds_per_image"]
    ratio = r_s / y_s if y_s else None
    paper_ratio = PAPERS[1]["seconds_per_image"] / PAPERS[2]["seconds_per_image"]
    lines = [
        "# segdet summary",
        "",
        f"Detection data: {det_data}; segmentation data: {seg_data}. Measured figures come from `reports/*_eval.json`, `reports/proposals.json`",
        "and their `*_info.json` files (device, timings);",
        "the papers' figures are Pascal VOC 2007 test results on a GPU, so compare the speed *ratio* and the",
        "trends, not the absolute numbers, across datasets and machines.",
        "",
        "## Detection: R-CNN against YOLOv1",
        "",
        "| method | mAP@0.5 | COCO mAP@[.5:.95] | seconds / image | FPS | device | data |",
        "|---|---|---|---|---|---|---|",
        f"| R-CNN (segdet{_opt(rcnn, 'backbone')}) | {_f(rcnn['map50'])} | {_f(rcnn['coco_map'])} | "
        f"{_seconds(r_s)} | {_fps(r_s)} | {rcnn['hardware']} | {det_data} |",
        f"| YOLOv1 (segdet{_opt(yolo, 'backbone')}{_opt(yolo, 'input_size', ' px')}) | "
        f"{_f(yolo['map50'])} | {_f(yolo['coco_map'])} | {_seconds(y_s)} | {_fps(y_s)} | {yolo['hardware']} | "
        f"{det_data} |",
    ]
    for p in PAPERS:
        lines.append(f"| {p['method']} | {_f(p['map50'])} | n/a | {_seconds(p['seconds_per_image'])} | "
                     f"{_fps(p['seconds_per_image'])} | GPU | {p['note']} |")
    lines += [
        "",
        f"YOLOv1 is **{_f(ratio, 1)}x** faster than R-CNN per image here (the papers: {paper_ratio:.0f}x). "
        "Seconds per image count everything from the decoded image to the final boxes: for R-CNN the "
        f"selective search ({_seconds(rcnn.get('seconds_proposals'))} s), warping and the CNN "
        f"({_seconds(rcnn.get('seconds_warp_cnn'))} s), SVMs and box regression and NMS; for YOLOv1 the "
        f"resize, one forward pass and NMS at batch size 1 (forward pass alone: {_f(yolo.get('forward_fps'), 1)} "
        "FPS).",
        "",
        f"At their operating points: R-CNN precision {_f(rcnn['precision'])} / recall {_f(rcnn['recall'])} "
        f"(SVM score >= {_cut(rcnn)}), YOLOv1 precision {_f(yolo['precision'])} / recall "
        f"{_f(yolo['recall'])} (class score >= {_cut(yolo)}), on {rcnn['images']} test images with "
        f"{rcnn['ground_truth_boxes']} boxes.",
        "",
        "![mAP](summary/detection_map.png) ![speed](summary/detection_speed.png)",
        "",
        "## Region proposals (selective search)",
        "",
        "| split | images | recall@0.5 | recall@0.7 | boxes / image | seconds / image |",
        "|---|---|---|---|---|---|",
    ]
    for split in ("train", "val", "test"):
        if split in props:
            p = props[split]
            lines.append(f"| {split} | {p['images']} | {_f(p['recall_0.5'])} | {_f(p['recall_0.7'])} | "
                         f"{p['boxes_per_image']:.0f} | {_seconds(p['seconds_per_image'])} |")
    lines += [
        "",
        "![recall](summary/proposal_recall.png)",
        "",
        "## Segmentation: UNet",
        "",
        "| model | Dice | IoU | thresholded Jaccard | sensitivity | specificity | images / s | device |",
        "|---|---|---|---|---|---|---|---|",
        f"| {unet['variant']} at {unet['input_size']} px, {unet['trained_epochs']} "
        f"epochs | {_f(unet['dice'])} | {_f(unet['iou'])} | {_f(unet['thresholded_jaccard'])} | "
        f"{_f(unet['sensitivity'])} | {_f(unet['specificity'])} | "
        f"{_f(unet['images_per_second'], 1)} (batch {unet['batch_size']}) | {unet['hardware']} |",
        f"| plain U-Net, ISIC 2018 Task 1 (arXiv 1811.11314) | n/a | n/a | {_f(UNET_PAPER_THRESHOLDED_JACCARD)} "
        "| n/a | n/a | n/a | n/a |",
        "",
        "![unet](summary/unet.png)",
        "",
    ]
    figures = {
        "detection_map.png": _bar_figure(
            ["R-CNN (segdet)", "YOLOv1 (segdet)", "R-CNN AlexNet\n(paper)", "R-CNN VGG16\n(paper)",
             "YOLOv1\n(paper)"],
            {"mAP@0.5": [rcnn["map50"], yolo["map50"], *(p["map50"] for p in PAPERS)],
             "COCO mAP": [rcnn["coco_map"], yolo["coco_map"], None, None, None]},
            f"Detection accuracy (segdet on {det_data}; papers on VOC 2007)", "mAP"),
        "detection_speed.png": _bar_figure(
            [f"R-CNN (segdet, {rcnn['device']})", f"YOLOv1 (segdet, {yolo['device']})", "R-CNN VGG16\n(paper, GPU)",
             "YOLOv1\n(paper, Titan X)"],
            {"seconds per image": [r_s, y_s, PAPERS[1]["seconds_per_image"], PAPERS[2]["seconds_per_image"]]},
            f"Detection speed (lower is faster): YOLOv1 {_f(ratio, 1)}x faster here", "seconds per image (log)",
            log=True),
        "proposal_recall.png": _bar_figure(
            [s for s in ("train", "val", "test") if s in props],
            {f"recall@{t}": [props[s][f"recall_{t}"] for s in ("train", "val", "test") if s in props]
             for t in ("0.5", "0.7")},
            "Selective search proposal recall", "recall"),
        "unet.png": _bar_figure(
            ["Dice", "IoU", "thresholded Jaccard"],
            {f"segdet {unet['variant']}": [unet["dice"], unet["iou"], unet["thresholded_jaccard"]],
             "U-Net (paper)": [None, None, UNET_PAPER_THRESHOLDED_JACCARD]},
            f"UNet on the test split ({seg_data})", "score"),
    }
    metrics = {"rcnn_map50": rcnn["map50"], "yolo_map50": yolo["map50"], "rcnn_coco_map": rcnn["coco_map"],
               "yolo_coco_map": yolo["coco_map"], "rcnn_seconds_per_image": r_s, "yolo_fps": yolo["fps"],
               "unet_dice": unet["dice"], "proposal_recall_test": props["test"]["recall_0.5"]}
    if ratio is not None:
        metrics["yolo_speedup"] = ratio
    if timings:
        lines += ["", *timing_lines(timings)]
    return Summary("\n".join(lines), figures, metrics)
