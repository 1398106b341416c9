"""The training datasets' image cache: decoded and resized once, the same tensors every epoch as without it."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

import segdet.data.datasets as datasets
from segdet.data.datasets import DetectionDataset, ImageCache, SegmentationDataset, fill_cache
from segdet.data.formats import write_voc_xml
from segdet.data.pairs import Pair
from segdet.data.transforms import seg_transforms, yolo_transforms
from segdet.engine import loaders
from tests.conftest import REALDATA


def _equal(a, b) -> bool:
    """Same structure, and every tensor of the same dtype, shape and values."""
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _epochs(ds, epochs=2):
    """Every item of ``ds``, epoch after epoch, each epoch under its own seed (as fit() seeds them)."""
    out = []
    for epoch in range(epochs):
        torch.manual_seed(epoch)
        out.append([ds[i] for i in range(len(ds))])
    return out


@pytest.fixture
def photos(tmp_path):
    """Four JPEG 'photos' of different sizes (one greyscale, one large enough to be decoded reduced at 48 px),
    each with a lesion-like mask and two VOC boxes."""
    rng = np.random.default_rng(0)
    seg, det = [], []
    for k, (w, h) in enumerate([(640, 480), (333, 500), (97, 61), (1000, 800)]):
        yy, xx = np.mgrid[:h, :w]
        blob = ((xx - w * 0.45) / (w * 0.3)) ** 2 + ((yy - h * 0.55) / (h * 0.25)) ** 2 < 1
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[blob] = img[blob] // 3
        pil = Image.fromarray(img).convert("L") if k == 1 else Image.fromarray(img)
        pil.save(tmp_path / f"p{k}.jpg", quality=90)
        Image.fromarray(blob.astype(np.uint8) * 255).save(tmp_path / f"p{k}_segmentation.png")
        write_voc_xml(tmp_path / f"p{k}.xml", f"p{k}.jpg", w, h,
                      [("dog", (3, 5, w // 2, h // 2)), ("cat", (w // 3, h // 4, w - 2, h - 3))])
        seg.append(Pair(f"p{k}.jpg", f"p{k}_segmentation.png", f"m:{k + 1}"))
        det.append(Pair(f"p{k}.jpg", f"p{k}.xml", f"m:{k + 1}"))
    return tmp_path, seg, det


@pytest.mark.parametrize("train", [True, False])
def test_cached_segmentation_pairs_are_the_uncached_ones(photos, train):
    root, seg, _ = photos
    aug = {"rotate": 20.0, "scale": 0.15, "color_jitter": 0.15}
    for size in (48, (40, 56)):
        plain = SegmentationDataset(seg, root, seg_transforms(size, train, **aug), decode_at_least=48)
        cached = SegmentationDataset(seg, root, seg_transforms(size, train, **aug, resize=False), decode_at_least=48,
                                     resize_to=size, cache=True)
        a, b = _epochs(plain), _epochs(cached)
        assert len(cached.cache.items) == len(seg)
        assert all(_equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True))
        if train:  # the augmentation still draws anew each epoch
            assert not _equal(b[0], b[1])


@pytest.mark.parametrize("train", [True, False])
def test_cached_detection_images_are_the_uncached_ones(photos, train):
    root, _, det = photos
    for size in (64, 96):
        tf = yolo_transforms(size, train, 0.5, 0.5)
        plain = DetectionDataset(det, ["dog", "cat"], root, tf, use_difficult=not train)
        cached = DetectionDataset(det, ["dog", "cat"], root, tf, use_difficult=not train, resize_to=size, cache=True)
        a, b = _epochs(plain), _epochs(cached)
        assert all(_equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True))
        assert cached[0][1]["orig_size"] == (480, 640)  # the size before the resize, as without the cache


def test_a_cached_epoch_decodes_nothing(photos, monkeypatch):
    root, seg, det = photos
    s = SegmentationDataset(seg, root, seg_transforms(32, True, resize=False), resize_to=32, cache=True)
    d = DetectionDataset(det, ["dog", "cat"], root, yolo_transforms(64, True), resize_to=64, cache=True)
    first = _epochs(s, 1)[0], _epochs(d, 1)[0]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(datasets, "read_rgb", no_decoding)
    monkeypatch.setattr(datasets, "read_gray", no_decoding)
    again = _epochs(s, 1)[0], _epochs(d, 1)[0]
    assert _equal(first, again)  # same seed, same items, from memory


def test_the_cache_stops_at_its_budget_and_the_rest_still_load(photos, monkeypatch, caplog):
    root, seg, _ = photos
    pair_bytes = 3 * 32 * 32 + 32 * 32  # uint8 image and mask at 32 px
    monkeypatch.setattr(datasets, "cache_budget", lambda: int(2.5 * pair_bytes))
    plain = SegmentationDataset(seg, root, seg_transforms(32, True))
    cached = SegmentationDataset(seg, root, seg_transforms(32, True, resize=False), resize_to=32, cache=True)
    with caplog.at_level(logging.INFO, logger="segdet.data.datasets"):
        a, b = _epochs(plain, 3), _epochs(cached, 3)
    assert sorted(cached.cache.items) == [0, 1] and cached.cache.nbytes == 2 * pair_bytes
    assert all(_equal(x, y) for ea, eb in zip(a, b, strict=True) for x, y in zip(ea, eb, strict=True))
    assert [r.getMessage() for r in caplog.records if "cache full" in r.getMessage()] == [
        "4 segmentation pairs: image cache full at 2 images (0 MB of a 0 MB budget); the others are decoded every epoch"]


def test_image_cache_budget_counts_tensor_bytes():
    cache = ImageCache("x", budget=100)
    cache.put(0, (torch.zeros(10, dtype=torch.float32), (3, 4)))  # 40 bytes; the size tuple is not counted
    cache.put(1, (torch.zeros(50, dtype=torch.uint8),))  # 90 in all
    cache.put(2, (torch.zeros(11, dtype=torch.uint8),))  # 101: over, and the cache stops growing
    cache.put(3, (torch.zeros(1, dtype=torch.uint8),))
    assert sorted(cache.items) == [0, 1] and cache.nbytes == 90 and cache.full


def test_loader_workers_share_a_cache_filled_before_they_start(photos):
    root, seg, _ = photos
    train = SegmentationDataset(seg, root, seg_transforms(32, True, resize=False), resize_to=32, cache=True)
    val = SegmentationDataset(seg, root, seg_transforms(32, False, resize=False), resize_to=32, cache=True)
    loaders(train, val, batch_size=2, workers=1, device=torch.device("cpu"), generator=torch.Generator())
    assert len(train.cache.items) == len(val.cache.items) == len(seg)
    expected = SegmentationDataset(seg, root, resize_to=32)
    assert all(_equal(train.cache.items[i], expected.decoded(i)) for i in range(len(seg)))


def test_fill_cache_on_threads_holds_every_image(photos):
    root, _, det = photos
    ds = DetectionDataset(det, ["dog", "cat"], root, resize_to=64, cache=True)
    fill_cache(ds, threads=2)
    plain = DetectionDataset(det, ["dog", "cat"], root, resize_to=64)
    assert all(_equal(ds.cache.items[i], plain.decoded(i)) for i in range(len(det)))


@pytest.mark.skipif(not (REALDATA / "raccoon-voc").is_dir(), reason="../shared/realdata absent")
def test_cached_real_photos_are_the_uncached_ones():
    """Real JPEGs of odd sizes, three of them greyscale, at YOLOv1's 256 and 448 px inputs."""
    voc = REALDATA / "raccoon-voc"
    names = (voc / "ImageSets/Main/train.txt").read_text().split()[:16]
    pairs = [Pair(str(voc / "JPEGImages" / f"{n}.jpg"), str(voc / "Annotations" / f"{n}.xml"), "x") for n in names]
    for size in (256, 448):
        tf = yolo_transforms(size, True, 0.5)
        plain = DetectionDataset(pairs, ["raccoon"], "/", tf)
        cached = DetectionDataset(pairs, ["raccoon"], "/", tf, resize_to=size, cache=True)
        a, b = _epochs(plain), _epochs(cached)
        assert all(_equal(x, y) for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True))


