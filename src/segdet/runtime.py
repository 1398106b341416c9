"""Device choice, seeding, the repository root, and the share of the machine a stage takes when DVC's queue
runs several experiments side by side (``dvc queue start -j N``)."""

from __future__ import annotations

import ctypes
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

    With ``auto`` on a machine with several GPUs, an experiment run by a DVC queue worker next to others
    takes a GPU of its own: the lowest free :func:`queue_slot`, modulo the GPUs. (Under torchrun,
    :func:`segdet.distributed.init` puts each process on ``cuda:LOCAL_RANK``.)

    Raises:
        ConfigError: a device was asked for that this machine does not have (names ``base.device``).
    """
    import torch

    from segdet.schema import ConfigError

    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        gpus = torch.cuda.device_count()
        if gpus > 1 and "LOCAL_RANK" not in os.environ and queue_workers() > 1:
            return torch.device("cuda", queue_slot() % gpus)
        return torch.device("cuda")
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
    amx = ", AMX" if cpu_has_amx() else ""
    return f"{model}{amx}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


#: where :func:`cpu_flags` reads the CPU's feature flags
CPUINFO = "/proc/cpuinfo"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (the ``flags`` line of /proc/cpuinfo); empty where there is none (not Linux)."""
    try:
        with open(CPUINFO) as fh:
            return next((set(line.split(":", 1)[1].split()) for line in fh if line.startswith("flags")), set())
    except OSError:
        return set()


def cpu_has_amx() -> bool:
    """True on a CPU with AMX bfloat16 units (``amx_bf16`` in /proc/cpuinfo: Intel Xeon Sapphire Rapids and
    later), where bfloat16 convolutions and matrix products run several times faster than float32."""
    return "amx_bf16" in cpu_flags()


