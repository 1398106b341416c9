"""The bad-input matrix: every case runs the stage (or ``segdet predict``) that meets the input, in a project that
has run its pipeline, and asserts the same things (``assert_clean_failure``): exit status 1, one ``ERROR:``
message naming the file (with its line, key or object) and what is expected, no traceback, no output written or
replaced, ``dvc.lock`` unchanged, no MLflow run left RUNNING. A few inputs that used to crash or hang the process
run as subprocesses (``test_crashers``). What segdet converts instead of refusing is in ``test_conversions.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdet.data.formats import write_voc_xml
from tests.reliability.conftest import (
    Outcome,
    assert_clean_failure,
    now_ms,
    python_cmd,
    run_in,
    snapshot,
    write_params,
)
from tests.stages.conftest import sh

pytestmark = pytest.mark.usefixtures("own_experiment")

SIZE = 32
BAD_NAME = os.fsdecode(b"ISIC_\xff9")  # Latin-1 bytes in a file name: not UTF-8


# ----------------------------------------------------------------------------------------------------------------
# data builders (tiny files in the test's own folder, outside the workspace)
# ----------------------------------------------------------------------------------------------------------------


def rgb(path: Path, size=(SIZE, SIZE), seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def mask(path: Path, size=(SIZE, SIZE), high: int = 255, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size[1], size[0]), np.uint8)
    m[size[1] // 4 : size[1] // 2, size[0] // 4 : size[0] // 2] = high
    Image.fromarray(m).convert(mode).save(path)
    return path


def seg_files(folder: Path, n: int = 6) -> list[tuple[Path, Path]]:
    return [(rgb(folder / "images" / f"ISIC_{i}.jpg", seed=i), mask(folder / "masks" / f"ISIC_{i}_segmentation.png"))
            for i in range(n)]


def manifest(path: Path, pairs: list[tuple[Path, Path]]) -> Path:
    path.write_text("".join(f"{a} {b}\n" for a, b in pairs))
    return path


def det_files(folder: Path, n: int = 6, box=(5, 5, 20, 20), cls: str = "circle") -> list[tuple[Path, Path]]:
    out = []
    for i in range(n):
        img = rgb(folder / "JPEGImages" / f"img{i}.jpg", seed=i)
        xml = folder / "Annotations" / f"img{i}.xml"
        xml.parent.mkdir(parents=True, exist_ok=True)
        write_voc_xml(xml, img.name, SIZE, SIZE, [(cls, box, False)])
        out.append((img, xml))
    return out


def coco_json(folder: Path, n: int = 6, **edit) -> Path:
    images = [{"id": i + 1, "file_name": rgb(folder / f"c{i}.jpg", seed=i).name, "width": SIZE, "height": SIZE}
              for i in range(n)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 4, 10, 12], "iscrowd": 0} for i in range(n)]
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "circle"}]}
    coco.update(edit)
    path = folder / "instances.json"
    path.write_text(json.dumps(coco))
    return path


def png_bomb(path: Path, side: int = 30000) -> Path:
    """A valid black-and-white PNG of ``side`` x ``side`` pixels, all zero: a hundred kilobytes that decode to
    ``side**2`` pixels (``side**2`` bytes in 8 bits)."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + 1 bit per pixel
    raw = zlib.compress(row * side, 9)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return path


def seg_manifest_case(tmp: Path, ws: Path, edit) -> tuple[str, list[str]]:
    """A seg manifest of good pairs changed by ``edit(pairs, tmp) -> pairs`` (or the manifest's text), run by the
    manifest stage."""
    pairs = seg_files(tmp / "seg")
    result = edit(pairs, tmp)
    m = tmp / "seg.txt"
    if isinstance(result, str):
        m.write_text(result)
    elif isinstance(result, bytes):
        m.write_bytes(result)
    else:
        manifest(m, result)
    params = write_params(ws, tmp / "params.yaml", data={"seg": {"source": "manifest", "path": str(m)}})
    return "manifest", ["--params", str(params)]


