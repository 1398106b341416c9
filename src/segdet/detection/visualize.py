"""Pictures for people: precision/recall curves and images with their detections drawn."""

from __future__ import annotations

import cv2
import numpy as np

_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def pr_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], ap: dict[str, float], title: str) -> np.ndarray:
    """``HxWx3`` uint8 plot of one precision/recall curve per class, with its AP in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    for name, (rec, prec) in curves.items():
        if len(rec):
            ax.plot(rec, prec, label=f"{name} (AP {ap.get(name, float('nan')):.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return figure_image(fig)


def figure_image(fig) -> np.ndarray:
    """A matplotlib figure as an ``HxWx3`` uint8 RGB array (tight layout); the figure is closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                    classes: list[str], truth: np.ndarray | None = None) -> np.ndarray:
    """RGB ``image`` with labelled boxes (``labels`` 1-based); ground-truth boxes thin white when given."""
    out = image.copy()
    thick = max(1, round(max(out.shape[:2]) / 300))
    for b in truth if truth is not None else []:
        cv2.rectangle(out, (int(b[0]), int(b[1])), (int(b[2]) - 1, int(b[3]) - 1), (255, 255, 255), 1)
    for b, lab, s in zip(boxes, labels, scores, strict=True):
        colour = _COLOURS[(int(lab) - 1) % len(_COLOURS)]
        x1, y1, x2, y2 = (int(round(v)) for v in b)
        cv2.rectangle(out, (x1, y1), (x2 - 1, y2 - 1), colour, thick)
        text = f"{classes[int(lab) - 1]} {s:.2f}"
        cv2.putText(out, text, (x1 + 2, max(10, y1 + 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thick, colour, thick,
                    cv2.LINE_AA)
    return out


def publish_report(run, out_dir, metrics_path, ev, results: list[dict], summary: dict,
                   samples: list[np.ndarray], title: str) -> None:
    """Write an eval stage's files (``evaluate.save_report``) and log them to the stage's MLflow ``run``:
    numeric metrics, the per-class table, a precision/recall plot and the sample images."""
    from pathlib import Path

    from segdet.detection.evaluate import save_report

    save_report(out_dir, metrics_path, ev, results, summary)
    run.log_metrics({k: v for k, v in summary.items() if isinstance(v, (int, float))})
    run.log_artifact(Path(out_dir) / "per_class_ap.csv")
    ap = dict(zip(ev.per_class["class"], ev.per_class["ap50"], strict=True))
    run.log_image(pr_figure(ev.curves, ap, f"{title} precision/recall at IoU 0.5 (mAP {ev.summary['map50']:.3f})"),
                  "pr_curve.png")
    for k, img in enumerate(samples):
        run.log_image(img, f"samples/test_{k:02d}.png")
