"""Tests for segdet.data.synthetic (deterministic ISIC- and VOC-like datasets)."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segdet.data.synthetic.common import _image_rng
from segdet.data.synthetic.isic import generate_isic
from segdet.data.synthetic.shapes import DET_CLASSES
from segdet.data.synthetic.voc import _VOC_TAG, _render_voc_scene, generate_voc

ISIC_SIZE = 64
VOC_SIZE = 96
VOC_IMAGES = 30
VOC_MAX_OBJECTS = 8


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by relative posix path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _read_voc(xml_path: Path) -> dict:
    root = ET.parse(xml_path).getroot()
    size = root.find("size")
    objects = []
    for obj in root.findall("object"):
        box = obj.find("bndbox")
        objects.append(
            {
                "name": obj.findtext("name"),
                "truncated": int(obj.findtext("truncated")),
                "occluded": int(obj.findtext("occluded")),
                "difficult": int(obj.findtext("difficult")),
                "pose": obj.findtext("pose"),
                "box": tuple(int(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")),
            }
        )
    return {
        "folder": root.findtext("folder"),
        "filename": root.findtext("filename"),
        "width": int(size.findtext("width")),
        "height": int(size.findtext("height")),
        "depth": int(size.findtext("depth")),
        "segmented": root.findtext("segmented"),
        "objects": objects,
    }


@pytest.fixture(scope="module")
def isic_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("isic")
    stats = generate_isic(out, num_images=12, image_size=ISIC_SIZE, seed=7, progress=False)
    return out, stats


@pytest.fixture(scope="module")
def voc_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("voc")
    stats = generate_voc(
        out,
        num_images=VOC_IMAGES,
        image_size=VOC_SIZE,
        seed=3,
        max_objects=VOC_MAX_OBJECTS,
        progress=False,
    )
    return out, stats


# --------------------------------------------------------------------------- #
# Determinism
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("generate", [generate_isic, generate_voc])
def test_same_args_give_identical_files(tmp_path: Path, generate) -> None:
    kwargs = {"num_images": 3, "image_size": 48, "seed": 11, "progress": False}
    stats_a = generate(tmp_path / "a", **kwargs)
    stats_b = generate(tmp_path / "b", **kwargs)
    hashes_a, hashes_b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert hashes_a and hashes_a == hashes_b
    assert stats_a == stats_b

    generate(tmp_path / "c", **{**kwargs, "seed": 12})
    hashes_c = _hashes(tmp_path / "c")
    images = [k for k in hashes_a if k.endswith(".jpg")]
    assert len(images) == 3
    assert all(hashes_a[k] != hashes_c[k] for k in images)


@pytest.mark.parametrize("generate", [generate_isic, generate_voc])
def test_image_does_not_depend_on_dataset_length(tmp_path: Path, generate) -> None:
    kwargs = {"image_size": 48, "seed": 5, "progress": False}
    generate(tmp_path / "three", num_images=3, **kwargs)
    generate(tmp_path / "five", num_images=5, **kwargs)
    three, five = _hashes(tmp_path / "three"), _hashes(tmp_path / "five")
    per_image = [k for k in three if k.endswith((".jpg", ".png", ".xml"))]
    assert len(per_image) >= 6
    for key in per_image:
        assert three[key] == five[key], key
    assert len([k for k in five if k.endswith(".jpg")]) == 5


# --------------------------------------------------------------------------- #
# ISIC
# --------------------------------------------------------------------------- #
def test_isic_layout_masks_and_stats(isic_dir: tuple[Path, dict]) -> None:
    out, stats = isic_dir
    images = sorted((out / "images").iterdir())
    masks = sorted((out / "masks").iterdir())
    assert [p.name for p in images] == [f"ISIC_{i:07d}.jpg" for i in range(12)]
    assert [p.name for p in masks] == [f"ISIC_{i:07d}_segmentation.png" for i in range(12)]
    assert stats["images"] == 12

    fractions, darker = [], 0
    for img_path in images:
        image = Image.open(img_path)
        mask_img = Image.open(out / "masks" / f"{img_path.stem}_segmentation.png")
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.size == (ISIC_SIZE, ISIC_SIZE)
        assert mask_img.format == "PNG" and mask_img.mode == "L"
        assert mask_img.size == image.size
        mask = np.asarray(mask_img)
        assert set(np.unique(mask).tolist()) <= {0, 255}
        lesion = mask == 255
        fraction = float(lesion.mean())
        assert 0.0 < fraction < 1.0
        fractions.append(fraction)
        gray = np.asarray(image.convert("L"), dtype=np.float64)
        darker += gray[lesion].mean() < gray[~lesion].mean()

    assert darker >= 0.8 * len(images)
    assert stats["lesion_fraction_mean"] == pytest.approx(np.mean(fractions))
    assert stats["lesion_fraction_min"] == pytest.approx(min(fractions))
    assert stats["lesion_fraction_max"] == pytest.approx(max(fractions))


def test_isic_lesion_is_one_main_region(isic_dir: tuple[Path, dict]) -> None:
    """The mask is a single lesion: its largest component holds nearly all of it."""
    out, _ = isic_dir
    for mask_path in sorted((out / "masks").iterdir()):
        lesion = (np.asarray(Image.open(mask_path)) == 255).astype(np.uint8)
        n, _, cc_stats, _ = cv2.connectedComponentsWithStats(lesion, connectivity=8)
        areas = cc_stats[1:, cv2.CC_STAT_AREA]
        assert n >= 2
        assert areas.max() >= 0.9 * areas.sum()


def test_isic_lesion_sizes_vary(tmp_path: Path) -> None:
    stats = generate_isic(tmp_path, num_images=40, image_size=32, seed=1, progress=False)
    assert stats["lesion_fraction_min"] < 0.06
    assert stats["lesion_fraction_max"] > 0.4


# --------------------------------------------------------------------------- #
# VOC
# --------------------------------------------------------------------------- #
def test_voc_layout_and_annotations(voc_dir: tuple[Path, dict]) -> None:
    out, stats = voc_dir
    ids = [f"{i:06d}" for i in range(VOC_IMAGES)]
    assert (out / "ImageSets" / "Main" / "trainval.txt").read_text().splitlines() == ids
    assert tuple((out / "classes.txt").read_text().splitlines()) == DET_CLASSES
    assert sorted(p.name for p in (out / "JPEGImages").iterdir()) == [f"{i}.jpg" for i in ids]
    assert sorted(p.name for p in (out / "Annotations").iterdir()) == [f"{i}.xml" for i in ids]

    per_class = dict.fromkeys(DET_CLASSES, 0)
    truncated = occluded = touching = 0
    sides = []
    for image_id in ids:
        ann = _read_voc(out / "Annotations" / f"{image_id}.xml")
        assert ann["folder"] == "JPEGImages"
        assert ann["filename"] == f"{image_id}.jpg"
        image = Image.open(out / "JPEGImages" / ann["filename"])
        assert image.mode == "RGB"
        assert (ann["width"], ann["height"]) == image.size == (VOC_SIZE, VOC_SIZE)
        assert ann["depth"] == 3 and ann["segmented"] == "0"
        assert 1 <= len(ann["objects"]) <= VOC_MAX_OBJECTS
        for obj in ann["objects"]:
            assert obj["name"] in DET_CLASSES
            assert obj["pose"] == "Unspecified" and obj["difficult"] == 0
            assert obj["truncated"] in (0, 1) and obj["occluded"] in (0, 1)
            xmin, ymin, xmax, ymax = obj["box"]
            assert 1 <= xmin <= xmax <= ann["width"]
            assert 1 <= ymin <= ymax <= ann["height"]
            assert min(xmax - xmin, ymax - ymin) + 1 >= 4
            if obj["truncated"]:  # a border-cut box normally touches the border
                touching += xmin == 1 or ymin == 1 or xmax == ann["width"] or ymax == ann["height"]
            per_class[obj["name"]] += 1
            truncated += obj["truncated"]
            occluded += obj["occluded"]
            sides.append(max(xmax - xmin + 1, ymax - ymin + 1) / VOC_SIZE)

    assert all(count > 0 for count in per_class.values()), per_class
    assert truncated > 0 and occluded > 0
    assert touching >= 0.9 * truncated
    assert min(sides) < 0.12 and max(sides) > 0.4
    assert stats == {
        "images": VOC_IMAGES,
        "objects": sum(per_class.values()),
        "objects_per_class": per_class,
        "truncated": truncated,
        "occluded": occluded,
    }


def test_voc_xml_matches_rendered_scene(voc_dir: tuple[Path, dict]) -> None:
    """Annotations are exactly the boxes of the scene the image was rendered from."""
    out, _ = voc_dir
    for i in range(5):
        scene = _render_voc_scene(_image_rng(3, _VOC_TAG, i), VOC_SIZE, VOC_MAX_OBJECTS)
        ann = _read_voc(out / "Annotations" / f"{i:06d}.xml")
        expected = [(o.name, o.box, int(o.truncated), int(o.occluded)) for o in scene.objects]
        got = [(o["name"], o["box"], o["truncated"], o["occluded"]) for o in ann["objects"]]
        assert got == expected


@pytest.mark.parametrize("index", range(12))
def test_voc_boxes_enclose_visible_pixels(index: int) -> None:
    size = 80
    scene = _render_voc_scene(_image_rng(21, _VOC_TAG, index), size, 6)
    assert 1 <= len(scene.objects) <= 6
    union = np.zeros((size, size), np.uint8)
    for k, obj in enumerate(scene.objects):
        visible = scene.owner == k
        rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
        # VOC box = tight box of the visible pixels, 1-based inclusive
        assert obj.box == (cols[0] + 1, rows[0] + 1, cols[-1] + 1, rows[-1] + 1)
        assert visible.sum() >= 0.4 * obj.area
        assert obj.occluded == (visible.sum() < 0.95 * obj.area)
        xmin, ymin, xmax, ymax = obj.box
        union[ymin - 1 : ymax, xmin - 1 : xmax] = 1
        if not obj.occluded:
            # the object's own pixels really differ from the background there
            diff = np.abs(scene.image - scene.background).max(axis=2)
            assert (diff[visible] > 1.0).mean() > 0.5
    # nothing is drawn farther than the anti-aliased fringe outside the boxes
    near = cv2.dilate(union, np.ones((5, 5), np.uint8)).astype(bool)
    changed = np.abs(scene.image - scene.background).max(axis=2) > 0.5
    assert not (changed & ~near).any()


def test_empty_and_invalid_arguments(tmp_path: Path) -> None:
    stats = generate_voc(tmp_path / "voc", num_images=0, image_size=64, seed=0, progress=False)
    assert stats["images"] == 0 and stats["objects"] == 0
    assert (tmp_path / "voc" / "ImageSets" / "Main" / "trainval.txt").read_text() == ""
    stats = generate_isic(tmp_path / "isic", num_images=0, image_size=64, seed=0, progress=False)
    assert stats["images"] == 0
    with pytest.raises(ValueError):
        generate_isic(tmp_path / "x", num_images=1, image_size=64, seed=-1, progress=False)
    with pytest.raises(ValueError):
        generate_voc(tmp_path / "y", num_images=1, image_size=64, seed=0, max_objects=0, progress=False)


# --------------------------------------------------------------------------- #
# Same bytes on every x86 CPU (issue 13, finding 4)
# --------------------------------------------------------------------------- #
# A child process renders the VOC scenes and writes a small dataset under one emulated CPU
# path; it prints what NumPy / OpenCV / libm actually ran with, so a setting that did not take
# effect is skipped instead of passing without having checked anything.
_CPU_PROBE = r"""
import hashlib, json, math, sys
from pathlib import Path

