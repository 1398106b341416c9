"""What every stage script shares: the user-error base class and ``run_stage``.

The lowest module of the package (it imports nothing from segdet at load; ``run_stage`` calls
:func:`segdet.runtime.share_machine`), so a stage's DVC deps do not grow with
the CLI or with error classes of modules the stage never runs.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


class UserError(ValueError):
    """An error caused by the user's input (a parameter, a data file, a checkpoint): reported as one clear
    ``ERROR: ...`` message without a traceback. Every such error class of segdet derives from it."""


def setup_logging() -> None:
    """INFO logs of segdet, warnings only from chatty libraries; under torchrun, processes other than rank 0
    only warn (their messages are prefixed with the rank)."""
    rank = os.environ.get("RANK", "0")
    if rank == "0":
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


#: errno values of a write refused by the environment, with what to do about each
WRITE_FAULTS = {
    errno.ENOSPC: "free some space (or write the outputs to a larger disk) and run it again",
    errno.EDQUOT: "free some space and run it again",
    errno.EROFS: "make the folder writable and run it again",
    errno.EACCES: "fix the folder's permissions and run it again",
    errno.EPERM: "fix the folder's permissions and run it again",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another output path",
}


def write_fault(exc: OSError) -> str | None:
    """A one-line message for a write refused by the environment (full disk, read-only folder ...), or None.
    It names the user's path, not the temporary file beside it that was being written (``.x.tmp-abc``)."""
    if exc.errno not in WRITE_FAULTS:
        return None
    where = ""
    if exc.filename:  # data/.manifests.tmp-abc/x.txt -> data/manifests/x.txt
        where = " " + re.sub(r"(^|/)\.([^/]+)\.tmp-[^/]+", r"\1\2", str(exc.filename))
    return (f"cannot write{where}: {os.strerror(exc.errno)}; {WRITE_FAULTS[exc.errno]}. The outputs of the "
            "previous run are unchanged")


def check_writable(*paths: str | Path) -> None:
    """Fail now, before any work, when an output path cannot be written (its folder, or the nearest existing
    folder above it, is read-only, not ours, or on a full disk): a stage that finds out after an hour of
    training has already replaced some of its outputs. Raises ``OSError`` (reported by :func:`run_stage`).
    Under torchrun only rank 0 writes outputs, so only it checks."""
    if os.environ.get("RANK", "0") != "0":
        return
    for path in map(Path, paths):
        # an output is written beside itself and renamed into place (segdet.io): its parent folder must be
        # writable, and a folder written into (a run folder) must be writable itself
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        for folder in [parent] + ([path] if path.is_dir() else []):
            try:
                fd, probe = tempfile.mkstemp(prefix=".segdet-write-check-", dir=folder)
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, str(path)) from None
            os.close(fd)
            os.unlink(probe)


def run_stage(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> int:
    """Run a stage's ``main``; a :class:`UserError`, or a write refused by the environment (a full disk, a
    read-only folder), prints ``ERROR: ...`` and gives exit status 1."""
    setup_logging()
    signal.signal(signal.SIGTERM, _terminate)
    from segdet.runtime import keep_freed_memory, share_machine  # noqa: PLC0415 (no segdet imports at load)

    share_machine()
    keep_freed_memory()
    return report_errors(main, argv)


def report_errors(fn: Callable, *args: object) -> int:
    """``fn(*args)``'s exit status (0 when it returns None); a :class:`UserError` or a write refused by the
    environment prints one ``ERROR: ...`` line and gives 1; any other exception is a bug and propagates."""
    try:
        status = fn(*args)
    except UserError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        message = write_fault(exc)
        if message is None:
            raise
        print(f"ERROR: {message}", file=sys.stderr)
        return 1
    return status or 0


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, a batch scheduler, ``dvc queue kill``) ends the stage like Ctrl-C does: temporary
    outputs are removed and the MLflow run is marked KILLED."""
    raise KeyboardInterrupt(f"signal {signum}")
