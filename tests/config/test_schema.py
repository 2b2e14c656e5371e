"""Tests of ``vaegan.config.schema``: the typed schema every YAML file of conf/ is merged into (the
full experiments' values are checked in test_validate.py)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from tests.conftest import CONF
from vaegan.config.schema import CONF_DIR, ConfigError, DataConfig, ModelConfig, TrainConfig, register_configs

# test_validate.py composes the model, controller and logger options and four experiments; these are the others.
EXPERIMENTS = ["celeba_cpu", "pid_vs_p_cpu", "table1", "table1_cpu"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_conf_dir_is_the_repositorys_conf():
    assert CONF_DIR == CONF and (CONF_DIR / "train.yaml").is_file()


def test_register_configs_stores_the_schema_the_root_config_extends():
    register_configs()
    stored = ConfigStore.instance().load("train_schema.yaml")
    assert OmegaConf.get_type(stored.node) is TrainConfig
    assert "train_schema" in (CONF / "train.yaml").read_text()


def test_the_schema_has_every_default_but_the_output_dir():
    cfg = OmegaConf.structured(TrainConfig)
    assert OmegaConf.is_missing(cfg.paths, "output_dir") and TrainConfig().paths.output_dir == MISSING
    with pytest.raises(MissingMandatoryValue):
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert (cfg.iterations, cfg.model.name, cfg.data.name, cfg.trainer.precision) == (300_000, "vaegan", "digits", "32-true")
    assert cfg.model.optimizer.betas == [0.5, 0.999] and cfg.callbacks.checkpoint.on_signals[0] == "SIGTERM"


def test_list_defaults_are_not_shared_between_instances():
    a, b = ModelConfig(), ModelConfig()
    a.optimizer.betas.append(0.1)
    assert b.optimizer.betas == [0.5, 0.999]


def test_a_typed_value_of_the_wrong_type_fails_when_merged():
    cfg = OmegaConf.structured(DataConfig)
    with pytest.raises(Exception, match="batch_size"):
        OmegaConf.merge(cfg, {"batch_size": "many"})
    with pytest.raises(Exception, match="bach_size"):
        OmegaConf.merge(cfg, {"bach_size": 4})


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_the_other_experiments_compose_into_the_schema():
    register_configs()
    assert set(EXPERIMENTS) <= set(options("experiment"))
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for name in EXPERIMENTS:
            cfg = compose("train", overrides=[f"+experiment={name}", "paths.output_dir=/tmp/unused"])
            assert OmegaConf.get_type(cfg) is TrainConfig and cfg.run_name == name, name


def test_a_key_the_schema_lacks_fails_at_composition():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        with pytest.raises(ConfigCompositionException, match="model.widht"):
            compose("train", overrides=["model.widht=8", "paths.output_dir=/tmp/unused"])
