"""The manifest stage as a library function: ``build_manifests`` pairs, splits and validates ``data/raw/``
(or a user's manifests) and writes ``data/manifests/`` (file contracts: docs/architecture.md); nothing
is written unless every check passes.

Splits: a seeded shuffle with ``data.split`` ratios, or the source's own split lists where it has them
(VOC ``ImageSets/Main/{train,val,trainval,test}.txt``, ISIC ``train/ val/ test/`` folders, manifest files
``train.txt`` ...). A source split that is missing is made from the source's train part: with train and
test given, val is carved from train; with train and val given (ISIC 2018, VOC 2012), the source's
held-out val becomes ``test`` and a new val is carved from train, so the reported test numbers are
always on data the source held out. ``trainval`` is the union of train and val
(:func:`segdet.data.sources.resolve_trainval`): it is used only where train and val lists are absent
(then split by the ratios); ids it lists beyond them go to train with a warning. With
``data.use_source_splits: false`` every listed image is pooled once and split by the ratios.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from segdet.data.formats import SPLITS
from segdet.data.pairs import (
    ManifestError,
    Pair,
    class_counts,
    coco_ground_truth,
    read_classes,
    read_manifest,
    resolve,
    validate_det,
    validate_seg,
    write_manifest,
)
from segdet.data.sources import (
    find_isic_pairs,
    find_voc_image,
    isic_split_folders,
    resolve_trainval,
    voc_split_lists,
)
from segdet.io import atomic_dir, write_json
from segdet.sections import DataConfig, SplitConfig

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# splits
# ----------------------------------------------------------------------------------------------------------


def _counts(n: int, fractions: list[float]) -> list[int]:
    """Split ``n`` items by ``fractions`` (sum 1): every non-zero fraction gets at least one item."""
    sizes = [int(round(n * f)) for f in fractions]
    for i, f in enumerate(fractions[1:], 1):
        if f > 0 and sizes[i] == 0 and n >= len(fractions):
            sizes[i] = 1
    sizes[0] = n - sum(sizes[1:])
    if sizes[0] < 1:
        raise ManifestError("splits", [f"{n} item(s) are too few to split by fractions {fractions}"])
    return sizes


def _shuffle_split(items: list[Pair], fractions: list[float], rng: np.random.Generator) -> list[list[Pair]]:
    items = sorted(items, key=lambda p: p.image)
    order = rng.permutation(len(items))
    parts, start = [], 0
    for size in _counts(len(items), fractions):
        parts.append(sorted((items[i] for i in order[start : start + size]), key=lambda p: p.image))
        start += size
    return parts


def assign_splits(
    sources: dict[str | None, list[Pair]], ratios: SplitConfig, seed: int, use_source_splits: bool = True
) -> tuple[dict[str, list[Pair]], str]:
    """Map a source's pairs to train/val/test; returns the splits and a sentence saying how.

    ``sources`` is ``{None: pool}`` for a source without split lists, else ``{"train"|"trainval"|"val"|
    "test": pairs}``.
    """
    rng = np.random.default_rng(seed)
    named = {k: v for k, v in sources.items() if k is not None}
    if not use_source_splits or not named or set(named) == {"trainval"}:
        pool = [p for v in sources.values() for p in v]
        train, val, test = _shuffle_split(pool, [ratios.train, ratios.val, ratios.test], rng)
        how = f"seeded shuffle of {len(pool)} by ratios {ratios.train:g}/{ratios.val:g}/{ratios.test:g}"
        return {"train": train, "val": val, "test": test}, how
    train = named.get("train", named.get("trainval", []))
    if not train:
        raise ManifestError("splits", [f"the source has split lists {sorted(named)} but no train list"])
    carve = ratios.val / (ratios.train + ratios.val)
    if "test" in named:
        test = named["test"]
        if "val" in named:
            val, how = named["val"], "the source's train/val/test lists"
        else:
            train, val = _shuffle_split(train, [1 - carve, carve], rng)
            how = f"the source's train/test lists; val = {carve:.1%} of train (seeded)"
    elif "val" in named:
        test = named["val"]
        train, val = _shuffle_split(train, [1 - carve, carve], rng)
        how = f"the source's held-out val list became test; val = {carve:.1%} of train (seeded)"
    else:
        train, val, test = _shuffle_split(train, [ratios.train, ratios.val, ratios.test], rng)
        how = f"seeded shuffle of the source's train list by ratios {ratios.train:g}/{ratios.val:g}/{ratios.test:g}"
    return {"train": train, "val": val, "test": test}, how


# ----------------------------------------------------------------------------------------------------------
# sources -> pairs
# ----------------------------------------------------------------------------------------------------------


def _rel(path: Path, root: Path) -> str:
    """A path as written in a manifest: relative to the repository root when inside it."""
    p, r = path.resolve(), root.resolve()
    return str(p.relative_to(r)) if p.is_relative_to(r) else str(p)


def _manifest_sources(path: Path, kind: str, root: Path) -> dict[str | None, list[Pair]]:
    """A user's manifest file (one pool) or folder of ``{train,val,test,trainval}.txt`` / ``<kind>_<split>.txt``
    (a ``trainval`` beside ``train`` / ``val`` is reconciled with them: :func:`resolve_trainval`)."""
    if path.is_file():
        return {None: read_manifest(path)}
    if not path.is_dir():
        raise ManifestError(str(path), [f"{path}: no such manifest file or folder"])
    found: dict[str | None, list[Pair]] = {}
    for split in ("train", "val", "test", "trainval"):
        for name in (f"{split}.txt", f"{kind}_{split}.txt"):
            if (path / name).is_file():
                found[split] = read_manifest(path / name)
                break
    if not found:
        raise ManifestError(
            str(path), [f"{path}: no manifests found (expected train.txt, val.txt, test.txt or {kind}_train.txt ...)"]
        )
    trainval = next((path / n for n in ("trainval.txt", f"{kind}_trainval.txt") if (path / n).is_file()), path)
    return resolve_trainval(found, key=lambda p: resolve(p.image, root).resolve(), where=str(trainval))


def seg_sources(
    cfg: DataConfig, raw: Path, root: Path, source_root: Path | None = None, folder: Path | None = None
) -> dict[str | None, list[Pair]]:
    """Segmentation pairs by source split (``{None: pool}`` without split lists) of ``raw/isic`` (or ``folder``)."""
    if cfg.seg.source == "manifest":
        return _manifest_sources(resolve(cfg.seg.path, source_root or root), "seg", root)
    out: dict[str | None, list[Pair]] = {}
    problems: list[str] = []
    for split, sub in isic_split_folders(folder or raw / "isic").items():
        pairs, probs = find_isic_pairs(sub)
        problems += probs
        out[split] = [Pair(_rel(i, root), _rel(m, root), _rel(i, root)) for i, m in pairs]
    if problems:
        raise ManifestError(str(folder or raw / "isic"), problems)
    return out


def det_sources(
    cfg: DataConfig, raw: Path, root: Path, source_root: Path | None = None, folder: Path | None = None
) -> dict[str | None, list[Pair]]:
    """Detection pairs (image, VOC XML) by source split (``{None: pool}`` without split lists) of ``raw/voc``
    (or ``folder``).

    An image is found by its id, the annotation's file stem (``Annotations/<id>.xml`` with
    ``JPEGImages/<id>.jpg``, ``.png`` ...), as the VOC devkit does; the XML's ``<filename>`` is not used.
    Split lists: :func:`segdet.data.formats.voc_split_lists` then :func:`resolve_trainval`.
    """
    if cfg.det.source == "manifest":
        return _manifest_sources(resolve(cfg.det.path, source_root or root), "det", root)
    folder = folder or raw / "voc"
    lists: dict = resolve_trainval(voc_split_lists(folder), where=_rel(folder / "ImageSets/Main/trainval.txt", root))
    if not lists:
        lists = {None: sorted(p.stem for p in (folder / "Annotations").glob("*.xml"))}
    out: dict[str | None, list[Pair]] = {}
    problems = []
    for split, ids in lists.items():
        pairs = []
        for image_id in ids:
            xml = folder / "Annotations" / f"{image_id}.xml"
            where = _rel(xml, root)
            image = find_voc_image(folder, image_id)
            if image is None:
                problems.append(f"{where}: no image {image_id}.jpg (or .png ...) in {_rel(folder / 'JPEGImages', root)}")
            elif not xml.is_file():
                problems.append(f"{where}: annotation missing for id {image_id!r} listed in ImageSets/Main/{split}.txt")
            else:
                pairs.append(Pair(_rel(image, root), where, where))
        out[split] = pairs
    if problems:
        raise ManifestError(str(folder), problems)
    return out


def _known_classes(cfg: DataConfig, raw: Path) -> list[str] | None:
    if cfg.det.classes is not None:
        return list(cfg.det.classes)
    listed = raw / "voc" / "classes.txt"
    if cfg.det.source != "manifest" and listed.is_file():
        return read_classes(listed)
    return None


# ----------------------------------------------------------------------------------------------------------
# manifest
# ----------------------------------------------------------------------------------------------------------


def build_manifests(
    cfg: DataConfig, raw: Path, out: Path, root: Path, progress: bool = True, source_root: Path | None = None
) -> dict:
    """Pair, split and validate both datasets, then write ``out`` (replaced atomically).

    Manifest paths are relative to ``root``; a user's manifest file named in ``data.*.path`` is found
    from ``source_root`` (default ``root``), see :func:`prepare_data`.

    Raises:
        ManifestError: listing every problem with its manifest line or file; ``out`` is left untouched.
    """
    # validated in source order (so a duplicate is reported at its later line), then split
    seg_src = seg_sources(cfg, raw, root, source_root)
    problems = validate_seg([p for ps in seg_src.values() for p in ps], root, progress=progress)
    if problems:
        raise ManifestError("segmentation data", problems)
    seg_splits, seg_how = assign_splits(seg_src, cfg.split, cfg.seed, cfg.use_source_splits)
    log.info("seg splits: %s", seg_how)

    classes = _known_classes(cfg, raw)
    det_src = det_sources(cfg, raw, root, source_root)
    det_all = [p for ps in det_src.values() for p in ps]
    # a VOC / COCO folder pairs image and XML by id: its <filename> may be stale (renamed, converted)
    check = validate_det(det_all, root, classes, progress=progress, check_filename=cfg.det.source == "manifest")
    if check.problems:
        raise ManifestError("detection data", check.problems)
    if check.degenerate:
        log.warning("dropped %d degenerate (zero-area) box(es) from the detection labels", check.degenerate)
    if classes is None:
        classes = sorted(class_counts(check.annotations))
    if not classes:
        raise ManifestError("detection data", ["no objects found in any annotation; cannot derive classes"])

    det_splits, det_how = assign_splits(det_src, cfg.split, cfg.seed + 1, cfg.use_source_splits)
    log.info("det splits: %s", det_how)
    anns = dict(zip([p.image for p in det_all], check.annotations, strict=True))
    summary: dict = {
        "seg": {"how": seg_how, **{s: len(seg_splits[s]) for s in SPLITS}},
        "det": {"how": det_how, "classes": classes, "degenerate_boxes_dropped": check.degenerate,
                **{s: len(det_splits[s]) for s in SPLITS}},
    }
    with atomic_dir(out) as d:
        for s in SPLITS:
            write_manifest(d / f"seg_{s}.txt", seg_splits[s], shown_as=out / f"seg_{s}.txt")
            write_manifest(d / f"det_{s}.txt", det_splits[s], shown_as=out / f"det_{s}.txt")
            split_anns = [anns[p.image] for p in det_splits[s]]
            write_json(d / f"det_{s}_coco.json", coco_ground_truth(det_splits[s], split_anns, classes))
            counts = class_counts(split_anns)
            summary["det"][f"{s}_objects"] = {c: counts.get(c, 0) for c in classes}
            summary["det"][f"{s}_difficult"] = sum(o.difficult for a in split_anns for o in a.objects)
        (d / "det_classes.txt").write_text("".join(f"{c}\n" for c in classes))
    trained = Counter(o.name for p in det_splits["train"] for o in anns[p.image].objects
                      if cfg.det.use_difficult or not o.difficult)  # the objects training sees
    if absent := [c for c in classes if not trained[c]]:
        counts = "; ".join(f"{c} " + " / ".join(str(summary["det"][f"{s}_objects"][c]) for s in SPLITS) for c in absent)
        log.warning("no object of class %s trains (objects in train / val / test: %s%s): R-CNN and YOLOv1 cannot "
                    "learn it and will not detect it; give the train split images of it%s",
                    ", ".join(map(repr, absent)), counts,
                    "" if cfg.det.use_difficult else "; difficult ones train only with data.det.use_difficult",
                    " (the split was drawn at random: another data.seed may put some in train)" if "seeded" in det_how
                    else "")
    return summary

