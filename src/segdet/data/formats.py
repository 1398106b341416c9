"""File formats and box conventions: image reading, Pascal VOC XML (read and write) and COCO boxes.

Box convention: in code a box is float ``(x1, y1, x2, y2)`` in pixels with
``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax``, where ``xmin..xmax`` are Pascal VOC's 1-based
inclusive pixel indices. So a VOC box ``xmin=1, xmax=10`` covers pixels 0..9 and is 10 pixels wide.
COCO boxes are ``[x, y, w, h]`` of the same float pixels.
"""

from __future__ import annotations

import io
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from segdet.stage import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")


class FormatError(UserError):
    """A file is not in the format it claims to be; the message starts with the file's path."""


# EXIF orientation is ignored, as PIL and annotation tools do: boxes and masks refer to the stored pixels.
_READ_FLAGS = cv2.IMREAD_IGNORE_ORIENTATION

#: the most pixels an image may have (PIL's decompression-bomb limit, about 179 megapixels: 13400 x 13400). A
#: larger one is refused before it is decoded: a few hundred bytes of PNG can decode to gigabytes.
MAX_PIXELS = 2 * 89_478_485


def name_problem(path: str | Path) -> str | None:
    """Why the file name of ``path`` cannot be used (its bytes are not UTF-8, so no manifest, JSON or log can
    name it), or None. Python hands such names over as surrogate escapes, which crash OpenCV."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(text).decode("utf-8", "backslashreplace")
        return (f"{shown}: the file name is not valid UTF-8; rename it (for example with "
                "`convmv -f latin1 -t utf8 --notest`)")
    return None


def too_many_pixels(width: int, height: int) -> str | None:
    """Why an image of ``width`` x ``height`` is refused (more than :data:`MAX_PIXELS`), or None."""
    if width * height <= MAX_PIXELS:
        return None
    return (f"the image is {width}x{height} ({width * height / 1e6:.0f} megapixels), more than segdet's limit of "
            f"{MAX_PIXELS / 1e6:.0f} (a decompression bomb, or an image to downscale first, e.g. "
            "`mogrify -resize '4096x4096>' <file>`)")


def image_size(source: str | Path | np.ndarray) -> tuple[int, int] | None:
    """``(width, height)`` from the header of a file (a path, or its bytes as read) without decoding its pixels;
    None when PIL cannot tell."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, np.ndarray):
        source = io.BytesIO(source)  # the array's buffer, copied once
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # the header's size is all that is read; too_many_pixels() judges it
    try:
        with Image.open(source) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


#: OpenCV's reduced colour decoding (a JPEG is decoded straight at 1/2, 1/4 or 1/8 of its size, by its DCT)
_REDUCED_COLOR = {8: cv2.IMREAD_REDUCED_COLOR_8, 4: cv2.IMREAD_REDUCED_COLOR_4, 2: cv2.IMREAD_REDUCED_COLOR_2}


def reduction(width: int, height: int, at_least: int) -> int:
    """The largest factor of 8, 4, 2 (else 1) that leaves both sides of a ``width`` x ``height`` image at least
    4 x ``at_least`` pixels: decoded that much smaller, the image still has 4 or more pixels for each pixel of an
    ``at_least``-sized resize (which antialiases over them), so the resize comes out as from the full image."""
    for factor in (8, 4, 2):
        if min(width, height) // factor >= 4 * at_least:
            return factor
    return 1


def _decode(path: str | Path, flags: int, at_least: int | None = None) -> np.ndarray:
    problem = name_problem(path)
    if problem:
        raise FormatError(problem)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise FormatError(f"{path}: cannot read image ({exc.strerror or exc})") from None
    return _decode_bytes(data, str(path), flags, at_least)


