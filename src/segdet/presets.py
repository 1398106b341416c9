"""Presets: files of parameters for a kind of real data, turned into a ``dvc exp run`` command.

A preset (``presets/<name>.yaml``) holds only the parameters that differ from ``params.yaml``, nested in
the same sections and keys, so any tool can turn it into ``-S section.key=value`` flags. The user's own
``-S`` values are merged over the preset (the user wins: e.g. ``-S data.seg.path=/my/isic``), every value
is checked against its section's dataclass before anything runs, and the command runs only the stages the
preset is about (the eval stages of the models whose sections it sets, and what they depend on).
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import yaml

from segdet.config import SECTIONS, load_params, load_section
from segdet.schema import ConfigError

PRESETS_DIR = Path("presets")

#: the stage that runs a preset's section (and, through dvc.yaml, everything upstream of it)
_TARGETS = {
    "unet_train": ("unet_eval",),
    "unet_eval": ("unet_eval",),
    "proposals": ("rcnn_eval",),
    "rcnn_finetune": ("rcnn_eval",),
    "rcnn_svm": ("rcnn_eval",),
    "rcnn_eval": ("rcnn_eval",),
    "yolo_train": ("yolo_eval",),
    "yolo_eval": ("yolo_eval",),
    "data.seg": ("unet_eval",),
    "data.det": ("rcnn_eval", "yolo_eval"),
}
_ORDER = ("unet_eval", "rcnn_eval", "yolo_eval")


def available(presets_dir: str | Path = PRESETS_DIR) -> list[str]:
    """Names of the presets in ``presets_dir`` (file stems)."""
    return sorted(p.stem for p in Path(presets_dir).glob("*.yaml"))


def load_preset(name: str, presets_dir: str | Path = PRESETS_DIR) -> dict[str, Any]:
    """The nested mapping of preset ``name`` (a name in ``presets_dir`` or a path to a YAML file)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else Path(presets_dir) / f"{name}.yaml"
    if not path.is_file():
        names = ", ".join(available(presets_dir)) or "none"
        raise ConfigError(f"preset {name!r}: no such file {path}; available presets: {names}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of params.yaml sections, got {type(raw).__name__}")
    return raw


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; a list or any other non-mapping value is a leaf."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["data.seg.path=/x", "unet_train.epochs=3"]`` -> ``{dotted key: YAML-parsed value}`` (as DVC reads ``-S``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-S {item!r}: expected section.key=value")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return out


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[leaf] = value


def resolve(preset: dict[str, Any], overrides: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The preset's flat ``{key: value}`` with ``overrides`` on top, each checked against ``params``.

    Raises:
        ConfigError: a key that is not a parameter, or a value its section rejects (named as in params.yaml).
    """
    flat = {**flatten(preset), **overrides}
    merged = copy.deepcopy(params)
    for key, value in flat.items():
        section = key.split(".", 1)[0]
        if section not in SECTIONS or "." not in key:
            raise ConfigError(f"{key}: not a parameter; sections are {', '.join(SECTIONS)}")
        _set(merged, key, value)
    for section in {k.split(".", 1)[0] for k in flat}:
        load_section(section, merged)
    return flat


def targets(keys: list[str]) -> list[str]:
    """The eval stages a preset's keys are about (``[]``: the whole pipeline)."""
    wanted = {t for k in keys for prefix, ts in _TARGETS.items() if k == prefix or k.startswith(prefix + ".") for t in ts}
    return [t for t in _ORDER if t in wanted]


def _yaml_value(value: Any) -> str:
    if value is None:
        return "null"
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...").strip()


def exp_run_command(flat: dict[str, Any], stages: list[str], name: str | None = None) -> list[str]:
    """``["dvc", "exp", "run", "-S", "k=v", ..., stage, ...]`` for the resolved preset."""
    cmd = ["dvc", "exp", "run"]
    if name:
        cmd += ["--name", name]
    for key, value in flat.items():
        cmd += ["-S", f"{key}={_yaml_value(value)}"]
    return cmd + list(stages)


def command_line(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def preset_command(name: str, overrides: list[str], *, params_path: str | Path = "params.yaml",
                   presets_dir: str | Path = PRESETS_DIR, all_stages: bool = False,
                   exp_name: str | None = None) -> list[str]:
    """The checked ``dvc exp run`` command for preset ``name`` with the user's ``-S`` overrides on top."""
    flat = resolve(load_preset(name, presets_dir), parse_overrides(overrides), load_params(params_path))
    return exp_run_command(flat, [] if all_stages else targets(list(flat)), exp_name)
