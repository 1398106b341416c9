"""YOLOv1 training: data with the paper's augmentation, model, schedule, loop in ``engine``."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from segdet.data.datasets import DetectionDataset, detection_collate
from segdet.data.formats import coco_annotation, parse_voc_xml
from segdet.data.pairs import read_manifest, resolve
from segdet.data.transforms import yolo_transforms
from segdet.detection.evaluate import coco_results, evaluate_detections
from segdet.detection.yolo.decode import decode
from segdet.detection.yolo.detect import FALLBACK_SCORE
from segdet.detection.yolo.loss import YoloLoss
from segdet.engine import FitResult, announce_transfer, fit, load_best, loaders, make_optimizer
from segdet.nets.backbones import build_backbone
from segdet.nets.weights import TransferReport, init_from, load_checkpoint, transfer_weights
from segdet.nets.yolo import YOLOv1
from segdet.schema import ConfigError
from segdet.sections import YoloTrainConfig
from segdet.stage import UserError

log = logging.getLogger(__name__)

#: ``input_size: auto`` tries these grids (S), smallest first: 256 to 448 px with the small backbone
AUTO_GRIDS = (8, 10, 12, 14)
#: ... and takes the first on which at most this share of the training objects shares its cell with another
#: object's centre: YOLOv1 trains one object per cell, so those are lost (dense scenes: 15 % at S = 8).
#: The count is the paper's (one object a cell) whatever ``cell_objects`` says: a dense scene needs the larger
#: input for its small objects' pixels as much as for the finer grid (docs/real-data.md: counted with two
#: objects a cell, one-class dense scenes got 256 px and mAP@0.5 0.41, against 0.71 at 384 px)
AUTO_MAX_LOST = 0.07
#: ... and on which at most this share of the training objects is smaller, on its shorter side at that input
#: size, than two steps of the backbone's stride (two pixels of its feature map: 32 px for ``small``). Real photos
#: tiled into dense scenes (raccoon-voc, 22.6 objects a 640x480 scene) lose few objects to shared cells (3.7 % at
#: S = 8), yet YOLOv1 gained with every larger input: test mAP@0.5 0.602 at 256 px, 0.627 at 320, 0.698 at 384,
#: 0.752 at 448, as the share of objects under 32 px fell from 51 % to 33, 22 and 14 % (docs/real-data.md).
#: raccoon-voc's own photos (one large raccoon each, 0.6 % under 32 px at 256 px) keep 256 px, where they score best
AUTO_MAX_SMALL = 0.05
AUTO_MIN_STRIDES = 2

#: NMS IoU of the per-epoch validation mAP (yolo_eval's default; it only ranks the epochs)
VAL_NMS_IOU = 0.5


def collate(batch):
    """Stacked images and ``{"boxes", "labels"}`` targets (plus ``difficult`` where the dataset gives it)."""
    images, targets = detection_collate(batch)
    return torch.stack([img.as_subclass(torch.Tensor) for img in images]), [
        {"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"],
         **({"difficult": t["difficult"]} if "difficult" in t else {})} for t in targets]


def training_objects(manifest: str | Path, root: str | Path, use_difficult: bool = False
                     ) -> list[list[tuple[float, float, float, float, str]]]:
    """The objects of each image of ``manifest`` as ``(centre x, centre y, width, height, class)`` in fractions
    of the image's width and height, largest first (the order in which :meth:`YoloLoss.assign` gives out cells)."""
    images = []
    for pair in read_manifest(manifest):
        ann = parse_voc_xml(resolve(pair.label, Path(root)))
        w, h = ann.width, ann.height
        if not w or not h:
            with Image.open(resolve(pair.image, Path(root))) as im:
                w, h = im.size
        objs = [o for o in ann.objects if use_difficult or not o.difficult]
        objs.sort(key=lambda o: -(o.box[2] - o.box[0]) * (o.box[3] - o.box[1]))
        images.append([((o.box[0] + o.box[2]) / 2 / w, (o.box[1] + o.box[3]) / 2 / h,
                        (o.box[2] - o.box[0]) / w, (o.box[3] - o.box[1]) / h, o.name) for o in objs])
    return images


