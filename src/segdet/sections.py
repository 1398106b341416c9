"""The parameters: one frozen dataclass per ``params.yaml`` section, each field with its default and its
constraints (``param(default, ge=..., choices=...)``), so the loader, the error messages and the docs in
``params.yaml`` stay in step. Naming chain: section ``unet_train`` = ``UnetTrainConfig``. Loading is in
:mod:`segdet.config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from segdet.schema import ConfigError, param

# ----------------------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------------------

DEVICE_PATTERN = r"auto|cpu|cuda|cuda:\d+|mps"


@dataclass(frozen=True)
class BaseConfig:
    """``base``: settings shared by every stage."""

    seed: int = param(0, ge=0)
    device: str = param("auto", pattern=DEVICE_PATTERN)
    nproc_per_node: int = param(1, ge=1, le=1024)
    cpu_bf16: bool = False


@dataclass(frozen=True)
class SplitConfig:
    """``data.split``: fractions of a pool that go to each split (they must sum to 1)."""

    train: float = param(0.7, gt=0.0, le=1.0)
    val: float = param(0.15, gt=0.0, lt=1.0, why="the best epoch and the detectors' score thresholds are chosen on "
                       "the validation images; for a small dataset use a small fraction such as 0.1")
    test: float = param(0.15, ge=0.0, lt=1.0)

    def __post_init__(self) -> None:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ConfigError(
                f"data.split: train + val + test = {self.train} + {self.val} + {self.test} = {total:g}; "
                "the fractions must sum to 1"
            )


@dataclass(frozen=True)
class SegDataConfig:
    """``data.seg``: where the segmentation (ISIC-style) data comes from."""

    source: Literal["synthetic", "isic", "manifest"] = "synthetic"
    path: str | None = None
    num_images: int = param(300, ge=3, le=100_000)
    image_size: int = param(128, ge=32, le=4096)

    def __post_init__(self) -> None:
        _require_path("data.seg", self.source, self.path)


@dataclass(frozen=True)
class DetDataConfig:
    """``data.det``: where the detection (Pascal VOC-style) data comes from."""

    source: Literal["synthetic", "voc", "coco", "yolo", "manifest"] = "synthetic"
    path: str | None = None
    images: str | None = None
    classes: tuple[str, ...] | None = None
    num_images: int = param(300, ge=3, le=100_000)
    image_size: int = param(256, ge=32, le=4096)
    max_objects: int = param(8, ge=1, le=50)
    use_difficult: bool = False

    def __post_init__(self) -> None:
        _require_path("data.det", self.source, self.path)
        if self.images is not None and self.source != "coco":
            raise ConfigError(
                f"data.det.images = {self.images!r} is only used with data.det.source: coco "
                f"(source is {self.source!r}); set it to null"
            )
        if self.classes is not None:
            if not self.classes:
                raise ConfigError("data.det.classes = [] is empty: list the class names, or null to read them")
            dupes = sorted({c for c in self.classes if self.classes.count(c) > 1})
            if dupes:
                raise ConfigError(f"data.det.classes: duplicate class names {dupes}")
            bad = [c for c in self.classes if not c or c != c.strip() or "\n" in c]
            if bad:
                raise ConfigError(f"data.det.classes: invalid class names {bad} (empty or padded with spaces)")


@dataclass(frozen=True)
class DataConfig:
    """``data``: datasets for the prepare and manifest stages."""

    seed: int = param(0, ge=0)
    use_source_splits: bool = True
    split: SplitConfig = param(factory=SplitConfig)
    seg: SegDataConfig = param(factory=SegDataConfig)
    det: DetDataConfig = param(factory=DetDataConfig)


def _require_path(prefix: str, source: str, path: str | None) -> None:
    if source == "synthetic":
        if path is not None:
            raise ConfigError(
                f"{prefix}.path = {path!r} is set but {prefix}.source is 'synthetic'; "
                f"set {prefix}.source to the format of that data, or path to null"
            )
    elif not path:
        raise ConfigError(f"{prefix}.path is required when {prefix}.source is {source!r}")


@dataclass(frozen=True)
class UnetTrainConfig:
    """``unet_train``: UNet training (ISIC-style lesion segmentation)."""

    variant: Literal["unet32", "unet64", "unet128", "resnet18"] = "unet32"
    upsample: Literal["bilinear", "transpose"] = "bilinear"
    input_size: int = param(96, ge=16, le=2048)
    batch_size: int = param(8, ge=1, le=1024)
    epochs: int = param(12, ge=1, le=10_000)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = param(0.001, gt=0.0, le=10.0)
    momentum: float = param(0.9, ge=0.0, lt=1.0)
    weight_decay: float = param(0.0, ge=0.0, le=1.0)
    loss: Literal["ce", "dice", "ce+dice"] = "ce+dice"
    step_size: int = param(8, ge=1)
    gamma: float = param(0.1, gt=0.0, le=1.0)
    augment: bool = True
    rotate: float = param(0.0, ge=0.0, le=180.0)
    scale: float = param(0.0, ge=0.0, lt=1.0)
    color_jitter: float = param(0.0, ge=0.0, le=1.0)
    workers: int | Literal["auto"] = param("auto", ge=0, le=64)
    amp: bool = True
    weights: str | None = param(None, false_is_null=True)
    init_from: str | None = param(None, false_is_null=True)

    def __post_init__(self) -> None:
        if self.weights and self.init_from:
            raise ConfigError(
                "unet_train.weights (resume a run) and unet_train.init_from (start from another network's "
                "weights) exclude each other; set one of them to null"
            )


@dataclass(frozen=True)
class UnetEvalConfig:
    """``unet_eval``: UNet evaluation on the test split."""

    batch_size: int = param(8, ge=1, le=1024)
    overlays: int = param(8, ge=0, le=100)
    tta: bool = True  # flip TTA: test Dice +0.005 to +0.009 over three seeds (docs/models.md)
    postprocess: bool = False


@dataclass(frozen=True)
class ProposalsConfig:
    """``proposals``: selective search region proposals."""

    mode: Literal["fast", "quality", "auto"] = "fast"
    max_side: int = param(256, ge=32, le=4096)
    min_size: int = param(8, ge=1)
    max_proposals: int = param(2000, ge=1, le=100_000)
    workers: int = param(0, ge=0, le=256)


@dataclass(frozen=True)
class RcnnFinetuneConfig:
    """``rcnn_finetune``: the R-CNN region CNN, fine-tuned as (N+1)-way classification of warped proposals."""

    backbone: Literal["small", "alexnet", "vgg16"] = "small"
    crop_size: int = param(48, ge=16, le=512)
    context: float = param(3.4, ge=0.0)
    fg_iou: float = param(0.5, gt=0.0, le=1.0)
    fg_per_batch: int = param(32, ge=1)
    bg_per_batch: int = param(96, ge=1)
    batches_per_epoch: int = param(50, ge=1)
    val_batches: int = param(10, ge=1)
    epochs: int = param(10, ge=1, le=10_000)
    lr: float = param(0.03, gt=0.0, le=10.0)
    momentum: float = param(0.9, ge=0.0, lt=1.0)
    weight_decay: float = param(0.0005, ge=0.0, le=1.0)
    step_size: int = param(8, ge=1)
    gamma: float = param(0.1, gt=0.0, le=1.0)
    amp: bool = True
    weights: str | None = param(None, false_is_null=True)
    init_from: str | None = param(None, false_is_null=True)

    def __post_init__(self) -> None:
        if not 2 * self.context < self.crop_size:
            raise ConfigError(
                f"rcnn_finetune.context = {self.context} must be less than half of crop_size ({self.crop_size})"
            )


@dataclass(frozen=True)
class RcnnSvmConfig:
    """``rcnn_svm``: per-class linear SVMs with hard-negative mining, and box regressors."""

    C: float = param(0.005, gt=0.0)
    positive_weight: float = param(4.0, gt=0.0)
    neg_iou: float = param(0.3, ge=0.0, le=1.0)
    rounds: int = param(2, ge=0, le=20)
    init_negatives: int = param(5000, ge=1)
    max_negatives: int = param(20000, ge=1)
    reg_iou: float = param(0.6, ge=0.0, le=1.0)
    reg_alpha: float = param(1000.0, ge=0.0)
    max_reg_samples: int = param(20000, ge=1)


@dataclass(frozen=True)
class RcnnEvalConfig:
    """``rcnn_eval``: R-CNN detection on the test split."""

    score_threshold: float | None = None
    min_score: float = -2.0
    nms_iou: float | Literal["auto"] = param(0.3, gt=0.0, le=1.0)
    box_voting: float = param(0.0, ge=0.0, le=1.0)
    max_detections: int = param(100, ge=1)
    samples: int = param(8, ge=0, le=100)

    def __post_init__(self) -> None:
        if self.score_threshold is not None and self.min_score > self.score_threshold:
            raise ConfigError(
                f"rcnn_eval.min_score = {self.min_score} must not exceed score_threshold = {self.score_threshold}"
            )


@dataclass(frozen=True)
class YoloTrainConfig:
    """``yolo_train``: YOLOv1 training."""

    backbone: Literal["small", "darknet24", "vgg16", "resnet18", "alexnet"] = "small"
    input_size: int | Literal["auto"] = param(256, ge=32, le=2048)
    boxes_per_cell: int = param(2, ge=1, le=10)
    cell_objects: int = param(1, ge=1, le=10)
    head: Literal["fc", "conv"] = "conv"
    head_channels: int = param(128, ge=8)
    hidden: int = param(1024, ge=8)
    dropout: float = param(0.0, ge=0.0, lt=1.0)
    batch_size: int = param(8, ge=1, le=1024)
    epochs: int = param(60, ge=1, le=10_000)
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = param(0.001, gt=0.0, le=10.0)
    momentum: float = param(0.9, ge=0.0, lt=1.0)
    weight_decay: float = param(0.0, ge=0.0, le=1.0)
    warmup_epochs: int = param(3, ge=0)
    lr_scheduler: Literal["step", "cosine"] = "cosine"
    grad_clip: float = param(10.0, ge=0.0)
    ema_decay: float = param(0.0, ge=0.0, lt=1.0)
    l_coord: float = param(5.0, ge=0.0)
    l_noobj: float = param(0.5, ge=0.0)
    augment: bool = True
    hflip: float = param(0.5, ge=0.0, le=1.0)
    vflip: float = param(0.0, ge=0.0, le=1.0)
    workers: int | Literal["auto"] = param("auto", ge=0, le=64)
    amp: bool = True
    val_score_threshold: float = param(0.05, ge=0.0, le=1.0)
    keep: Literal["best", "last"] = "best"
    weights: str | None = param(None, false_is_null=True)
    init_from: str | None = param(None, false_is_null=True)
    init_from_rcnn: bool = True
    freeze_backbone: int = param(1, ge=0)

    def __post_init__(self) -> None:
        if self.weights and self.init_from:
            raise ConfigError("yolo_train.weights (resume) and yolo_train.init_from exclude each other; set one to null")
        if self.cell_objects > self.boxes_per_cell:
            raise ConfigError(f"yolo_train.cell_objects = {self.cell_objects} must not exceed boxes_per_cell = "
                              f"{self.boxes_per_cell}: each object a cell trains needs its own predictor")
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"yolo_train.warmup_epochs = {self.warmup_epochs} must be less than epochs = {self.epochs}"
            )


@dataclass(frozen=True)
class YoloEvalConfig:
    """``yolo_eval``: YOLOv1 detection on the test split, and its speed."""

    score_threshold: float | None = param(None, ge=0.0, le=1.0)
    min_score: float = param(0.01, ge=0.0, le=1.0)
    nms_iou: float | Literal["auto"] = param(0.5, gt=0.0, le=1.0)
    max_detections: int = param(100, ge=1)
    tta: bool | Literal["auto"] = False
    warmup_images: int = param(5, ge=0)
    samples: int = param(8, ge=0, le=100)

    def __post_init__(self) -> None:
        if self.score_threshold is not None and self.min_score > self.score_threshold:
            raise ConfigError(
                f"yolo_eval.min_score = {self.min_score} must not exceed score_threshold = {self.score_threshold}"
            )