def _decode_bytes(data: np.ndarray, name: str, flags: int, at_least: int | None = None) -> np.ndarray:
    size = image_size(data) if data.size else None
    problem = too_many_pixels(*size) if size else None
    if problem:
        raise FormatError(f"{name}: {problem}")
    factor = reduction(*size, at_least) if at_least and size and flags == cv2.IMREAD_COLOR else 1
    if factor > 1:
        flags = _REDUCED_COLOR[factor]
    img = cv2.imdecode(data, flags | _READ_FLAGS) if data.size else None
    if img is None:
        raise FormatError(f"{name}: cannot read image (not an image file, or damaged)")
    return img


def read_bgr(path: str | Path, at_least: int | None = None) -> np.ndarray:
    """:func:`read_rgb` in OpenCV's channel order (``uint8[H, W, 3]`` BGR), for OpenCV's own algorithms."""
    return _decode(path, cv2.IMREAD_COLOR, at_least)


def read_rgb(path: str | Path, at_least: int | None = None) -> np.ndarray:
    """Decode an image file to ``uint8[H, W, 3]`` RGB (greyscale files are expanded to 3 channels, an alpha
    channel is dropped, 16-bit images are scaled to 8 bits).

    ``at_least``: the image will be resized to this side next, so it may be decoded smaller, by the largest of
    1/8, 1/4, 1/2 that keeps both sides at least 4 x ``at_least`` (:func:`reduction`; a JPEG's DCT decodes a
    reduced image several times faster). Images that small already are decoded whole.

    Raises:
        FormatError: the name is not UTF-8, the file is missing, is not an image, or has more than
            :data:`MAX_PIXELS` pixels (checked from its header, before decoding).
    """
    return cv2.cvtColor(read_bgr(path, at_least), cv2.COLOR_BGR2RGB)


def decode_rgb(data: bytes, name: str = "image") -> np.ndarray:
    """:func:`read_rgb` of an image file's bytes (an upload, a request body), with the same checks; ``name``
    names the image in messages."""
    return cv2.cvtColor(_decode_bytes(np.frombuffer(data, dtype=np.uint8), name, cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)


def read_gray(path: str | Path) -> np.ndarray:
    """Decode a single-channel label image to ``uint8[H, W]`` (same checks as :func:`read_rgb`)."""
    return _decode(path, cv2.IMREAD_GRAYSCALE)


# ----------------------------------------------------------------------------------------------------------
# Pascal VOC
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 (docs/architecture.md convention)
    voc: tuple[float, float, float, float]  # xmin, ymin, xmax, ymax as written in the XML
    difficult: bool = False
    truncated: bool = False


@dataclass(frozen=True)
class VocAnnotation:
    path: str
    filename: str | None
    width: int | None
    height: int | None
    objects: tuple[VocObject, ...] = field(default_factory=tuple)


def voc_to_xyxy(xmin: float, ymin: float, xmax: float, ymax: float) -> tuple[float, float, float, float]:
    """VOC 1-based inclusive corners -> float ``(x1, y1, x2, y2)``."""
    return (float(xmin) - 1.0, float(ymin) - 1.0, float(xmax), float(ymax))


def xyxy_to_voc(x1: float, y1: float, x2: float, y2: float) -> tuple[int, int, int, int]:
    """Float ``(x1, y1, x2, y2)`` -> VOC integer corners (rounded outwards to whole pixels)."""
    return (math.floor(x1) + 1, math.floor(y1) + 1, math.ceil(x2), math.ceil(y2))


def coco_box(box: tuple[float, float, float, float] | list[float]) -> list[float]:
    """Float ``(x1, y1, x2, y2)`` -> COCO ``[x, y, w, h]``."""
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def coco_to_xyxy(bbox: list[float]) -> list[float]:
    """COCO ``[x, y, w, h]`` -> float ``[x1, y1, x2, y2]``."""
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def coco_annotation(ann_id: int, image_id: int, category_id: int, box: tuple[float, float, float, float] | list[float],
                    crowd: bool = False) -> dict:
    """One COCO ground-truth annotation of the float ``(x1, y1, x2, y2)`` box: ``bbox = [x, y, w, h]``, its area,
    and ``iscrowd`` (a VOC difficult object or a COCO crowd region: ignored by the evaluations)."""
    bbox = coco_box(box)
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "area": bbox[2] * bbox[3], "iscrowd": int(crowd)}