import cv2

settings = json.loads(sys.argv[1])
if "cv2_optimized" in settings:
    cv2.setUseOptimized(settings["cv2_optimized"])
if "cv2_threads" in settings:
    cv2.setNumThreads(settings["cv2_threads"])

import numpy as np

try:
    from numpy._core import _multiarray_umath as mu
except ImportError:  # NumPy 1.x
    from numpy.core import _multiarray_umath as mu

from segdet.data.synthetic.common import _image_rng
from segdet.data.synthetic.voc import _VOC_TAG, _render_voc_scene, generate_voc

out, num, size, seed = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
sha = lambda b: hashlib.sha256(b).hexdigest()
scenes = []
for i in range(num):
    scene = _render_voc_scene(_image_rng(seed, _VOC_TAG, i), size, 8)
    scenes.append(sha(scene.background.tobytes() + scene.image.tobytes() + scene.owner.tobytes()))
generate_voc(out, num_images=num, image_size=size, seed=seed, max_objects=8, progress=False)
files = {p.relative_to(out).as_posix(): sha(p.read_bytes()) for p in sorted(out.rglob("*")) if p.is_file()}
probe = np.random.default_rng(0).uniform(-7.0, 7.0, 20000)
print(json.dumps({
    "numpy_dispatch": [f for f in mu.__cpu_dispatch__ if mu.__cpu_features__.get(f)],
    "cv2_features": cv2.getCPUFeaturesLine().split(),
    "cv2_optimized": cv2.useOptimized(),
    "cv2_threads": cv2.getNumThreads(),
    "libm": sha(np.array([math.sin(x) + math.exp(x) for x in probe]).tobytes()),
    "scenes": scenes,
    "files": files,
}))
"""
_CPU_PATHS = (
    "numpy-no-avx512",
    "numpy-baseline",
    "opencv-baseline",
    "opencv-unoptimized",
    "opencv-1-thread",
    "opencv-8-threads",
    "libm-no-fma",
)
_CPU_IMAGES, _CPU_SIZE, _CPU_SEED = 24, 128, 0


def _run_cpu_probe(out: Path, settings: dict, env: dict[str, str] | None = None) -> dict:
    import json
    import os
    import subprocess
    import sys

    import segdet

    src = str(Path(segdet.__file__).resolve().parents[1])
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    for key in ("NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES", "OPENCV_CPU_DISABLE", "GLIBC_TUNABLES"):
        child_env.pop(key, None)
    child_env.update(env or {})
    args = [json.dumps(settings), str(out), str(_CPU_IMAGES), str(_CPU_SIZE), str(_CPU_SEED)]
    proc = subprocess.run(
        [sys.executable, "-c", _CPU_PROBE, *args], env=child_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cpu_reference(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _run_cpu_probe(tmp_path_factory.mktemp("cpu_ref") / "voc", {})


def _cpu_path(name: str, ref: dict) -> tuple[dict, dict[str, str]]:
    """(in-process cv2 settings, environment) that make this machine run the other code path."""
    numpy_found = ref["numpy_dispatch"]
    cv2_dispatched = [f[1:] for f in ref["cv2_features"] if f.startswith("*") and not f.endswith("?")]
    if name == "numpy-no-avx512":  # an AVX2 machine (EPYC before Zen 4) next to an AVX-512 Xeon
        off = [f for f in numpy_found if "512" in f or f == "X86_V4"]
        if not off:
            pytest.skip(f"this CPU has no AVX-512 kernels in NumPy to turn off (found: {numpy_found})")
        return {}, {"NPY_DISABLE_CPU_FEATURES": " ".join(off)}
    if name == "numpy-baseline":  # a CPU with none of NumPy's optional SIMD kernels
        if not numpy_found:
            pytest.skip("NumPy dispatches nothing above its baseline on this CPU")
        return {}, {"NPY_DISABLE_CPU_FEATURES": " ".join(numpy_found)}
    if name == "opencv-baseline":
        if not cv2_dispatched:
            pytest.skip(f"OpenCV dispatches nothing above its baseline here ({ref['cv2_features']})")
        return {}, {"OPENCV_CPU_DISABLE": ",".join(cv2_dispatched)}
    if name == "opencv-unoptimized":
        return {"cv2_optimized": False}, {}
    if name == "opencv-1-thread":
        return {"cv2_threads": 1}, {}
    if name == "opencv-8-threads":
        return {"cv2_threads": 8}, {}
    if name == "libm-no-fma":  # glibc's non-FMA exp/log/sin/cos (ifunc), as on a CPU without FMA
        return {}, {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2,-FMA"}
    raise AssertionError(name)


def _check_emulated(name: str, ref: dict, got: dict, env: dict[str, str]) -> None:
    """Skip when the setting did not change what the child ran with (nothing was emulated)."""
    if name.startswith("numpy-"):
        kept = sorted(set(env["NPY_DISABLE_CPU_FEATURES"].split()) & set(got["numpy_dispatch"]))
        if kept:
            pytest.skip(f"NumPy kept {kept} despite NPY_DISABLE_CPU_FEATURES: cannot emulate here")
    elif name == "opencv-baseline":
        kept = [f for f in got["cv2_features"] if f.startswith("*") and not f.endswith("?")]
        if kept:
            pytest.skip(f"OpenCV kept {kept} despite OPENCV_CPU_DISABLE: cannot emulate here")
    elif name == "opencv-unoptimized":
        assert got["cv2_optimized"] is False
    elif name in ("opencv-1-thread", "opencv-8-threads"):
        assert got["cv2_threads"] == int(name.split("-")[1])
    elif name == "libm-no-fma" and got["libm"] == ref["libm"]:
        pytest.skip("libm did not switch to other exp/sin code (not glibc, or no FMA variant on this CPU)")


@pytest.mark.parametrize("cpu_path", _CPU_PATHS)
def test_voc_bytes_do_not_depend_on_cpu_features(tmp_path: Path, cpu_reference: dict, cpu_path: str) -> None:
    """The VOC data are the same bytes whichever SIMD kernels, libm variant or thread count run.

    CPUs differ in the NumPy kernels they run (AVX-512's SVML ``power`` or another), OpenCV's
    (``cvtColor`` and float ``resize``: AVX2, SSE or plain C) and glibc's libm variant (FMA or
    not); each path is emulated here on one machine. The float scenes must match bit for bit
    too, so a difference that a lucky rounding hides in these few images still fails.
    """
    settings, env = _cpu_path(cpu_path, cpu_reference)
    got = _run_cpu_probe(tmp_path / "voc", settings, env)
    _check_emulated(cpu_path, cpu_reference, got, env)
    differing = [i for i, (a, b) in enumerate(zip(cpu_reference["scenes"], got["scenes"], strict=True)) if a != b]
    assert not differing, f"{cpu_path}: rendered scenes {differing} differ from the default CPU path"
    assert got["files"] == cpu_reference["files"], f"{cpu_path}: generated files differ"
