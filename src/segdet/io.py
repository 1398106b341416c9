"""Writing outputs so that a failed stage never leaves something DVC could take for a good result.

Everything a stage writes goes to a temporary sibling first and is moved into place with one
``os.replace`` once complete; on any error the temporary is removed and the old output is untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces ``path`` when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists() or path.is_symlink():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


@contextlib.contextmanager
def atomic_dirs(*paths: str | Path) -> Iterator[list[Path]]:
    """:func:`atomic_dir` for several folders at once: none of them is replaced unless the whole block succeeds.
    The replacements themselves are renames done one after the other, so only a failure in that instant (not in
    the work) could leave one folder new and the other old."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(atomic_dir(p)) for p in paths]


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode) as fh:
            yield fh
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None or str(exc.filename) == tmp:  # name the file the user knows, not the temporary
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` so that ``dst`` is either the old file or the complete new one."""
    with atomic_file(dst, "wb") as fh, open(src, "rb") as source:
        shutil.copyfileobj(source, fh)


def write_image(path: str | Path, image: Any) -> None:
    """Encode ``image`` (a BGR or single-channel ``uint8`` array) by the file's suffix and write it. Unlike
    ``cv2.imwrite``, which returns False on a full disk or an unwritable folder, a failed write raises ``OSError``
    naming ``path``. The bytes are those ``cv2.imwrite`` writes."""
    import cv2

    ok, data = cv2.imencode(Path(path).suffix or ".png", image)
    if not ok:
        raise ValueError(f"{path}: cannot encode a {image.shape} {image.dtype} image")
    try:
        with open(path, "wb") as fh:
            fh.write(data.tobytes())
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None
