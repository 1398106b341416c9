"""The prepare stage as a library function: ``prepare_data`` fills ``data/raw/isic`` and ``data/raw/voc``,
generated (synthetic, the default) or a user's folder imported into one canonical layout.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from segdet.data.pairs import (
    resolve,
)
from segdet.data.sources import (
    import_coco,
    import_isic,
    import_voc,
    import_yolo,
)
from segdet.io import atomic_dirs, write_json
from segdet.sections import DataConfig

# ----------------------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------------------


def prepare_data(
    cfg: DataConfig, out: Path, root: Path, progress: bool = True, source_root: Path | None = None,
    before_commit: Callable[[dict[str, Path], dict], None] | None = None,
) -> dict:
    """Write ``out/isic`` and ``out/voc`` and return what was made. Both folders are replaced together, once
    everything succeeded (``before_commit`` included): a failure leaves the previous ``out`` as it was.

    ``out/<x>/source.json`` records the source; for ``source: manifest`` nothing is copied (the user's
    manifest names the files) and that file is all the folder holds. Relative ``data.*.path`` values are
    resolved against ``source_root`` (default ``root``): the user's repository, also when DVC runs an
    experiment in a copy of it. ``before_commit({"isic": folder, "voc": folder}, summary)`` sees the new
    folders before they replace the old ones (the stage draws its previews from them).
    """
    from segdet.data.synthetic.isic import generate_isic
    from segdet.data.synthetic.voc import generate_voc

    root = source_root or root
    summary = {}
    with atomic_dirs(out / "isic", out / "voc") as (isic, voc):
        seg = cfg.seg
        if seg.source == "synthetic":
            info = generate_isic(isic, num_images=seg.num_images, image_size=seg.image_size, seed=cfg.seed,
                                 progress=progress)
        elif seg.source == "isic":
            info = import_isic(resolve(seg.path, root), isic)
        else:
            info = {"manifest": str(resolve(seg.path, root))}
        summary["seg"] = {"source": seg.source, **info}
        write_json(isic / "source.json", summary["seg"])
        det = cfg.det
        if det.source == "synthetic":
            info = generate_voc(voc, num_images=det.num_images, image_size=det.image_size, seed=cfg.seed,
                                max_objects=det.max_objects, progress=progress)
        elif det.source == "voc":
            info = import_voc(resolve(det.path, root), voc)
        elif det.source == "coco":
            images = resolve(det.images, root) if det.images else None
            info = import_coco(resolve(det.path, root), voc, images)
        elif det.source == "yolo":
            info = import_yolo(resolve(det.path, root), voc)
        else:
            info = {"manifest": str(resolve(det.path, root))}
        summary["det"] = {"source": det.source, **info}
        write_json(voc / "source.json", summary["det"])
        if before_commit is not None:
            before_commit({"isic": isic, "voc": voc}, summary)
    return summary
