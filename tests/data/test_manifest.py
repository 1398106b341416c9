"""End-to-end tests of ``build_manifests`` with user manifests (``data.{seg,det}.source: manifest``).

Each test builds a tiny dataset in ``tmp_path`` (16x16 / 20x16 images made with PIL), writes the user's
manifest files by hand so every line number is known, and runs the manifest stage. Invalid data must
raise ``ManifestError`` naming ``manifest:LINE`` and must never write, or disturb, the output folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segdet.config import load_section
from segdet.data.formats import write_voc_xml
from segdet.data.manifest import build_manifests
from segdet.data.pairs import ManifestError, Pair, coco_ground_truth, read_manifest, validate_det, write_manifest

SPLITS = ("train", "val", "test")
N = 6
SEG_SIZE = 16  # seg images are 16x16
DET_W, DET_H = 20, 16  # det images are 20 wide, 16 high (not square, so a w/h swap shows)
HEADER = ["# hand-written manifest", ""]  # pairs start on line 3
FIRST_LINE = len(HEADER) + 1

# a hand-picked box on det image d0: VOC corners xmin=2, ymin=3, xmax=10, ymax=12
# -> COCO bbox [xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1] = [1, 2, 9, 10], area 90
CAT_BOX = (2, 3, 10, 12)
CAT_BBOX = [1.0, 2.0, 9.0, 10.0]
FULL_BOX = (1, 1, DET_W, DET_H)  # the whole image: the largest valid VOC box


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------


def _line(k: int) -> int:
    """1-based manifest line of the k-th pair (0-based) written by ``_write_manifest``."""
    return FIRST_LINE + k


def _write_manifest(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(HEADER + lines) + "\n")
    return path


def _rgb(seed: int, w: int, h: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def _mask(w: int, h: int, fg: int = 255) -> Image.Image:
    m = np.zeros((h, w), dtype=np.uint8)
    m[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = fg
    return Image.fromarray(m, "L")


def make_seg(root: Path, n: int = N, fg: int = 255) -> list[tuple[str, str]]:
    """n image/mask pairs under root/seg; returns (image, mask) paths relative to root."""
    (root / "seg" / "images").mkdir(parents=True, exist_ok=True)
    (root / "seg" / "masks").mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(n):
        ext = ".jpg" if i % 2 == 0 else ".png"  # both formats
        image = f"seg/images/img{i}{ext}"
        mask = f"seg/masks/img{i}_segmentation.png"
        _rgb(i, SEG_SIZE, SEG_SIZE).save(root / image)
        _mask(SEG_SIZE, SEG_SIZE, fg).save(root / mask)
        pairs.append((image, mask))
    return pairs


def det_objects(i: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    return [("cat", CAT_BOX)] if i == 0 else [("dog", FULL_BOX)]


def make_det(root: Path, n: int = N) -> list[tuple[str, str]]:
    """n images with VOC XML under root/det; image d0 holds one cat, the others one dog each."""
    (root / "det" / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "det" / "Annotations").mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(n):
        image = f"det/JPEGImages/d{i}.jpg"
        xml = f"det/Annotations/d{i}.xml"
        _rgb(100 + i, DET_W, DET_H).save(root / image)
        write_voc_xml(root / xml, f"d{i}.jpg", DET_W, DET_H, det_objects(i))
        pairs.append((image, xml))
    return pairs


def lines_of(pairs: list[tuple[str, str]]) -> list[str]:
    return [f"{a} {b}" for a, b in pairs]


def data_cfg(seg: str = "seg.txt", det: str = "det.txt", classes: list[str] | None = None, **extra):
    det_section: dict = {"source": "manifest", "path": det}
    if classes is not None:
        det_section["classes"] = classes
    return load_section("data", {"data": {"seg": {"source": "manifest", "path": seg}, "det": det_section, **extra}})


def build(root: Path, out: Path, cfg=None) -> dict:
    return build_manifests(cfg or data_cfg(), root / "raw", out, root, progress=False)


def tree_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def manifest_lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


@pytest.fixture
def dataset(tmp_path: Path) -> dict:
    """A valid seg + det dataset with manifests seg.txt / det.txt (relative to root = tmp_path)."""
    seg = make_seg(tmp_path)
    det = make_det(tmp_path)
    _write_manifest(tmp_path / "seg.txt", lines_of(seg))
    _write_manifest(tmp_path / "det.txt", lines_of(det))
    return {"root": tmp_path, "seg": seg, "det": det}


def where(root: Path, manifest: str, lineno: int) -> str:
    """How a problem is located: the manifest path as configured, resolved against root, and the line."""
    return f"{root / manifest}:{lineno}"


# ----------------------------------------------------------------------------------------------------------
# valid data
# ----------------------------------------------------------------------------------------------------------


def test_valid_data_builds_all_outputs(dataset: dict) -> None:
    root = dataset["root"]
    out = root / "manifests"
    summary = build(root, out)

    expected = {f"seg_{s}.txt" for s in SPLITS} | {f"det_{s}.txt" for s in SPLITS}
    expected |= {f"det_{s}_coco.json" for s in SPLITS} | {"det_classes.txt"}
    assert {p.name for p in out.iterdir()} == expected
    assert not [p for p in root.iterdir() if p.name.startswith(".manifests")], "temporary folder left behind"

    # 6 pairs by 0.7/0.15/0.15: val = round(0.9) = 1, test = 1, train = 4
    for kind, pairs in (("seg", dataset["seg"]), ("det", dataset["det"])):
        per_split = {s: manifest_lines(out / f"{kind}_{s}.txt") for s in SPLITS}
        assert [len(per_split[s]) for s in SPLITS] == [4, 1, 1]
        assert [summary[kind][s] for s in SPLITS] == [4, 1, 1]
        written = [ln for s in SPLITS for ln in per_split[s]]
        for ln in written:
            assert len(ln.split(" ")) == 2, f"not an 'image label' line: {ln!r}"
        # every pair exactly once, the pairing unchanged
        assert sorted(written) == sorted(lines_of(pairs))

    assert (out / "det_classes.txt").read_text() == "cat\ndog\n"
    assert summary["det"]["classes"] == ["cat", "dog"]
    assert summary["det"]["degenerate_boxes_dropped"] == 0

    found_cat = False
    for s in SPLITS:
        manifest = [ln.split(" ") for ln in manifest_lines(out / f"det_{s}.txt")]
        coco = json.loads((out / f"det_{s}_coco.json").read_text())
        assert coco["categories"] == [
            {"id": 1, "name": "cat", "supercategory": "object"},
            {"id": 2, "name": "dog", "supercategory": "object"},
        ]
        # image_id = 1-based position in this split's manifest
        assert [(im["id"], im["file_name"]) for im in coco["images"]] == [
            (k, image) for k, (image, _) in enumerate(manifest, 1)
        ]
        assert all((im["width"], im["height"]) == (DET_W, DET_H) for im in coco["images"])
        assert len(coco["annotations"]) == len(manifest)  # one object per image
        assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
        for a in coco["annotations"]:
            image = manifest[a["image_id"] - 1][0]
            if image.endswith("/d0.jpg"):
                found_cat = True
                assert a["category_id"] == 1
                assert a["bbox"] == CAT_BBOX
                assert a["area"] == 90
            else:
                assert a["category_id"] == 2
                assert a["bbox"] == [0.0, 0.0, float(DET_W), float(DET_H)]
            assert a["iscrowd"] == 0
    assert found_cat


def test_build_is_deterministic(dataset: dict) -> None:
    root = dataset["root"]
    build(root, root / "a")
    build(root, root / "b")
    assert tree_hashes(root / "a") == tree_hashes(root / "b")


def test_comments_blank_lines_and_tab_separator(tmp_path: Path) -> None:
    seg = make_seg(tmp_path)
    det = make_det(tmp_path)
    seg_lines = [
        "# a comment",
        f"{seg[0][0]}\t{seg[0][1]}",  # tab separator
        "",
        "   ",
        f"  # indented comment {seg[1][0]} {seg[1][1]} extra",
        *lines_of(seg[1:]),
    ]
    (tmp_path / "seg.txt").write_text("\n".join(seg_lines) + "\n")
    _write_manifest(tmp_path / "det.txt", ["", "# nothing here", *lines_of(det)])
    out = tmp_path / "out"
    summary = build(tmp_path, out)
    written = sorted(ln for s in SPLITS for ln in manifest_lines(out / f"seg_{s}.txt"))
    assert written == sorted(lines_of(seg))  # tab read as a separator, written back with a space
    assert sum(summary["seg"][s] for s in SPLITS) == N
    assert sum(summary["det"][s] for s in SPLITS) == N


def test_zero_one_masks_are_accepted(tmp_path: Path) -> None:
    seg = make_seg(tmp_path, fg=1)
    assert set(np.unique(np.asarray(Image.open(tmp_path / seg[0][1]))).tolist()) == {0, 1}
    _write_manifest(tmp_path / "seg.txt", lines_of(seg))
    _write_manifest(tmp_path / "det.txt", lines_of(make_det(tmp_path)))
    summary = build(tmp_path, tmp_path / "out")
    assert sum(summary["seg"][s] for s in SPLITS) == N


def test_folder_of_split_files_keeps_the_users_splits(tmp_path: Path) -> None:
    seg = make_seg(tmp_path)
    det = make_det(tmp_path)
    _write_manifest(tmp_path / "segm" / "train.txt", lines_of(seg[:3]))
    _write_manifest(tmp_path / "segm" / "val.txt", lines_of(seg[3:5]))
    _write_manifest(tmp_path / "segm" / "test.txt", lines_of(seg[5:]))
    _write_manifest(tmp_path / "det.txt", lines_of(det))
    out = tmp_path / "out"
    build(tmp_path, out, data_cfg(seg="segm"))
    assert manifest_lines(out / "seg_train.txt") == lines_of(seg[:3])
    assert manifest_lines(out / "seg_val.txt") == lines_of(seg[3:5])
    assert manifest_lines(out / "seg_test.txt") == lines_of(seg[5:])


def test_classes_from_config_fix_the_category_order(dataset: dict) -> None:
    root = dataset["root"]
    out = root / "out"
    build(root, out, data_cfg(classes=["dog", "cat", "bird"]))
    assert (out / "det_classes.txt").read_text() == "dog\ncat\nbird\n"
    for s in SPLITS:
        coco = json.loads((out / f"det_{s}_coco.json").read_text())
        assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "dog"), (2, "cat"), (3, "bird")]
        files = {im["id"]: im["file_name"] for im in coco["images"]}
        for a in coco["annotations"]:
            assert a["category_id"] == (2 if files[a["image_id"]].endswith("/d0.jpg") else 1)


# ----------------------------------------------------------------------------------------------------------
# zero-area boxes: dropped with a warning, not an error
# ----------------------------------------------------------------------------------------------------------


def test_zero_area_boxes_are_dropped_and_counted(dataset: dict, caplog: pytest.LogCaptureFixture) -> None:
    root = dataset["root"]
    # d1: a zero-width box (xmax == xmin); d2: a zero-height box (ymax == ymin); both beside a real box
    write_voc_xml(root / "det/Annotations/d1.xml", "d1.jpg", DET_W, DET_H, [("dog", FULL_BOX), ("cat", (5, 5, 5, 9))])
    write_voc_xml(root / "det/Annotations/d2.xml", "d2.jpg", DET_W, DET_H, [("cat", (4, 7, 9, 7)), ("dog", FULL_BOX)])
    out = root / "out"
    with caplog.at_level(logging.WARNING, logger="segdet"):
        summary = build(root, out)
    assert summary["det"]["degenerate_boxes_dropped"] == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "degenerate" in r.getMessage()]
    assert len(warnings) == 1 and "dropped 2 degenerate" in warnings[0].getMessage()

    anns = []
    for s in SPLITS:
        anns += json.loads((out / f"det_{s}_coco.json").read_text())["annotations"]
    assert len(anns) == N  # one real box per image; the two zero-area boxes are gone
    assert all(a["bbox"][2] > 0 and a["bbox"][3] > 0 and a["area"] > 0 for a in anns)
    objects = {c: sum(summary["det"][f"{s}_objects"][c] for s in SPLITS) for c in ("cat", "dog")}
    assert objects == {"cat": 1, "dog": N - 1}


# ----------------------------------------------------------------------------------------------------------
# invalid data: located error, nothing written, an earlier good result untouched
# ----------------------------------------------------------------------------------------------------------

# Each case corrupts the valid `dataset` and returns (expected locations, a fragment of the problem text
# [, the number of problems when it is not one per location]).
Case = Callable[[Path], tuple]


def _rewrite_line(root: Path, manifest: str, k: int, text: str) -> int:
    path = root / manifest
    lines = path.read_text().splitlines()
    lines[_line(k) - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return _line(k)


def _append_line(root: Path, manifest: str, text: str) -> int:
    path = root / manifest
    lines = path.read_text().splitlines() + [text]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def _seg_pair(k: int) -> tuple[str, str]:
    ext = ".jpg" if k % 2 == 0 else ".png"
    return f"seg/images/img{k}{ext}", f"seg/masks/img{k}_segmentation.png"


def _det_pair(k: int) -> tuple[str, str]:
    return f"det/JPEGImages/d{k}.jpg", f"det/Annotations/d{k}.xml"


def seg_three_fields(root: Path):
    image, mask = _seg_pair(2)
    line = _rewrite_line(root, "seg.txt", 2, f"{image} {mask} extra")
    return [where(root, "seg.txt", line)], "got 3 field(s)"


def seg_one_field(root: Path):
    line = _rewrite_line(root, "seg.txt", 4, _seg_pair(4)[0])
    return [where(root, "seg.txt", line)], "got 1 field(s)"


def seg_image_missing(root: Path):
    (root / _seg_pair(1)[0]).unlink()
    return [where(root, "seg.txt", _line(1))], "file not found"


def seg_mask_missing(root: Path):
    (root / _seg_pair(3)[1]).unlink()
    return [where(root, "seg.txt", _line(3))], "file not found"


def seg_image_garbage(root: Path):
    (root / _seg_pair(0)[0]).write_bytes(b"this is not an image\x00\x01\x02" * 10)
    return [where(root, "seg.txt", _line(0))], "cannot open image"


def seg_mask_garbage(root: Path):
    (root / _seg_pair(5)[1]).write_bytes(b"\x89PNG but not really" * 10)
    return [where(root, "seg.txt", _line(5))], "cannot open image"


def seg_names_do_not_pair(root: Path):
    # a.jpg listed with b_segmentation.png (both files exist and are valid)
    _rgb(7, SEG_SIZE, SEG_SIZE).save(root / "seg/images/a.jpg")
    _mask(SEG_SIZE, SEG_SIZE).save(root / "seg/masks/b_segmentation.png")
    line = _append_line(root, "seg.txt", "seg/images/a.jpg seg/masks/b_segmentation.png")
    return [where(root, "seg.txt", line)], "do not pair by name"


def seg_image_listed_twice(root: Path):
    image, mask = _seg_pair(2)
    line = _append_line(root, "seg.txt", f"{image} {mask}")
    first = where(root, "seg.txt", _line(2))
    return [where(root, "seg.txt", line)], f"duplicate image {image} (already listed at {first})"


def seg_mask_size_differs(root: Path):
    _mask(SEG_SIZE, SEG_SIZE // 2).save(root / _seg_pair(1)[1])
    return [where(root, "seg.txt", _line(1))], f"mask size {SEG_SIZE}x{SEG_SIZE // 2} differs from image size"


def seg_mask_value_128(root: Path):
    _mask(SEG_SIZE, SEG_SIZE, fg=128).save(root / _seg_pair(4)[1])
    return [where(root, "seg.txt", _line(4))], "has values [0, 128]"


def seg_mask_three_values(root: Path):
    m = np.zeros((SEG_SIZE, SEG_SIZE), np.uint8)
    m[:4] = 1
    m[-4:] = 255
    Image.fromarray(m, "L").save(root / _seg_pair(3)[1])
    return [where(root, "seg.txt", _line(3))], "has values [0, 1, 255]"


def seg_mask_rgb(root: Path):
    _mask(SEG_SIZE, SEG_SIZE).convert("RGB").save(root / _seg_pair(0)[1])
    return [where(root, "seg.txt", _line(0))], "has 3 channels (RGB)"


def det_one_field(root: Path):
    line = _rewrite_line(root, "det.txt", 3, _det_pair(3)[0])
    return [where(root, "det.txt", line)], "got 1 field(s)"


def det_image_missing(root: Path):
    (root / _det_pair(2)[0]).unlink()
    return [where(root, "det.txt", _line(2))], "file not found"


def det_xml_missing(root: Path):
    (root / _det_pair(4)[1]).unlink()
    return [where(root, "det.txt", _line(4))], "file not found"


def det_image_garbage(root: Path):
    (root / _det_pair(5)[0]).write_bytes(b"\xff\xd8\xff garbage" * 8)
    return [where(root, "det.txt", _line(5))], "cannot open image"


def det_image_listed_twice_by_another_spelling(root: Path):
    image, xml = _det_pair(1)
    line = _append_line(root, "det.txt", f"{root / image} {xml}")  # the same file, absolute path
    # both lines are named (the later one is the duplicate: see test_duplicate_is_reported_at_its_later_line)
    return [where(root, "det.txt", line), where(root, "det.txt", _line(1))], "duplicate image", 1


def det_filename_differs(root: Path):
    write_voc_xml(root / _det_pair(2)[1], "other.jpg", DET_W, DET_H, det_objects(2))
    return [where(root, "det.txt", _line(2))], "<filename>other.jpg</filename>, not for image d2.jpg"


def det_size_differs(root: Path):
    write_voc_xml(root / _det_pair(3)[1], "d3.jpg", DET_H, DET_W, [("dog", (1, 1, 10, 10))])  # w/h swapped
    return [where(root, "det.txt", _line(3))], f"gives size {DET_H}x{DET_W} but image d3.jpg is {DET_W}x{DET_H}"


def _det_box(root: Path, k: int, box: tuple[int, int, int, int]) -> None:
    """Give det image k a valid first object and ``box`` as its second object."""
    write_voc_xml(root / _det_pair(k)[1], f"d{k}.jpg", DET_W, DET_H, [("dog", FULL_BOX), ("dog", box)])


def det_box_xmax_beyond_width(root: Path):
    _det_box(root, 1, (2, 2, DET_W + 1, 8))
    return [where(root, "det.txt", _line(1))], f"object 2 (dog, box 2,2,{DET_W + 1},8): box outside the"


def det_box_ymax_beyond_height(root: Path):
    _det_box(root, 1, (2, 2, 8, DET_H + 1))
    return [where(root, "det.txt", _line(1))], "box outside the 20x16 image"


def det_box_xmin_zero(root: Path):
    _det_box(root, 4, (0, 2, 8, 8))
    return [where(root, "det.txt", _line(4))], "object 2 (dog, box 0,2,8,8): box outside the 20x16 image"


def det_box_inverted(root: Path):
    _det_box(root, 5, (10, 2, 5, 8))
    return [where(root, "det.txt", _line(5))], "object 2 (dog, box 10,2,5,8): inverted box"


def det_box_inverted_y(root: Path):
    _det_box(root, 5, (2, 10, 5, 8))
    return [where(root, "det.txt", _line(5))], "inverted box"


def det_malformed_xml(root: Path):
    (root / _det_pair(0)[1]).write_text("<annotation><filename>d0.jpg</filename><object>")
    return [where(root, "det.txt", _line(0))], "not a readable XML file"


def det_not_voc_xml(root: Path):
    (root / _det_pair(0)[1]).write_text("<svg><object/></svg>")
    return [where(root, "det.txt", _line(0))], "root element is <svg>"


def det_box_without_corner(root: Path):
    text = (root / _det_pair(2)[1]).read_text().replace("<ymax>16</ymax>", "")
    (root / _det_pair(2)[1]).write_text(text)
    return [where(root, "det.txt", _line(2))], "missing or non-numeric box corner"


SEG_CASES: list[Case] = [
    seg_three_fields,
    seg_one_field,
    seg_image_missing,
    seg_mask_missing,
    seg_image_garbage,
    seg_mask_garbage,
    seg_names_do_not_pair,
    seg_image_listed_twice,
    seg_mask_size_differs,
    seg_mask_value_128,
    seg_mask_three_values,
    seg_mask_rgb,
]
DET_CASES: list[Case] = [
    det_one_field,
    det_image_missing,
    det_xml_missing,
    det_image_garbage,
    det_image_listed_twice_by_another_spelling,
    det_filename_differs,
    det_size_differs,
    det_box_xmax_beyond_width,
    det_box_ymax_beyond_height,
    det_box_xmin_zero,
    det_box_inverted,
    det_box_inverted_y,
    det_malformed_xml,
    det_not_voc_xml,
    det_box_without_corner,
]


def assert_rejected(root: Path, corrupt: Case, cfg=None) -> ManifestError:
    """Build a good result into ``kept``, corrupt the data, then check both failure guarantees."""
    kept = root / "kept"
    build(root, kept, cfg)
    before = tree_hashes(kept)
    assert before, "the good build wrote nothing"

    wheres, fragment, *count = corrupt(root)

    fresh = root / "fresh"
    with pytest.raises(ManifestError) as info:
        build(root, fresh, cfg)
    assert not fresh.exists(), "a failed build created its output folder"

    with pytest.raises(ManifestError) as again:
        build(root, kept, cfg)
    assert tree_hashes(kept) == before, "a failed build changed an earlier good result"
    assert str(again.value) == str(info.value)
    assert not [p for p in root.iterdir() if p.name.startswith((".fresh", ".kept"))], "temporary folder left behind"

    err = info.value
    message = str(err)
    for w in wheres:
        assert re.search(re.escape(w) + r"\b(?!\.)", message), f"{w} not named in:\n{message}"
    for problem in err.problems:
        assert re.match(r".+:\d+: ", problem), f"problem not located at a manifest line: {problem}"
    assert len(err.problems) == (count[0] if count else len(wheres)), err.problems
    assert fragment in message, f"{fragment!r} not in:\n{message}"
    return err


@pytest.mark.parametrize("corrupt", SEG_CASES + DET_CASES, ids=lambda f: f.__name__)
def test_invalid_data_is_rejected_with_its_line(dataset: dict, corrupt: Case) -> None:
    assert_rejected(dataset["root"], corrupt)


@pytest.mark.parametrize(
    ("spelling", "seed"), [("absolute", 1), ("absolute", 4), ("dot-slash", 1)], ids=["abs-1", "abs-4", "dot-1"]
)
def test_duplicate_is_reported_at_its_later_line(tmp_path: Path, spelling: str, seed: int) -> None:
    seg = make_seg(tmp_path)
    image, mask = seg[2]
    again = str(tmp_path / image) if spelling == "absolute" else f"./{image}"
    _write_manifest(tmp_path / "seg.txt", lines_of(seg) + [f"{again} {mask}"])
    _write_manifest(tmp_path / "det.txt", lines_of(make_det(tmp_path)))
    with pytest.raises(ManifestError) as info:
        build(tmp_path, tmp_path / "out", data_cfg(seed=seed))
    (problem,) = info.value.problems
    first, later = where(tmp_path, "seg.txt", _line(2)), where(tmp_path, "seg.txt", _line(N))
    assert problem.startswith(f"{later}: duplicate image"), problem
    assert problem.endswith(f"(already listed at {first})"), problem


def test_unknown_class_when_classes_are_given(dataset: dict) -> None:
    root = dataset["root"]

    def corrupt(root: Path):
        write_voc_xml(root / _det_pair(3)[1], "d3.jpg", DET_W, DET_H, [("dog", FULL_BOX), ("bird", (2, 2, 6, 6))])
        return [where(root, "det.txt", _line(3))], "unknown class 'bird'; known classes: cat, dog"

    assert_rejected(root, corrupt, data_cfg(classes=["cat", "dog"]))


def test_without_configured_classes_a_new_class_is_learned(dataset: dict) -> None:
    root = dataset["root"]
    write_voc_xml(root / _det_pair(3)[1], "d3.jpg", DET_W, DET_H, [("bird", (2, 2, 6, 6))])
    build(root, root / "out")
    assert (root / "out" / "det_classes.txt").read_text() == "bird\ncat\ndog\n"


def test_image_listed_in_two_split_files(tmp_path: Path) -> None:
    seg = make_seg(tmp_path)
    _write_manifest(tmp_path / "segm" / "train.txt", lines_of(seg[:4]))
    _write_manifest(tmp_path / "segm" / "val.txt", lines_of([seg[4]]))
    _write_manifest(tmp_path / "segm" / "test.txt", lines_of(seg[5:]))
    _write_manifest(tmp_path / "det.txt", lines_of(make_det(tmp_path)))
    first = where(tmp_path, "segm/train.txt", _line(1))
    second = where(tmp_path, "segm/val.txt", _line(1))

    def corrupt(root: Path):
        # val.txt line 4 repeats train.txt line 4's image
        _write_manifest(root / "segm" / "val.txt", lines_of([seg[4], seg[1]]))
        return [second], f"duplicate image {seg[1][0]} (already listed at {first})"

    assert_rejected(tmp_path, corrupt, data_cfg(seg="segm"))


def test_all_problems_are_reported_at_once(dataset: dict) -> None:
    root = dataset["root"]

    def corrupt(root: Path):
        (root / _seg_pair(1)[0]).unlink()
        _mask(SEG_SIZE, SEG_SIZE, fg=128).save(root / _seg_pair(4)[1])
        image, mask = _seg_pair(0)
        dup = _append_line(root, "seg.txt", f"{image} {mask}")
        return [where(root, "seg.txt", _line(1)), where(root, "seg.txt", _line(4)), where(root, "seg.txt", dup)], (
            "3 problem(s); nothing was written"
        )

    err = assert_rejected(root, corrupt)
    assert sorted(p.split(": ")[0] for p in err.problems) == sorted(
        [where(root, "seg.txt", n) for n in (_line(1), _line(4), _line(N))]
    )


def test_all_malformed_lines_are_reported_at_once(dataset: dict) -> None:
    root = dataset["root"]

    def corrupt(root: Path):
        a = _rewrite_line(root, "seg.txt", 1, "only_one_field.jpg")
        b = _rewrite_line(root, "seg.txt", 4, "x.jpg y.png z.png")
        return [where(root, "seg.txt", a), where(root, "seg.txt", b)], "2 problem(s)"

    assert_rejected(root, corrupt)


def test_all_det_problems_are_reported_at_once(dataset: dict) -> None:
    root = dataset["root"]

    def corrupt(root: Path):
        write_voc_xml(root / _det_pair(1)[1], "d1.jpg", DET_W, DET_H, [("dog", (0, 1, 5, 5)), ("dog", (9, 1, 5, 5))])
        write_voc_xml(root / _det_pair(5)[1], "x.jpg", DET_W, DET_H, [("dog", FULL_BOX)])
        return [where(root, "det.txt", _line(1))] * 2 + [where(root, "det.txt", _line(5))], "3 problem(s)"

    err = assert_rejected(root, corrupt)
    assert "object 1" in err.problems[0] and "object 2" in err.problems[1]


def test_missing_manifest_is_a_manifest_error(dataset: dict) -> None:
    root = dataset["root"]
    with pytest.raises(ManifestError, match="no such manifest file or folder"):
        build(root, root / "out", data_cfg(seg="nope.txt"))
    assert not (root / "out").exists()


# ----------------------------------------------------------------------------------------------------------
# paths with spaces: a tab between the paths, or double quotes; absolute and relative paths
# ----------------------------------------------------------------------------------------------------------


def _spaced_seg(root: Path, n: int = N) -> list[tuple[str, str]]:
    """The seg pairs moved under folders and names with spaces: ``my data/images/img 0.jpg`` ..."""
    pairs = []
    for image, mask in make_seg(root, n):
        new_image = f"my data/images/{Path(image).stem.replace('img', 'img ')}{Path(image).suffix}"
        new_mask = f"my data/masks/{Path(mask).name.replace('img', 'img ')}"
        for old, new in ((image, new_image), (mask, new_mask)):
            (root / new).parent.mkdir(parents=True, exist_ok=True)
            (root / old).rename(root / new)
        pairs.append((new_image, new_mask))
    return pairs


@pytest.mark.parametrize("style", ["tab", "quotes"])
def test_paths_with_spaces_read_and_write_back(tmp_path: Path, style: str) -> None:
    seg = _spaced_seg(tmp_path)
    if style == "tab":
        lines = [f"{a}\t{b}" for a, b in seg]
    else:
        lines = [f'"{a}"   "{b}"' for a, b in seg]
    _write_manifest(tmp_path / "seg.txt", lines)
    assert [(p.image, p.label) for p in read_manifest(tmp_path / "seg.txt")] == seg
    _write_manifest(tmp_path / "det.txt", lines_of(make_det(tmp_path)))
    out = tmp_path / "out"
    summary = build(tmp_path, out)
    assert sum(summary["seg"][s] for s in SPLITS) == N
    written = [ln for s in SPLITS for ln in manifest_lines(out / f"seg_{s}.txt")]
    assert sorted(written) == sorted(f"{a}\t{b}" for a, b in seg)  # written with a tab, read back unchanged
    assert sorted((p.image, p.label) for s in SPLITS for p in read_manifest(out / f"seg_{s}.txt")) == sorted(seg)
    # the det manifests have no spaces: still 'image label' with one space
    for s in SPLITS:
        assert all("\t" not in ln and len(ln.split(" ")) == 2 for ln in manifest_lines(out / f"det_{s}.txt"))


def test_quoted_and_tab_lines_mix_with_plain_ones(tmp_path: Path) -> None:
    manifest = tmp_path / "m.txt"
    manifest.write_text(
        'a.jpg a.png\n'
        '"b 1.jpg" b.png\n'
        'c 1.jpg\t\tc 1.png  \n'
        '"d 1.jpg"\t"d 1.png"\n'
        '  e.jpg   "e 1.png"  \n'
    )
    assert [(p.image, p.label, p.where) for p in read_manifest(manifest)] == [
        ("a.jpg", "a.png", f"{manifest}:1"),
        ("b 1.jpg", "b.png", f"{manifest}:2"),
        ("c 1.jpg", "c 1.png", f"{manifest}:3"),
        ("d 1.jpg", "d 1.png", f"{manifest}:4"),
        ("e.jpg", "e 1.png", f"{manifest}:5"),
    ]


def test_absolute_and_relative_paths(tmp_path: Path) -> None:
    seg = make_seg(tmp_path)
    lines = [f"{tmp_path / a} {tmp_path / b}" if k % 2 else f"{a} {b}" for k, (a, b) in enumerate(seg)]
    _write_manifest(tmp_path / "seg.txt", lines)
    _write_manifest(tmp_path / "det.txt", lines_of(make_det(tmp_path)))
    out = tmp_path / "out"
    build(tmp_path, out)
    written = {p.image: p.label for s in SPLITS for p in read_manifest(out / f"seg_{s}.txt")}
    assert written == {(str(tmp_path / a) if k % 2 else a): (str(tmp_path / b) if k % 2 else b)
                       for k, (a, b) in enumerate(seg)}  # kept as the user wrote them
    assert all((tmp_path / image).is_file() for image in written)  # absolute, or relative to the root


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('"x 1.jpg y.png', "unbalanced or misplaced double quote"),
        ('"x 1.jpg"y.png z.png', "unbalanced or misplaced double quote"),
        ("x 1.jpg\ty.png\tz.png", "got 3 field(s)"),
        ('"x 1.jpg" y 1.png', "got 3 field(s)"),
    ],
    ids=["open-quote", "quote-then-text", "three-tabbed", "unquoted-space"],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    manifest = _write_manifest(tmp_path / "m.txt", ["a.jpg a.png", line, "b.jpg b.png"])
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    (problem,) = info.value.problems
    assert problem.startswith(f"{manifest}:{_line(1)}: ") and fragment in problem, problem


def test_write_manifest_default_form_is_unchanged(tmp_path: Path) -> None:
    pairs = [Pair("raw/a.jpg", "raw/a.xml", ""), Pair("/abs/b.png", "/abs/b.xml", "")]
    write_manifest(tmp_path / "m.txt", pairs, header="made by a test")
    assert (tmp_path / "m.txt").read_bytes() == b"# made by a test\nraw/a.jpg raw/a.xml\n/abs/b.png /abs/b.xml\n"


@pytest.mark.parametrize("image", ["a\tb.jpg", "a\nb.jpg", " a.jpg", "a.jpg ", '"a 1.jpg"', "#a.jpg", ""])
def test_write_manifest_rejects_paths_it_cannot_write(tmp_path: Path, image: str) -> None:
    with pytest.raises(ManifestError, match="m.txt:7: path cannot be written to a manifest line"):
        write_manifest(tmp_path / "out.txt", [Pair(image, "a b.png", "m.txt:7")])
    assert not (tmp_path / "out.txt").exists()


# ----------------------------------------------------------------------------------------------------------
# a folder of split manifests with trainval beside train and val
# ----------------------------------------------------------------------------------------------------------


def test_manifest_folder_with_train_val_trainval_and_test(tmp_path: Path) -> None:
    det = make_det(tmp_path, 8)
    folder = tmp_path / "detm"
    _write_manifest(folder / "train.txt", lines_of(det[:4]))
    _write_manifest(folder / "val.txt", lines_of(det[4:6]))
    _write_manifest(folder / "trainval.txt", lines_of(det[:6]))
    _write_manifest(folder / "test.txt", lines_of(det[6:]))
    _write_manifest(tmp_path / "seg.txt", lines_of(make_seg(tmp_path)))
    out = tmp_path / "out"
    summary = build(tmp_path, out, data_cfg(det="detm"))
    assert [summary["det"][s] for s in SPLITS] == [4, 2, 2]
    assert manifest_lines(out / "det_train.txt") == lines_of(det[:4])
    assert manifest_lines(out / "det_val.txt") == lines_of(det[4:6])


def test_unsorted_split_files_keep_their_order_in_manifests_and_coco_ids(tmp_path: Path) -> None:
    det = make_det(tmp_path, 8)
    order = {"train": [5, 1, 4, 0], "val": [7, 2], "test": [6, 3]}  # not alphabetical: d5 d1 d4 d0, ...
    for split, ks in order.items():
        _write_manifest(tmp_path / "detm" / f"{split}.txt", lines_of([det[k] for k in ks]))
    _write_manifest(tmp_path / "seg.txt", lines_of(make_seg(tmp_path)))
    out = tmp_path / "out"
    build(tmp_path, out, data_cfg(det="detm"))
    for split, ks in order.items():
        assert manifest_lines(out / f"det_{split}.txt") == lines_of([det[k] for k in ks])
        coco = json.loads((out / f"det_{split}_coco.json").read_text())
        # image_id n = line n of the split's manifest, and its box is that image's
        assert [(im["id"], im["file_name"]) for im in coco["images"]] == [(n, det[k][0]) for n, k in enumerate(ks, 1)]
        boxes = {a["image_id"]: (a["category_id"], a["bbox"]) for a in coco["annotations"]}
        assert boxes == {n: (1, CAT_BBOX) if k == 0 else (2, [0.0, 0.0, float(DET_W), float(DET_H)])
                         for n, k in enumerate(ks, 1)}
    assert json.loads((out / "det_train_coco.json").read_text())["annotations"][3]["image_id"] == 4  # d0's cat


# ----------------------------------------------------------------------------------------------------------
# VOC difficult objects: written to the COCO ground truth as iscrowd (ignored in evaluation)
# ----------------------------------------------------------------------------------------------------------


def test_difficult_objects_are_iscrowd_in_the_coco_ground_truth(dataset: dict) -> None:
    root = dataset["root"]
    # d0: the cat and a difficult dog; d1: a difficult dog only
    write_voc_xml(root / "det/Annotations/d0.xml", "d0.jpg", DET_W, DET_H, [("cat", CAT_BOX), ("dog", FULL_BOX, True)])
    write_voc_xml(root / "det/Annotations/d1.xml", "d1.jpg", DET_W, DET_H, [("dog", (3, 3, 8, 8), True)])
    out = root / "out"
    summary = build(root, out)
    assert sum(summary["det"][f"{s}_difficult"] for s in SPLITS) == 2
    found = []
    for s in SPLITS:
        manifest = [ln.split(" ")[0] for ln in manifest_lines(out / f"det_{s}.txt")]
        coco = json.loads((out / f"det_{s}_coco.json").read_text())
        for a in coco["annotations"]:
            found.append((Path(manifest[a["image_id"] - 1]).stem, a["category_id"], a["bbox"], a["iscrowd"]))
    assert sorted(found) == sorted(
        [("d0", 1, CAT_BBOX, 0), ("d0", 2, [0.0, 0.0, float(DET_W), float(DET_H)], 1), ("d1", 2, [2.0, 2.0, 6.0, 6.0], 1)]
        + [(f"d{k}", 2, [0.0, 0.0, float(DET_W), float(DET_H)], 0) for k in range(2, N)]
    )


def test_coco_ground_truth_contract_with_difficult(tmp_path: Path) -> None:
    Image.new("RGB", (DET_W, DET_H)).save(tmp_path / "a.png")
    write_voc_xml(tmp_path / "a.xml", "a.png", DET_W, DET_H, [("dog", (2, 3, 10, 12), True), ("cat", FULL_BOX)])
    pairs = [Pair("a.png", "a.xml", "m:1")]
    check = validate_det(pairs, tmp_path)
    assert check.problems == []
    gt = coco_ground_truth(pairs, check.annotations, ["cat", "dog"])
    assert gt["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [1.0, 2.0, 9.0, 10.0], "area": 90.0, "iscrowd": 1},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0.0, 0.0, 20.0, 16.0], "area": 320.0, "iscrowd": 0},
    ]
