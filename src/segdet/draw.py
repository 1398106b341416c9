"""Pictures for people, in one place: the class palette, boxes with labels, tinted masks, side-by-side
overlays and matplotlib figures as images (for MLflow and the report)."""

from __future__ import annotations

import cv2
import numpy as np

#: RGB colours of classes 1, 2, ... (cycled): a qualitative palette that stays apart on photos
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]
WHITE = (255, 255, 255)


def class_colour(label: int) -> tuple[int, int, int]:
    """The colour of class ``label`` (1-based)."""
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def labelled_box(image: np.ndarray, box, colour: tuple[int, int, int], text: str = "", *, thickness: int = 1,
                 font_scale: float = 0.35, text_offset: tuple[int, int] = (2, 10)) -> None:
    """Draw the float ``(x1, y1, x2, y2)`` box in place, its ``text`` at ``text_offset`` inside the top-left
    corner (kept inside the image at the top)."""
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), colour, thickness)
    if text:
        dx, dy = text_offset
        cv2.putText(image, text, (x1 + dx, max(dy, y1 + dy)), cv2.FONT_HERSHEY_SIMPLEX, font_scale, colour,
                    thickness, cv2.LINE_AA)


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray,
                    classes: list[str], truth: np.ndarray | None = None) -> np.ndarray:
    """RGB ``image`` with labelled boxes (``labels`` 1-based); ground-truth boxes thin white when given."""
    out = image.copy()
    thick = max(1, round(max(out.shape[:2]) / 300))
    for b in truth if truth is not None else []:
        cv2.rectangle(out, (int(b[0]), int(b[1])), (int(b[2]) - 1, int(b[3]) - 1), WHITE, 1)
    for b, lab, s in zip(boxes, labels, scores, strict=True):
        labelled_box(out, b, class_colour(lab), f"{classes[int(lab) - 1]} {s:.2f}", thickness=thick,
                     font_scale=0.35 * thick)
    return out


def tint(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int = 1) -> np.ndarray:
    """A copy of RGB ``image`` with boolean ``mask`` blended half-way to ``colour`` and outlined in it."""
    out = image.copy()
    out[mask] = (0.5 * out[mask] + 0.5 * np.array(colour)).astype(np.uint8)
    outline(out, mask, colour, thickness, antialiased=False)
    return out


def outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int = 1,
            antialiased: bool = True) -> None:
    """Draw the outer contours of boolean ``mask`` on ``image`` in place."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(image, contours, -1, colour, thickness, cv2.LINE_AA if antialiased else cv2.LINE_8)


def overlay(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``[H, 3W, 3]`` uint8: the image, the truth (green) and the prediction (red) side by side."""
    return np.concatenate([image, tint(image, truth, (0, 255, 0)), tint(image, pred, (255, 0, 0))], axis=1)


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
