"""Start a training stage in one process, or in several under ``torchrun``.

``python -m segdet.launch NPROC stages/unet_train.py [args]`` is the command of the training stages in
``dvc.yaml``, with ``NPROC`` = ``${base.nproc_per_node}``:

- ``NPROC`` 1 on one machine: the script replaces this process (``exec``), exactly as ``python stages/...``.
- ``NPROC`` > 1: ``torchrun --standalone --nproc-per-node NPROC stages/...`` (PyTorch's elastic launcher: a
  rendezvous on a free local port, so queued experiments do not collide; one failed process stops the others).
- Several machines: torchrun's own environment variables choose the rendezvous instead of ``--standalone``
  (``PET_NNODES``, ``PET_NODE_RANK`` or ``PET_RDZV_ID``, ``PET_RDZV_ENDPOINT``, ``PET_RDZV_BACKEND``; see the README's
  "GPUs and scaling out").

Each process gets ``OMP_NUM_THREADS`` = its share of the cores unless the variable is set already.
"""

from __future__ import annotations

import os
import sys

USAGE = "usage: python -m segdet.launch NPROC_PER_NODE SCRIPT [ARGS...]"


def _nnodes() -> int:
    """The most nodes torchrun's ``PET_NNODES`` allows (``2`` or ``1:4``); 1 when unset."""
    raw = os.environ.get("PET_NNODES", "1")
    try:
        return int(raw.split(":")[-1])
    except ValueError:
        raise SystemExit(f"ERROR: PET_NNODES = {raw!r}; give a number of nodes (2) or a range (1:4)") from None


def torchrun_args(nproc: int, script: str, args: list[str]) -> list[str]:
    """The arguments of ``torchrun`` for ``nproc`` processes on this machine running ``script``."""
    standalone = _nnodes() == 1 and "PET_RDZV_ENDPOINT" not in os.environ
    return [*(["--standalone"] if standalone else []), f"--nproc-per-node={nproc}", script, *args]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        nproc = int(argv[0])
        if nproc < 1:
            raise ValueError
    except ValueError:
        print(f"ERROR: base.nproc_per_node = {argv[0]!r}; it must be an integer >= 1 (processes per machine)",
              file=sys.stderr)
        return 2
    script, args = argv[1], argv[2:]
    if nproc == 1 and _nnodes() == 1:
        os.execv(sys.executable, [sys.executable, script, *args])
    from segdet.runtime import cpu_share

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpu_share() // nproc)))
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(torchrun_args(nproc, script, args))
    except ChildFailedError as exc:
        first = min(exc.failures.items(), key=lambda kv: kv[1].timestamp)  # the process that failed first
        rank, failure = first
        print(f"ERROR: {script}: process {rank} of {nproc * _nnodes()} stopped with exit code {failure.exitcode}"
              " (its messages are above); torchrun stopped the others", file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
