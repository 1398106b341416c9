"""Device choice, seeding, the repository root and (later) distributed setup."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

_EXPS_MARKER = os.sep + os.path.join(".dvc", "tmp", "exps") + os.sep


def repo_root(start: str | Path | None = None) -> Path:
    """The user's repository root: the nearest folder above ``start`` holding ``.dvc`` or ``.git``,
    or the repository that owns a DVC experiment copy under ``.dvc/tmp/exps/``."""
    here = Path(start or os.getcwd()).resolve()
    text = str(here) + os.sep
    if _EXPS_MARKER in text:
        return Path(text.split(_EXPS_MARKER, 1)[0])
    for p in (here, *here.parents):
        if (p / ".dvc").is_dir() or (p / ".git").exists():
            return p
    return here


def resolve_device(name: str = "auto"):
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` and ``mps`` as asked.

    Raises:
        ConfigError: a device was asked for that this machine does not have (names ``base.device``).
    """
    import torch

    from segdet.schema import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"base.device = {name!r} but CUDA is not available here; use 'auto' or 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"base.device = {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"base.device = {name!r} but MPS is not available here; use 'auto' or 'cpu'")
    return dev


def device_name(device) -> str:
    """``cpu``, or the accelerator's marketing name (``NVIDIA H100 80GB HBM3``) for logs and reports."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return dev.type


def hardware(device) -> str:
    """What a speed figure was measured on: ``CPU model, N cores, torch threads`` or the GPU's name with CUDA."""
    import os
    import platform

    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return f"{torch.cuda.get_device_name(dev)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    import torch

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
