"""Image/label pairs and the manifests that list them: one ``image_path label_path`` pair a line.

Paths are relative to the repository root, or absolute; blank lines and ``#`` comments are skipped, so
a manifest can be curated by hand. The pairing is explicit: it never comes from sorting two folder
listings.

Splitting a line into its two paths:

- a line that contains a TAB is split on tabs (runs of tabs count as one), so each path may contain
  spaces: ``my images/a 1.jpg<TAB>my masks/a 1_segmentation.png``;
- any other line is split on whitespace, where a path in double quotes may contain spaces:
  ``"my images/a 1.jpg" "my masks/a 1_segmentation.png"`` (a quoted path holds no double quote, tab
  or newline; quotes around a tab-separated path are removed too).

:func:`write_manifest` writes ``image label`` with one space, as always, when neither path holds
whitespace, and ``image<TAB>label`` when one does, so written manifests read back unchanged.

Validation collects every problem before anything is written and names where each one is: the
manifest file and line for a manifest, or the file itself for a folder source::

    my_seg.txt:12: mask size 64x64 differs from image size 128x128 (masks/ISIC_0000003_segmentation.png)
"""

from __future__ import annotations

import logging
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from segdet.data.formats import (
    FormatError,
    VocAnnotation,
    coco_annotation,
    image_size,
    name_problem,
    parse_voc_xml,
    too_many_pixels,
)
from segdet.data.sources import label_pairs_with
from segdet.stage import UserError

MAX_LISTED_PROBLEMS = 50
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pair:
    """One manifest line: an image, its label, and where the pair came from (``file:line`` or a file)."""

    image: str
    label: str
    where: str


