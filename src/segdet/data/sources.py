"""Importing the layouts people have (ISIC 2018 Task 1 folders, Pascal VOC devkits, COCO json) into the
canonical layout under ``data/raw/`` (``isic/[split/]{images,masks}``, ``voc/{JPEGImages,Annotations,
ImageSets/Main}``), so every later stage reads one layout whatever the source was.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections import Counter
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import TypeVar

from segdet.data.formats import (
    IMAGE_EXTS,
    SPLITS,
    FormatError,
    image_size,
    name_problem,
    write_voc_xml,
    xyxy_to_voc,
)

#: split list / split folder names a source may carry, mapped to segdet's names
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "trainval": "trainval",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
ISIC_MASK_SUFFIX = "_segmentation"
_LABEL_SUFFIXES = ("_segmentation", "_mask", "_gt", "_label")


#: folder names (any case) whose files are masks; a folder ending in ``_GroundTruth`` (ISIC's own) is one too
MASK_FOLDER_NAMES = ("masks", "mask", "labels", "label", "ground_truth", "groundtruth", "gt")
log = logging.getLogger(__name__)
T = TypeVar("T")


def read_split_list(path: Path) -> list[str]:
    """Ids of a VOC ``ImageSets/Main/<split>.txt`` (first column; per-class ``id flag`` lists read too)."""
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def voc_split_lists(folder: Path) -> dict[str, list[str]]:
    """``{"train": ids, "val": ids, "test": ids, "trainval": ids}`` for the lists present in ``ImageSets/Main``.

    Only these four main lists are read: the per-class lists of VOC 2007/2012 (``<class>_train.txt`` with
    ``id  1`` / ``id -1`` lines) beside them are not split lists and are ignored. The lists are returned as
    found; :func:`resolve_trainval` reconciles ``trainval`` with ``train`` and ``val``.
    """
    main = folder / "ImageSets" / "Main"
    out: dict[str, list[str]] = {}
    if main.is_dir():
        for name in ("train", "val", "test", "trainval"):
            f = main / f"{name}.txt"
            if f.is_file():
                out[name] = read_split_list(f)
    return out


def resolve_trainval(
    lists: dict[str, list[T]], key: Callable[[T], Hashable] = lambda x: x, where: str = "trainval"
) -> dict[str, list[T]]:
    """Reconcile a source's ``trainval`` list with its ``train`` and ``val`` lists (trainval = train + val).

    A Pascal VOC devkit ships ``ImageSets/Main/{train,val,trainval,test}.txt``; taking every list would
    list each train and val image twice. The rule (``key`` identifies an item, ``where`` names the
    trainval list in messages):

    - ``train`` and ``val`` present: both are used and ``trainval`` is dropped. Ids of ``trainval`` that
      are in neither are added to ``train``, in trainval order, with a logged warning naming ``where``
      and how many (they are not dropped silently);
    - only one of ``train`` / ``val`` present: the other one is ``trainval`` minus it (when not empty);
    - neither present: ``trainval`` is kept as it is, and the split stage divides it by the ratios
      (``data.split``): val carved from it, and test too when the source has no test list;
    - ``test`` (and any other list) is returned unchanged.

    Returns a new dict; ``lists`` is not modified.
    """
    out = dict(lists)
    trainval = out.pop("trainval", None)
    if trainval is None:
        return out
    if "train" not in out and "val" not in out:
        out["trainval"] = trainval
        return out
    listed = {key(x) for part in ("train", "val") for x in out.get(part, [])}
    rest = [x for x in trainval if key(x) not in listed]
    if "train" in out and "val" in out:
        if rest:
            log.warning(
                "%s: %d id(s) are in neither the train nor the val list (trainval should be their union); "
                "added to train: %s", where, len(rest), ", ".join(str(key(x)) for x in rest[:5])
                + (" ..." if len(rest) > 5 else ""),
            )
            out["train"] = list(out["train"]) + rest
    elif rest:
        out["val" if "train" in out else "train"] = rest
    return out


def find_voc_image(folder: Path, image_id: str) -> Path | None:
    """``JPEGImages/<id>.<ext>`` for the first image extension present, else None."""
    for ext in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS):
        p = folder / "JPEGImages" / f"{image_id}{ext}"
        if p.is_file():
            return p
    return None


def _listed(problems: list[str], most: int = 50) -> str:
    """Problems one a line, the first ``most`` of them and how many more."""
    return "\n".join(problems[:most]) + (f"\n... and {len(problems) - most} more" if len(problems) > most else "")


def check_voc_folder(folder: Path) -> None:
    missing = [d for d in ("JPEGImages", "Annotations") if not (folder / d).is_dir()]
    if missing:
        # VOCdevkit/ holds VOC2007/ and VOC2012/: name them rather than leave the user to guess
        inside = sorted(str(d) for d in (folder.iterdir() if folder.is_dir() else [])
                        if (d / "JPEGImages").is_dir() and (d / "Annotations").is_dir())
        raise FormatError(
            f"{folder}: not a Pascal VOC folder (missing {', '.join(missing)}/); expected "
            "JPEGImages/, Annotations/*.xml and optionally ImageSets/Main/{train,val,test}.txt"
            + (f"; the VOC folder{'s' if len(inside) > 1 else ''} inside it: {', '.join(inside)} (set "
               "data.det.path to one)" if inside else "")
        )


def import_voc(src: Path, dst: Path) -> dict:
    """Copy a Pascal VOC folder into ``dst`` (JPEGImages, Annotations, split lists, classes.txt)."""
    src = Path(src)
    check_voc_folder(src)
    bad = [problem for sub in ("JPEGImages", "Annotations") for p in sorted((src / sub).iterdir())
           if (problem := name_problem(p))]
    if bad:
        raise FormatError("\n".join(bad))
    lists = voc_split_lists(src)
    missing = []
    for name, ids in lists.items():
        where = src / "ImageSets" / "Main" / f"{name}.txt"
        for image_id in ids:
            if not (src / "Annotations" / f"{image_id}.xml").is_file():
                missing.append(f"{where}: lists {image_id}, but there is no Annotations/{image_id}.xml")
            elif find_voc_image(src, image_id) is None:
                missing.append(f"{where}: lists {image_id}, but there is no JPEGImages/{image_id}.jpg (or .png ...)")
    if missing:
        raise FormatError(_listed(missing))
    for sub in ("JPEGImages", "Annotations"):
        shutil.copytree(src / sub, dst / sub)
    (dst / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for name in lists:
        shutil.copy2(src / "ImageSets" / "Main" / f"{name}.txt", dst / "ImageSets" / "Main" / f"{name}.txt")
    if not lists:
        ids = sorted(p.stem for p in (dst / "Annotations").glob("*.xml"))
        (dst / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{i}\n" for i in ids))
    if (src / "classes.txt").is_file():
        shutil.copy2(src / "classes.txt", dst / "classes.txt")
    return {
        "images": sum(1 for _ in (dst / "JPEGImages").iterdir()),
        "annotations": sum(1 for _ in (dst / "Annotations").glob("*.xml")),
        "split_lists": sorted(lists),
    }


# ----------------------------------------------------------------------------------------------------------
# COCO json -> VOC layout
# ----------------------------------------------------------------------------------------------------------

COCO_IMAGE_KEYS = ("id", "file_name", "width", "height")
COCO_ANN_KEYS = ("image_id", "category_id", "bbox")


def _missing(entry: object, keys: tuple[str, ...]) -> list[str]:
    """The keys of ``keys`` that ``entry`` lacks (all of them when it is not a mapping); a bbox must be 4 numbers."""
    if not isinstance(entry, dict):
        return list(keys)
    missing = [k for k in keys if k not in entry or entry[k] is None]
    bbox = entry.get("bbox")
    if "bbox" in keys and "bbox" not in missing and not (
            isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        missing.append("a bbox of 4 numbers")
    return missing


#: ``annotations/instances_<split><year>.json`` of the COCO release layout (captions, keypoints and the
#: unannotated ``image_info_test`` files beside them are not instances files and are left alone)
COCO_INSTANCES = re.compile(r"instances_([a-z]+)(\d*)\.json", re.IGNORECASE)


def coco_split_files(folder: Path, images_dir: Path | None = None) -> dict[str, tuple[Path, list[Path]]]:
    """The instances json of each split in a COCO folder, and where to look for its images.

    Two layouts are recognised (split names as :data:`SPLIT_ALIASES`: ``valid`` is val ...):

    - the COCO release: ``annotations/instances_train2017.json``, ``annotations/instances_val2017.json``, the
      images in ``train2017/`` and ``val2017/`` beside ``annotations/`` (or in ``images/train2017/`` ...);
    - one folder a split with its json among its images, as annotation tools export it (Roboflow:
      ``train/_annotations.coco.json``, ``valid/...``, ``test/...``).

    ``images_dir`` (``data.det.images``) is looked in first: ``images_dir/<split folder>/``, then ``images_dir``.

    Raises:
        FormatError: neither layout, both, two files for one split, or a split folder with several jsons.
    """
    found: dict[str, list[tuple[Path, list[Path]]]] = {}

    def add(split: str, json_path: Path, name: str, candidates: list[Path]) -> None:
        first = [images_dir / name, images_dir] if images_dir else []
        found.setdefault(split, []).append((json_path, first + candidates))

    release = folder / "annotations"
    if release.is_dir():
        for f in sorted(release.glob("*.json")):
            m = COCO_INSTANCES.fullmatch(f.name)
            if m and m.group(1).lower() in SPLIT_ALIASES:
                name = f.stem[len("instances_"):]  # train2017
                add(SPLIT_ALIASES[m.group(1).lower()], f, name,
                    [folder / name, folder / "images" / name, folder / "images", folder])
    per_folder = {}
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        if d.name.lower() in SPLIT_ALIASES and (jsons := sorted(d.glob("*.json"))):
            if len(jsons) > 1:
                raise FormatError(f"{d}: {len(jsons)} json files ({', '.join(j.name for j in jsons[:5])}); a split "
                                  "folder of a COCO export holds one instances json beside its images")
            per_folder[d.name] = (SPLIT_ALIASES[d.name.lower()], jsons[0], [d, d / "images"])
    if found and per_folder:
        raise FormatError(f"{folder}: both annotations/instances_*.json and split folders with a json "
                          f"({', '.join(sorted(per_folder))}/); point data.det.path at one json or one layout")
    for name, (split, json_path, candidates) in per_folder.items():
        add(split, json_path, name, candidates)
    doubles = {s: fs for s, fs in found.items() if len(fs) > 1}
    if doubles:
        raise FormatError("; ".join(f"{', '.join(str(f[0]) for f in fs)} are all the {s} split"
                                    for s, fs in doubles.items()) + f" of {folder}: keep one json a split")
    if not found:
        raise FormatError(
            f"{folder}: no COCO instances json found; expected annotations/instances_<split>.json (the COCO "
            "release: instances_train2017.json, instances_val2017.json), split folders train/, val/ (or valid/), "
            "test/ with one json each (Roboflow's _annotations.coco.json), or data.det.path = the json file itself"
        )
    return {s: found[s][0] for s in ("train", "trainval", "val", "test") if s in found}


def _read_coco(json_path: Path) -> dict:
    """A COCO instances json, checked for the keys the import reads (every problem named with its entry)."""
    try:
        coco = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FormatError(f"{json_path}: not a readable COCO json ({exc})") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco, dict) or not isinstance(coco.get(key), list):
            raise FormatError(f"{json_path}: no '{key}' list; expected a COCO instances file")
    entry_problems = [f"{json_path}: images[{i}] ({img!r:.80}) lacks {', '.join(_missing(img, COCO_IMAGE_KEYS))}"
                      for i, img in enumerate(coco["images"]) if _missing(img, COCO_IMAGE_KEYS)]
    entry_problems += [f"{json_path}: annotations[{i}] ({a!r:.80}) lacks {', '.join(_missing(a, COCO_ANN_KEYS))}"
                       for i, a in enumerate(coco["annotations"]) if _missing(a, COCO_ANN_KEYS)]
    entry_problems += [f"{json_path}: categories[{i}] ({c!r:.80}) lacks {', '.join(_missing(c, ('id', 'name')))}"
                       for i, c in enumerate(coco["categories"]) if _missing(c, ("id", "name"))]
    if entry_problems:
        raise FormatError("\n".join(entry_problems[:20]) + "\n(a COCO instances file: images need id, file_name, width, "
                          "height; annotations need image_id, category_id and bbox [x, y, w, h])")
    return coco


def import_coco(path: Path, dst: Path, images_dir: Path | None = None) -> dict:
    """Convert COCO instances json(s) and their images into the VOC layout under ``dst``.

    ``path`` is one instances json (its images pooled into ``trainval``, split later by the ratios; also a folder
    holding just that json and its images) or a folder holding one json a split (:func:`coco_split_files`: the
    COCO release's ``annotations/`` or an export's ``train/``, ``valid/``, ``test/``), whose splits become
    ``ImageSets/Main/<split>.txt`` lists.
    Image files are looked up as ``images_dir/<file_name>`` (default: the json's folder, then its
    ``images/`` sibling); a ``file_name`` in a sub-folder (``sub/a.jpg``, also ``sub\\a.jpg``) is found there
    and copied as its base name (``JPEGImages/a.jpg``), so two images with one base name are an error (also
    across splits). Boxes ``[x, y, w, h]`` become VOC corners rounded outwards. ``iscrowd`` annotations become
    objects marked ``<difficult>1</difficult>``: ignore regions, neither a hit nor a miss in evaluation (as
    COCO scores crowd regions) and left out of training unless ``data.det.use_difficult``.
    ``classes.txt`` lists the categories in id order (ids may have gaps: 1, 3, 7 become lines 1, 2, 3),
    so COCO names keep their order; a category without a single annotation (an export's placeholder for the
    project, say) is left out, with a warning. Several jsons must agree on the name of each category id.
    """
    path = Path(path)
    tops = sorted(path.glob("*.json")) if path.is_dir() else []
    if len(tops) == 1 and not (path / "annotations").is_dir() and not any(
            d.is_dir() and d.name.lower() in SPLIT_ALIASES for d in path.iterdir()):
        path = tops[0]  # a folder holding one json and its images: that json
    if path.is_dir():
        splits = coco_split_files(path, images_dir)
        layout = "folder"
    else:
        candidates = [images_dir] if images_dir else [path.parent, path.parent / "images"]
        splits = {"trainval": (path, candidates)}
        layout = "json"
    sources = {split: (json_path, cands, _read_coco(json_path)) for split, (json_path, cands) in splits.items()}
    cat_name: dict[int, str] = {}
    used: Counter[int] = Counter()
    for json_path, _, coco in sources.values():
        for c in coco["categories"]:
            if cat_name.setdefault(c["id"], c["name"]) != c["name"]:
                raise FormatError(f"{json_path}: category id {c['id']} is {c['name']!r}, but {cat_name[c['id']]!r} in "
                                  f"another split's json; the splits of one dataset must share their categories")
        used.update(a["category_id"] for a in coco["annotations"])
    (dst / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (dst / "Annotations").mkdir(parents=True, exist_ok=True)
    (dst / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    names_seen: dict[str, tuple[str, int]] = {}
    crowd = written = 0
    lists: dict[str, list[str]] = {}
    for split, (json_path, candidates, coco) in sources.items():
        by_image: dict[int, list[dict]] = {}
        for a in coco["annotations"]:
            by_image.setdefault(a["image_id"], []).append(a)
        ids = lists.setdefault(split, [])
        for img in coco["images"]:
            fname = str(img.get("file_name", "")).replace("\\", "/")
            found = next((Path(c) / fname for c in candidates if c and (Path(c) / fname).is_file()), None)
            if found is None:
                tried = ", ".join(str(Path(c) / fname) for c in candidates if c)
                problems.append(f"{json_path}: image id {img.get('id')}: file {fname!r} not found (tried {tried})")
                continue
            base = Path(fname).name
            stem = Path(base).stem
            if stem in names_seen:  # a.jpg and a.png would share the id (annotation file) a
                where, other = names_seen[stem]
                problems.append(f"{json_path}: two images share the file name {base!r} or its id {stem!r} "
                                f"(image ids {other}{f' of {where}' if where != str(json_path) else ''}, {img['id']})")
                continue
            names_seen[stem] = (str(json_path), img["id"])
            shutil.copy2(found, dst / "JPEGImages" / base)
            w, h = int(img["width"]), int(img["height"])
            objects = []
            for a in by_image.get(img["id"], []):
                if a["category_id"] not in cat_name:
                    problems.append(f"{json_path}: annotation {a.get('id')} has unknown category_id {a['category_id']}")
                    continue
                is_crowd = bool(a.get("iscrowd", 0))
                crowd += is_crowd
                x, y, bw, bh = a["bbox"]
                xmin, ymin, xmax, ymax = xyxy_to_voc(x, y, x + bw, y + bh)
                box = (max(xmin, 1), max(ymin, 1), min(xmax, w), min(ymax, h))
                objects.append((cat_name[a["category_id"]], box, is_crowd))
                written += 1
            write_voc_xml(dst / "Annotations" / f"{stem}.xml", base, w, h, objects)
            ids.append(stem)
    if problems:
        raise FormatError("\n".join(problems))
    for split, ids in lists.items():
        (dst / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in sorted(ids)))
    empty = [cat_name[i] for i in sorted(cat_name) if not used[i]]
    if empty:
        log.warning("COCO categories without a single annotation left out of the classes: %s", ", ".join(empty))
    (dst / "classes.txt").write_text("".join(f"{cat_name[i]}\n" for i in sorted(cat_name) if used[i]))
    info = {"images": sum(len(ids) for ids in lists.values()), "annotations": written - crowd,
            "crowd_as_difficult": crowd}
    if layout == "folder":
        info |= {"split_lists": sorted(lists), "split_files": {s: str(f) for s, (f, _, _) in sources.items()}}
    if empty:
        info["empty_categories_dropped"] = empty
    return info


# ----------------------------------------------------------------------------------------------------------
# ISIC 2018 Task 1 folders
# ----------------------------------------------------------------------------------------------------------


def _label_id(stem: str) -> str:
    """A label file's stem without its ``_segmentation``/``_mask``/``_gt``/``_label`` suffix."""
    for suffix in _LABEL_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def label_pairs_with(image: str, label: str) -> bool:
    """True when ``label``'s stem, minus a ``_segmentation``/``_mask``/``_gt``/``_label`` suffix, is ``image``'s stem."""
    return _label_id(Path(label).stem) == Path(image).stem


