"""Run a stage script with a fault injected at a chosen point (for tests/reliability/test_faults.py):

    python fault_injection.py mid-epoch stages/unet_train.py --params p.yaml
    python fault_injection.py checkpoint-write stages/unet_train.py --params p.yaml

``mid-epoch``: the process SIGKILLs itself after the first batch of epoch 2. ``checkpoint-write``: it writes part of
epoch 2's ``last.pt`` and SIGKILLs itself in the middle of the write. Nothing runs after SIGKILL: no ``finally``,
no MLflow ``end_run``, as when the out-of-memory killer or ``kill -9`` strikes.
"""

import os
import runpy
import signal
import sys

import torch

import segdet.engine as engine


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_mid_epoch() -> None:
    original = engine.train_one_epoch

    def train_one_epoch(model, optimizer, loader, *args, epoch, **kwargs):
        if epoch != 2:
            return original(model, optimizer, loader, *args, epoch=epoch, **kwargs)

        def batches():
            for i, batch in enumerate(loader):
                if i == 1:
                    die()
                yield batch

        return original(model, optimizer, batches(), *args, epoch=epoch, **kwargs)

    engine.train_one_epoch = train_one_epoch


def kill_in_checkpoint_write() -> None:
    original = torch.save

    def save(obj, f, *args, **kwargs):
        name = getattr(f, "name", "")
        if isinstance(obj, dict) and obj.get("epoch") == 2 and ".last.pt.tmp-" in str(name):
            f.write(b"PK\x03\x04" + b"\0" * 4096)  # the start of a zip archive, as torch.save writes
            f.flush()
            die()
        return original(obj, f, *args, **kwargs)

    torch.save = save


if __name__ == "__main__":
    mode, script, *rest = sys.argv[1:]
    {"mid-epoch": kill_mid_epoch, "checkpoint-write": kill_in_checkpoint_write}[mode]()
    sys.argv = [script, *rest]
    runpy.run_path(script, run_name="__main__")