def cpu_bf16_units() -> str | None:
    """The CPU's native bfloat16 arithmetic, which ``base.cpu_bf16`` trains with: ``AMX`` (Intel Xeon Sapphire
    Rapids and later), ``AVX512-BF16`` (AMD EPYC Zen 4 and Zen 5, Intel Cooper Lake: ``avx512_bf16``), or None.
    AMX ran the stages' training steps 1.4x (the R-CNN region CNN) to 2.4x (UNet) faster than float32 on an Intel
    Xeon, AVX512-BF16 1.3x to 2.3x on an AMD EPYC Zen 4 (docs/benchmarks.md); without either oneDNN would emulate
    bfloat16, slower than float32."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def cores() -> int:
    """Cores this process may run on (its CPU affinity: a container's or a batch scheduler's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: cgroup memory limits at or above this are "no limit" (cgroup v1 writes 2^63 rounded down to a page)
_NO_LIMIT = 1 << 60


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2's no limit) -> None


def available_memory(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Bytes this process may still allocate: the machine's available memory (``psutil``), or less where a
    container's or a batch scheduler's cgroup limit leaves less (limit minus usage; cgroup v2's ``memory.max`` and
    ``memory.current``, or v1's ``memory/memory.limit_in_bytes`` and ``memory.usage_in_bytes``). psutil alone
    reports the host's memory inside a container."""
    import psutil

    free = psutil.virtual_memory().available
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit, usage = _read_int(cgroup_root / limit_file), _read_int(cgroup_root / usage_file)
        if limit is not None and usage is not None and limit < _NO_LIMIT:
            free = min(free, max(0, limit - usage))
    return free


def queue_workers() -> int:
    """DVC experiment-queue workers running on this machine now (``dvc queue start -j N`` starts N of them,
    each running one experiment at a time): processes ``dvc exp queue-worker dvc-exp-<repo>-<n>@localhost``.
    0 outside Linux or when none runs."""
    count = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        if b"queue-worker" in args and any(a.startswith(b"dvc-exp-") for a in args):
            count += 1
    return count


def cpu_share(workers: int | None = None) -> int:
    """The cores this experiment should use: all of :func:`cores`, or 1/N of them while N DVC queue workers run
    experiments side by side (so ``dvc queue start -j N`` does not run N x cores threads on the cores); ``workers``
    is N when the caller has counted them already (:func:`queue_workers`)."""
    return max(1, cores() // max(1, queue_workers() if workers is None else workers))


def share_machine() -> int:
    """Limit this process (PyTorch and OpenCV threads, what its child processes inherit through
    ``OMP_NUM_THREADS``) to :func:`cpu_share`; returns the number of cores. Called by every stage at start; the
    share is kept in ``SEGDET_CPU_SHARE`` (``share/cores``) and tagged on the stage's MLflow run."""
    import logging

    workers = queue_workers()
    share, total = cpu_share(workers), cores()
    os.environ["SEGDET_CPU_SHARE"] = f"{share}/{total}"  # tagged on the stage's MLflow run
    if share < total:
        os.environ["OMP_NUM_THREADS"] = str(share)
        import torch

        torch.set_num_threads(share)
        try:
            import cv2

            cv2.setNumThreads(share)
        except ImportError:
            pass
        logging.getLogger(__name__).info(
            "%d DVC queue workers share this machine: this experiment uses %d of its %d cores",
            workers, share, total)
    return share


#: glibc ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: freed memory kept for reuse by :func:`keep_freed_memory`: blocks up to this size come from the heap, and the
#: heap is handed back to the kernel only when this much is free at its top
KEEP_FREED_BYTES = 1 << 30


def keep_freed_memory(limit: int = KEEP_FREED_BYTES) -> bool:
    """Have glibc's ``malloc`` keep freed memory for the next allocation instead of returning it to the kernel.

    A network on the CPU allocates and frees blocks of the same sizes at every step or batch. glibc serves
    blocks over its mmap threshold (128 KiB, rising with the blocks freed up to 32 MiB) with fresh pages from
    ``mmap`` and hands the heap's free top back once it exceeds twice that, so each step faults in and zeroes
    those pages again: 10 to 25 thousand page faults a UNet32 training step. With both thresholds at ``limit``
    the blocks are reused from the heap (a few hundred faults a step): the stages run 4 to 20 % faster with the
    same results, at up to about 130 MB more peak memory (docs/benchmarks.md, "The allocator"). Called by every stage
    at start (``segdet.stage.run_stage``); its child processes inherit it (``MALLOC_*_THRESHOLD_`` in the
    environment for those started fresh). A no-op returning False where there is no glibc ``mallopt`` (macOS,
    Windows, musl's stub) or where the environment sets ``SEGDET_KEEP_FREED_MEMORY=0``."""
    if os.environ.get("SEGDET_KEEP_FREED_MEMORY", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter is linked against
    except (OSError, AttributeError, TypeError):  # no mallopt (macOS), or no process symbol table (Windows)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    limit = min(limit, 2**31 - 1)  # mallopt takes an int
    if not (mallopt(_M_MMAP_THRESHOLD, limit) and mallopt(_M_TRIM_THRESHOLD, limit)):
        return False
    # child processes started fresh (spawn, forkserver: selective search's pool) read these at their start
    os.environ["MALLOC_MMAP_THRESHOLD_"] = os.environ["MALLOC_TRIM_THRESHOLD_"] = str(limit)
    return True


_slot_lock = None  # the open lock file of this process's slot, held until it exits


def queue_slot() -> int:
    """A number no other running experiment of this repository holds (0, 1, ...): the lowest free slot,
    taken with an exclusive ``flock`` on ``.dvc/tmp/segdet-slots/<n>.lock`` that the operating system releases
    when this process ends. Used to give each queued experiment its own GPU."""
    global _slot_lock
    import fcntl

    if _slot_lock is not None:
        return _slot_lock[0]
    folder = repo_root() / ".dvc" / "tmp" / "segdet-slots"
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        fh = open(folder / f"{n}.lock", "w")  # noqa: SIM115 (held open on purpose)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            n += 1
            continue
        _slot_lock = (n, fh)
        return n


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch (all devices)."""
    import torch

    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
