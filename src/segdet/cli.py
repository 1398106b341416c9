"""``segdet`` console entry: commands a user runs outside DVC, and the error handling of the stages."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from segdet.config import ConfigError
from segdet.data.formats import FormatError
from segdet.data.manifest import ManifestError
from segdet.engine import NonFiniteLossError
from segdet.nets.weights import CheckpointError

#: errors caused by the user's input: reported as one clear message, without a traceback
USER_ERRORS = (ConfigError, ManifestError, FormatError, CheckpointError, NonFiniteLossError)


def run_stage(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> int:
    """Run a stage's ``main``; a user error prints ``ERROR: ...`` and exits with status 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "git"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        main(argv)
    except USER_ERRORS as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


def _check(args: argparse.Namespace) -> int:
    from segdet.data.manifest import read_manifest, validate_det, validate_seg

    root = Path(args.root)
    problems: list[str] = []
    total = 0
    for path in args.manifests:
        try:
            pairs = read_manifest(path)
        except ManifestError as exc:
            problems += exc.problems
            continue
        total += len(pairs)
        if args.kind == "seg":
            problems += validate_seg(pairs, root, progress=True)
        else:
            classes = Path(args.classes).read_text().split("\n") if args.classes else None
            classes = [c for c in classes if c] if classes else None
            problems += validate_det(pairs, root, classes, progress=True).problems
    for p in problems:
        print(p)
    print(f"{total} pair(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segdet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate manifests (seg: image + 0/255 mask; det: image + VOC XML)")
    check.add_argument("kind", choices=["seg", "det"], help="what the manifests list")
    check.add_argument("manifests", nargs="+", help="manifest files, one 'image_path label_path' a line")
    check.add_argument("--root", default=".", help="folder that relative manifest paths start from")
    check.add_argument("--classes", help="det: file of known class names, one a line")
    args = parser.parse_args(argv)
    if args.command == "check":
        return _check(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