def lost_to_grid(images: list, grids: tuple[int, ...], cell_objects: int = 1) -> dict[int, float]:
    """For each grid S, the share of the objects (``images``: :func:`training_objects`) that YOLOv1 cannot train
    on that grid: those whose centre falls in a cell already taken by a larger object (:meth:`YoloLoss.assign`: a
    cell trains its largest object and, with ``cell_objects`` > 1, up to that many of the largest one's class)."""
    total = sum(map(len, images))
    lost = {}
    for S in grids:
        kept = 0
        for image in images:
            cells: dict[tuple[int, int], tuple[str, int]] = {}
            for x, y, _, _, name in image:
                cell = (min(int(y * S), S - 1), min(int(x * S), S - 1))
                cls, count = cells.get(cell, (name, 0))
                if cls == name and count < cell_objects:
                    cells[cell] = (cls, count + 1)
                    kept += 1
        lost[S] = (total - kept) / total if total else 0.0
    return lost


def small_at_size(objects: list, sizes: tuple[int, ...], min_side: float) -> dict[int, float]:
    """For each square input size, the share of ``objects`` (:func:`training_objects`) whose shorter side,
    resized to that input, is under ``min_side`` pixels."""
    sides = [min(w, h) for image in objects for _, _, w, h, _ in image]
    return {size: sum(side * size < min_side for side in sides) / len(sides) if sides else 0.0 for size in sizes}


def auto_input_size(cfg: YoloTrainConfig, train_manifest: str | Path, root: str | Path,
                    use_difficult: bool = False) -> int:
    """``input_size: auto``: the smallest input whose grid (of :data:`AUTO_GRIDS`) loses at most
    :data:`AUTO_MAX_LOST` of the training objects to shared cells and leaves at most :data:`AUTO_MAX_SMALL`
    of them smaller than :data:`AUTO_MIN_STRIDES` backbone strides, else the largest; logged with the shares."""
    backbone = build_backbone(cfg.backbone)
    step = 2 * backbone.stride
    objects = training_objects(train_manifest, root, use_difficult)
    lost = lost_to_grid(objects, AUTO_GRIDS)
    min_side = AUTO_MIN_STRIDES * backbone.stride
    small = small_at_size(objects, tuple(g * step for g in AUTO_GRIDS), min_side)
    S = next((g for g in AUTO_GRIDS if lost[g] <= AUTO_MAX_LOST and small[g * step] <= AUTO_MAX_SMALL),
             AUTO_GRIDS[-1])
    log.info("yolo_train.input_size = auto: %d px (S = %d); training objects sharing a cell: %s; smaller than "
             "%d px: %s", S * step, S, ", ".join(f"S={g} {100 * v:.1f}%" for g, v in lost.items()),
             min_side, ", ".join(f"{size} px {100 * v:.1f}%" for size, v in small.items()))
    return S * step


def build_model(cfg: YoloTrainConfig, num_classes: int) -> YOLOv1:
    try:
        return YOLOv1(cfg.backbone, num_classes, boxes_per_cell=cfg.boxes_per_cell, input_size=cfg.input_size,
                      head_channels=cfg.head_channels, hidden=cfg.hidden, dropout=cfg.dropout, head=cfg.head)
    except ValueError as exc:
        raise ConfigError(f"yolo_train.input_size = {cfg.input_size}: {exc}") from None


def transfer_from_rcnn(model: YOLOv1, path: str | Path) -> TransferReport:
    """Initialise ``model``'s backbone from the R-CNN region CNN checkpoint when both use the same backbone."""
    ckpt = load_checkpoint(path)
    theirs = ckpt.get("config", {}).get("backbone")
    if theirs != model.backbone_name:
        report = TransferReport(str(path), note=f"nothing transferred: the R-CNN CNN uses backbone {theirs!r}, "
                                                f"YOLO uses {model.backbone_name!r}")
        log.warning("%s", report.summary())
        return report
    backbone = {k: v for k, v in ckpt["model"].items() if k.startswith("features.")}
    return transfer_weights(model, backbone, f"{path} (R-CNN backbone)")


