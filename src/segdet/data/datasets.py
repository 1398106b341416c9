"""``torch.utils.data.Dataset`` classes that read a manifest (docs/architecture.md)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from segdet.data.formats import read_gray, read_rgb
from segdet.data.pairs import Pair, box_targets, read_classes, read_manifest, resolve

log = logging.getLogger(__name__)

#: a dataset's image cache (``cache=True``) holds at most this share of the memory available when the dataset is
#: built, and at most :data:`CACHE_MAX_BYTES`; images past that are decoded every epoch as without a cache
CACHE_MEMORY_SHARE = 0.2
CACHE_MAX_BYTES = 2 << 30


def _pairs(manifest: str | Path | Sequence[Pair]) -> list[Pair]:
    return list(manifest) if isinstance(manifest, (list, tuple)) else read_manifest(manifest)


def cache_budget() -> int:
    """Bytes one dataset's image cache may hold: :data:`CACHE_MEMORY_SHARE` of the available memory (a container's
    limit counted: :func:`segdet.runtime.available_memory`), at most :data:`CACHE_MAX_BYTES`."""
    from segdet.runtime import available_memory

    return int(min(CACHE_MAX_BYTES, CACHE_MEMORY_SHARE * available_memory()))


class ImageCache:
    """Decoded (and resized) images of a dataset by index, kept between epochs up to ``budget`` bytes.

    Training reads every image once an epoch; decoding a photo and resizing it to the input size took about a
    tenth of a small network's CPU epoch on real photos (docs/benchmarks.md). Only the deterministic part of the
    loading is kept (decode, resize); the random augmentation still runs on every read, so a cached epoch
    yields the same tensors as an uncached one. When the next image would pass the budget, the cache stops
    growing (logged once) and the images it does not hold are decoded as before. The cached tensors are shared
    with what :meth:`get` returns: transforms must not modify their input in place (torchvision's do not).
    """

    def __init__(self, what: str, budget: int | None = None):
        self.what = what
        self.budget = cache_budget() if budget is None else int(budget)
        self.items: dict[int, tuple] = {}
        self.nbytes = 0
        self.full = False
        self._lock = threading.Lock()  # fill_cache() puts from several threads

    def get(self, i: int) -> tuple | None:
        return self.items.get(i)

    def put(self, i: int, item: tuple) -> None:
        size = sum(t.numel() * t.element_size() for t in item if isinstance(t, torch.Tensor))
        with self._lock:
            if self.full or i in self.items:
                return
            if self.nbytes + size > self.budget:
                self.full = True
                log.info("%s: image cache full at %d images (%.0f MB of a %.0f MB budget); the others are decoded "
                         "every epoch", self.what, len(self.items), self.nbytes / 2**20, self.budget / 2**20)
                return
            self.items[i] = item
            self.nbytes += size


def fill_cache(dataset: SegmentationDataset | DetectionDataset, threads: int) -> None:
    """Decode every image of ``dataset`` into its cache now, on ``threads`` threads (image decoding and resizing
    release the GIL). For DataLoader workers: they are started afresh each epoch and would lose what they
    cached, so the training process fills the cache before they fork and they share it."""
    cache = dataset.cache
    if cache is None:
        return

    def fill(i: int) -> None:
        if not cache.full:  # past the budget the workers decode the rest, as without a cache
            dataset.decoded(i)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        list(pool.map(fill, range(len(dataset))))


def size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """An input size as ``(H, W)``: an int is a square."""
    return (size, size) if isinstance(size, int) else tuple(size)


def resize_with_boxes(image: torch.Tensor, boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 ``[3, H, W]`` image resized to ``size`` x ``size`` (antialiased, as YOLOv1's input) and its XYXY pixel
    ``boxes [N, 4]`` scaled with it (float32)."""
    h, w = image.shape[-2:]
    if (h, w) != (size, size):
        image = v2.functional.resize(image, [size, size], antialias=True)
    return image, boxes.float() * torch.tensor([size / w, size / h] * 2)


def _to_image(rgb) -> tv_tensors.Image:
    """``uint8[H, W, 3]`` array -> ``tv_tensors.Image[3, H, W]`` uint8."""
    return tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1).contiguous())


