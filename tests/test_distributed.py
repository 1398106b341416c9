"""Data-parallel training (segdet.distributed, the engine under torchrun, the launcher) checked on CPU with gloo.

The exact equivalence (2 processes = 1 process with the same global batch) is checked here on a model without
batch norm: on CPU each process normalises over its own share of the batch (PyTorch's SyncBatchNorm runs on
GPUs only), so the stages' networks are compared with a tolerance in tests/stages/test_distributed_stages.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from segdet import distributed, launch
from segdet.engine import epoch_seed, fit, loaders
from segdet.nets.weights import load_checkpoint
from segdet.schema import ConfigError

CPU = torch.device("cpu")
N, GLOBAL_BATCH, EPOCHS = 20, 8, 3  # 20 images: the last global batch is 4, split 2 + 2


def _data():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, 4, 6, 6, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    return TensorDataset(x, y)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 2))


def _train(run_dir: Path) -> list[dict]:
    """fit() as a training stage runs it, in this process: one process, or one of a gloo group."""
    device = distributed.init(CPU)
    ds = _data()
    generator = torch.Generator()
    train, _ = loaders(ds, ds, batch_size=GLOBAL_BATCH, workers=0, device=device, generator=generator)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x_val, y_val = ds.tensors

    def step(m, batch, d):
        return nn.functional.cross_entropy(m(batch[0]), batch[1]), {}

    def evaluate(m):
        with torch.no_grad():
            return {"val_loss": float(nn.functional.cross_entropy(m(x_val), y_val))}

    result = fit(model, optimizer, None, train, step=step, evaluate=evaluate, epochs=EPOCHS, device=device,
                 run_dir=run_dir, monitor="val_loss", mode="min", seed=3, generator=generator, progress=False)
    return result.history


def _worker(rank: int, world: int, port: int, run_dir: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        history = _train(Path(run_dir))
        Path(out, f"rank{rank}.json").write_text(json.dumps(history))
    finally:
        distributed.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    one = _train(base / "one")
    mp.spawn(_worker, args=(2, _free_port(), str(base / "two"), str(base)), nprocs=2, join=True)
    two = [json.loads((base / f"rank{r}.json").read_text()) for r in (0, 1)]
    return base, one, two


def test_two_gloo_processes_train_exactly_like_one_with_the_same_global_batch(one_and_two):
    """batch_size is the global batch: each process takes half of every step's images (the same images as the
    one-process step), DDP averages the gradients, and the reported loss is the mean over all images."""
    base, one, (two, other) = one_and_two
    # float32: a mean of two half-batch gradients rounds differently from one mean over the batch (~1e-7 per step)
    for a, b in zip(one, two, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
    assert one[-1]["train_loss"] < 0.8 * one[0]["train_loss"]  # it did learn: the curves compared are not flat
    w1 = load_checkpoint(base / "one" / "last.pt")["model"]
    w2 = load_checkpoint(base / "two" / "last.pt")["model"]
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-5, atol=1e-6)
    # validation ran on rank 0 and every process took its result: the best-epoch choice agrees
    assert [r["val_loss"] for r in other] == [r["val_loss"] for r in two]


def test_only_rank_0_writes_and_the_checkpoint_says_how_many_processes_trained(one_and_two):
    base, _, _ = one_and_two
    assert sorted(p.name for p in (base / "two").iterdir()) == ["best.pt", "last.pt"]
    assert load_checkpoint(base / "two" / "last.pt")["world_size"] == 2
    assert load_checkpoint(base / "one" / "last.pt")["world_size"] == 1


def test_process_batches_together_are_the_one_process_batch():
    """ShardedRandomSampler: the union of the processes' i-th batches is the one-process run's i-th batch
    (the same permutation, drawn from the same generator after the DataLoader's own draw)."""
    ds = TensorDataset(torch.arange(22))
    g = torch.Generator()

    def batches(loader):
        g.manual_seed(epoch_seed(7, 2))
        return [b[0].tolist() for b in loader]

    single = batches(DataLoader(ds, 8, shuffle=True, generator=g))
    shards = [batches(DataLoader(ds, 4, sampler=distributed.ShardedRandomSampler(ds, g, num_replicas=2, rank=r),
                                 generator=g)) for r in (0, 1)]
    for i, whole in enumerate(single[:-1]):  # 22 = 8 + 8 + 6: the full batches are the same images
        assert sorted(shards[0][i] + shards[1][i]) == sorted(whole)
    # the last: 6 images split 3 + 3 (22 is a multiple of 2: no image repeated)
    assert sorted(shards[0][-1] + shards[1][-1]) == sorted(single[-1])


def test_global_batch_must_split_evenly(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert distributed.per_process(8, "unet_train.batch_size") == 2
    with pytest.raises(ConfigError, match=r"unet_train.batch_size = 6 is the global batch .* with 4 processes it "
                                          r"must be a multiple of 4: use 4 or 8"):
        distributed.per_process(6, "unet_train.batch_size")


def test_launcher_runs_one_process_as_the_script_itself(tmp_path):
    script = tmp_path / "show.py"
    script.write_text("import os, sys, json; print(json.dumps([sys.argv[1:], os.environ.get('WORLD_SIZE')]))")
    out = subprocess.run([sys.executable, "-m", "segdet.launch", "1", str(script), "--x", "1"], capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout) == [["--x", "1"], None]  # no torchrun: no WORLD_SIZE


def test_launcher_runs_torchrun_and_reports_the_failed_process(tmp_path):
    script = tmp_path / "fail.py"
    # one os.write a rank: both ranks share the pipe, and print's separate writes of its pieces can interleave
    script.write_text("import os, sys\nos.write(1, f\"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']} "
                      "threads {os.environ['OMP_NUM_THREADS']}\\n\".encode())\n"
                      "sys.exit(3 if os.environ['RANK'] == '1' else 0)\n")
    out = subprocess.run([sys.executable, "-m", "segdet.launch", "2", str(script)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 3
    assert "rank 0 of 2 threads 1" in out.stdout and "rank 1 of 2" in out.stdout
    assert f"ERROR: {script}: process 1 of 2 stopped with exit code 3" in out.stderr


def test_launcher_arguments_one_machine_or_several(monkeypatch):
    monkeypatch.delenv("PET_NNODES", raising=False)
    monkeypatch.delenv("PET_RDZV_ENDPOINT", raising=False)
    assert launch.torchrun_args(2, "stages/unet_train.py", []) == [
        "--standalone", "--nproc-per-node=2", "stages/unet_train.py"]
    monkeypatch.setenv("PET_NNODES", "2")
    monkeypatch.setenv("PET_RDZV_ENDPOINT", "10.0.0.1:29400")
    assert launch.torchrun_args(4, "s.py", ["--a"]) == ["--nproc-per-node=4", "s.py", "--a"]
    assert launch.main(["zero", "s.py"]) == 2