def det_manifest_case(tmp: Path, ws: Path, edit, classes=None) -> tuple[str, list[str]]:
    pairs = det_files(tmp / "det")
    result = edit(pairs, tmp)
    m = tmp / "det.txt"
    m.write_text(result) if isinstance(result, str) else manifest(m, result)
    det = {"source": "manifest", "path": str(m)}
    if classes:
        det["classes"] = classes
    params = write_params(ws, tmp / "params.yaml", data={"det": det})
    return "manifest", ["--params", str(params)]


def prepare_case(tmp: Path, ws: Path, seg=None, det=None) -> tuple[str, list[str]]:
    params = write_params(ws, tmp / "params.yaml", data={k: v for k, v in (("seg", seg), ("det", det)) if v})
    return "prepare", ["--params", str(params)]


def params_case(stage: str, **sections):
    def make(tmp: Path, ws: Path):
        return stage, ["--params", str(write_params(ws, tmp / "params.yaml", **sections))]
    return make


def raw_params_case(stage: str, text: str):
    def make(tmp: Path, ws: Path):
        p = tmp / "params.yaml"
        p.write_text(text)
        return stage, ["--params", str(p)]
    return make


def train_case(stage: str, key: str, make_file):
    """A training stage given ``key`` (weights / init_from) that names the file ``make_file(tmp, ws)`` returns."""
    def make(tmp: Path, ws: Path):
        return stage, ["--params", str(write_params(ws, tmp / "params.yaml", **{stage: {key: str(make_file(tmp, ws))}}))]
    return make


def predict_case(*args: str, images=None, kind: str = "unet", prepare=None):
    """``segdet predict`` on ``images(tmp)`` (default: one good image), models from the workspace unless ``--run``."""
    def make(tmp: Path, ws: Path):
        if prepare:
            prepare(tmp)
        inputs = images(tmp) if images else [str(rgb(tmp / "in" / "x.jpg"))]
        models = [] if "--run" in args else ["--models", str(ws / "models")]
        return "cli", ["predict", kind, *map(str, inputs), *models, "--out", str(tmp / "out"), *args]
    return make


def _folder(tmp: Path, name: str, files: dict[str, str] | None = None) -> Path:
    (tmp / name).mkdir()
    for f, text in (files or {}).items():
        (tmp / name / f).write_text(text)
    return tmp / name