class SegmentationDataset(Dataset):
    """Image and lesion mask pairs of a segmentation manifest.

    Item ``i``: ``(image, mask)`` with ``image`` a ``tv_tensors.Image[3, H, W]`` (uint8 RGB, or float
    after ``transforms``) and ``mask`` a ``tv_tensors.Mask[H, W]`` int64 with 0 = background,
    1 = lesion (labels 0/255 and 0/1 both read as 0/1).

    Args:
        manifest: a manifest path, or its pairs.
        root: folder that relative manifest paths start from (the repository root).
        transforms: joint transform called as ``transforms(image, mask)``.
        decode_at_least: the side ``transforms`` resize to (training at ``input_size``): an image at least 8 x
            larger (a full-size ISIC photo at 96 px) is decoded at 1/2 to 1/8 of its size
            (:func:`segdet.data.formats.reduction`), while its mask stays whole; the resize to a fixed size puts
            both on the same grid. None: decode whole.
        resize_to: resize each pair to this size (int: square; ``(H, W)``) as it is read, before ``transforms``
            (``v2.Resize``: the image antialiased, the mask nearest-neighbour), so that the cache holds it resized.
        cache: keep each pair as read (decoded, resized) in memory for the next epochs (:class:`ImageCache`).
    """

    def __init__(self, manifest: str | Path | Sequence[Pair], root: str | Path = ".",
                 transforms: Callable | None = None, decode_at_least: int | None = None, *,
                 resize_to: int | tuple[int, int] | None = None, cache: bool = False):
        self.pairs = _pairs(manifest)
        self.root = Path(root)
        self.transforms = transforms
        self.decode_at_least = decode_at_least
        self.resize = v2.Resize(size_hw(resize_to), antialias=True) if resize_to else None
        self.cache = ImageCache(f"{len(self.pairs)} segmentation pairs") if cache else None

    def __len__(self) -> int:
        return len(self.pairs)

    def decoded(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pair ``i`` decoded and resized (``resize_to``): image uint8 ``[3, H, W]``, mask uint8 ``[H, W]`` (0/1)."""
        if self.cache is not None and (hit := self.cache.get(i)) is not None:
            return hit
        p = self.pairs[i]
        image = _to_image(read_rgb(resolve(p.image, self.root), self.decode_at_least))
        mask = tv_tensors.Mask(torch.from_numpy(read_gray(resolve(p.label, self.root)) > 0).to(torch.uint8))
        if self.resize is not None:
            image, mask = self.resize(image, mask)
        item = (image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor))
        if self.cache is not None:
            self.cache.put(i, item)
        return item

    def read(self, i: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        image, mask = self.decoded(i)
        return tv_tensors.Image(image), tv_tensors.Mask(mask.to(torch.int64))

    def __getitem__(self, i: int):
        image, mask = self.read(i)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask


class DetectionDataset(Dataset):
    """Images and Pascal VOC boxes of a detection manifest.

    Item ``i``: ``(image, target)`` with ``image`` a ``tv_tensors.Image[3, H, W]`` and ``target`` a dict:
    ``boxes`` ``tv_tensors.BoundingBoxes[N, 4]`` in XYXY pixels (``x1 = xmin - 1``, docs/architecture.md),
    ``labels`` ``Tensor[N]`` int64 with ``1..C`` = line of ``det_classes.txt`` (0 is background),
    ``image_id`` = ``i + 1`` (the COCO id of docs/architecture.md) and ``orig_size`` ``(H, W)``.
    Annotations are parsed once, up front; zero-area boxes are skipped as in the manifest stage.

    VOC ``difficult`` objects (and COCO crowd regions, imported as difficult): with ``use_difficult``
    false (the default, ``data.det.use_difficult``) they are dropped from the targets, as the VOC devkit
    leaves them out; with it true they are kept and the target also holds ``difficult`` ``Tensor[N]``
    bool, so an evaluation can ignore them (a transform that drops boxes must drop their flags too:
    :func:`box_labels`).

    ``resize_to``: resize each image to ``resize_to`` x ``resize_to`` and scale its boxes as it is read, before
    ``transforms`` (what YOLOv1's input does first), so that ``cache`` (:class:`ImageCache`) holds it resized.
    """

    def __init__(self, manifest: str | Path | Sequence[Pair], classes: str | Path | Sequence[str],
                 root: str | Path = ".", transforms: Callable | None = None, *, use_difficult: bool = False,
                 resize_to: int | None = None, cache: bool = False):
        self.pairs = _pairs(manifest)
        self.root = Path(root)
        self.classes = list(classes) if isinstance(classes, (list, tuple)) else read_classes(classes)
        self.transforms = transforms
        self.use_difficult = use_difficult
        self.targets = []
        self.difficult: list[torch.Tensor] = []
        for t in box_targets(self.pairs, self.classes, self.root, use_difficult):
            self.targets.append((torch.from_numpy(t.boxes), torch.from_numpy(t.labels)))
            self.difficult.append(torch.from_numpy(t.difficult))
        self.resize_to = resize_to
        self.cache = ImageCache(f"{len(self.pairs)} detection images") if cache else None

    def __len__(self) -> int:
        return len(self.pairs)

    def decoded(self, i: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Image ``i`` decoded, uint8 ``[3, H, W]``, with its boxes and its size as decoded ``(H, W)``; with
        ``resize_to`` the image is resized to ``resize_to`` x ``resize_to`` (antialiased, as
        :func:`segdet.data.transforms.yolo_preprocess`) and the boxes scaled to it."""
        if self.cache is not None and (hit := self.cache.get(i)) is not None:
            return hit
        image = _to_image(read_rgb(resolve(self.pairs[i].image, self.root))).as_subclass(torch.Tensor)
        h, w = image.shape[-2:]
        boxes = self.targets[i][0]
        if self.resize_to:
            image, boxes = resize_with_boxes(image, boxes, self.resize_to)
        item = (image, boxes, (h, w))
        if self.cache is not None:
            self.cache.put(i, item)
        return item

    def __getitem__(self, i: int):
        """Item ``i`` (class docstring); with ``resize_to`` its image and boxes come resized (``orig_size`` is the
        size before)."""
        image, boxes, (h, w) = self.decoded(i)
        image = tv_tensors.Image(image)
        labels = self.targets[i][1]
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes.clone(), format="XYXY", canvas_size=tuple(image.shape[-2:])),
            "labels": labels.clone(),
            "image_id": i + 1,
            "orig_size": (h, w),
        }
        if self.use_difficult:
            target["difficult"] = self.difficult[i].clone()
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def box_labels(sample) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """``labels_getter`` for ``v2.SanitizeBoundingBoxes``: the target's ``labels`` and, when it has them, its
    ``difficult`` flags, so a dropped box takes its flag along (``DetectionDataset(use_difficult=True)``).

    ``sample`` is ``(image, target)`` or the target dict. A tuple of tensors needs torchvision >= 0.18.
    """
    target = sample[1] if isinstance(sample, (tuple, list)) else sample
    if "difficult" in target:
        return target["labels"], target["difficult"]
    return target["labels"]


def detection_collate(batch):
    """``[(image, target), ...]`` -> ``(images, targets)`` as tuples (sizes may differ)."""
    return tuple(zip(*batch, strict=True))
