"""What every stage script shares: the user-error base class and ``run_stage``.

The lowest module of the package (it imports nothing from segdet), so a stage's DVC deps do not grow with
the CLI or with error classes of modules the stage never runs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


class UserError(ValueError):
    """An error caused by the user's input (a parameter, a data file, a checkpoint): reported as one clear
    ``ERROR: ...`` message without a traceback. Every such error class of segdet derives from it."""


def setup_logging() -> None:
    """INFO logs of segdet, warnings only from chatty libraries."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_stage(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> int:
    """Run a stage's ``main``; a :class:`UserError` prints ``ERROR: ...`` and gives exit status 1."""
    setup_logging()
    try:
        main(argv)
    except UserError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0