def is_mask_folder(name: str) -> bool:
    """A folder of masks by its name: ``masks``, ``mask``, ``labels``, ``label``, ``ground_truth``,
    ``groundtruth``, ``gt`` or ``..._GroundTruth`` (any case)."""
    low = name.lower()
    return low in MASK_FOLDER_NAMES or low.endswith("_groundtruth")


def isic_split_folders(folder: Path) -> dict[str | None, Path]:
    """Split sub-folders of an ISIC source (``train/``, ``val/``, ``test/``), or ``{None: folder}``."""
    subs = {}
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        name = SPLIT_ALIASES.get(p.name.lower())
        if p.is_dir() and name in SPLITS:
            subs[name] = p
    return subs or {None: folder}


def find_isic_pairs(folder: Path) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Pair every image under ``folder`` with its mask, anywhere below it.

    A file is a mask when it lies in a mask folder (:func:`is_mask_folder`: ``masks/``, ``labels/``,
    ``gt/``, ISIC's ``..._GroundTruth/`` ...; its id is its stem, minus a ``_segmentation``/``_mask``/
    ``_gt``/``_label`` suffix if it has one), or when its stem carries one of those suffixes (ISIC's
    ``<id>_segmentation.png``). Every other image file is an image, its stem the id. So these layouts all
    work: one flat folder (``ISIC_1.jpg`` beside ``ISIC_1_segmentation.png``); ``images/`` and ``masks/``
    with ``ISIC_1.jpg`` and ``ISIC_1_segmentation.png`` or the same stem ``ISIC_1.png``; ISIC's
    ``..._Input`` and ``..._GroundTruth`` folders. Only folders below ``folder`` count as mask folders.

    Returns ``(pairs sorted by id, problems)``; a problem is an image without a mask, a mask without an
    image, or an id found twice.
    """
    images: dict[str, list[Path]] = {}
    masks: dict[str, list[Path]] = {}
    bad_names = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in IMAGE_EXTS or p.name.startswith("."):
            continue
        if problem := name_problem(p):
            bad_names.append(problem)
            continue
        key = _label_id(p.stem)
        if key != p.stem or any(is_mask_folder(d) for d in p.relative_to(folder).parts[:-1]):
            masks.setdefault(key, []).append(p)
        else:
            images.setdefault(p.stem, []).append(p)
    problems = bad_names
    pairs = []
    for key in sorted(set(images) | set(masks)):
        imgs, msks = images.get(key, []), masks.get(key, [])
        if len(imgs) > 1:
            problems.append(f"{imgs[1]}: image id {key!r} found more than once (also {imgs[0]})")
        elif len(msks) > 1:
            problems.append(f"{msks[1]}: mask for {key!r} found more than once (also {msks[0]})")
        elif not msks:
            problems.append(
                f"{imgs[0]}: no mask {key}{ISIC_MASK_SUFFIX}.png for this image (nor {key}.png in a masks/ folder)"
            )
        elif not imgs:
            problems.append(f"{msks[0]}: no image {key}.* for this mask")
        else:
            pairs.append((imgs[0], msks[0]))
    if not pairs and not problems:
        problems.append(
            f"{folder}: no images found (expected ISIC_xxxxxxx.jpg with ISIC_xxxxxxx_segmentation.png, or "
            "images/ and masks/ folders)"
        )
    return pairs, problems


def import_isic(src: Path, dst: Path) -> dict:
    """Copy an ISIC folder into ``dst/[split/]{images,masks}``, keeping its train/val/test sub-folders."""
    src = Path(src)
    if not src.is_dir():
        raise FormatError(f"{src}: no such folder (data.seg.path must name an ISIC folder)")
    counts: Counter[str] = Counter()
    problems: list[str] = []
    for split, folder in isic_split_folders(src).items():
        pairs, probs = find_isic_pairs(folder)
        problems += probs
        base = dst / split if split else dst
        (base / "images").mkdir(parents=True, exist_ok=True)
        (base / "masks").mkdir(parents=True, exist_ok=True)
        for img, mask in pairs:
            shutil.copy2(img, base / "images" / img.name)
            shutil.copy2(mask, base / "masks" / mask.name)
        counts[split or "all"] += len(pairs)
    if problems:
        raise FormatError("\n".join(problems))
    return {"images": sum(counts.values()), "splits": dict(counts)}


# ----------------------------------------------------------------------------------------------------------
# YOLO txt labels (ultralytics, Darknet, Roboflow exports) -> VOC layout
# ----------------------------------------------------------------------------------------------------------

#: a YOLO box coordinate may pass the image's edge by this much (normalised) before it is an error: exporters
#: round; what passes is clipped to the edge
YOLO_EDGE_TOLERANCE = 0.01
#: files that name the classes, one a line, in a YOLO folder without a dataset yaml (Darknet's obj.names ...)
YOLO_NAME_FILES = ("classes.txt", "obj.names", "names.txt", "classes.names")


def _yolo_names(names: object, where: Path) -> list[str]:
    """The ``names`` of a dataset yaml: a list, or a mapping ``{0: a, 1: b}`` with ids 0..n-1."""
    if isinstance(names, list) and names and all(isinstance(n, (str, int)) for n in names):
        return [str(n) for n in names]
    if isinstance(names, dict) and names:
        try:
            ids = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            ids = []
        if ids == list(range(len(names))):
            return [str(names.get(i, names.get(str(i)))) for i in ids]
    raise FormatError(f"{where}: 'names' must list the class names (a list, or {{0: name, 1: name, ...}}), "
                      f"got {names!r:.80}")


def _yolo_images(entry: object, root: Path, where: Path) -> list[Path]:
    """The images of one split entry of a dataset yaml: folders (searched recursively) and .txt lists of image
    paths; a path given as ``../x`` that does not exist is also tried as ``x`` (as ultralytics does: exports
    write ``../train/images`` beside the yaml)."""
    out: list[Path] = []
    for item in entry if isinstance(entry, list) else [entry]:
        if not isinstance(item, str) or not item:
            raise FormatError(f"{where}: a split must name a folder or a .txt list of images, got {item!r:.80}")
        p = (root / item).resolve() if not Path(item).is_absolute() else Path(item)
        if not p.exists() and item.startswith("../"):
            p = (root / item[3:]).resolve()
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        elif p.is_file() and p.suffix == ".txt":
            for line in p.read_text().splitlines():
                if line.strip():
                    f = Path(line.strip())
                    out.append(f if f.is_absolute() else (p.parent / f).resolve())
        else:
            raise FormatError(f"{where}: split path {item!r} is neither a folder nor a .txt list of images "
                              f"(looked for {p})")
    return out


def yolo_splits(src: Path) -> tuple[dict[str | None, list[Path]], list[str], str]:
    """The images of each split and the class names of a YOLO dataset, and a sentence saying how they were found.

    ``src`` is an ultralytics dataset yaml (``path``, ``train``, ``val``, ``test``, ``names``), or a folder
    holding one, or a folder laid out as ``images/<split>/`` beside ``labels/<split>/`` (ultralytics),
    ``<split>/images/`` beside ``<split>/labels/`` (Roboflow), or ``images/`` beside ``labels/`` (no splits:
    ``{None: images}``), its class names in ``classes.txt`` (or ``obj.names``, ``names.txt``).
    """
    import yaml

    yamls = [src] if src.is_file() else sorted([*src.glob("*.yaml"), *src.glob("*.yml")])
    if src.is_file() or yamls:
        if len(yamls) > 1:
            raise FormatError(f"{src}: {len(yamls)} yaml files ({', '.join(y.name for y in yamls[:5])}); point "
                              "data.det.path at the dataset yaml")
        where = yamls[0]
        try:
            spec = yaml.safe_load(where.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise FormatError(f"{where}: not a readable dataset yaml ({exc})") from None
        if not isinstance(spec, dict) or "names" not in spec or "train" not in spec:
            raise FormatError(f"{where}: a YOLO dataset yaml needs 'train' and 'names' (and 'val', 'test')")
        root = Path(str(spec.get("path") or ""))
        root = root if root.is_absolute() else (where.parent / root).resolve()
        splits: dict[str | None, list[Path]] = {}
        for key in ("train", "val", "test"):
            if spec.get(key):
                splits[key] = _yolo_images(spec[key], root, where)
        return splits, _yolo_names(spec["names"], where), f"{where.name}"
    names_file = next((src / n for n in YOLO_NAME_FILES if (src / n).is_file()), None)
    splits = {}
    for d in sorted(p for p in src.iterdir() if p.is_dir()) if src.is_dir() else []:
        split = SPLIT_ALIASES.get(d.name.lower())
        if split in (*SPLITS, "trainval") and (d / "images").is_dir():
            splits.setdefault(split, []).extend(sorted(f for f in (d / "images").rglob("*")
                                                       if f.is_file() and f.suffix.lower() in IMAGE_EXTS))
    if not splits and (src / "images").is_dir():
        subs = {SPLIT_ALIASES.get(d.name.lower()): d for d in (src / "images").iterdir() if d.is_dir()}
        subs.pop(None, None)
        for split, d in sorted(subs.items()):
            splits[split] = sorted(f for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
        if not subs:
            splits[None] = sorted(f for f in (src / "images").rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
    if not splits:
        raise FormatError(f"{src}: not a YOLO dataset: expected a dataset yaml (train, val, test, names), or "
                          "images/<split>/ beside labels/<split>/, or <split>/images/ beside <split>/labels/, or "
                          "images/ beside labels/")
    if names_file is None:
        raise FormatError(f"{src}: no class names: add a dataset yaml with 'names', or {YOLO_NAME_FILES[0]} with one "
                          "class name a line (line 1 = class 0)")
    names = [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
    return splits, names, f"folders, names from {names_file.name}"


def yolo_label_path(image: Path) -> Path:
    """The label file of an image: ``.../images/.../x.jpg`` -> ``.../labels/.../x.txt`` (the last ``images``
    folder of its path), as ultralytics and Darknet pair them."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_yolo_labels(path: Path, width: int, height: int, names: list[str]
                     ) -> tuple[list[tuple[str, tuple[int, int, int, int], bool]], list[str]]:
    """A YOLO label file's objects as ``(class name, VOC corners, False)`` in pixels of a ``width`` x ``height``
    image, and its problems (``file:line: what``).

    A line is ``class cx cy w h`` (normalised to 0..1), or a polygon ``class x1 y1 x2 y2 ...`` (a segmentation
    label: its bounding box). A coordinate up to :data:`YOLO_EDGE_TOLERANCE` past an edge is clipped to it.
    """
    objects, problems = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{n}"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            problems.append(f"{where}: expected 'class cx cy w h' numbers, got {line.strip()!r:.80}")
            continue
        if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
            problems.append(f"{where}: expected 5 numbers 'class cx cy w h' (or a polygon 'class x1 y1 x2 y2 ...'), "
                            f"got {len(values)}")
            continue
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < len(names):
            problems.append(f"{where}: class {fields[0]} is not one of 0..{len(names) - 1} ({len(names)} names)")
            continue
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            if w < 0 or h < 0:
                problems.append(f"{where}: negative width or height")
                continue
        else:
            xs, ys = values[1::2], values[2::2]
            x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
        if min(x1, y1) < -YOLO_EDGE_TOLERANCE or max(x2, y2) > 1 + YOLO_EDGE_TOLERANCE:
            problems.append(f"{where}: box {x1:.4g},{y1:.4g},{x2:.4g},{y2:.4g} is outside the image (YOLO coordinates "
                            "are fractions of its width and height, 0..1)")
            continue
        x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2))
        # a whole pixel written as a fraction (6 decimals, as exporters write them) comes back a hair off it: snap it, so
        # that rounding outwards does not grow the box by a pixel
        x1, y1, x2, y2 = (round(v) if abs(v - round(v)) < 0.01 else v
                          for v in (x1 * width, y1 * height, x2 * width, y2 * height))
        xmin, ymin, xmax, ymax = xyxy_to_voc(x1, y1, x2, y2)
        objects.append((names[int(cls)], (max(xmin, 1), max(ymin, 1), min(xmax, width), min(ymax, height)), False))
    return objects, problems


