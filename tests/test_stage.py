"""Stage plumbing: every user error is one ``ERROR:`` line and exit status 1; anything else is a bug and raises."""

import pytest

from segdet.data.formats import FormatError
from segdet.data.pairs import ManifestError
from segdet.engine import NonFiniteLossError
from segdet.nets.weights import CheckpointError
from segdet.predict import PredictError
from segdet.report import ReportError
from segdet.schema import ConfigError
from segdet.stage import UserError, run_stage


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
