"""One linear SVM per class with hard-negative mining, Ridge box regressors, and the operating thresholds
stored with them in ``models/rcnn_svm.npz``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import Ridge
from sklearn.svm import LinearSVC
from tqdm import tqdm

from segdet.detection.boxes import encode
from segdet.detection.rcnn.features import iter_chunks
from segdet.io import atomic_file
from segdet.sections import RcnnSvmConfig

log = logging.getLogger(__name__)

#: features are scaled to this mean L2 norm before the SVMs (the paper's setting, which C = 0.001 assumes)
FEATURE_NORM = 20.0
#: before each mining round, cached negatives scoring below this are evicted as easy (the paper: < -1.2)
EASY_NEGATIVE = -1.2
#: a negative scoring above this (inside the margin) is hard and joins the cache (the paper: > -1)
HARD_NEGATIVE = -1.0
#: the bias of a class without a training box (no SVM): a margin no region reaches, so it is never detected
ABSENT_BIAS = -1.0e4
#: LinearSVC intercept_scaling: the bias is a feature of this value, so C regularises it far less
INTERCEPT_SCALING = 10.0


class _Reservoir:
    """Uniform sample of at most ``size`` rows from a stream (Algorithm R), memory bounded by ``size``: each row
    kept is a copy, as a view would keep the whole array it came from (a chunk's features) alive."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng, self.seen, self.rows = size, rng, 0, []

    def add(self, rows: np.ndarray) -> None:
        for row in rows:
            if len(self.rows) < self.size:
                self.rows.append(row.copy())
            else:
                j = self.rng.integers(0, self.seen + 1)
                if j < self.size:
                    self.rows[j] = row.copy()
            self.seen += 1

    def array(self, dim: int) -> np.ndarray:
        return np.stack(self.rows) if self.rows else np.zeros((0, dim), np.float32)


def _fit_svm(pos: np.ndarray, neg: np.ndarray, s: RcnnSvmConfig, seed: int) -> tuple[np.ndarray, float]:
    x = np.concatenate([pos, neg]).astype(np.float32)
    y = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
    svm = LinearSVC(C=s.C, class_weight={1: s.positive_weight, -1: 1.0}, intercept_scaling=INTERCEPT_SCALING,
                    max_iter=5000, random_state=seed)
    svm.fit(x, y)
    return svm.coef_[0].astype(np.float32), float(svm.intercept_[0])


def train_svms(feature_dir: Path, classes: list[str], settings: RcnnSvmConfig, seed: int = 0,
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
    scale = float(FEATURE_NORM / max(norms.mean(), 1e-6))

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
    absent = [c for c in range(n) if len(positives[c]) == 0]
    if absent:
        log.warning("no training box of class %s: its SVM cannot be trained, so R-CNN never detects it (give the "
                    "train split images of it)", ", ".join(repr(classes[c]) for c in absent))
    caches = [r.array(dim) for r in init]
    weights = np.zeros((n, dim), np.float32)
    biases = np.full(n, ABSENT_BIAS, np.float32)
    stats = {"hard_negatives_added": np.zeros(n, np.int64)}
    for rnd in range(s.rounds + 1):
        for c in range(n):
            if c not in absent:
                weights[c], biases[c] = _fit_svm(positives[c], caches[c], s, seed)
        if rnd == s.rounds:
            break
        # evict easy negatives, then mine: negatives inside the margin join the cache
        for c in range(n):
            caches[c] = caches[c][caches[c] @ weights[c] + biases[c] > EASY_NEGATIVE]
        found = [[] for _ in range(n)]
        for chunk in tqdm(iter_chunks(feature_dir), desc=f"svm: mining round {rnd + 1}/{s.rounds}", unit="chunk",
                          disable=not progress):
            x = chunk["features"].astype(np.float32) * scale
            scores = x @ weights.T + biases
            for c in range(n):
                neg = (~chunk["is_gt"]) & (chunk["iou_class"][:, c].astype(np.float32) < s.neg_iou)
                hard = neg & (scores[:, c] > HARD_NEGATIVE)
                found[c].append((x[hard], scores[hard, c]))
                if sum(len(f[0]) for f in found[c]) > 2 * s.max_negatives:  # keep memory bounded while streaming
                    xs, ss = np.concatenate([f[0] for f in found[c]]), np.concatenate([f[1] for f in found[c]])
                    top = np.argsort(-ss)[: s.max_negatives]
                    found[c] = [(xs[top], ss[top])]
        for c in range(n):
            xs = np.concatenate([caches[c]] + [f[0] for f in found[c]])
            if len(xs) > s.max_negatives:
                xs = xs[np.argsort(-(xs @ weights[c] + biases[c]))[: s.max_negatives]]
            known = {row.tobytes() for row in caches[c]}  # a cached negative found again is not new
            caches[c] = np.unique(xs, axis=0)
            stats["hard_negatives_added"][c] += sum(row.tobytes() not in known for row in caches[c])
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

    with atomic_file(path, "wb") as fh:
        np.savez(fh, **arrays)


def load_svm(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
