"""UNet evaluation on a test manifest at the original image sizes (ISIC 2018 Task 1 metrics)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage
from tqdm import tqdm

from segdet.data.datasets import SegmentationDataset
from segdet.data.transforms import seg_transforms
from segdet.io import write_image
from segdet.nets.unet import UNet, build_unet
from segdet.nets.weights import CheckpointError, load_checkpoint
from segdet.segmentation.metrics import scores
from segdet.stage import UserError

METRICS = ("dice", "iou", "thresholded_jaccard", "pixel_accuracy", "sensitivity", "specificity")


@dataclass
class SegEvaluation:
    per_image: pd.DataFrame  # one row per test image: image, label, METRICS
    summary: dict            # means over images, throughput, device


def load_unet(ckpt: dict, path: str = "checkpoint") -> tuple[UNet, dict]:
    """The trained UNet of a ``unet_train`` checkpoint (in eval mode) and its training config (variant, input size).

    Raises:
        CheckpointError: the checkpoint is not a UNet's (named by ``path``).
    """
    cfg = ckpt.get("config", {})
    if "variant" not in cfg or "classes" not in ckpt:
        raise CheckpointError(f"{path}: not a UNet checkpoint (its config has no variant)")
    # checkpoints from before unet_train.upsample upsample bilinearly
    model = build_unet(cfg["variant"], num_classes=len(ckpt["classes"]), upsample=cfg.get("upsample", "bilinear"))
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


def _batches(ds: SegmentationDataset, batch_size: int) -> Iterator[list[int]]:
    for start in range(0, len(ds), batch_size):
        yield list(range(start, min(start + batch_size, len(ds))))


def largest_blob(mask: np.ndarray) -> np.ndarray:
    """``bool[H, W]``: the largest 8-connected region of ``mask`` with its holes filled (empty stays empty).

    A skin-lesion mask is one blob: stray specks and holes inside the lesion are segmentation errors.
    """
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = np.bincount(labels.ravel())[1:]
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


#: the test-time flips: none, horizontal, vertical, both (dims of an ``[N, C, H, W]`` tensor)
_TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))


@torch.no_grad()
def predict_masks(
    model: UNet,
    images: list[torch.Tensor],
    input_size: int,
    device: torch.device,
    *,
    tta: bool = False,
    postprocess: bool = False,
) -> list[torch.Tensor]:
    """Lesion masks ``bool[H, W]`` at each image's own size for uint8 ``[3, H, W]`` images.

    Each image is resized to ``input_size``, the class probabilities are resized back to ``H, W``
    (bilinear) and the argmax taken there, so the prediction is scored at the original resolution.
    ``tta`` averages the probabilities over the image and its horizontal, vertical and double flips
    (each flipped back); ``postprocess`` keeps :func:`largest_blob` of each mask.
    """
    tf = seg_transforms(input_size, train=False)
    batch = torch.stack([tf(img) for img in images]).to(device, memory_format=torch.channels_last)
    flips = _TTA_FLIPS if tta else _TTA_FLIPS[:1]
    probs = torch.stack([model(batch.flip(f)).float().softmax(1).flip(f) for f in flips]).mean(0)
    out = []
    for img, pr in zip(images, probs, strict=True):
        full = F.interpolate(pr[None], size=img.shape[-2:], mode="bilinear", align_corners=False)[0]
        mask = full.argmax(0).bool().cpu()
        if postprocess:
            mask = torch.from_numpy(largest_blob(mask.numpy()))
        out.append(mask)
    return out


class UnetPredictor:
    """The trained UNet on one image (``segdet predict``, the served ``segdet-unet`` model): ``uint8[H, W, 3]`` RGB in,
    ``{"mask": bool[H, W], "lesion_fraction"}`` at the image's size out, as :func:`predict_masks` computes it."""

    kind = "unet"

    def __init__(self, ckpt: dict, device: torch.device, path: str, tta: bool = False, postprocess: bool = False):
        self.model, cfg = load_unet(ckpt, path)
        self.model.to(device, memory_format=torch.channels_last)  # NHWC: faster convolutions (docs/benchmarks.md)
        self.classes = list(ckpt["classes"])
        self.input_size, self.device = cfg["input_size"], device
        self.tta, self.postprocess = tta, postprocess

    @torch.no_grad()
    def predict(self, image: np.ndarray) -> dict:
        from torchvision import tv_tensors

        tensor = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
        mask = predict_masks(self.model, [tensor], self.input_size, self.device, tta=self.tta,
                             postprocess=self.postprocess)[0]
        mask = mask.numpy()
        return {"mask": mask, "lesion_fraction": float(mask.mean())}


def unet_predictor(files: list[Path], device: torch.device, settings) -> UnetPredictor:
    """The :class:`UnetPredictor` of ``files`` (``[unet.pt]``) with ``settings.tta`` and ``settings.postprocess``
    (a :class:`segdet.inference.PredictSettings`)."""
    return UnetPredictor(load_checkpoint(files[0], map_location=device), device, str(files[0]), tta=settings.tta,
                         postprocess=settings.postprocess)


def evaluate_unet(
    model: UNet,
    manifest: str | Path,
    root: str | Path,
    *,
    input_size: int,
    device: torch.device,
    batch_size: int = 8,
    tta: bool = False,
    postprocess: bool = False,
    pred_dir: str | Path | None = None,
    progress: bool = True,
) -> SegEvaluation:
    """Score ``model`` on every image of ``manifest``; write 0/255 PNG predictions to ``pred_dir``.

    Predictions are named like the label files (``ISIC_0000123_segmentation.png``). ``tta`` and
    ``postprocess`` as in :func:`predict_masks`. Throughput counts reading, preprocessing, the forward
    pass(es), resizing back and post-processing (not the PNG writes).
    """
    model.eval().to(device, memory_format=torch.channels_last)  # NHWC: faster convolutions (docs/benchmarks.md)
    ds = SegmentationDataset(manifest, root)
    rows, seconds = [], 0.0
    pred_dir = Path(pred_dir) if pred_dir else None
    if pred_dir:
        first: dict[str, str] = {}
        clashes = [f"{p.where}: label file name {Path(p.label).name} is also the label of {first[Path(p.label).name]}; "
                   "predictions are saved by label file name, so rename one of them"
                   for p in ds.pairs if first.setdefault(Path(p.label).name, p.where) != p.where]
        if clashes:
            raise UserError("\n".join(clashes))
        pred_dir.mkdir(parents=True, exist_ok=True)
    for idx in tqdm(list(_batches(ds, batch_size)), desc="unet eval", unit="batch", disable=not progress):
        t0 = time.perf_counter()
        items = [ds.read(i) for i in idx]
        preds = predict_masks(model, [img for img, _ in items], input_size, device, tta=tta, postprocess=postprocess)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        for i, (_, truth), pred in zip(idx, items, preds, strict=True):
            s = scores(pred[None], truth[None].bool())
            pair = ds.pairs[i]
            rows.append({"image": pair.image, "label": pair.label, **{k: float(s[k][0]) for k in METRICS}})
            if pred_dir:
                write_image(pred_dir / Path(pair.label).name, pred.numpy().astype(np.uint8) * 255)
    df = pd.DataFrame(rows, columns=["image", "label", *METRICS])
    summary = {k: float(df[k].mean()) if len(df) else float("nan") for k in METRICS}
    summary.update({"images": len(df), "batch_size": batch_size,
                    "images_per_second": len(df) / seconds if seconds else float("nan")})
    return SegEvaluation(df, summary)
