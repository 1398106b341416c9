"""Typed configuration: loading ``params.yaml`` into the frozen dataclasses of :mod:`segdet.sections`.

``load_section(name, params)`` turns the raw YAML mapping of one section into its dataclass and rejects
anything it does not understand, naming the key, the value and what is allowed::

    params.yaml: data.split.train = 1.5 is out of range: expected a number <= 1
    params.yaml: data.seg: unknown key 'sorce' (did you mean 'source'?); valid keys: source, path, ...

The library never reads ``params.yaml`` itself:
stage entry points load a section and pass the dataclass (or keyword arguments taken from it) down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from segdet.schema import ConfigError, _build, _unknown_key_message
from segdet.sections import (
    BaseConfig,
    DataConfig,
    ProposalsConfig,
    RcnnEvalConfig,
    RcnnFinetuneConfig,
    RcnnSvmConfig,
    UnetEvalConfig,
    UnetTrainConfig,
    YoloEvalConfig,
    YoloTrainConfig,
)

#: params.yaml section name -> dataclass. One naming chain: section ``unet_train`` = ``UnetTrainConfig``.
SECTIONS: dict[str, type] = {
    "base": BaseConfig,
    "data": DataConfig,
    "unet_train": UnetTrainConfig,
    "unet_eval": UnetEvalConfig,
    "proposals": ProposalsConfig,
    "rcnn_finetune": RcnnFinetuneConfig,
    "rcnn_svm": RcnnSvmConfig,
    "rcnn_eval": RcnnEvalConfig,
    "yolo_train": YoloTrainConfig,
    "yolo_eval": YoloEvalConfig,
}


# ----------------------------------------------------------------------------------------------------------
# Loading and checking
# ----------------------------------------------------------------------------------------------------------


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read a params file into a plain dict; unknown top-level sections are an error."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    unknown = [k for k in raw if k not in SECTIONS]
    if unknown:
        raise ConfigError(f"{path}: {_unknown_key_message('', unknown[0], SECTIONS)}")
    return raw


def load_section(name: str, params: dict[str, Any] | str | Path = "params.yaml") -> Any:
    """Load section ``name`` of ``params`` (a dict, or a params.yaml path) into its frozen dataclass.

    Missing keys take their defaults; unknown keys, wrong types and out-of-range values raise
    :class:`ConfigError` naming ``section.key``, the value and what is allowed.
    """
    if name not in SECTIONS:
        raise ConfigError(_unknown_key_message("", name, SECTIONS))
    label = "params.yaml"
    if not isinstance(params, dict):
        label = str(params)
        params = load_params(params)
    raw = params.get(name)
    if raw is None:
        raw = {}
    try:
        return _build(SECTIONS[name], raw, name)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
