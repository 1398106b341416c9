import dataclasses
import logging
import re

import pytest
import yaml

from segdet.config import SECTIONS, load_params, load_section
from segdet.schema import ConfigError, flatten
from segdet.sections import DataConfig
from tests.conftest import REPO


def data(**over):
    return load_section("data", {"data": over})


def test_repository_params_load_with_documented_defaults():
    params = load_params(REPO / "params.yaml")
    cfg = load_section("data", params)
    assert isinstance(cfg, DataConfig)
    assert (cfg.seg.source, cfg.det.source) == ("synthetic", "synthetic")
    assert cfg.split.train + cfg.split.val + cfg.split.test == pytest.approx(1.0)
    assert load_section("base", params).device == "auto"
    assert cfg.det.use_difficult is False  # VOC difficult objects are left out of training by default
    assert set(params) <= set(SECTIONS)


def test_every_params_key_has_a_type_and_meaning_comment():
    for lineno, line in enumerate((REPO / "params.yaml").read_text().splitlines(), 1):
        if re.match(r"^\s+\w+:\s*[^#\s]", line):  # a key with a value (not a section header)
            assert re.search(r"#\s*\(.+\)\s*\S", line), f"params.yaml:{lineno} lacks '# (type) meaning': {line}"


def test_missing_section_and_keys_take_defaults():
    assert load_section("data", {}) == DataConfig()
    assert data(seed=3).seg == DataConfig().seg


def test_unknown_key_names_key_and_suggests():
    with pytest.raises(ConfigError, match=r"data\.seg: unknown key 'sorce' \(did you mean 'source'\?\)"):
        data(seg={"sorce": "isic"})


def test_unknown_section_is_rejected(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("dta:\n  seed: 1\n")
    with pytest.raises(ConfigError, match=r"params.yaml: unknown section 'dta' \(did you mean 'data'\?\)"):
        load_params(f)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"seed": "one"}, r"data\.seed = 'one' has the wrong type: expected an integer"),
        ({"seed": True}, r"data\.seed = True has the wrong type: expected an integer"),
        ({"seed": -1}, r"data\.seed = -1 is out of range: expected a value >= 0"),
        ({"use_source_splits": "yes"}, r"data\.use_source_splits = 'yes' has the wrong type: expected true/false"),
        ({"split": {"train": 1.5}}, r"data\.split\.train = 1\.5 is out of range: expected a value > 0\.0 and <= 1\.0"),
        ({"split": {"train": 0.5}}, r"data\.split: train \+ val \+ test = 0\.5 \+ 0\.15 \+ 0\.15 = 0\.8"),
        ({"seg": {"source": "png"}}, r"data\.seg\.source = 'png' is not allowed; choose one of: synthetic, isic, manifest"),
        ({"seg": {"source": "isic"}}, r"data\.seg\.path is required when data\.seg\.source is 'isic'"),
        ({"seg": {"path": "x"}}, r"data\.seg\.path = 'x' is set but data\.seg\.source is 'synthetic'"),
        ({"seg": {"image_size": 8}}, r"data\.seg\.image_size = 8 is out of range: expected a value >= 32 and <= 4096"),
        ({"det": {"classes": "cat"}}, r"data\.det\.classes = 'cat' has the wrong type: expected a list of a string"),
        ({"det": {"classes": ["a", "a"]}}, r"data\.det\.classes: duplicate class names \['a'\]"),
        ({"det": {"source": "voc", "path": "v", "images": "i"}}, r"data\.det\.images = 'i' is only used with"),
        ({"seg": 3}, r"data\.seg = 3 must be a mapping"),
        ({"det": {"use_difficult": "no"}}, r"data\.det\.use_difficult = 'no' has the wrong type: expected true/false"),
    ],
)
def test_invalid_values_name_key_value_and_allowed(over, message):
    with pytest.raises(ConfigError, match=message):
        data(**over)


def test_device_must_be_a_known_kind():
    assert load_section("base", {"base": {"device": "cuda:1"}}).device == "cuda:1"
    with pytest.raises(ConfigError, match=r"base\.device = 'gpu' is not allowed; expected one of: auto, cpu, cuda"):
        load_section("base", {"base": {"device": "gpu"}})