def _evil_pickle(tmp: Path, ws: Path) -> Path:
    """A .pt whose unpickling would create ``pwned`` (a file beside it): refused, and never created."""
    class Evil:
        def __reduce__(self):
            return (open, (str(tmp / "pwned"), "w"))

    path = tmp / "evil.pt"
    torch.save({"model": Evil()}, path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# the matrix: id -> (make(tmp, ws) -> (stage, argv), text the message must hold)
# ----------------------------------------------------------------------------------------------------------------

def _drop_mask(pairs, tmp):
    pairs[2][1].unlink()
    return pairs


def _resize_mask(pairs, tmp):
    mask(pairs[1][1], size=(SIZE // 2, SIZE // 2))
    return pairs


def _grey_values_mask(pairs, tmp):
    Image.fromarray(np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE).astype(np.uint8)).save(pairs[3][1])
    return pairs


def _rgb_mask(pairs, tmp):
    mask(pairs[0][1], mode="RGB")
    return pairs


def _text_as_image(pairs, tmp):
    pairs[4][0].write_text("not an image")
    return pairs


def _empty_image(pairs, tmp):
    pairs[4][0].write_bytes(b"")
    return pairs


def _truncated_jpeg(pairs, tmp):
    data = pairs[5][0].read_bytes()
    pairs[5][0].write_bytes(data[: len(data) // 3])
    return pairs


def _bomb_image(pairs, tmp):
    png_bomb(tmp / "seg" / "images" / "ISIC_bomb.png")
    mask(tmp / "seg" / "masks" / "ISIC_bomb_segmentation.png")
    return [*pairs, (tmp / "seg" / "images" / "ISIC_bomb.png", tmp / "seg" / "masks" / "ISIC_bomb_segmentation.png")]


def _duplicate(pairs, tmp):
    return [*pairs, pairs[0]]


def _unpaired_names(pairs, tmp):
    pairs[1] = (pairs[1][0], pairs[2][1])
    return pairs


def _three_fields(pairs, tmp):
    return "".join(f"{a} {b}\n" for a, b in pairs) + f"{pairs[0][0]} {pairs[0][1]} extra\n"


def _unquoted_space(pairs, tmp):
    spaced = pairs[0][0].with_name("ISIC 0.jpg")
    pairs[0][0].rename(spaced)
    return "".join(f"{a} {b}\n" for a, b in [(spaced, pairs[0][1]), *pairs[1:]])


def _unbalanced_quote(pairs, tmp):
    return "".join(f"{a} {b}\n" for a, b in pairs[1:]) + f'"{pairs[0][0]} {pairs[0][1]}\n'


def _latin1_manifest(pairs, tmp):
    return ("".join(f"{a} {b}\n" for a, b in pairs)).encode() + b"caf\xe9.jpg caf\xe9_segmentation.png\n"


def _missing_file(pairs, tmp):
    return [*pairs, (tmp / "seg" / "images" / "ISIC_77.jpg", tmp / "seg" / "masks" / "ISIC_77_segmentation.png")]


def _xml_not_xml(pairs, tmp):
    pairs[2][1].write_text("<annotation><object>")
    return pairs


def _box_outside(pairs, tmp):
    write_voc_xml(pairs[1][1], pairs[1][0].name, SIZE, SIZE, [("circle", (5, 5, SIZE + 9, 20), False)])
    return pairs


def _box_inverted(pairs, tmp):
    write_voc_xml(pairs[1][1], pairs[1][0].name, SIZE, SIZE, [("circle", (20, 5, 5, 20), False)])
    return pairs


def _wrong_size(pairs, tmp):
    write_voc_xml(pairs[3][1], pairs[3][0].name, SIZE * 2, SIZE, [("circle", (5, 5, 20, 20), False)])
    return pairs


def _unknown_class(pairs, tmp):
    write_voc_xml(pairs[0][1], pairs[0][0].name, SIZE, SIZE, [("dragon", (5, 5, 20, 20), False)])
    return pairs


def _label_is_image(pairs, tmp):
    pairs[0] = (pairs[0][0], pairs[1][0])
    return pairs


def _voc_no_annotations(tmp, ws):
    det_files(tmp / "voc")
    for f in (tmp / "voc" / "Annotations").iterdir():
        f.unlink()
    (tmp / "voc" / "Annotations").rmdir()
    return prepare_case(tmp, ws, det={"source": "voc", "path": str(tmp / "voc")})


def _voc_list_names_missing_image(tmp, ws):
    det_files(tmp / "voc")
    (tmp / "voc" / "ImageSets" / "Main").mkdir(parents=True)
    (tmp / "voc" / "ImageSets" / "Main" / "train.txt").write_text("img0\nimg1\nimg9\n")
    (tmp / "voc" / "ImageSets" / "Main" / "test.txt").write_text("img2\nimg3\n")
    stage, argv = prepare_case(tmp, ws, det={"source": "voc", "path": str(tmp / "voc")})
    return stage, argv


def _voc_bad_name(tmp, ws):
    det_files(tmp / "voc")
    os.rename(tmp / "voc" / "JPEGImages" / "img0.jpg", tmp / "voc" / "JPEGImages" / f"{BAD_NAME}.jpg")
    return prepare_case(tmp, ws, det={"source": "voc", "path": str(tmp / "voc")})


def _coco(**edit):
    def make(tmp, ws):
        path = coco_json(tmp / "coco", **edit)
        return prepare_case(tmp, ws, det={"source": "coco", "path": str(path)})
    return make


def _coco_not_json(tmp, ws):
    (tmp / "coco").mkdir()
    (tmp / "coco" / "instances.json").write_text("{'images': [")
    return prepare_case(tmp, ws, det={"source": "coco", "path": str(tmp / "coco" / "instances.json")})


def _coco_missing_image(tmp, ws):
    path = coco_json(tmp / "coco")
    (tmp / "coco" / "c3.jpg").unlink()
    return prepare_case(tmp, ws, det={"source": "coco", "path": str(path)})


def _coco_folder_without_json(tmp, ws):
    (tmp / "coco" / "train").mkdir(parents=True)
    return prepare_case(tmp, ws, det={"source": "coco", "path": str(tmp / "coco")})


def _coco_image_in_two_splits(tmp, ws):
    for split in ("train", "valid"):
        coco_json(tmp / "coco" / split)  # both name c0.jpg ... c5.jpg
    return prepare_case(tmp, ws, det={"source": "coco", "path": str(tmp / "coco")})


def _yolo_class_beyond_names(tmp, ws):
    root = tmp / "yolo"
    (root / "labels" / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("circle\n")
    for i in range(4):
        rgb(root / "images" / "train" / f"y{i}.jpg", seed=i)
        (root / "labels" / "train" / f"y{i}.txt").write_text(f"{i // 3} 0.5 0.5 0.2 0.2\n")  # y3: class 1
    return prepare_case(tmp, ws, det={"source": "yolo", "path": str(root)})


def _isic_missing_folder(tmp, ws):
    return prepare_case(tmp, ws, seg={"source": "isic", "path": str(tmp / "nowhere")})


def _isic_image_without_mask(tmp, ws):
    seg_files(tmp / "isic")
    (tmp / "isic" / "masks" / "ISIC_3_segmentation.png").unlink()
    return prepare_case(tmp, ws, seg={"source": "isic", "path": str(tmp / "isic")})


def _isic_bad_name(tmp, ws):
    seg_files(tmp / "isic")
    os.rename(tmp / "isic" / "images" / "ISIC_1.jpg", tmp / "isic" / "images" / f"{BAD_NAME}.jpg")
    return prepare_case(tmp, ws, seg={"source": "isic", "path": str(tmp / "isic")})


def _tab_in_a_file_name(tmp, ws):
    """An ISIC folder (already imported: the manifest stage's --raw) with a tab in a file name, which no manifest line
    can hold: the error names the manifest the stage would write, not its temporary copy."""
    raw = tmp / "raw"
    shutil.copytree(ws / "data" / "raw" / "voc", raw / "voc")
    seg_files(raw / "isic")
    rgb(raw / "isic" / "images" / "ISIC\t7.jpg")
    mask(raw / "isic" / "masks" / "ISIC\t7_segmentation.png")
    return "manifest", ["--raw", str(raw)]


def _text_file(tmp, ws):
    (tmp / "notes.pt").write_text("hello")
    return tmp / "notes.pt"


def _other_network(tmp, ws):
    return ws / "models" / "yolo.pt"


def _truncated_checkpoint(tmp, ws):
    data = (ws / "models" / "unet.pt").read_bytes()
    (tmp / "cut.pt").write_bytes(data[: len(data) // 2])
    return tmp / "cut.pt"


def _label_name_clash(tmp, ws):
    """unet_eval on a test manifest whose two labels, in two folders, share a file name (predictions are saved by it)."""
    a, b = seg_files(tmp / "a", 1)[0], seg_files(tmp / "b", 1)[0]
    m = manifest(tmp / "seg_test_clash.txt", [a, b])
    return "unet_eval", ["--manifest", str(m)]


CASES = {
    # params
    "params: unknown key": (params_case("unet_train", unet_train={"lrr": 0.1}), ["unet_train: unknown key 'lrr'",
                                                                                  "did you mean 'lr'"]),
    "params: wrong type": (params_case("unet_train", unet_train={"epochs": "ten"}),
                           ["unet_train.epochs = 'ten' has the wrong type: expected an integer"]),
    "params: out of range": (params_case("unet_train", unet_train={"epochs": 0}),
                             ["unet_train.epochs = 0 is out of range: expected a value >= 1"]),
    "params: unknown variant": (params_case("unet_train", unet_train={"variant": "unet48"}),
                                ["unet_train.variant = 'unet48' is not allowed", "unet32"]),
    "params: val split 0": (params_case("manifest", data={"split": {"train": 0.85, "val": 0, "test": 0.15}}),
                            ["data.split.val = 0", "validation images"]),
    "params: splits do not sum to 1": (params_case("manifest", data={"split": {"train": 0.7, "val": 0.2, "test": 0.2}}),
                                       ["data.split:", "must sum to 1"]),
    "params: unknown source": (params_case("prepare", data={"seg": {"source": "kaggle"}}),
                               ["data.seg.source = 'kaggle' is not allowed", "isic"]),
    "params: not YAML": (raw_params_case("unet_train", "unet_train:\n  lr: [0.1\n"), ["params.yaml", "line"]),
    "params: missing file": (lambda tmp, ws: ("unet_train", ["--params", str(tmp / "nope.yaml")]),
                             ["nope.yaml", "no such"]),
    "params: unknown section": (raw_params_case("unet_train", "unet_trian:\n  lr: 0.1\n"),
                                ["unknown section 'unet_trian'", "did you mean 'unet_train'"]),
    "params: GPU asked on a CPU machine": (params_case("unet_train", base={"device": "cuda"}), ["base.device", "cuda"]),
    # segmentation data: a manifest
    "seg: image without its mask": (lambda t, w: seg_manifest_case(t, w, _drop_mask),
                                    ["seg.txt:3", "file not found", "ISIC_2_segmentation.png"]),
    "seg: mask size differs": (lambda t, w: seg_manifest_case(t, w, _resize_mask),
                               ["seg.txt:2", "mask size 16x16 differs from image size 32x32"]),
    "seg: mask with grey values": (lambda t, w: seg_manifest_case(t, w, _grey_values_mask),
                                   ["seg.txt:4", "expected only 0 and 255 (or 0 and 1)"]),
    "seg: colour mask": (lambda t, w: seg_manifest_case(t, w, _rgb_mask),
                         ["seg.txt:1", "has 3 channels", "expected a single-channel PNG"]),
    "seg: text file as image": (lambda t, w: seg_manifest_case(t, w, _text_as_image),
                                ["seg.txt:5", "cannot open image", "ISIC_4.jpg"]),
    "seg: empty image file": (lambda t, w: seg_manifest_case(t, w, _empty_image), ["seg.txt:5", "cannot open image"]),
    "seg: truncated JPEG": (lambda t, w: seg_manifest_case(t, w, _truncated_jpeg),
                            ["seg.txt:6", "cannot open image", "ISIC_5.jpg"]),
    "seg: decompression bomb": (lambda t, w: seg_manifest_case(t, w, _bomb_image),
                                ["seg.txt:7", "30000x30000 (900 megapixels)", "downscale"]),
    "seg: image listed twice": (lambda t, w: seg_manifest_case(t, w, _duplicate),
                                ["seg.txt:7", "duplicate image", "already listed at", "seg.txt:1"]),
    "seg: names do not pair": (lambda t, w: seg_manifest_case(t, w, _unpaired_names),
                               ["seg.txt:2", "do not pair by name", "expected ISIC_1_segmentation.png"]),
    # manifest files
    "manifest: three fields": (lambda t, w: seg_manifest_case(t, w, _three_fields),
                               ["seg.txt:7", "expected 'image_path label_path'", "got 3 field(s)"]),
    "manifest: unquoted space in a path": (lambda t, w: seg_manifest_case(t, w, _unquoted_space),
                                           ["seg.txt:1", "got 3 field(s)", "in double quotes when a path holds spaces"]),
    "manifest: unbalanced quote": (lambda t, w: seg_manifest_case(t, w, _unbalanced_quote),
                                   ["seg.txt:6", "unbalanced or misplaced double quote"]),
    "manifest: not UTF-8": (lambda t, w: seg_manifest_case(t, w, _latin1_manifest),
                            ["seg.txt:7", "not UTF-8 text (byte 0xe9 at column 4)", "save the manifest as UTF-8"]),
    "manifest: file that does not exist": (lambda t, w: seg_manifest_case(t, w, _missing_file),
                                           ["seg.txt:7", "file not found", "ISIC_77.jpg"]),
    "manifest: manifest itself missing": (
        lambda t, w: ("manifest", ["--params", str(write_params(w, t / "params.yaml", data={
            "seg": {"source": "manifest", "path": str(t / "missing.txt")}}))]), ["missing.txt"]),
    # detection data: a manifest of VOC XML
    "det: XML not XML": (lambda t, w: det_manifest_case(t, w, _xml_not_xml), ["det.txt:3", "img2.xml",
                                                                               "not a readable XML file"]),
    "det: box outside the image": (lambda t, w: det_manifest_case(t, w, _box_outside),
                                   ["det.txt:2", "object 1 (circle", "box outside the 32x32 image"]),
    "det: inverted box": (lambda t, w: det_manifest_case(t, w, _box_inverted), ["det.txt:2", "inverted box"]),
    "det: XML size differs from the image": (lambda t, w: det_manifest_case(t, w, _wrong_size),
                                             ["det.txt:4", "gives size 64x32 but image img3.jpg is 32x32"]),
    "det: class not in the class list": (lambda t, w: det_manifest_case(t, w, _unknown_class, ["circle", "square"]),
                                         ["det.txt:1", "unknown class 'dragon'", "known classes: circle, square"]),
    "det: label is an image": (lambda t, w: det_manifest_case(t, w, _label_is_image),
                               ["det.txt:1", "not a readable XML file"]),
    # detection data: VOC and COCO folders
    "voc: no Annotations folder": (_voc_no_annotations, ["not a Pascal VOC folder (missing Annotations/)"]),
    "voc: split list names a missing image": (_voc_list_names_missing_image,
                                              ["voc/ImageSets/Main/train.txt: lists img9, but there is no "
                                               "Annotations/img9.xml"]),
    "voc: file name not UTF-8": (_voc_bad_name, [r"ISIC_\xff9.jpg: the file name is not valid UTF-8", "rename it"]),
    "coco: not JSON": (_coco_not_json, ["instances.json: not a readable COCO json"]),
    "coco: no annotations list": (_coco(annotations=None), ["instances.json", "annotations"]),
    "coco: image file missing": (_coco_missing_image, ["instances.json: image id 4: file 'c3.jpg' not found"]),
    "coco: annotation without a box": (_coco(annotations=[{"id": 1, "image_id": 1, "category_id": 1}]),
                                       ["instances.json: annotations[0]", "lacks bbox"]),
    "coco: image without its size": (_coco(images=[{"id": 1, "file_name": "c0.jpg"}]),
                                     ["instances.json: images[0]", "lacks width, height"]),
    "coco: unknown category": (_coco(categories=[{"id": 2, "name": "square"}]),
                               ["instances.json: annotation 1 has unknown category_id 1"]),
    "coco: folder without an instances json": (_coco_folder_without_json, [
        "coco: no COCO instances json found; expected annotations/instances_<split>.json"]),
    "coco: one image in two splits": (_coco_image_in_two_splits, [
        "valid/instances.json: two images share the file name 'c0.jpg'"]),
    "yolo: class beyond the names": (_yolo_class_beyond_names, [
        "yolo/labels/train/y3.txt:1: class 1 is not one of 0..0 (1 names)"]),
    "manifest: a tab in a file name": (_tab_in_a_file_name, ["data/manifests/seg_", "path cannot be written to a "
                                                              "manifest line"]),
    # ISIC folders
    "isic: folder missing": (_isic_missing_folder, ["nowhere: no such folder"]),
    "isic: image without mask": (_isic_image_without_mask, ["ISIC_3.jpg: no mask ISIC_3_segmentation.png"]),
    "isic: file name not UTF-8": (_isic_bad_name, [r"ISIC_\xff9.jpg: the file name is not valid UTF-8"]),
    # checkpoints
    "checkpoint: resume from a missing file": (train_case("unet_train", "weights", lambda t, w: t / "gone.pt"),
                                               ["gone.pt: no such checkpoint file"]),
    "checkpoint: resume from a text file": (train_case("unet_train", "weights", _text_file),
                                            ["notes.pt: not a checkpoint (not a PyTorch file"]),
    "checkpoint: resume from another network": (train_case("unet_train", "weights", _other_network),
                                                ["yolo.pt", "does not fit this model", "init_from"]),
    "checkpoint: truncated file": (train_case("yolo_train", "weights", _truncated_checkpoint),
                                   ["cut.pt: not a checkpoint (truncated or damaged"]),
    "checkpoint: code in the pickle": (train_case("unet_train", "init_from", _evil_pickle),
                                       ["evil.pt: not a checkpoint", "weights_only"]),
    "checkpoint: code in a resume pickle (R-CNN)": (train_case("rcnn_finetune", "weights", _evil_pickle),
                                                   ["evil.pt: not a checkpoint", "weights_only"]),
    "checkpoint: code in a pickle to start from (YOLOv1)": (train_case("yolo_train", "init_from", _evil_pickle),
                                                           ["evil.pt: not a checkpoint", "weights_only"]),
    "seg: two labels share a file name (unet_eval)": (_label_name_clash, ["seg_test_clash.txt:2", "label file name "
                                                                          "ISIC_0_segmentation.png is also the label of"]),
    # segdet predict
    "predict: a GPU asked on a CPU machine": (predict_case("--device", "cuda"), ["cuda"]),
    "predict: folder without images": (predict_case(images=lambda t: [_folder(t, "empty", {"notes.txt": "x"})]),
                                       ["empty: no images in this folder"]),
    "predict: input missing": (predict_case(images=lambda t: [t / "nope.jpg"]), ["nope.jpg: no such file or folder"]),
    "predict: model missing": (lambda t, w: ("cli", ["predict", "unet", str(rgb(t / "x.jpg")), "--models",
                                                     str(t / "nomodels"), "--out", str(t / "out")]),
                               ["nomodels/unet.pt", "dvc repro", "--run"]),
    "predict: not an image": (predict_case(images=lambda t: [_folder(t, "in", {"a.png": "x"}) / "a.png"]),
                              ["a.png: cannot read image", "nothing was written"]),
    "predict: output folder holds other files": (predict_case(prepare=lambda t: _folder(t, "out", {"thesis.tex": "x"})),
                                                 ["out: exists and is not a segdet predict output folder"]),
    "predict: unknown MLflow run": (predict_case("--run", "0123456789abcdef"), ["MLflow run 0123456789abcdef"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_cleanly(case, workspace, tmp_path):
    make, expect = CASES[case]
    stage, argv = make(tmp_path, workspace)
    before, since = snapshot(workspace), now_ms()
    outcome = run_in(workspace, stage, argv)
    assert_clean_failure(workspace, outcome, before, since, expect)
    assert not (tmp_path / "pwned").exists()  # the pickle case: its code never ran


def test_the_matrix_covers_every_kind_of_input():
    kinds = {c.split(":")[0] for c in CASES}
    assert len(CASES) >= 40
    assert {"params", "seg", "manifest", "det", "voc", "coco", "yolo", "isic", "checkpoint", "predict"} <= kinds


# ----------------------------------------------------------------------------------------------------------------
# inputs that crashed (segmentation fault) or hung the process: run as real processes, with a time limit
# ----------------------------------------------------------------------------------------------------------------


def _run(ws, *args) -> Outcome:
    out = sh(python_cmd(*args), ws, check=False)
    return Outcome(out.returncode, out.stderr, out.stdout)


def test_crashers_prepare_with_a_non_utf8_file_name(workspace, tmp_path):
    stage, argv = _isic_bad_name(tmp_path, workspace)
    before, since = snapshot(workspace), now_ms()
    assert_clean_failure(workspace, _run(workspace, "stages/prepare.py", *argv), before, since,
                         [r"ISIC_\xff9.jpg: the file name is not valid UTF-8"])


@pytest.mark.parametrize("what", ["non-UTF-8 name", "decompression bomb"])
def test_crashers_predict(workspace, tmp_path, what):
    folder = tmp_path / "in"
    rgb(folder / "ok.jpg")
    if what == "decompression bomb":
        png_bomb(folder / "bomb.png")
        expect = ["bomb.png: the image is 30000x30000", "nothing was written"]
    else:
        rgb(folder / f"{BAD_NAME}.jpg")
        expect = [r"ISIC_\xff9.jpg: the file name is not valid UTF-8"]
    before, since = snapshot(workspace), now_ms()
    out = _run(workspace, "-m", "segdet.cli", "predict", "unet", str(folder), "--out", str(tmp_path / "out"))
    assert_clean_failure(workspace, out, before, since, expect)
    assert not (tmp_path / "out").exists()
