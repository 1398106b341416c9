"""Stage plumbing: every user error is one ``ERROR:`` line and exit status 1; anything else is a bug and raises."""

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from segdet.data.formats import FormatError
from segdet.data.pairs import ManifestError
from segdet.engine import NonFiniteLossError
from segdet.io import write_image
from segdet.nets.weights import CheckpointError
from segdet.predict import PredictError
from segdet.report import ReportError
from segdet.schema import ConfigError
from segdet.stage import UserError, check_writable, run_stage, write_fault


@pytest.mark.parametrize("error", [ConfigError("k: bad"), FormatError("f: bad"), ManifestError("m", ["line 3: bad"]),
                                   CheckpointError("c: bad"), NonFiniteLossError("nan"), ReportError("r: bad"),
                                   PredictError("p: bad")])
def test_user_errors_print_one_line_and_exit_1(error, capsys):
    def main(argv):
        raise error

    assert isinstance(error, UserError)
    assert run_stage(main) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and "Traceback" not in err


def test_a_bug_is_not_a_user_error():
    def main(argv):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_stage(main)
    assert run_stage(lambda argv: None) == 0


@pytest.mark.parametrize(("written", "shown"), [
    ("data/.manifests.tmp-x1y2/seg_train.txt", "data/manifests/seg_train.txt"),  # a file inside an atomic_dir
    ("reports/.unet_eval.json.tmp-abc", "reports/unet_eval.json"),  # an atomic_file
    ("/w/models/unet_run/best.pt", "/w/models/unet_run/best.pt"),
])
def test_write_faults_name_the_users_path_not_the_temporary_one(written, shown):
    message = write_fault(OSError(errno.ENOSPC, "No space left on device", written))
    assert message == (f"cannot write {shown}: No space left on device; free some space (or write the outputs to a "
                       "larger disk) and run it again. The outputs of the previous run are unchanged")
    assert write_fault(OSError(errno.ENOENT, "No such file", written)) is None  # not a write fault: a bug


def test_a_write_fault_exits_1_with_one_line(capsys):
    def main(argv):
        write_image("/dev/full", np.zeros((64, 64), np.uint8))  # every write to /dev/full fails with ENOSPC

    assert run_stage(main, []) == 1
    assert capsys.readouterr().err == ("ERROR: cannot write /dev/full: No space left on device; free some space (or "
                                       "write the outputs to a larger disk) and run it again. The outputs of the "
                                       "previous run are unchanged\n")


def test_check_writable_probes_the_folder_an_output_is_renamed_in(tmp_path):
    (tmp_path / "raw" / "isic").mkdir(parents=True)
    check_writable(tmp_path / "raw" / "isic", tmp_path / "reports" / "x.json")  # missing folders: the nearest one
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["isic", "raw"]  # the probes are gone
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError) as caught:
        check_writable(tmp_path / "file" / "out.json")
    assert caught.value.filename == str(tmp_path / "file" / "out.json")


_STEP_FAULTS = """
import resource, statistics, subprocess, sys
import torch
from segdet.stage import run_stage

def faults_a_step():  # a network step's pattern: blocks of a few sizes (100 MB) allocated, used, freed together
    faults = []
    for _ in range(8):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [torch.ones(n) for n in (1 << 23, 1 << 22, 1 << 21, 1 << 23, 3 << 20)]
        sum(float(b[-1]) for b in blocks)
        del blocks
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return int(statistics.median(faults[2:]))

if sys.argv[1] == "child":
    print(faults_a_step())
    sys.exit()
print(faults_a_step())
run_stage(lambda argv: None)
print(faults_a_step())
print(subprocess.run([sys.executable, "-c", sys.argv[2], "child"], capture_output=True, text=True).stdout)
"""


def _step_faults(**env):
    """Page faults a step: before a stage starts, after, and in a process the stage starts afresh."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "SEGDET_KEEP"))}
    out = subprocess.run([sys.executable, "-c", _STEP_FAULTS, "stage", _STEP_FAULTS], env={**clean, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return [int(n) for n in out[-3:]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_stage_reuses_freed_blocks_instead_of_faulting_in_fresh_pages():
    # glibc hands large freed blocks back to the kernel, so each step faults in and zeroes thousands of pages
    # again (25600 of 4 KiB for 100 MB); once a stage has started, they are reused, in the stage and in a process
    # it starts (selective search's pool)
    before, after, child = _step_faults()
    assert before > 8000
    assert after < 500 and child < 500
    off = _step_faults(SEGDET_KEEP_FREED_MEMORY="0")
    assert off[1] > 8000 and off[2] > 8000