@pytest.mark.parametrize(("files", "expected_gib"), [
    ({}, 8.0),  # no cgroup files: the machine's available memory
    ({"memory.max": "max", "memory.current": "1073741824"}, 8.0),  # cgroup v2 without a limit
    ({"memory.max": "4294967296", "memory.current": "1073741824"}, 3.0),  # v2: 4 GiB limit, 1 GiB used
    ({"memory/memory.limit_in_bytes": "9223372036854771712", "memory/memory.usage_in_bytes": "1"}, 8.0),  # v1, none
    ({"memory/memory.limit_in_bytes": "2147483648", "memory/memory.usage_in_bytes": "536870912"}, 1.5),  # v1: 2 GiB
    ({"memory.max": "1073741824", "memory.current": "2147483648"}, 0.0),  # over its limit already
])
def test_available_memory_counts_a_containers_limit(tmp_path, monkeypatch, files, expected_gib):
    import psutil

    from segdet.runtime import available_memory

    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("vm", (), {"available": 8 << 30})())
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text + "\n")
    assert available_memory(tmp_path) == int(expected_gib * (1 << 30))


def test_the_cache_budget_is_a_fifth_of_the_available_memory_and_at_most_2_gib(monkeypatch):
    import segdet.runtime

    monkeypatch.setattr(segdet.runtime, "available_memory", lambda: 5 << 30)
    assert datasets.cache_budget() == 1 << 30
    monkeypatch.setattr(segdet.runtime, "available_memory", lambda: 100 << 30)
    assert datasets.cache_budget() == 2 << 30
