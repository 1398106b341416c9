"""UNet training: data, model, optimizer and schedule from a :class:`UnetTrainConfig`, loop in ``engine``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from segdet.data.datasets import SegmentationDataset
from segdet.data.transforms import seg_transforms
from segdet.engine import FitResult, announce_transfer, check_resumable, fit, load_best, loaders, make_optimizer
from segdet.nets.unet import UNet, build_unet
from segdet.nets.weights import TransferReport, init_from
from segdet.sections import UnetTrainConfig
from segdet.segmentation.losses import SegLoss
from segdet.segmentation.metrics import scores
from segdet.stage import UserError

log = logging.getLogger(__name__)

CLASSES = ["background", "lesion"]


@torch.no_grad()
def validate(model: UNet, loader: DataLoader, loss_fn: SegLoss, device: torch.device) -> dict[str, float]:
    """``val_loss`` and per-image mean ``val_dice`` / ``val_iou`` at the training input size."""
    model.eval()
    total, n, dice, iou = 0.0, 0, 0.0, 0.0
    for images, masks in loader:
        images, masks = images.to(device, memory_format=torch.channels_last), masks.to(device)
        logits = model(images)
        loss, _ = loss_fn(logits, masks)
        s = scores(logits.argmax(1), masks)
        total += float(loss) * len(images)
        dice += float(s["dice"].sum())
        iou += float(s["iou"].sum())
        n += len(images)
    n = max(n, 1)
    return {"val_loss": total / n, "val_dice": dice / n, "val_iou": iou / n}


def train_unet(
    cfg: UnetTrainConfig,
    *,
    train_manifest: str | Path,
    val_manifest: str | Path,
    root: str | Path,
    device: torch.device,
    run_dir: str | Path,
    seed: int = 0,
    on_epoch: Callable[[list[dict]], None] | None = None,
    on_transfer: Callable[[TransferReport], None] | None = None,
    progress: bool = True,
    cpu_bf16: bool = False,
) -> tuple[UNet, FitResult]:
    """Train a UNet; ``run_dir`` receives ``last.pt`` (resume) and ``best.pt`` (highest val Dice).

    ``cfg.weights`` resumes a run from its checkpoint (model, optimizer, scheduler, epoch);
    ``cfg.init_from`` starts from another network's weights (strict=False transfer, reported to
    ``on_transfer``). Returns the model with the best weights loaded and the fit result.
    """
    # checkpoints written before unet_train.upsample existed had a bilinear decoder
    check_resumable(cfg.weights, "unet_train", {"variant": cfg.variant, "upsample": cfg.upsample},
                    legacy={"upsample": "bilinear"})
    torch.manual_seed(seed)  # model initialisation
    model = build_unet(cfg.variant, num_classes=len(CLASSES), upsample=cfg.upsample)
    # "encoder.": a torchvision ResNet-18 state dict lands in the resnet18 variant's encoder
    announce_transfer(init_from(model, cfg.init_from, prefixes=("", "encoder.")) if cfg.init_from else None,
                      on_transfer)
    # channels-last (NHWC) convolutions: what tensor cores take under AMP, and on the CPU (oneDNN) 14 % faster
    # training steps and 28 % faster inference (bench/roofline.py, docs/benchmarks.md)
    model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    generator = torch.Generator()
    augment = seg_transforms(cfg.input_size, train=cfg.augment, rotate=cfg.rotate, scale=cfg.scale,
                             color_jitter=cfg.color_jitter, resize=False)
    # both resize every pair to input_size x input_size as it is read (a photo 8x larger or more is decoded
    # reduced) and keep it so in memory for the next epochs; the augmentation runs on every read
    size = cfg.input_size
    train_ds = SegmentationDataset(train_manifest, root, augment, decode_at_least=size, resize_to=size, cache=True)
    val_ds = SegmentationDataset(val_manifest, root, seg_transforms(size, train=False, resize=False),
                                 decode_at_least=size, resize_to=size, cache=True)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise UserError(f"unet_train needs images in both {train_manifest} ({len(train_ds)}) and "
                        f"{val_manifest} ({len(val_ds)}); give the split that has none some images (data.split, "
                        "or the source's own split lists)")
    train_loader, val_loader = loaders(train_ds, val_ds, batch_size=cfg.batch_size, workers=cfg.workers,
                                       device=device, generator=generator, key="unet_train.batch_size")

    optimizer = make_optimizer(cfg.optimizer, model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    loss_fn = SegLoss(cfg.loss)

    def step(model, batch, device):
        images, masks = batch
        logits = model(images.to(device, non_blocking=True, memory_format=torch.channels_last))
        return loss_fn(logits, masks.to(device, non_blocking=True))

    result = fit(
        model, optimizer, scheduler, train_loader,
        step=step, evaluate=lambda m: validate(m, val_loader, loss_fn, device),
        epochs=cfg.epochs, device=device, run_dir=run_dir, monitor="val_dice", mode="max", seed=seed,
        generator=generator, amp=cfg.amp, cpu_bf16=cpu_bf16, resume=cfg.weights, config=dataclasses.asdict(cfg),
        classes=CLASSES, on_epoch=on_epoch, progress=progress, desc=cfg.variant,
    )
    return load_best(model, result, device), result
