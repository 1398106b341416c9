"""Checkpoints (file contract: docs/architecture.md) and weight transfer between networks.

A checkpoint is ``torch.save`` of a dict of plain types and tensors only::

    {"model", "optimizer", "scheduler", "scaler", "epoch", "config", "classes", "metrics"}

so it loads with ``torch.load(path, weights_only=True)`` (no pickled code runs). ``transfer_weights``
is ``load_state_dict(strict=False)`` done properly: tensors whose shapes differ are skipped too (plain
``strict=False`` raises on them) and a :class:`TransferReport` lists what loaded and what did not.
"""

from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segdet.io import atomic_file
from segdet.stage import UserError

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "config", "classes", "metrics")


class CheckpointError(UserError):
    """A file is missing, is not a checkpoint, or does not fit the model; the message names the file."""


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    epoch: int,
    config: dict,
    classes: list[str],
    metrics: dict,
    extra: dict | None = None,
) -> None:
    """Write a checkpoint atomically (a crash mid-write never leaves a truncated file); ``extra`` holds more
    top-level entries (tensors are moved to the CPU)."""
    ckpt = {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "epoch": int(epoch),
        "config": config,
        "classes": list(classes),
        "metrics": metrics,
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict):
            value = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in value.items()}
        ckpt[key] = value
    save_checkpoint_dict(ckpt, path)


def save_checkpoint_dict(ckpt: dict, path: str | Path) -> None:
    """``torch.save`` a checkpoint dict atomically (a crash mid-write never leaves a truncated file)."""
    try:
        with atomic_file(path, "wb") as fh:
            torch.save(ckpt, fh)
    except RuntimeError as exc:  # torch reports a short write as "unexpected pos ..." without the errno
        if "unexpected pos" not in str(exc):
            raise
        free = shutil.disk_usage(Path(path).parent).free
        raise OSError(errno.ENOSPC if free < 2 * 1024**3 else errno.EIO,
                      f"torch.save could not write the whole file ({free / 1e6:.0f} MB free)", str(path)) from None


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one clause."""
    text = str(exc)
    if "Weights only load failed" in text:
        return ("it holds pickled Python objects besides weights, which segdet never unpickles: "
                "torch.load(weights_only=True) refused it. If you trust the file, save its state_dict() and use that")
    if "zip archive" in text or "central directory" in text or "PytorchStreamReader" in text:
        return "truncated or damaged: not a complete PyTorch file; torch.load(weights_only=True) cannot read it"
    if isinstance(exc, (EOFError, UnicodeDecodeError)) or "invalid load key" in text or text.strip().isdigit():
        return "not a PyTorch file (torch.save writes one); torch.load(weights_only=True) cannot read it"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"torch.load(weights_only=True) failed: {first[:200]}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing or is not a torch weights file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle means: not a checkpoint
        raise CheckpointError(f"{path}: not a checkpoint ({_load_failure(exc)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(obj).__name__}, expected a dict)")
    return obj


def state_dict_of(obj: dict, path: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """The model weights of a segdet checkpoint, or ``obj`` itself when it is a plain state dict."""
    state = obj.get("model", obj) if isinstance(obj.get("model", None), dict) else obj
    if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: holds no model weights (expected a segdet checkpoint or a state dict)")
    return state


@dataclass
class TransferReport:
    """What :func:`transfer_weights` did. ``mismatched`` holds ``(key, source shape, target shape)``."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    note: str = ""

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "note": self.note,
            "loaded": self.loaded,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "mismatched": [{"key": k, "source": list(s), "target": list(t)} for k, s, t in self.mismatched],
        }

    def summary(self) -> str:
        if self.note:
            return f"weights from {self.source}: {self.note}"
        lines = [
            f"weights from {self.source}: {len(self.loaded)} tensors loaded, {len(self.mismatched)} skipped "
            f"(shape differs), {len(self.missing)} missing (kept as initialised), {len(self.unexpected)} unexpected"
        ]
        lines += [f"  shape differs: {k} {tuple(s)} -> {tuple(t)}" for k, s, t in self.mismatched]
        lines += [f"  missing: {k}" for k in self.missing]
        lines += [f"  unexpected: {k}" for k in self.unexpected]
        return "\n".join(lines)


def transfer_weights(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict", prefix: str = ""
) -> TransferReport:
    """Copy every tensor of ``state`` whose name (after adding ``prefix``) and shape match into ``model``.

    Returns a :class:`TransferReport`; nothing is raised for missing, unexpected or mismatched keys.
    """
    state = {prefix + k: v for k, v in state.items()}
    target = model.state_dict()
    report = TransferReport(source)
    usable = {}
    for k, v in state.items():
        if k in target and tuple(v.shape) != tuple(target[k].shape):
            report.mismatched.append((k, tuple(v.shape), tuple(target[k].shape)))
        else:
            usable[k] = v
    result = model.load_state_dict(usable, strict=False)
    report.missing = sorted(set(result.missing_keys) - {k for k, _, _ in report.mismatched})
    report.unexpected = sorted(result.unexpected_keys)
    report.loaded = sorted(k for k in usable if k in target)
    return report


def init_from(model: nn.Module, path: str | Path, prefixes: tuple[str, ...] = ("",)) -> TransferReport:
    """Load another network's weights from ``path`` (checkpoint or state dict) into ``model``.

    ``prefixes`` are tried on the file's tensor names (e.g. ``"features."`` so a torchvision ResNet state dict
    lands in a backbone called ``features``); the one that fits the most tensors is used.

    Raises:
        CheckpointError: the file is not a checkpoint, or not a single tensor fits the model.
    """
    state = state_dict_of(load_checkpoint(path), path)
    target = model.state_dict()

    def fits(prefix: str) -> int:
        return sum(1 for k, v in state.items() if prefix + k in target and target[prefix + k].shape == v.shape)

    report = transfer_weights(model, state, str(path), max(prefixes, key=fits))
    if not report.loaded:
        raise CheckpointError(
            f"{path}: no tensor fits this model ({len(report.mismatched)} shape mismatches, "
            f"{len(report.unexpected)} unknown names); is it the right network?"
        )
    return report
