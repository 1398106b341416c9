"""Shared helpers for the benchmarks: the hardware line printed beside every figure."""

from __future__ import annotations

import os
import platform

import torch


def hardware(device: torch.device) -> str:
    """``CPU model, N cores, torch threads`` or the GPU's name."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as fh:
            model = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