class ManifestError(UserError):
    """Validation failed. ``problems`` holds one located message per problem."""

    def __init__(self, what: str, problems: list[str]):
        self.problems = list(problems)
        shown = self.problems[:MAX_LISTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        text = "\n  ".join(shown) + (f"\n  ... and {more} more" if more else "")
        super().__init__(f"{what}: {len(self.problems)} problem(s); nothing was written\n  {text}")


def resolve(path: str, root: Path) -> Path:
    """A manifest path as a filesystem path: absolute as is, relative against the repository root."""
    p = Path(path)
    return p if p.is_absolute() else root / p


# a double-quoted path (may hold spaces), or a bare one
_FIELD = re.compile(r'"([^"\t\n]*)"(?=\s|$)|([^\s"]\S*)')


def split_line(line: str) -> list[str] | None:
    """The fields of one manifest line (module docstring); None when a double quote is unbalanced or misplaced."""
    if "\t" in line:
        fields = [f.strip() for f in re.split(r"\t+", line.strip())]
        return [f[1:-1] if len(f) >= 2 and f[0] == f[-1] == '"' else f for f in fields if f]
    fields, pos = [], 0
    while True:
        while pos < len(line) and line[pos].isspace():
            pos += 1
        if pos == len(line):
            return fields
        m = _FIELD.match(line, pos)
        if m is None:
            return None
        fields.append(m.group(1) if m.group(1) is not None else m.group(2))
        pos = m.end()


def read_manifest(path: str | Path) -> list[Pair]:
    """Read a manifest. Each malformed line is reported as ``path:line``; all of them in one error."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(str(path), [f"{path}: cannot read manifest ({exc.strerror or exc})"]) from None
    if b"\r\n" in data:
        log.info("%s: Windows line ends (CRLF) read as plain line ends", path)
    pairs, problems = [], []
    for lineno, raw_bytes in enumerate(data.removeprefix(b"\xef\xbb\xbf").splitlines(), 1):
        try:
            raw = raw_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw_bytes[exc.start]:02x} at column "
                            f"{exc.start + 1}); save the manifest as UTF-8 and give files UTF-8 names")
            continue
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = split_line(line)
        if fields is None:
            problems.append(
                f"{path}:{lineno}: unbalanced or misplaced double quote (a quoted path must end with a quote "
                f"followed by a space or the line's end): {line[:120]!r}"
            )
            continue
        if len(fields) != 2:
            problems.append(
                f"{path}:{lineno}: expected 'image_path label_path' (2 fields separated by a space, or by a tab "
                f"or in double quotes when a path holds spaces), got {len(fields)} field(s): {line[:120]!r}"
            )
            continue
        pairs.append(Pair(fields[0], fields[1], f"{path}:{lineno}"))
    if problems:
        raise ManifestError(str(path), problems)
    return pairs


def format_line(image: str, label: str) -> str | None:
    """One manifest line (no newline): ``image label``, or ``image<TAB>label`` when a path holds whitespace;
    None when the pair cannot be written so that it reads back unchanged (a tab or newline in a path,
    whitespace at its ends, quotes at its ends, a leading ``#``)."""
    spaced = any(ch.isspace() for ch in image + label)
    line = f"{image}\t{label}" if spaced else f"{image} {label}"
    readable = line.splitlines() == [line] and not line.startswith("#")  # one line (no newline in a path)
    return line if readable and split_line(line) == [image, label] else None


def write_manifest(path: str | Path, pairs: list[Pair], header: str | None = None, shown_as: str | Path | None = None
                   ) -> None:
    """Write ``image label`` lines (plus an optional ``#`` header); a pair whose path holds spaces is written
    with a tab between the paths. Raises ManifestError for a path that cannot be written (:func:`format_line`),
    naming the manifest as ``shown_as`` (the final path when ``path`` is a temporary one)."""
    lines = [f"# {h}\n" for h in header.splitlines()] if header else []
    problems = []
    for p in pairs:
        line = format_line(p.image, p.label)
        if line is None:
            problems.append(f"{p.where}: path cannot be written to a manifest line: {p.image!r} {p.label!r}")
        else:
            lines.append(line + "\n")
    if problems:
        raise ManifestError(str(shown_as or path), problems)
    Path(path).write_text("".join(lines), encoding="utf-8")


def _open_image(path: Path, seen: Counter[str] | None = None) -> tuple[Image.Image | None, str | None]:
    """The decoded image, or why not; ``seen`` counts what segdet converts when it reads the file
    (:func:`conversion_notes`)."""
    problem = name_problem(path)
    if problem:
        return None, problem
    if not path.is_file():
        return None, f"file not found: {path}"
    size = image_size(path)
    problem = too_many_pixels(*size) if size else None
    if problem:
        return None, f"{path}: {problem}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return None, f"cannot open image {path} ({exc})"
    if seen is not None:
        if img.mode in ("L", "LA", "I", "I;16", "1"):
            seen["grey"] += 1
        elif img.mode in ("P", "PA"):
            seen["palette"] += 1
        if "A" in img.getbands():
            seen["alpha"] += 1
        if img.getexif().get(0x0112, 1) not in (1, None):
            seen["exif"] += 1
    return img, None


def conversion_notes(images: Counter[str], masks: Counter[str] | None = None) -> list[str]:
    """One sentence per kind of file that segdet converts as it reads it (logged once by the manifest stage)."""
    notes = []
    if images["grey"]:
        notes.append(f"{images['grey']} image(s) are greyscale: read as RGB (the grey value in all three channels)")
    if images["palette"]:
        notes.append(f"{images['palette']} image(s) use a colour palette: read as RGB")
    if images["alpha"]:
        notes.append(f"{images['alpha']} image(s) have an alpha channel: it is dropped (the colour is kept as is)")
    if images["exif"]:
        notes.append(f"{images['exif']} image(s) carry an EXIF rotation: it is ignored, as masks and boxes refer "
                     "to the stored pixels (as in PIL and annotation tools)")
    if masks and masks["01"]:
        notes.append(f"{masks['01']} mask(s) hold 0/1 rather than 0/255: any value above 0 is lesion")
    return notes


def _log_conversions(notes: list[str]) -> None:
    for note in notes:
        log.info("converted on reading: %s", note)


def _duplicates(pairs: list[Pair], root: Path) -> list[str]:
    first: dict[Path, str] = {}
    problems = []
    for p in pairs:
        key = resolve(p.image, root).resolve()
        if key in first:
            problems.append(f"{p.where}: duplicate image {p.image} (already listed at {first[key]})")
        else:
            first[key] = p.where
    return problems


def validate_seg(pairs: list[Pair], root: Path, progress: bool = False) -> list[str]:
    """Check segmentation pairs; returns located problems (empty when all is well).

    Checks: both files exist and decode; image and mask pair by name (``ISIC_1.jpg`` with
    ``ISIC_1_segmentation.png``); no image listed twice; the mask is single-channel, the size of the
    image, and holds only 0/255 (or 0/1).
    """
    problems = _duplicates(pairs, root)
    seen_images: Counter[str] = Counter()
    seen_masks: Counter[str] = Counter()
    for p in tqdm(pairs, desc="validate seg", unit="img", disable=not progress, leave=False):
        if not label_pairs_with(p.image, p.label):
            problems.append(
                f"{p.where}: image {Path(p.image).name} and mask {Path(p.label).name} do not pair by name "
                f"(expected {Path(p.image).stem}_segmentation.png)"
            )
            continue
        img, err = _open_image(resolve(p.image, root), seen_images)
        if err:
            problems.append(f"{p.where}: {err}")
            continue
        mask, err = _open_image(resolve(p.label, root))
        if err:
            problems.append(f"{p.where}: {err}")
            continue
        if len(mask.getbands()) != 1:
            problems.append(
                f"{p.where}: mask {p.label} has {len(mask.getbands())} channels ({mask.mode}); "
                "expected a single-channel PNG with 0 = background, 255 = lesion"
            )
            continue
        if mask.size != img.size:
            problems.append(
                f"{p.where}: mask size {mask.size[0]}x{mask.size[1]} differs from image size "
                f"{img.size[0]}x{img.size[1]} ({p.label})"
            )
            continue
        values = set(np.unique(np.asarray(mask)).tolist())
        if not (values <= {0, 255} or values <= {0, 1}):
            shown = sorted(values)[:8]
            problems.append(
                f"{p.where}: mask {p.label} has values {shown}{'...' if len(values) > 8 else ''}; "
                "expected only 0 and 255 (or 0 and 1)"
            )
        elif 1 in values:
            seen_masks["01"] += 1
    _log_conversions(conversion_notes(seen_images, seen_masks))
    return problems


@dataclass(frozen=True)
class DetCheck:
    """Result of :func:`validate_det`: problems (fatal), dropped degenerate boxes, parsed annotations."""

    problems: list[str]
    degenerate: int
    annotations: list[VocAnnotation | None]


def validate_det(
    pairs: list[Pair], root: Path, classes: list[str] | None = None, progress: bool = False,
    check_filename: bool = True,
) -> DetCheck:
    """Check detection pairs (image, Pascal VOC XML); returns problems and the usable annotations.

    Checks: both files exist, the image decodes and the XML parses; the XML ``<filename>`` is the
    image's file name (when ``check_filename``: a user's manifest pairs files by hand, so a mismatch is
    likely a mistake; a VOC folder pairs them by id, ``<id>.xml`` with ``<id>.jpg``, and its
    ``<filename>`` is informative only); its ``<size>`` (when given) is the image's size; every box
    lies inside the image
    (``1 <= xmin``, ``xmax <= width``, same for y) and is not inverted; every class is in ``classes``
    (when given). A zero-area box (``xmax == xmin`` or ``ymax == ymin``), as found in real data, is
    dropped from the returned annotation and counted in ``degenerate``.
    """
    problems = _duplicates(pairs, root)
    known = set(classes) if classes is not None else None
    annotations: list[VocAnnotation | None] = []
    degenerate = 0
    seen: Counter[str] = Counter()
    for p in tqdm(pairs, desc="validate det", unit="img", disable=not progress, leave=False):
        annotations.append(None)
        img, err = _open_image(resolve(p.image, root), seen)
        if err:
            problems.append(f"{p.where}: {err}")
            continue
        xml = resolve(p.label, root)
        if not xml.is_file():
            problems.append(f"{p.where}: file not found: {xml}")
            continue
        try:
            ann = parse_voc_xml(xml)
        except FormatError as exc:
            problems.append(f"{p.where}: {exc}")
            continue
        name = Path(p.image).name
        if check_filename and ann.filename is not None and ann.filename != name:
            problems.append(f"{p.where}: {p.label} is for <filename>{ann.filename}</filename>, not for image {name}")
            continue
        w, h = img.size
        if (ann.width, ann.height) != (None, None) and (ann.width, ann.height) != (w, h):
            problems.append(
                f"{p.where}: {p.label} gives size {ann.width}x{ann.height} but image {name} is {w}x{h}"
            )
            continue
        kept = []
        for k, obj in enumerate(ann.objects, 1):
            xmin, ymin, xmax, ymax = obj.voc
            what = f"{p.where}: {p.label} object {k} ({obj.name}, box {xmin:g},{ymin:g},{xmax:g},{ymax:g})"
            if known is not None and obj.name not in known:
                problems.append(f"{what}: unknown class {obj.name!r}; known classes: {', '.join(classes or [])}")
            elif xmax < xmin or ymax < ymin:
                problems.append(f"{what}: inverted box (xmax < xmin or ymax < ymin)")
            elif xmin < 1 or ymin < 1 or xmax > w or ymax > h:
                problems.append(f"{what}: box outside the {w}x{h} image (VOC corners are 1..width, 1..height)")
            elif xmax == xmin or ymax == ymin:
                degenerate += 1
            else:
                kept.append(obj)
        annotations[-1] = VocAnnotation(ann.path, ann.filename, w, h, tuple(kept))
    _log_conversions(conversion_notes(seen))
    return DetCheck(problems, degenerate, annotations)


def read_classes(path: str | Path) -> list[str]:
    """``det_classes.txt``: one class name a line; COCO ``category_id`` = line number."""
    return [c.strip() for c in Path(path).read_text().splitlines() if c.strip()]


@dataclass(frozen=True)
class BoxTarget:
    """One image's ground truth as arrays: ``boxes`` float32 ``[N, 4]`` XYXY pixels (docs/architecture.md),
    ``labels`` int64 ``[N]`` with ``1..C`` = line of ``det_classes.txt``, ``difficult`` bool ``[N]``."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def box_targets(pairs: list[Pair], classes: list[str], root: Path, use_difficult: bool = False) -> list[BoxTarget]:
    """The boxes of each pair's VOC annotation, without PyTorch (the proposals stage needs no more). Zero-area
    boxes are skipped as in the manifest stage; VOC ``difficult`` objects are dropped unless ``use_difficult``.

    Raises:
        UserError: an object's class is not in ``classes``, naming the manifest line.
    """
    index = {c: k for k, c in enumerate(classes, 1)}
    out = []
    for p in pairs:
        ann = parse_voc_xml(resolve(p.label, root))
        objs = [o for o in ann.objects if o.voc[2] > o.voc[0] and o.voc[3] > o.voc[1]
                and (use_difficult or not o.difficult)]
        unknown = sorted({o.name for o in objs} - set(index))
        if unknown:
            raise UserError(f"{p.where}: classes {unknown} are not in the class list {classes}")
        out.append(BoxTarget(np.array([o.box for o in objs], dtype=np.float32).reshape(-1, 4),
                             np.array([index[o.name] for o in objs], dtype=np.int64),
                             np.array([o.difficult for o in objs], dtype=bool)))
    return out


def class_counts(annotations: list[VocAnnotation | None]) -> Counter[str]:
    return Counter(o.name for a in annotations if a for o in a.objects)


def coco_ground_truth(pairs: list[Pair], annotations: list[VocAnnotation], classes: list[str]) -> dict:
    """COCO ground truth for one split (docs/architecture.md): ``image_id`` = 1-based manifest position,
    ``category_id`` = 1-based line of ``det_classes.txt``, ``bbox = [x1, y1, x2 - x1, y2 - y1]``.

    A VOC ``difficult`` object (also a COCO crowd region imported as one) is written with
    ``"iscrowd": 1``: pycocotools then ignores it (``gt["ignore"]``) and so does
    :func:`segdet.detection.evaluate.match`, as the VOC devkit does: neither a hit nor a miss."""
    cat = {c: i for i, c in enumerate(classes, 1)}
    images, anns = [], []
    for image_id, (p, a) in enumerate(zip(pairs, annotations, strict=True), 1):
        images.append({"id": image_id, "file_name": p.image, "width": a.width, "height": a.height})
        anns += [coco_annotation(len(anns) + k, image_id, cat[o.name], o.box, o.difficult)
                 for k, o in enumerate(a.objects, 1)]
    return {
        "info": {"description": "segdet ground truth", "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": anns,
        "categories": [{"id": i, "name": c, "supercategory": "object"} for c, i in cat.items()],
    }