def test_yolo_cell_objects_needs_a_predictor_each():
    assert load_section("yolo_train", {"yolo_train": {"cell_objects": 2}}).cell_objects == 2
    with pytest.raises(ConfigError, match=r"yolo_train\.cell_objects = 3 must not exceed boxes_per_cell = 2"):
        load_section("yolo_train", {"yolo_train": {"cell_objects": 3}})


def test_error_names_the_params_file(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("data:\n  seed: -2\n")
    with pytest.raises(ConfigError, match=r"my\.yaml: data\.seed = -2"):
        load_section("data", f)


def test_ints_are_accepted_for_floats_and_configs_are_frozen():
    cfg = data(split={"train": 0.5, "val": 0.5, "test": 0})
    assert cfg.split.test == 0.0 and isinstance(cfg.split.test, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 4  # type: ignore[misc]


def test_flatten_gives_dotted_keys():
    flat = flatten(data(det={"classes": ["a", "b"]}), "data.")
    assert flat["data.split.train"] == 0.7
    assert flat["data.det.classes"] == "a,b"
    assert flat["data.seg.path"] is None


def test_params_yaml_values_are_the_dataclass_defaults():
    params = load_params(REPO / "params.yaml")
    for name, cls in SECTIONS.items():
        assert load_section(name, params) == cls(), f"params.yaml section {name} differs from {cls.__name__}()"
        # every parameter is listed (and so documented), not only left to its default
        assert set(params[name]) == {f.name for f in dataclasses.fields(cls)}, f"params.yaml section {name}"


def test_a_key_with_two_kinds_of_value_takes_either_and_names_both():
    assert load_section("yolo_train", {"yolo_train": {"input_size": "auto"}}).input_size == "auto"
    assert load_section("yolo_train", {"yolo_train": {"input_size": 384}}).input_size == 384
    with pytest.raises(ConfigError, match=r"yolo_train.input_size = 16 is out of range"):
        load_section("yolo_train", {"yolo_train": {"input_size": 16}})
    with pytest.raises(ConfigError, match=r"yolo_train.input_size = 'big' is not allowed: expected an integer or 'auto'"):
        load_section("yolo_train", {"yolo_train": {"input_size": "big"}})


def test_nms_iou_takes_a_number_or_auto_in_both_detectors_eval_sections():
    for section, default in (("rcnn_eval", 0.3), ("yolo_eval", 0.5)):
        assert load_section(section, {}).nms_iou == default
        assert load_section(section, {section: {"nms_iou": "auto"}}).nms_iou == "auto"
        assert load_section(section, {section: {"nms_iou": 0.45}}).nms_iou == 0.45
        with pytest.raises(ConfigError, match=rf"{section}.nms_iou = 'best' is not allowed: expected a number or 'auto'"):
            load_section(section, {section: {"nms_iou": "best"}})
        with pytest.raises(ConfigError, match=rf"{section}.nms_iou = 0.0 is out of range"):
            load_section(section, {section: {"nms_iou": 0.0}})


def test_a_validation_split_of_zero_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match=r"data\.split\.val = 0\.0 is out of range: expected a value > 0\.0 .*chosen on "
                       r"the validation images"):
        data(split={"train": 0.85, "val": 0, "test": 0.15})


def test_yaml11_exponent_floats_read_as_strings_are_converted_and_said_once(tmp_path, caplog):
    # PyYAML (YAML 1.1) reads 1e-3 as the string '1e-3'; 1.0e-3 is a float
    params = tmp_path / "params.yaml"
    params.write_text("unet_train:\n  lr: 1e-3\n")
    raw = yaml.safe_load(params.read_text())
    assert raw["unet_train"]["lr"] == "1e-3"
    with caplog.at_level(logging.INFO, logger="segdet.schema"):
        cfg = load_section("unet_train", params)
    assert cfg.lr == 0.001
    notes = [r.getMessage() for r in caplog.records if "YAML 1.1" in r.getMessage()]
    assert notes == ["unet_train.lr = '1e-3' is a string in YAML 1.1 (a float needs a dot: 1.0e-3); read as 0.001"]


def test_a_string_that_is_not_a_number_is_still_the_wrong_type(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("unet_train:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"unet_train\.lr = 'fast' has the wrong type: expected a number"):
        load_section("unet_train", params)
