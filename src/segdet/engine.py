"""The one training loop for UNet, the R-CNN CNN and YOLOv1 (torchvision ``references/detection`` style).

``fit`` runs epochs of :func:`train_one_epoch`, steps the LR scheduler once per epoch, evaluates, and
writes two checkpoints into ``run_dir`` (file contract: docs/architecture.md): ``last.pt`` after every epoch (what a
killed run resumes from) and ``best.pt`` whenever the monitored metric improves. A fresh (not resumed) run first
moves the checkpoints of the run before it to ``run_dir/previous/``, so that run can still be resumed. Each epoch re-seeds
PyTorch and the loader's generator from ``(seed, epoch)``, so a run resumed from ``last.pt`` after epoch
k ends with the same weights as a run that was never interrupted. A non-finite loss stops training
with :class:`NonFiniteLossError`. AMP when asked: float16 autocast + GradScaler on CUDA, and with ``cpu_bf16``
bfloat16 autocast on a CPU with AMX or AVX512-BF16 (:func:`autocast_dtype`).
Models differ only in the ``step`` (batch -> loss) and ``evaluate`` functions they pass in.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from segdet import distributed
from segdet.nets.weights import CheckpointError, TransferReport, load_checkpoint, save_checkpoint
from segdet.stage import UserError

log = logging.getLogger(__name__)

#: ``step(model, batch, device) -> (loss, {"part": float or 0-d tensor, ...})``
StepFn = Callable[[nn.Module, Any, torch.device], tuple[torch.Tensor, dict[str, float]]]


class NonFiniteLossError(UserError, RuntimeError):
    """Training produced a NaN or infinite loss; the message says where and what to try."""


#: batches between the host's looks at the running loss (progress bar, non-finite check)
SYNC_EVERY = 10
#: process r of a torchrun run seeds its augmentations with the epoch's seed + r * this (rank 0: the one-process seed)
RANK_SEED_STRIDE = 7919


def autocast_dtype(device: torch.device, cpu_bf16: bool = False) -> torch.dtype | None:
    """What ``amp: true`` trains in: float16 (with a GradScaler) on CUDA; with ``cpu_bf16`` (``base.cpu_bf16``)
    bfloat16 on a CPU with native bfloat16 arithmetic (:func:`segdet.runtime.cpu_bf16_units`: AMX on Intel Xeon
    4th generation and later, AVX512-BF16 on AMD EPYC Zen 4 and later; about 2x the float32 speed of the stages'
    networks, at up to 0.02 of each test metric on the default data: docs/benchmarks.md); None (float32)
    elsewhere."""
    from segdet.runtime import cpu_bf16_units

    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_bf16 and cpu_bf16_units():
        return torch.bfloat16
    return None


def make_optimizer(kind: str, params, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
                   ) -> torch.optim.Optimizer:
    """``adam`` or ``sgd`` (with momentum) over ``params``, with PyTorch's fused implementation where the
    parameters are on a CPU or a CUDA device: one kernel for all parameters instead of a loop of small ops (the
    UNet32 Adam step 6.7 -> 1.6 ms on a 2-core Intel Xeon, bench/roofline.py's models; the update is the same
    up to float rounding)."""
    params = list(params)
    device = params[0].device.type if params else "cpu"
    fused = {"fused": True} if device in ("cpu", "cuda") else {}
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fused)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, **fused)
    raise ValueError(f"Wrong optimizer {kind!r}. Available options are: adam, sgd")


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return len(first)


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Any,
    step: StepFn,
    device: torch.device,
    *,
    epoch: int,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool | torch.dtype = False,
    progress: bool = True,
    desc: str = "train",
    grad_clip: float = 0.0,
    ema: AveragedModel | None = None,
    sync_every: int = SYNC_EVERY,
) -> dict[str, float]:
    """One pass over ``loader``; returns the sample-weighted mean of ``loss`` and of each loss part (over all
    processes under ``torchrun``).

    ``grad_clip > 0`` clips the gradient norm to it before each step (as torchvision's references do);
    ``ema`` (an exponential moving average of the weights) is updated after every optimizer step. Losses are
    summed on the device; the host waits for them only every ``sync_every`` batches (progress bar, non-finite
    check naming the first bad batch) and at the end, so a GPU is never stalled step by step.
    """
    model.train()
    sums: torch.Tensor | None = None
    keys: list[str] = []
    seen = 0
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # the first non-finite batch, and its loss
    bad_loss = torch.zeros((), device=device)
    bar = tqdm(loader, desc=f"{desc} epoch {epoch}", unit="batch", disable=not progress, leave=False)
    total = len(loader) if hasattr(loader, "__len__") else None
    for i, batch in enumerate(bar):
        with torch.autocast(device.type, dtype=amp if isinstance(amp, torch.dtype) else None, enabled=bool(amp)):
            loss, parts = step(model, batch, device)
        loss_value = loss.detach().float()
        new_bad = (first_bad < 0) & ~torch.isfinite(loss_value)
        first_bad = torch.where(new_bad, i, first_bad)
        bad_loss = torch.where(new_bad, loss_value, bad_loss)
        optimizer.zero_grad(set_to_none=True)
        scaled = scaler is not None and scaler.is_enabled()
        (scaler.scale(loss) if scaled else loss).backward()
        if grad_clip > 0:
            if scaled:
                scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaled:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if ema is not None:
            ema.update_parameters(distributed.unwrap(model))
        n = _batch_size(batch)
        seen += n
        keys = ["loss", *parts]
        # float64 sums, as the host's Python floats would be
        values = torch.stack([loss_value.double(),
                              *(torch.as_tensor(v, device=device).detach().double() for v in parts.values())])
        sums = values * n if sums is None else sums + values * n
        if (i + 1) % sync_every == 0 or (total is not None and i + 1 == total):
            _check_finite(first_bad, bad_loss, desc, epoch, optimizer)
            bar.set_postfix(loss=f"{float(sums[0]) / seen:.4f}")
    if sums is None:
        return {}
    _check_finite(first_bad, bad_loss, desc, epoch, optimizer)
    sums = distributed.all_sum(torch.cat([sums, torch.tensor([float(seen)], device=device, dtype=sums.dtype)]))
    return {k: float(v) / max(float(sums[-1]), 1.0) for k, v in zip(keys, sums[:-1].tolist(), strict=True)}


def _check_finite(first_bad: torch.Tensor, loss: torch.Tensor, desc: str, epoch: int,
                  optimizer: torch.optim.Optimizer) -> None:
    bad = int(first_bad)
    if bad >= 0:
        raise NonFiniteLossError(
            f"{desc}: the loss became {float(loss)} at epoch {epoch}, batch {bad + 1}; training stopped. "
            f"Try a lower learning rate (now {optimizer.param_groups[0]['lr']:g}) or check the labels; "
            "the last good checkpoint is last.pt of the previous epoch"
        )


def keep_previous_run(run_dir: Path) -> Path:
    """Move the checkpoints of the run before this one into ``run_dir/previous/`` (replacing an older one there), so
    that a fresh run does not destroy the only way to resume the last one."""
    previous = run_dir / "previous"
    shutil.rmtree(previous, ignore_errors=True)
    previous.mkdir()
    for name in ("last.pt", "best.pt"):
        if (run_dir / name).is_file():
            (run_dir / name).replace(previous / name)
    log.warning("a new run starts in %s; the checkpoints of the run before it are kept in %s (resume that run by "
                "setting weights to %s)", run_dir, previous, previous / "last.pt")
    return previous


@dataclass
class FitResult:
    history: list[dict]
    best_epoch: int
    best_value: float
    best_checkpoint: Path
    last_checkpoint: Path


def _better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    train_loader: Any,
    *,
    step: StepFn,
    evaluate: Callable[[nn.Module], dict[str, float]],
    epochs: int,
    device: torch.device,
    run_dir: str | Path,
    monitor: str,
    mode: str = "max",
    seed: int = 0,
    generator: torch.Generator | None = None,
    amp: bool = False,
    cpu_bf16: bool = False,
    resume: str | Path | None = None,
    config: dict | None = None,
    classes: list[str] | None = None,
    on_epoch: Callable[[list[dict]], None] | None = None,
    progress: bool = True,
    desc: str = "train",
    grad_clip: float = 0.0,
    ema_decay: float = 0.0,
) -> FitResult:
    """Train for ``epochs`` (counting from 1), resuming from the checkpoint ``resume`` when given.

    Args:
        generator: the ``torch.Generator`` of ``train_loader`` (shuffle order, worker seeds); re-seeded
            every epoch together with the global RNG.
        monitor: key of ``evaluate``'s result that picks ``best.pt`` (``mode`` ``max`` or ``min``).
        on_epoch: called after each epoch with the history so far (rows of a resumed run included); the
            last row is this epoch's ``{"epoch", "train_loss", ..., "lr", "seconds"}``.
        ema_decay: > 0 keeps an exponential moving average of the weights (``torch.optim.swa_utils``, batch
            norm statistics included), updated after every step with this decay, as ultralytics' YOLO training
            does. The average is what ``evaluate`` sees and what both checkpoints hold as ``model``; the weights
            being trained are stored beside it as ``train_model`` so that a resumed run continues exactly.
    """
    run_dir = Path(run_dir)
    main = distributed.is_main()  # under torchrun only rank 0 writes; the others train and wait
    best_path, last_path = run_dir / "best.pt", run_dir / "last.pt"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".*.pt.tmp-*"):  # a checkpoint write cut short by SIGKILL; the old file is intact
            log.info("removing %s, the unfinished write of a killed run", stale)
            stale.unlink()
    wanted_amp, amp = amp, autocast_dtype(device, cpu_bf16) if amp else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)  # bfloat16 needs no loss scaling
    if amp is not None:
        log.info("mixed precision: %s autocast on %s", str(amp).removeprefix("torch."), device)
    elif wanted_amp and cpu_bf16 and device.type == "cpu" and main:
        from segdet.runtime import cpu_flags

        why = ("this CPU has neither AMX nor AVX512-BF16 (bfloat16 would be emulated, slower than float32)"
               if cpu_flags() else "this system shows no CPU flags in /proc/cpuinfo, so native bfloat16 cannot be "
               "confirmed")
        log.warning("base.cpu_bf16 = true has no effect here: %s; training in float32", why)
    ema = None
    if ema_decay > 0:
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
    history: list[dict] = []
    best_epoch, best_value = 0, None
    start = 1
    keep_previous = main and not resume and last_path.is_file()  # done at this run's first checkpoint: not lost on a failed start
    if resume:
        ckpt = load_checkpoint(resume, map_location=device)
        try:
            model.load_state_dict(ckpt.get("train_model") or ckpt["model"])
            if ema is not None:
                ema.module.load_state_dict(ckpt["model"])
                ema.n_averaged.fill_(int(ckpt.get("ema_updates", 0)))
        except (RuntimeError, KeyError) as exc:
            detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[:2])
            raise CheckpointError(
                f"{resume}: cannot resume, the checkpoint does not fit this model ({detail[:240]}); to start "
                "from another network's weights use init_from"
            ) from None
        if ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler") and scheduler is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        metrics = ckpt.get("metrics") or {}
        history = list(metrics.get("history", []))
        best_epoch, best_value = metrics.get("best_epoch", 0), metrics.get("best_value")
        start = int(ckpt["epoch"]) + 1
        src_best = Path(resume).with_name("best.pt")
        if main and src_best.is_file() and src_best.resolve() != best_path.resolve():
            shutil.copy2(src_best, best_path)
        trained_by = int(ckpt.get("world_size", 1))
        if trained_by != distributed.world() and main:
            log.warning(
                "%s was trained by %d process(es); this run has %d. The global batch, the learning rate and the "
                "order of the images stay the same; each process now takes 1/%d of every batch, and the random "
                "augmentations%s are drawn differently, so the result is not bit-identical to an uninterrupted "
                "%d-process run", resume, trained_by, distributed.world(), distributed.world(),
                " and (on CPU) the batch-norm statistics" if device.type != "cuda" else "", trained_by)
        log.info("resumed from %s after epoch %d (best %s = %s at epoch %d)", resume, start - 1, monitor,
                 best_value, best_epoch)
        if start > epochs:
            log.warning("the checkpoint is already at epoch %d >= epochs = %d: nothing to train", start - 1, epochs)
            if on_epoch is not None and main and history:
                on_epoch(history)  # the outputs (per-epoch CSV) still describe the run

    train_model = distributed.wrap(model, device)  # DistributedDataParallel under torchrun, else model itself

    def checkpoint(path: Path, epoch: int) -> None:
        nonlocal keep_previous
        if not main:
            return
        if keep_previous:
            keep_previous_run(run_dir)
            keep_previous = False
        save_checkpoint(
            path, model=model if ema is None else ema.module, optimizer=optimizer, scheduler=scheduler,
            scaler=scaler, epoch=epoch, config=config or {}, classes=classes or [],
            metrics={"history": history, "best_epoch": best_epoch, "best_value": best_value, "monitor": monitor},
            extra={"world_size": distributed.world(),
                   **({} if ema is None else {"train_model": model.state_dict(), "ema_updates": int(ema.n_averaged)})},
        )

    for epoch in range(start, epochs + 1):
        # augmentation draws differ between processes; the loader's generator (the image order) does not
        torch.manual_seed(epoch_seed(seed, epoch) + RANK_SEED_STRIDE * distributed.rank())
        if generator is not None:
            generator.manual_seed(epoch_seed(seed, epoch))
        t0 = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train = train_one_epoch(train_model, optimizer, train_loader, step, device, epoch=epoch, scaler=scaler,
                                amp=amp or False, progress=progress and main, desc=desc, grad_clip=grad_clip, ema=ema)
        if scheduler is not None:
            scheduler.step()
        # rank 0 validates (on the unwrapped model: no collective inside) and every process takes its result,
        # so all agree on the best epoch
        val = distributed.broadcast(evaluate(model if ema is None else ema.module) if main else None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the epoch's seconds include all its GPU work
        row = {"epoch": epoch, **{f"train_{k}": v for k, v in train.items()}, **val, "lr": lr,
               "seconds": time.perf_counter() - t0}
        history.append(row)
        if monitor not in val:
            raise KeyError(f"evaluate() returned {sorted(val)}, not the monitored metric {monitor!r}")
        if _better(val[monitor], best_value, mode):
            best_epoch, best_value = epoch, float(val[monitor])
            checkpoint(best_path, epoch)
        checkpoint(last_path, epoch)
        if on_epoch is not None and main:
            on_epoch(history)
        log.info("epoch %d/%d: %s", epoch, epochs,
                 ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
    if main and not best_path.is_file():
        log.warning("no best.pt from before the resume was found; the last epoch is used as the best")
        checkpoint(best_path, max(start - 1, epochs))
    distributed.barrier()  # rank 0's checkpoints are complete before any process goes on
    return FitResult(history, best_epoch, best_value if best_value is not None else float("nan"), best_path,
                     last_path)


# ----------------------------------------------------------------------------------------------------------
# What the three training functions share around fit()
# ----------------------------------------------------------------------------------------------------------


def check_resumable(weights: str | None, section: str, expected: dict[str, str],
                    legacy: dict[str, str] | None = None) -> None:
    """Refuse to resume ``<section>.weights`` from a checkpoint trained with other values of the ``expected`` keys
    (a UNet variant or decoder, an R-CNN backbone): its tensors would not fit, and ``init_from`` is the way to reuse
    them. ``legacy`` gives the value a key had in checkpoints written before it existed (UNet ``upsample``:
    ``bilinear``), for checkpoints that record a training config at all (another network's file has none, and then
    nothing here is known to differ); a key neither records is not checked. The checkpoint is read once."""
    if not weights:
        return
    config = load_checkpoint(weights).get("config") or {}
    for key, value in expected.items():
        trained_as = config.get(key, (legacy or {}).get(key) if config else None)
        if trained_as and trained_as != value:
            raise CheckpointError(
                f"{section}.weights = {weights} was trained with {key} {trained_as} but {section}.{key} is {value}; "
                f"resume with {key} {trained_as}, or use init_from to start a {value} from its weights"
            )


def announce_transfer(report: TransferReport | None, on_transfer: Callable[[TransferReport], None] | None) -> None:
    """Log what a weight transfer loaded and skipped, and hand the report to ``on_transfer`` (MLflow)."""
    if report is None:
        return
    log.info("%s", report.summary())
    if on_transfer is not None:
        on_transfer(report)


def resolve_workers(workers: int | str, device: torch.device) -> int:
    """``workers: auto``: on CUDA this process's share of the cores (the machine's, or the share a DVC queue
    worker leaves it, see :func:`segdet.runtime.cpu_share`, divided by the processes torchrun runs on this
    node), at most 8; on CPU 0, because loading in the training process leaves the cores to the math."""
    if workers != "auto":
        return int(workers)
    if device.type != "cuda":
        return 0
    from segdet.runtime import cpu_share

    per_process = cpu_share() // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(0, min(8, per_process - 1))  # one core stays with the training process


def loaders(train_ds, val_ds, *, batch_size: int, workers: int | str, device: torch.device,
            generator: torch.Generator, collate_fn: Callable | None = None, key: str = "batch_size"
            ) -> tuple[DataLoader, DataLoader]:
    """Shuffled training and ordered validation loaders (shuffling from ``generator``; pinned memory on CUDA).
    Under torchrun ``batch_size`` (the parameter ``key``) is the global batch: each process loads its share of it
    through :class:`segdet.distributed.ShardedRandomSampler`; validation is not split (rank 0 runs it).
    No ``persistent_workers``: each epoch's workers are seeded from the re-seeded generator, so a resumed run
    draws the same augmentations as an uninterrupted one. For the same reason, worker processes would lose what
    they put in a dataset's image cache (``cache=True``) at the end of each epoch: with workers, the caches are
    filled here first (on as many threads as workers), and the workers share them."""
    pin = device.type == "cuda"
    n = resolve_workers(workers, device)
    if n > 0:
        from segdet.data.datasets import fill_cache

        for ds in (train_ds, val_ds):
            if getattr(ds, "cache", None) is not None:
                fill_cache(ds, n)
    if distributed.world() > 1:
        train = DataLoader(train_ds, distributed.per_process(batch_size, key),
                           sampler=distributed.ShardedRandomSampler(train_ds, generator), generator=generator,
                           num_workers=n, collate_fn=collate_fn, pin_memory=pin)
    else:
        train = DataLoader(train_ds, batch_size, shuffle=True, generator=generator, num_workers=n,
                           collate_fn=collate_fn, pin_memory=pin)
    val = DataLoader(val_ds, batch_size, num_workers=n, collate_fn=collate_fn, pin_memory=pin)
    return train, val


def load_best(model: nn.Module, result: FitResult, device: torch.device, last: bool = False) -> nn.Module:
    """``model`` with the weights of the run's best checkpoint (the epoch the monitored metric chose), or with
    ``last`` of its last checkpoint (the validated weights: the moving average's when there is one); under
    torchrun only rank 0, which wrote it, loads it (the others' work ends with training)."""
    if not distributed.is_main():
        return model
    best = torch.load(result.last_checkpoint if last else result.best_checkpoint, map_location=device,
                      weights_only=True)
    model.load_state_dict(best["model"])
    return model