def _text(node: ET.Element, tag: str) -> str | None:
    child = node.find(tag)
    return child.text.strip() if child is not None and child.text is not None else None


def parse_voc_xml(path: str | Path) -> VocAnnotation:
    """Parse one Pascal VOC annotation file.

    Raises:
        FormatError: the file is not XML, has no ``<annotation>`` root, or an object lacks a name or a
            numeric ``<bndbox>``. Range checks (box inside the image) are the validator's job.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise FormatError(f"{path}: not a readable XML file ({exc})") from None
    if root.tag != "annotation":
        raise FormatError(f"{path}: root element is <{root.tag}>, expected <annotation> (Pascal VOC)")
    width = height = None
    size = root.find("size")
    if size is not None:
        try:
            width = int(float(_text(size, "width") or 0)) or None
            height = int(float(_text(size, "height") or 0)) or None
        except ValueError:
            raise FormatError(f"{path}: <size> holds non-numeric width/height") from None
    objects = []
    for k, obj in enumerate(root.findall("object"), 1):
        name = _text(obj, "name")
        if not name:
            raise FormatError(f"{path}: object {k} has no <name>")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise FormatError(f"{path}: object {k} ({name}) has no <bndbox>")
        try:
            voc = tuple(float(_text(bnd, t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise FormatError(f"{path}: object {k} ({name}) has a missing or non-numeric box corner") from None
        objects.append(
            VocObject(
                name=name,
                box=voc_to_xyxy(*voc),
                voc=voc,  # type: ignore[arg-type]
                difficult=_text(obj, "difficult") == "1",
                truncated=_text(obj, "truncated") == "1",
            )
        )
    return VocAnnotation(str(path), _text(root, "filename"), width, height, tuple(objects))


def write_voc_xml(
    path: str | Path,
    filename: str,
    width: int,
    height: int,
    objects: list[tuple],
    depth: int = 3,
    xml_declaration: bool = False,
) -> None:
    """Write a Pascal VOC annotation (the one VOC writer of segdet).

    ``objects``: ``(name, (xmin, ymin, xmax, ymax))`` with 1-based corners, optionally followed by
    ``difficult`` (default 0), ``truncated`` (default: the box touches the image border) and ``occluded``
    (written only when given). ``xml_declaration``: start with ``<?xml ...?>`` (no trailing newline then,
    as ``ElementTree.write`` does)."""
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "JPEGImages"
    ET.SubElement(ann, "filename").text = filename
    size = ET.SubElement(ann, "size")
    for tag, val in (("width", width), ("height", height), ("depth", depth)):
        ET.SubElement(size, tag).text = str(val)
    ET.SubElement(ann, "segmented").text = "0"
    for name, (xmin, ymin, xmax, ymax), *flags in objects:
        difficult, truncated, occluded = (list(flags) + [False, None, None][len(flags):])[:3]
        if truncated is None:
            truncated = xmin <= 1 or ymin <= 1 or xmax >= width or ymax >= height
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "1" if truncated else "0"
        if occluded is not None:
            ET.SubElement(obj, "occluded").text = "1" if occluded else "0"
        ET.SubElement(obj, "difficult").text = "1" if difficult else "0"
        box = ET.SubElement(obj, "bndbox")
        for tag, val in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(box, tag).text = str(val)
    ET.indent(ann, space="\t")
    if xml_declaration:
        ET.ElementTree(ann).write(path, encoding="utf-8")
    else:
        Path(path).write_text(ET.tostring(ann, encoding="unicode") + "\n")
