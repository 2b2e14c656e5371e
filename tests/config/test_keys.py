"""Tests of ``vaegan.config.keys``: unknown keys (with the closest one) and values of the wrong type,
looked up in the typed schema ``TrainConfig``."""

from __future__ import annotations

from typing import Any, Optional

import pytest
from omegaconf import OmegaConf

from vaegan.config.keys import leaf_type, unknown_key, unknown_keys, wrong_type
from vaegan.config.schema import TrainConfig

EVERY_KEY = "(python -m vaegan.run --cfg job prints every key)"


def test_known_keys_have_no_message():
    for path in ("seed", "data", "data.batch_size", "model.optimizer.clip.encoder", "logger.csv.flush_every_n_iterations",
                 "callbacks.evaluation.every_n_iterations", "performance.compile"):
        assert unknown_key(path, TrainConfig) is None, path


def test_a_misspelled_nested_key_names_its_parent_and_the_closest_key():
    assert unknown_key("data.batch_sise", TrainConfig) == (
        f"data.batch_sise: no key 'batch_sise' in data; did you mean data.batch_size? {EVERY_KEY}")
    assert unknown_key("model.optimizer.lrr", TrainConfig) == (
        f"model.optimizer.lrr: no key 'lrr' in model.optimizer; did you mean model.optimizer.lr? {EVERY_KEY}")


def test_optional_sub_schemas_are_checked_too():
    message = unknown_key("logger.wandb.projekt", TrainConfig)
    assert message.startswith("logger.wandb.projekt: no key 'projekt' in logger.wandb; did you mean logger.wandb.project?")


def test_a_misspelled_top_level_key_and_one_with_no_close_match():
    assert unknown_key("iteratons", TrainConfig) == f"iteratons: no top-level key 'iteratons'; did you mean iterations? {EVERY_KEY}"
    assert unknown_key("zzzzzz", TrainConfig) == f"zzzzzz: no top-level key 'zzzzzz' {EVERY_KEY}"
    assert unknown_key("data.qqqqqq.x", TrainConfig) == f"data.qqqqqq.x: no key 'qqqqqq' in data {EVERY_KEY}"


def test_keys_below_a_plain_or_untyped_value_are_not_checked():
    assert unknown_key("trainer.devices.anything", TrainConfig) is None  # devices: Any
    assert unknown_key("data.batch_size.anything", TrainConfig) is None


def test_leaf_type_is_the_annotation_of_plain_values_only():
    assert leaf_type("data.batch_size", TrainConfig) is int
    assert leaf_type("data.val_fraction", TrainConfig) is float
    assert leaf_type("data.crop", TrainConfig) == Optional[int]
    assert leaf_type("trainer.devices", TrainConfig) is Any
    assert leaf_type("metrics.names", TrainConfig) == Optional[list[str]]
    assert leaf_type("model", TrainConfig) is None  # a schema, not a value
    assert leaf_type("logger.csv", TrainConfig) is None  # Optional[schema]
    assert leaf_type("model.nope", TrainConfig) is None
    assert leaf_type("nope.batch_size", TrainConfig) is None


@pytest.mark.parametrize("path, value, message", [
    ("data.batch_size", "many", "data.batch_size=many: must be an integer"),
    ("data.batch_size", 2.5, "data.batch_size=2.5: must be an integer"),
    ("data.batch_size", True, "data.batch_size=True: must be an integer"),  # a bool is no count
    ("data.batch_size", None, "data.batch_size=null: must be an integer"),
    ("data.val_fraction", "tenth", "data.val_fraction=tenth: must be a number"),
    ("data.val_fraction", False, "data.val_fraction=False: must be a number"),
    ("data.flip", 1, "data.flip=1: must be true or false"),
    ("data.crop", "big", "data.crop=big: must be an integer or null"),
    ("trainer.benchmark", "yes", "trainer.benchmark=yes: must be true or false or null"),
    ("model.name", None, "model.name=null: must be a string"),
])
def test_wrong_type_names_the_key_the_value_and_the_type(path, value, message):
    assert wrong_type(path, value, TrainConfig) == message


@pytest.mark.parametrize("path, value", [
    ("data.batch_size", 16), ("data.val_fraction", 1), ("data.val_fraction", 0.25), ("data.flip", True),
    ("data.crop", None), ("data.crop", 178), ("trainer.devices", None), ("trainer.devices", [0, 1]),
    ("trainer.benchmark", None), ("metrics.names", ["fid"]), ("model.name", "began"), ("model", {"width": 4}),
])
def test_values_of_the_right_type_pass(path, value):
    assert wrong_type(path, value, TrainConfig) is None


def test_unknown_keys_finds_every_added_key_at_any_depth():
    cfg = OmegaConf.create({"seed": 1, "sed": 2, "data": {"batch_size": 4, "bach_size": 8},
                            "model": {"optimizer": {"lr": 1e-3, "lrr": 1.0}, "ema": {"decay": 0.9}},
                            "trainer": {"devices": {"whatever": 1}}, "logger": {"csv": None}})
    assert unknown_keys(cfg, TrainConfig) == [
        unknown_key("sed", TrainConfig), unknown_key("data.bach_size", TrainConfig),
        unknown_key("model.optimizer.lrr", TrainConfig)]
    assert unknown_keys(cfg, TrainConfig)[1].startswith("data.bach_size: no key 'bach_size' in data; did you mean data.batch_size?")


def test_unknown_keys_of_a_sub_config_use_the_full_path():
    from vaegan.config.schema import DataConfig

    found = unknown_keys(OmegaConf.create({"batch_size": 1, "imgsize": 2}), DataConfig, prefix="data.", root=TrainConfig)
    assert found == [unknown_key("data.imgsize", TrainConfig)] and found[0].startswith("data.imgsize: no key 'imgsize' in data")


def test_the_full_default_config_has_no_unknown_keys():
    assert unknown_keys(OmegaConf.structured(TrainConfig), TrainConfig) == []
