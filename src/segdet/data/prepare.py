"""The prepare stage as a library function: ``prepare_data`` fills ``data/raw/isic`` and ``data/raw/voc``,
generated (synthetic, the default) or a user's folder imported into one canonical layout.
"""

from __future__ import annotations

from pathlib import Path

from segdet.data.pairs import (
    resolve,
)
from segdet.data.sources import (
    import_coco,
    import_isic,
    import_voc,
)
from segdet.io import atomic_dir, write_json
from segdet.sections import DataConfig

# ----------------------------------------------------------------------------------------------------------
# prepare
# ----------------------------------------------------------------------------------------------------------


def prepare_data(
    cfg: DataConfig, out: Path, root: Path, progress: bool = True, source_root: Path | None = None
) -> dict:
    """Write ``out/isic`` and ``out/voc`` (each replaced atomically) and return what was made.

    ``out/<x>/source.json`` records the source; for ``source: manifest`` nothing is copied (the user's
    manifest names the files) and that file is all the folder holds. Relative ``data.*.path`` values are
    resolved against ``source_root`` (default ``root``): the user's repository, also when DVC runs an
    experiment in a copy of it.
    """
    from segdet.data.synthetic.isic import generate_isic
    from segdet.data.synthetic.voc import generate_voc

    root = source_root or root
    summary = {}
    with atomic_dir(out / "isic") as d:
        seg = cfg.seg
        if seg.source == "synthetic":
            info = generate_isic(d, num_images=seg.num_images, image_size=seg.image_size, seed=cfg.seed,
                                 progress=progress)
        elif seg.source == "isic":
            info = import_isic(resolve(seg.path, root), d)
        else:
            info = {"manifest": str(resolve(seg.path, root))}
        summary["seg"] = {"source": seg.source, **info}
        write_json(d / "source.json", summary["seg"])
    with atomic_dir(out / "voc") as d:
        det = cfg.det
        if det.source == "synthetic":
            info = generate_voc(d, num_images=det.num_images, image_size=det.image_size, seed=cfg.seed,
                                max_objects=det.max_objects, progress=progress)
        elif det.source == "voc":
            info = import_voc(resolve(det.path, root), d)
        elif det.source == "coco":
            images = resolve(det.images, root) if det.images else None
            info = import_coco(resolve(det.path, root), d, images)
        else:
            info = {"manifest": str(resolve(det.path, root))}
        summary["det"] = {"source": det.source, **info}
        write_json(d / "source.json", summary["det"])
    return summary