def schedule(optimizer: torch.optim.Optimizer, cfg: YoloTrainConfig):
    """Linear warm-up from lr/10 over ``warmup_epochs``, then with ``lr_scheduler: step`` the paper's schedule scaled
    to ``cfg.epochs``: lr, lr/10 from 75/135 of the epochs and lr/100 from 105/135; with ``cosine`` a cosine from lr
    down to lr/100 at the last epoch (torchvision's references and ultralytics offer the same). Stepped once per
    epoch."""
    e, warmup = cfg.epochs, cfg.warmup_epochs
    if cfg.lr_scheduler == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(e - warmup - 1, 1),
                                                          eta_min=optimizer.defaults["lr"] / 100)
    else:
        milestones = sorted({max(warmup + 1, round(e * 75 / 135)), max(warmup + 2, round(e * 105 / 135))})
        main = torch.optim.lr_scheduler.MultiStepLR(optimizer, [m - warmup for m in milestones], gamma=0.1)
    if not warmup:
        return main
    warm = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warm, main], milestones=[warmup])


def _without_difficult(t: dict) -> dict:
    keep = ~t["difficult"] if "difficult" in t else torch.ones(len(t["labels"]), dtype=torch.bool)
    return {"boxes": t["boxes"][keep], "labels": t["labels"][keep]}


@torch.no_grad()
def validate(model: YOLOv1, loader: DataLoader, loss_fn: YoloLoss, device: torch.device, classes: list[str],
             score_threshold: float, use_difficult: bool = False) -> dict[str, float]:
    """Validation loss and mAP@0.5 (VOC-style) at the input resolution.

    Targets with ``difficult`` flags (``DetectionDataset(use_difficult=True)``): difficult objects are marked
    ``iscrowd`` for the mAP, so they are neither hits nor misses (as in the test evaluation), and count in
    the loss only when ``use_difficult`` (as in training)."""
    model.eval()
    gt = {"images": [], "annotations": [], "categories": [{"id": i, "name": c} for i, c in enumerate(classes, 1)]}
    results, total, n = [], 0.0, 0
    for images, targets in loader:
        pred = model(images.to(device, memory_format=torch.channels_last))
        loss, _ = loss_fn(pred, targets if use_difficult else [_without_difficult(t) for t in targets])
        total += float(loss) * len(images)
        for dets, t in zip(decode(pred, B=model.B, input_size=model.input_size, score_threshold=score_threshold,
                                  nms_iou=VAL_NMS_IOU), targets, strict=True):
            n += 1
            gt["images"].append({"id": n})
            difficult = t["difficult"].tolist() if "difficult" in t else [False] * len(t["labels"])
            for b, c, d in zip(t["boxes"].tolist(), t["labels"].tolist(), difficult, strict=True):
                gt["annotations"].append(coco_annotation(len(gt["annotations"]) + 1, n, c, b, d))
            results += coco_results(n, dets["boxes"], dets["scores"], dets["labels"])
    ev = evaluate_detections(gt, results, score_threshold=FALLBACK_SCORE, coco=False)  # only its mAP@0.5 is used
    return {"val_loss": total / max(n, 1), "val_map50": ev.summary["map50"]}


