"""Experiments run side by side by DVC's queue (``dvc queue start -j N``) share the machine: each takes 1/N of the
cores and, with several GPUs, a slot of its own (segdet.runtime)."""

import subprocess
import sys
import time

import pytest

from segdet import runtime


def _fake_worker(n: int) -> subprocess.Popen:
    """A process whose command line is that of a DVC queue worker (``dvc exp queue-worker dvc-exp-<hash>-<n>@...``)."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "exp", "queue-worker",
                             f"dvc-exp-0a1b2c-{n}@localhost"])


@pytest.fixture
def workers():
    started = []
    yield lambda n: started.extend(_fake_worker(i + 1) for i in range(n))
    for p in started:
        p.kill()
        p.wait()


def test_n_queue_workers_leave_each_experiment_a_share_of_the_cores(workers, monkeypatch):
    monkeypatch.setattr(runtime, "cores", lambda: 16)
    assert runtime.queue_workers() == 0, "a DVC queue worker of another test is still running"
    assert runtime.cpu_share() == 16
    workers(4)
    time.sleep(0.2)
    assert runtime.queue_workers() == 4
    assert runtime.cpu_share() == 4
    workers(28)  # more workers than cores: still one each
    time.sleep(0.5)
    assert runtime.cpu_share() == 1


def test_share_machine_limits_torch_threads_and_child_processes(workers, monkeypatch):
    import torch

    monkeypatch.setattr(runtime, "cores", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        workers(2)
        time.sleep(0.2)
        assert runtime.share_machine() == 1
        assert torch.get_num_threads() == 1
        import os

        assert os.environ["OMP_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


SLOT = """
import sys, time
sys.path[:0] = {path!r}
from segdet import runtime
print(runtime.queue_slot(), flush=True)
time.sleep(5)
"""


def test_experiments_running_together_hold_different_slots(tmp_path):
    """queue_slot() gives each running experiment its own number (its GPU with several GPUs); a slot is free again
    once its holder ended."""
    (tmp_path / ".dvc").mkdir()
    code = SLOT.format(path=sys.path)
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    slots = sorted(int(p.stdout.readline()) for p in procs)
    assert slots == [0, 1, 2]
    for p in procs:
        p.kill()
        p.wait()
    again = subprocess.run([sys.executable, "-c", code.replace("time.sleep(5)", "")], cwd=tmp_path,
                           capture_output=True, text=True, check=True)
    assert again.stdout.strip() == "0"
    assert (tmp_path / ".dvc" / "tmp" / "segdet-slots" / "0.lock").is_file()
