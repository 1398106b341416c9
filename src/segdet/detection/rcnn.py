"""R-CNN (Girshick et al., CVPR 2014) as published, in four cached steps.

1. **Region CNN** (:class:`RegionCNN`): every proposal, dilated by ``context`` pixels of surrounding image,
   is warped to ``crop_size`` x ``crop_size`` (all boxes of an image in one ``roi_align`` call), and a CNN
   fine-tuned as (N+1)-way classification (IoU >= 0.5 with a ground-truth box: that class, else background;
   mini-batches of 32 positives and 96 background regions) turns it into a feature vector (its penultimate
   layer).
2. **Features** (:func:`extract_features`): those vectors for every ground-truth box and proposal of the
   training images, written in chunks to disk so later steps stream them.
3. **SVMs and box regressors** (:func:`train_svms`): one linear SVM per class (scikit-learn), positives the
   ground-truth boxes, negatives proposals with IoU < 0.3 to every box of that class, refined by hard-negative
   mining; one Ridge regressor per class maps features of proposals with IoU >= 0.6 to the
   ``(dx, dy, dw, dh)`` targets of the paper's appendix C.
4. **Detection** (:class:`RCNNDetector`): warp + CNN, SVM scores, box regression, per-class NMS (IoU 0.3).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import Ridge
from sklearn.svm import LinearSVC
from torch import nn
from torchvision import models
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, roi_align
from tqdm import tqdm

from segdet.detection.boxes import decode, dilate, encode
from segdet.nets.backbones import IMAGENET_MEAN, IMAGENET_STD, build_backbone

log = logging.getLogger(__name__)

_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


# ----------------------------------------------------------------------------------------------------------
# Region CNN and warping
# ----------------------------------------------------------------------------------------------------------


class RegionCNN(nn.Module):
    """CNN for warped regions ``[N, 3, S, S]`` -> logits ``[N, num_classes + 1]`` (index 0 = background).

    ``embed`` returns the penultimate features ``[N, D]`` the SVMs are trained on (fc7, D = 4096, for
    AlexNet and VGG16; D = 256 for ``small``). For AlexNet and VGG16 the module names are torchvision's,
    so ImageNet weights load with ``init_from`` (the 1000-way ``classifier.6`` is reported and skipped).
    """

    def __init__(self, backbone: str, num_classes: int):
        super().__init__()
        self.backbone_name = backbone
        self.num_classes = num_classes
        if backbone in ("alexnet", "vgg16"):
            tv = models.alexnet(weights=None) if backbone == "alexnet" else models.vgg16(weights=None)
            self.features, self.avgpool, self.classifier = tv.features, tv.avgpool, tv.classifier
            self.classifier[6] = nn.Linear(4096, num_classes + 1)
        elif backbone == "small":
            self.features = build_backbone("small").features
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(256, 256), nn.ReLU(inplace=True), nn.Dropout(0.3),
                                            nn.Linear(256, num_classes + 1))
        else:
            raise ValueError(f"Wrong R-CNN backbone {backbone!r}. Available options are: small, alexnet, vgg16")
        self.feature_dim = self.classifier[-1].in_features

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.features(x)), 1)
        return self.classifier[:-1](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier[-1](self.embed(x))


def normalise(image: torch.Tensor) -> torch.Tensor:
    """uint8 ``[3, H, W]`` -> float ImageNet-normalised (so the image mean is 0, as is roi_align's padding)."""
    return (image.float() / 255.0 - _MEAN) / _STD


def warp(image: torch.Tensor, boxes: torch.Tensor, crop_size: int, context: float, sampling_ratio: int = 2
         ) -> torch.Tensor:
    """All ``boxes [K, 4]`` of one normalised image ``[3, H, W]`` warped to ``[K, 3, crop, crop]`` at once.

    Each box is dilated so ``context`` pixels of surrounding image appear around it after warping
    (R-CNN's p = 16 at 227 pixels); area outside the image reads as 0, the (normalised) image mean.
    ``sampling_ratio``: bilinear samples per output pixel and axis (2: anti-aliased when shrinking).
    """
    if len(boxes) == 0:
        return image.new_zeros((0, 3, crop_size, crop_size))
    rois = dilate(boxes.to(image.dtype), crop_size, context)
    return roi_align(image[None], [rois], output_size=(crop_size, crop_size), spatial_scale=1.0,
                     sampling_ratio=sampling_ratio, aligned=True)


def label_regions(boxes: torch.Tensor, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, num_classes: int,
                  fg_iou: float = 0.5) -> dict[str, torch.Tensor]:
    """Match regions ``[K, 4]`` to ground truth ``[n, 4]`` (labels ``1..N``).

    Returns ``iou [K]`` (max IoU), ``label [K]`` (class of the best box if ``iou >= fg_iou``, else 0),
    ``gt_box [K, 4]`` (the best box), ``iou_class [K, N]`` (max IoU with the boxes of each class).
    """
    k = len(boxes)
    if len(gt_boxes) == 0:
        return {"iou": torch.zeros(k), "label": torch.zeros(k, dtype=torch.int64),
                "gt_box": torch.zeros(k, 4), "iou_class": torch.zeros(k, num_classes)}
    ious = box_iou(boxes.float(), gt_boxes.float())
    best, arg = ious.max(1)
    label = torch.where(best >= fg_iou, gt_labels[arg], torch.zeros_like(arg))
    iou_class = torch.zeros(k, num_classes)
    for c in range(1, num_classes + 1):
        sel = gt_labels == c
        if sel.any():
            iou_class[:, c - 1] = ious[:, sel].max(1).values
    return {"iou": best, "label": label, "gt_box": gt_boxes[arg].float(), "iou_class": iou_class}


def proposals_by_image(frame: pd.DataFrame) -> dict[str, torch.Tensor]:
    """Proposal table (DESIGN.md parquet) -> ``{image path: float32 [K, 4]}``."""
    out = {}
    for image, group in frame.groupby("image", sort=False):
        out[image] = torch.from_numpy(group[["x1", "y1", "x2", "y2"]].to_numpy(np.float32))
    return out


# ----------------------------------------------------------------------------------------------------------
# Fine-tuning data: 32 positive + 96 background regions a batch
# ----------------------------------------------------------------------------------------------------------


class RegionBatches:
    """``batches`` mini-batches of ``fg`` positive and ``bg`` background warped regions.

    ``images`` are uint8 ``[3, H, W]``; ``regions[i]`` the boxes of image i (ground truth and proposals),
    ``labels[i]`` their classes (0 = background). Regions are drawn uniformly with replacement from the
    positive and background pools with PyTorch's global RNG (re-seeded every epoch by the engine).
    Yields ``(crops [fg + bg, 3, S, S], labels [fg + bg])``.
    """

    def __init__(self, images: list[torch.Tensor], regions: list[torch.Tensor], labels: list[torch.Tensor],
                 *, fg: int, bg: int, batches: int, crop_size: int, context: float):
        self.images, self.regions = images, regions
        self.fg, self.bg, self.batches, self.crop_size, self.context = fg, bg, batches, crop_size, context
        index = torch.cat([torch.stack([torch.full((len(lb),), i), torch.arange(len(lb))], 1)
                           for i, lb in enumerate(labels)])
        flat = torch.cat(labels)
        self.labels = labels
        self.pos, self.neg = index[flat > 0], index[flat == 0]
        if len(self.pos) == 0 or len(self.neg) == 0:
            raise ValueError(f"R-CNN fine-tuning needs positive and background regions; found {len(self.pos)} "
                             f"positive and {len(self.neg)} background (are there objects in the train split?)")

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _ in range(self.batches):
            pick = torch.cat([self.pos[torch.randint(len(self.pos), (self.fg,))],
                              self.neg[torch.randint(len(self.neg), (self.bg,))]])
            yield self.gather(pick)

    def gather(self, pick: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Warp the regions ``pick [M, 2]`` (image index, region index), one roi_align call per image."""
        crops, labels = [], []
        for i in pick[:, 0].unique().tolist():
            rows = pick[pick[:, 0] == i, 1]
            crops.append(warp(normalise(self.images[i]), self.regions[i][rows], self.crop_size, self.context))
            labels.append(self.labels[i][rows])
        return torch.cat(crops), torch.cat(labels)


# ----------------------------------------------------------------------------------------------------------
# Features on disk
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def embed_regions(model: RegionCNN, image: torch.Tensor, boxes: torch.Tensor, crop_size: int, context: float,
                  device: torch.device, batch: int = 512) -> torch.Tensor:
    """Penultimate CNN features ``float32 [K, D]`` (on CPU) of ``boxes`` in uint8 ``image [3, H, W]``."""
    norm = normalise(image)
    out = []
    for start in range(0, len(boxes), batch):
        crops = warp(norm, boxes[start:start + batch], crop_size, context)
        out.append(model.embed(crops.to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.feature_dim)


def extract_features(model: RegionCNN, items: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
                     out_dir: Path, *, crop_size: int, context: float, device: torch.device,
                     chunk_images: int = 25, progress: bool = True) -> dict:
    """Write features of every ground-truth box and proposal of ``items`` to ``out_dir/chunk_NNNNN.npz``.

    ``items``: ``(image uint8 [3, H, W], proposals [K, 4], gt_boxes [n, 4], gt_labels [n])`` per image (an
    iterable is consumed lazily, so only one chunk is held in memory). Each chunk holds ``features``
    (float16 ``[M, D]``), ``image`` (index), ``boxes``, ``is_gt``, ``label``, ``iou``, ``gt_box`` and
    ``iou_class`` (see :func:`label_regions`). Returns the summary also written to ``meta.json``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval().to(device)
    buffer: list[dict[str, np.ndarray]] = []
    chunks = regions = 0

    def flush() -> None:
        nonlocal chunks
        if buffer:
            arrays = {k: np.concatenate([b[k] for b in buffer]) for k in buffer[0]}
            np.savez(out_dir / f"chunk_{chunks:05d}.npz", **arrays)
            chunks += 1
            buffer.clear()

    for i, (image, props, gt_boxes, gt_labels) in enumerate(tqdm(items, desc="features", unit="img",
                                                                 disable=not progress)):
        boxes = torch.cat([gt_boxes.float(), props.float()])
        feats = embed_regions(model, image, boxes, crop_size, context, device)
        lab = label_regions(boxes, gt_boxes, gt_labels, model.num_classes)
        is_gt = torch.zeros(len(boxes), dtype=torch.bool)
        is_gt[: len(gt_boxes)] = True
        buffer.append({"features": feats.numpy().astype(np.float16), "image": np.full(len(boxes), i, np.int32),
                       "boxes": boxes.numpy(), "is_gt": is_gt.numpy(), "label": lab["label"].numpy().astype(np.int16),
                       "iou": lab["iou"].numpy().astype(np.float16), "gt_box": lab["gt_box"].numpy(),
                       "iou_class": lab["iou_class"].numpy().astype(np.float16)})
        regions += len(boxes)
        if len(buffer) >= chunk_images:
            flush()
    flush()
    meta = {"images": i + 1 if regions else 0, "regions": regions, "chunks": chunks, "dim": model.feature_dim}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def iter_chunks(feature_dir: Path) -> Iterator[dict[str, np.ndarray]]:
    """Stream the feature chunks of :func:`extract_features` (one in memory at a time)."""
    files = sorted(Path(feature_dir).glob("chunk_*.npz"))
    if not files:
        raise FileNotFoundError(f"{feature_dir}: no feature chunks (run the rcnn_features stage)")
    for f in files:
        with np.load(f, allow_pickle=False) as z:
            yield {k: z[k] for k in z.files}


# ----------------------------------------------------------------------------------------------------------
# SVMs with hard-negative mining, box regressors
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SvmSettings:
    C: float = 0.001
    positive_weight: float = 2.0
    neg_iou: float = 0.3
    rounds: int = 3
    init_negatives: int = 5000
    max_negatives: int = 20000
    reg_iou: float = 0.6
    reg_alpha: float = 1000.0
    max_reg_samples: int = 20000
    feature_norm: float = 20.0


class _Reservoir:
    """Uniform sample of at most ``size`` rows from a stream (Algorithm R), memory bounded by ``size``."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.seen, self.rows = size, rng, 0, []

    def add(self, rows: np.ndarray) -> None:
        for row in rows:
            if len(self.rows) < self.size:
                self.rows.append(row)
            else:
                j = self.rng.integers(0, self.seen + 1)
                if j < self.size:
                    self.rows[j] = row
            self.seen += 1

    def array(self, dim: int) -> np.ndarray:
        return np.stack(self.rows) if self.rows else np.zeros((0, dim), np.float32)


def _fit_svm(pos: np.ndarray, neg: np.ndarray, s: SvmSettings, seed: int) -> tuple[np.ndarray, float]:
    x = np.concatenate([pos, neg]).astype(np.float32)
    y = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
    svm = LinearSVC(C=s.C, class_weight={1: s.positive_weight, -1: 1.0}, intercept_scaling=10.0,
                    max_iter=5000, random_state=seed)
    svm.fit(x, y)
    return svm.coef_[0].astype(np.float32), float(svm.intercept_[0])


def train_svms(feature_dir: Path, classes: list[str], settings: SvmSettings, seed: int = 0,
               progress: bool = True) -> dict[str, np.ndarray]:
    """Per-class linear SVMs with hard-negative mining and Ridge box regressors, streaming the features.

    Memory is bounded by the negative caches (``max_negatives`` per class), the regression samples
    (``max_reg_samples`` per class) and the ground-truth features; it does not grow with the number of
    proposals or images. Returns the arrays saved as ``models/rcnn_svm.npz``.
    """
    s = settings
    n = len(classes)
    rng = np.random.default_rng(seed)
    first = next(iter_chunks(feature_dir))
    dim = first["features"].shape[1]
    norms = np.linalg.norm(first["features"].astype(np.float32), axis=1)
    scale = float(s.feature_norm / max(norms.mean(), 1e-6))  # the paper scales features to mean norm 20

    positives = [[] for _ in range(n)]
    init = [_Reservoir(s.init_negatives, rng) for _ in range(n)]
    regs = [_Reservoir(s.max_reg_samples, rng) for _ in range(n)]
    for chunk in tqdm(iter_chunks(feature_dir), desc="svm: positives", unit="chunk", disable=not progress):
        x = chunk["features"].astype(np.float32) * scale
        for c in range(n):
            positives[c].append(x[chunk["is_gt"] & (chunk["label"] == c + 1)])
            neg = (~chunk["is_gt"]) & (chunk["iou_class"][:, c].astype(np.float32) < s.neg_iou)
            init[c].add(x[neg])
            reg = (~chunk["is_gt"]) & (chunk["label"] == c + 1) & (chunk["iou"].astype(np.float32) >= s.reg_iou)
            if reg.any():
                t = encode(torch.from_numpy(chunk["boxes"][reg]), torch.from_numpy(chunk["gt_box"][reg])).numpy()
                regs[c].add(np.concatenate([x[reg], t], axis=1))
    positives = [np.concatenate(p) if p else np.zeros((0, dim), np.float32) for p in positives]
    for c, name in enumerate(classes):
        if len(positives[c]) == 0:
            raise ValueError(f"class {name!r} has no ground-truth box in the training features")
    caches = [r.array(dim) for r in init]
    weights = np.zeros((n, dim), np.float32)
    biases = np.zeros(n, np.float32)
    stats = {"hard_negatives_added": np.zeros(n, np.int64)}
    for rnd in range(s.rounds + 1):
        for c in range(n):
            weights[c], biases[c] = _fit_svm(positives[c], caches[c], s, seed)
        if rnd == s.rounds:
            break
        # evict easy negatives, then mine: negatives scoring above -1 (inside the margin) join the cache
        for c in range(n):
            caches[c] = caches[c][caches[c] @ weights[c] + biases[c] > -1.2]
        found = [[] for _ in range(n)]
        for chunk in tqdm(iter_chunks(feature_dir), desc=f"svm: mining round {rnd + 1}/{s.rounds}", unit="chunk",
                          disable=not progress):
            x = chunk["features"].astype(np.float32) * scale
            scores = x @ weights.T + biases
            for c in range(n):
                neg = (~chunk["is_gt"]) & (chunk["iou_class"][:, c].astype(np.float32) < s.neg_iou)
                hard = neg & (scores[:, c] > -1.0)
                found[c].append((x[hard], scores[hard, c]))
                if sum(len(f[0]) for f in found[c]) > 2 * s.max_negatives:  # keep memory bounded while streaming
                    xs, ss = np.concatenate([f[0] for f in found[c]]), np.concatenate([f[1] for f in found[c]])
                    top = np.argsort(-ss)[: s.max_negatives]
                    found[c] = [(xs[top], ss[top])]
        for c in range(n):
            xs = np.concatenate([caches[c]] + [f[0] for f in found[c]])
            if len(xs) > s.max_negatives:
                xs = xs[np.argsort(-(xs @ weights[c] + biases[c]))[: s.max_negatives]]
            stats["hard_negatives_added"][c] += sum(len(f[0]) for f in found[c])
            caches[c] = np.unique(xs, axis=0)
        log.info("svm mining round %d: negatives per class %s", rnd + 1, [len(cache) for cache in caches])

    reg_w = np.zeros((n, 4, dim), np.float32)
    reg_b = np.zeros((n, 4), np.float32)
    reg_n = np.zeros(n, np.int64)
    for c in range(n):
        samples = regs[c].array(dim + 4)
        reg_n[c] = len(samples)
        if len(samples) >= 4:
            ridge = Ridge(alpha=s.reg_alpha).fit(samples[:, :dim], samples[:, dim:])
            reg_w[c], reg_b[c] = ridge.coef_, ridge.intercept_
    return {
        "classes": np.array(classes, dtype=str),
        "svm_weight": weights,
        "svm_bias": biases,
        "reg_weight": reg_w,
        "reg_bias": reg_b,
        "feature_scale": np.float32(scale),
        "positives": np.array([len(p) for p in positives], np.int64),
        "negatives": np.array([len(cache) for cache in caches], np.int64),
        "hard_negatives_added": stats["hard_negatives_added"],
        "regression_samples": reg_n,
    }


# ----------------------------------------------------------------------------------------------------------
# Detection
# ----------------------------------------------------------------------------------------------------------


class RCNNDetector:
    """CNN + SVMs + regressors; :meth:`detect` runs one image and times each part."""

    def __init__(self, model: RegionCNN, svm: dict[str, np.ndarray], *, crop_size: int, context: float,
                 device: torch.device):
        self.model = model.eval().to(device)
        self.classes = [str(c) for c in svm["classes"]]
        self.w = torch.from_numpy(svm["svm_weight"]).float()
        self.b = torch.from_numpy(svm["svm_bias"]).float()
        self.reg_w = torch.from_numpy(svm["reg_weight"]).float()
        self.reg_b = torch.from_numpy(svm["reg_bias"]).float()
        self.scale = float(svm["feature_scale"])
        self.crop_size, self.context, self.device = crop_size, context, device

    @torch.no_grad()
    def detect(self, image: torch.Tensor, proposals: torch.Tensor, *, min_score: float, nms_iou: float = 0.3,
               max_detections: int = 100) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """Detections in ``image`` (uint8 ``[3, H, W]``) from its ``proposals [K, 4]``.

        Returns ``({"boxes" [M, 4] xyxy, "scores" [M] SVM margins, "labels" [M] 1..N}, seconds)`` with
        seconds split into ``warp_cnn``, ``svm_regression`` and ``nms``.
        """
        t0 = time.perf_counter()
        feats = embed_regions(self.model, image, proposals, self.crop_size, self.context, self.device)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        x = feats * self.scale
        scores = x @ self.w.T + self.b  # [K, N]
        keep_k, keep_c = torch.nonzero(scores >= min_score, as_tuple=True)
        deltas = torch.einsum("kd,kjd->kj", x[keep_k], self.reg_w[keep_c]) + self.reg_b[keep_c]
        boxes = clip_boxes_to_image(decode(proposals[keep_k].float(), deltas), image.shape[-2:])
        cand_scores, labels = scores[keep_k, keep_c], keep_c + 1
        t2 = time.perf_counter()
        keep = batched_nms(boxes, cand_scores, labels, nms_iou)[:max_detections]
        t3 = time.perf_counter()
        dets = {"boxes": boxes[keep], "scores": cand_scores[keep], "labels": labels[keep]}
        return dets, {"warp_cnn": t1 - t0, "svm_regression": t2 - t1, "nms": t3 - t2}


#: the operating threshold (SVM margin) of a class the validation split cannot set: the SVM's own boundary
FALLBACK_SCORE = 0.0


def score_thresholds(svm: dict[str, np.ndarray]) -> list[float]:
    """The per-class operating thresholds stored in ``rcnn_svm.npz`` (``FALLBACK_SCORE`` for a file written
    before they were)."""
    if "score_threshold" in svm:
        return [float(t) for t in svm["score_threshold"]]
    return [FALLBACK_SCORE] * len(svm["classes"])


def save_svm(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``models/rcnn_svm.npz``: plain arrays (class names as a unicode array), loadable without pickle."""
    from segdet.io import atomic_file

    with atomic_file(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_svm(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