def import_yolo(src: Path, dst: Path) -> dict:
    """Convert a YOLO dataset (:func:`yolo_splits`) into the VOC layout under ``dst``: each image copied to
    ``JPEGImages/`` by its file name, its label file (:func:`yolo_label_path`) to ``Annotations/<stem>.xml``
    (an image without a label file, or with an empty one, has no objects: a background image), the splits to
    ``ImageSets/Main/<split>.txt`` and the names to ``classes.txt`` (line k + 1 = YOLO class k). Sizes come from
    the image headers (stored pixels; EXIF orientation is not applied, as everywhere in segdet)."""
    src = Path(src)
    if not src.exists():
        raise FormatError(f"{src}: no such folder or file (data.det.path must name a YOLO dataset folder or yaml)")
    splits, names, how = yolo_splits(src)
    if len(set(names)) != len(names):
        raise FormatError(f"{src}: class names repeat: {sorted({n for n in names if names.count(n) > 1})}")
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    seen: dict[str, Path] = {}
    lists: dict[str | None, list[str]] = {}
    objects = unlabelled = 0
    for split, images in splits.items():
        if not images:
            log.warning("%s: the %s split has no images; it is left out", src, split or "trainval")
            continue
        same = next((s for s in lists if set(splits[s]) == set(images)), None)
        if same is not None:  # coco128.yaml: val is the train folder again
            log.warning("%s: the %s split is the %s split's images again; it is left out (the manifest stage carves "
                        "a val split from train)", src, split, same)
            continue
        ids = lists.setdefault(split, [])
        for image in images:
            if problem := name_problem(image):
                problems.append(problem)
                continue
            if not image.is_file():
                problems.append(f"{image}: listed for {split}, but no such file")
                continue
            if image.stem in seen:
                problems.append(f"{image}: a second image with the id {image.stem!r} (also {seen[image.stem]}); "
                                "ids are file names without extension and must be unique across the splits")
                continue
            seen[image.stem] = image
            size = image_size(image)
            if size is None:
                problems.append(f"{image}: cannot read the image's size (not an image file, or damaged)")
                continue
            label = yolo_label_path(image)
            found: list = []
            if label.is_file():
                found, probs = read_yolo_labels(label, size[0], size[1], names)
                problems += probs
            unlabelled += not found
            objects += len(found)
            shutil.copy2(image, dst / "JPEGImages" / image.name)
            write_voc_xml(dst / "Annotations" / f"{image.stem}.xml", image.name, size[0], size[1], found)
            ids.append(image.stem)
    if problems:
        raise FormatError(_listed(problems))
    if not seen:
        raise FormatError(f"{src}: no images found ({how})")
    for split, ids in lists.items():
        (dst / "ImageSets" / "Main" / f"{split or 'trainval'}.txt").write_text("".join(f"{i}\n" for i in sorted(ids)))
    (dst / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    return {"images": len(seen), "annotations": objects, "images_without_objects": unlabelled,
            "split_lists": sorted(s or "trainval" for s in lists), "found_by": how}
