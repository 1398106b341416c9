"""Presets: files of params.yaml overrides, turned into one checked `dvc exp run` command."""

import shlex
from pathlib import Path

import pytest
import yaml

from segdet.cli import main
from segdet.config import load_params, load_section
from segdet.presets import flatten, load_preset, preset_command, resolve, targets
from segdet.schema import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ROOT / "presets"
PARAMS = ROOT / "params.yaml"


def _write(tmp_path, text):
    d = tmp_path / "presets"
    d.mkdir(exist_ok=True)
    (d / "mine.yaml").write_text(text)
    return d


@pytest.mark.parametrize("name", ["isic2018", "voc"])
def test_shipped_presets_only_change_real_parameters(name):
    preset = load_preset(name, PRESETS)
    params = load_params(PARAMS)
    flat = resolve(preset, {}, params)
    assert flat, "a preset sets something"
    defaults = flatten(params)
    for key, value in flat.items():
        assert key in defaults, f"{name}: {key} is not in params.yaml"
        assert value != defaults[key], f"{name}: {key} = {value!r} is already the params.yaml value"
    # the merged parameters load into every section they touch
    merged = yaml.safe_load(PARAMS.read_text())
    for key, value in flat.items():
        node = merged
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    for section in {k.split(".")[0] for k in flat}:
        load_section(section, merged)


def test_isic_preset_runs_the_unet_stages_on_isic_data():
    cmd = preset_command("isic2018", [], params_path=PARAMS, presets_dir=PRESETS)
    assert cmd[:3] == ["dvc", "exp", "run"]
    assert "data.seg.source=isic" in cmd
    assert cmd[-1] == "unet_eval" and "rcnn_eval" not in cmd and "yolo_eval" not in cmd


def test_voc_preset_runs_both_detectors_on_voc_data():
    cmd = preset_command("voc", [], params_path=PARAMS, presets_dir=PRESETS)
    assert "data.det.source=voc" in cmd
    assert cmd[-2:] == ["rcnn_eval", "yolo_eval"]


def test_user_value_wins_over_the_preset_and_appears_once(tmp_path):
    d = _write(tmp_path, "data:\n  seg:\n    source: isic\n    path: data/isic\nunet_train:\n  epochs: 5\n")
    cmd = preset_command("mine", ["data.seg.path=/data/my isic", "unet_train.lr=0.01"], params_path=PARAMS,
                         presets_dir=d)
    sets = [cmd[i + 1] for i, c in enumerate(cmd) if c == "-S"]
    assert sets == ["data.seg.source=isic", "data.seg.path=/data/my isic", "unet_train.epochs=5",
                    "unet_train.lr=0.01"]
    assert targets(["data.seg.path", "unet_train.lr"]) == ["unet_eval"]


def test_values_are_written_as_dvc_reads_them(tmp_path):
    d = _write(tmp_path, "data:\n  det:\n    source: voc\n    path: x\n    classes: [cat, dog]\n"
                         "yolo_train:\n  init_from: null\n  augment: false\n  lr: 0.0005\n")
    sets = [c for c in preset_command("mine", [], params_path=PARAMS, presets_dir=d) if "=" in c]
    assert sets == ["data.det.source=voc", "data.det.path=x", "data.det.classes=[cat, dog]",
                    "yolo_train.init_from=null", "yolo_train.augment=false", "yolo_train.lr=0.0005"]
    # and each value parses back to the preset's value, as `dvc exp run -S` parses it (YAML)
    assert [yaml.safe_load(s.split("=", 1)[1]) for s in sets] == ["voc", "x", ["cat", "dog"], None, False, 0.0005]


def test_bad_keys_and_values_are_named(tmp_path):
    d = _write(tmp_path, "unet_train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'epocs'.*did you mean 'epochs'"):
        preset_command("mine", [], params_path=PARAMS, presets_dir=d)
    d = _write(tmp_path, "unet_train:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"unet_train.variant = 'unet48' is not allowed"):
        preset_command("mine", ["unet_train.variant=unet48"], params_path=PARAMS, presets_dir=d)
    with pytest.raises(ConfigError, match="expected section.key=value"):
        preset_command("mine", ["unet_train.epochs"], params_path=PARAMS, presets_dir=d)
    with pytest.raises(ConfigError, match="available presets: mine"):
        preset_command("nope", [], params_path=PARAMS, presets_dir=d)


def test_cli_prints_a_command_the_shell_reads_back(tmp_path, capsys):
    d = _write(tmp_path, "data:\n  seg:\n    source: isic\n")
    assert main(["preset", "mine", "--presets-dir", str(d), "--params", str(PARAMS),
                 "-S", "data.seg.path=/my data/isic", "--exp-name", "real"]) == 0
    line = capsys.readouterr().out.strip()
    assert shlex.split(line) == ["dvc", "exp", "run", "--name", "real", "-S", "data.seg.source=isic",
                                 "-S", "data.seg.path=/my data/isic", "unet_eval"]
    assert main(["preset", "--presets-dir", str(d)]) == 0
    assert capsys.readouterr().out.strip() == "presets: mine"
    # the preset's own data.seg.source needs a path: said before anything runs
    assert main(["preset", "mine", "--presets-dir", str(d), "--params", str(PARAMS)]) == 1
    assert "data.seg.path is required when data.seg.source is 'isic'" in capsys.readouterr().err
    assert main(["preset", "mine", "--presets-dir", str(d), "--params", str(PARAMS), "-S", "data.seg.path=x",
                 "-S", "unet_train.lr=-1"]) == 1
    assert "unet_train.lr = -1" in capsys.readouterr().err


def test_cli_help_names_the_commands_in_plain_text(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "segdet console entry" in out and "{check,predict,preset}" in out
    assert "``" not in out  # the module docstring's reStructuredText quoting is not shown to users