def train_yolo(
    cfg: YoloTrainConfig,
    *,
    train_manifest: str | Path,
    val_manifest: str | Path,
    classes: list[str],
    root: str | Path,
    device: torch.device,
    run_dir: str | Path,
    seed: int = 0,
    rcnn_checkpoint: str | Path | None = None,
    on_epoch: Callable[[list[dict]], None] | None = None,
    on_transfer: Callable[[TransferReport], None] | None = None,
    progress: bool = True,
    use_difficult: bool = False,
    cpu_bf16: bool = False,
) -> tuple[YOLOv1, FitResult]:
    """Train YOLOv1; ``run_dir`` gets ``last.pt`` (resume) and ``best.pt`` (highest validation mAP@0.5). The
    returned model has the weights ``cfg.keep`` names: ``best.pt``'s, or the last epoch's.

    ``use_difficult`` (``data.det.use_difficult``): train on VOC difficult objects too; validation mAP
    ignores them either way (:func:`validate`)."""
    if cfg.input_size == "auto":
        cfg = dataclasses.replace(cfg, input_size=auto_input_size(cfg, train_manifest, root, use_difficult))
    torch.manual_seed(seed)
    model = build_model(cfg, len(classes))
    report = None
    if cfg.init_from:
        report = init_from(model, cfg.init_from, prefixes=("", "features."))
    elif cfg.init_from_rcnn and not cfg.weights and rcnn_checkpoint and Path(rcnn_checkpoint).is_file():
        report = transfer_from_rcnn(model, rcnn_checkpoint)
    announce_transfer(report, on_transfer)
    frozen = 0
    if cfg.weights:  # a resumed run freezes what the interrupted one froze
        frozen = int(load_checkpoint(cfg.weights).get("config", {}).get("frozen_layers", 0))
    elif cfg.freeze_backbone and report is not None and report.loaded:
        frozen = cfg.freeze_backbone
    elif cfg.freeze_backbone:
        log.warning("yolo_train.freeze_backbone = %d ignored: no trained weights were loaded into the backbone "
                    "(freezing would keep random layers); every layer trains", cfg.freeze_backbone)
    if frozen:
        try:
            n = model.freeze_backbone(frozen)
        except ValueError as exc:
            raise ConfigError(f"yolo_train.freeze_backbone = {frozen}: {exc}") from None
        log.info("froze the first %d backbone convolutions (%d parameters)", frozen, n)
    # channels-last (NHWC) convolutions: about 20% faster per step on CPU (oneDNN) and what tensor cores want
    model.to(device, memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    generator = torch.Generator()
    augment = yolo_transforms(cfg.input_size, cfg.augment, cfg.hflip, cfg.vflip)
    # images resized to the input as they are read and kept so in memory for the next epochs (the augmentation
    # runs on every read)
    train_ds = DetectionDataset(train_manifest, classes, root, augment, use_difficult=use_difficult,
                                resize_to=cfg.input_size, cache=True)
    # difficult objects kept and flagged: validate() ignores them in the mAP
    val_ds = DetectionDataset(val_manifest, classes, root, yolo_transforms(cfg.input_size, False), use_difficult=True,
                              resize_to=cfg.input_size, cache=True)
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise UserError(f"yolo_train needs images in both {train_manifest} ({len(train_ds)}) and "
                        f"{val_manifest} ({len(val_ds)}); give the split that has none some images (data.split, "
                        "or the source's own split lists)")
    train_loader, val_loader = loaders(train_ds, val_ds, batch_size=cfg.batch_size, workers=cfg.workers,
                                       device=device, generator=generator, collate_fn=collate,
                                       key="yolo_train.batch_size")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg.optimizer, trainable, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    loss_fn = YoloLoss(model.S, model.B, model.C, cfg.input_size, cfg.l_coord, cfg.l_noobj, cfg.cell_objects)

    def step(model, batch, device):
        images, targets = batch
        return loss_fn(model(images.to(device, memory_format=torch.channels_last, non_blocking=True)), targets)

    config = {**dataclasses.asdict(cfg), "grid": model.S, "num_classes": len(classes), "frozen_layers": frozen}
    result = fit(model, optimizer, schedule(optimizer, cfg), train_loader, step=step,
                 evaluate=lambda m: validate(m, val_loader, loss_fn, device, classes, cfg.val_score_threshold,
                                             use_difficult),
                 epochs=cfg.epochs, device=device, run_dir=run_dir, monitor="val_map50", mode="max", seed=seed,
                 generator=generator, amp=cfg.amp, cpu_bf16=cpu_bf16, resume=cfg.weights, config=config, classes=classes,
                 on_epoch=on_epoch, progress=progress, desc=f"yolo {cfg.backbone}", grad_clip=cfg.grad_clip,
                 ema_decay=cfg.ema_decay)
    return load_best(model, result, device, last=cfg.keep == "last"), result
