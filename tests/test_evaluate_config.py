"""Fast tests of ``vaegan.evaluate``'s own logic, with no evaluation run: which config a checkpoint is
evaluated under (its run's config.yaml and single-key overrides), what is refused, one-line Hydra
errors, which files are refused as checkpoints and data settings that do not match one, and
metrics.json with its history. tests/test_evaluate.py evaluates real checkpoints (most of it slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import TINY
from vaegan.config import ConfigError
from vaegan.evaluate import compose_config, run_config, run_dir_of, show, write_metrics


@pytest.fixture(scope="module")
def saved_config() -> str:
    """The resolved config.yaml of a 4-iteration TINY run (16 px grey digits), its output_dir a placeholder."""
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF
    from vaegan.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, "iterations=4", "paths.output_dir=RUN_DIR"])
    return OmegaConf.to_yaml(cfg, resolve=True)


@pytest.fixture
def run(saved_config, tmp_path) -> Path:
    """A run directory as training leaves it, as far as evaluate reads it: config.yaml and a
    checkpoint file (never opened here)."""
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"not read by compose_config")
    (out / "config.yaml").write_text(saved_config.replace("RUN_DIR", str(out)))
    return out


def ckpt(run: Path) -> str:
    return f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"


def test_run_dir_of_a_checkpoint():
    assert run_dir_of(Path("/r/checkpoints/last.ckpt")) == Path("/r")
    assert run_dir_of(Path("/r/elsewhere.ckpt")) == Path("/r")


def test_the_runs_config_with_single_key_overrides(run):
    cfg, path = compose_config([ckpt(run), "metrics.split=valid", "metrics.num_samples=64", "data.num_workers=1"])
    assert path == run / "checkpoints" / "last.ckpt"
    assert (cfg.data.name, cfg.data.image_size, cfg.model.width, cfg.iterations) == ("digits", 16, 4, 4)  # the run's
    assert (cfg.metrics.split, cfg.metrics.num_samples, cfg.data.num_workers) == ("valid", 64, 1)  # the overrides
    assert cfg.paths.output_dir == str(run)


@pytest.mark.parametrize("override, message", [
    ("+experiment=cifar10", "+experiment=cifar10: evaluate reads the run's config.yaml; override single keys"),
    ("hydra.run.dir=/x", "hydra.run.dir=/x: evaluate reads the run's config.yaml; override single keys"),
    ("seed=3", "seed is the run's training seed, recorded with the result; the evaluation's is metrics.seed"),
    ("metrics.nope=1", "metrics.nope: no such config key; check its spelling against the run's config.yaml"),
    ("data=nope", "Could not find 'data/nope'"),
])
def test_what_evaluate_refuses(run, override, message):
    with pytest.raises(ConfigError) as err:
        compose_config([ckpt(run), override])
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)
    if override == "data=nope":  # a group choice that does not exist: the ones that do
        assert "available: " in str(err.value) and "digits" in str(err.value) and "celeba" in str(err.value)


def test_the_checkpoint_must_be_named_and_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"^ckpt_path is required: ckpt_path=<run dir>/checkpoints/last.ckpt$"):
        compose_config([])
    with pytest.raises(ConfigError, match=r"ckpt_path='.*missing.ckpt': no such checkpoint file"):
        compose_config([f"ckpt_path={tmp_path / 'missing.ckpt'}"])


def test_without_config_yaml_the_data_must_be_named(run):
    (run / "config.yaml").unlink()
    with pytest.raises(ConfigError) as err:
        compose_config([ckpt(run), "metrics.num_samples=64"])
    assert str(err.value).startswith(f"{run / 'config.yaml'} not found, so the data this checkpoint was trained on is "
                                     "unknown; put the run's config.yaml back, or name the data: data=")
    cfg, _ = compose_config([ckpt(run), "data=digits", "data.image_size=16", "data.channels=1"])
    assert (cfg.data.name, cfg.data.image_size, cfg.data.channels) == ("digits", 16, 1)
    assert cfg.paths.output_dir == str(run)  # no Hydra run: the run directory, not ${hydra:...}


def test_a_damaged_config_yaml_says_how_to_get_past_it(run):
    (run / "config.yaml").write_text("model: {width: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        run_config(run / "config.yaml")
    assert str(err.value).startswith(f"{run / 'config.yaml'}: not a readable run config (")
    assert str(err.value).endswith("restore it from the run, or move it aside and name the data: data=<name> data.root=<path>")
    (run / "config.yaml").write_text("model:\n  widht: 4\n")  # a key the schema lacks
    with pytest.raises(ConfigError, match="not a readable run config"):
        run_config(run / "config.yaml")


def test_metrics_json_keeps_each_earlier_result_in_the_history(tmp_path):
    first, second, third = ({"n": i, "values": {"fid": 40.0 - i}} for i in range(3))
    assert write_metrics(tmp_path, first) == tmp_path / "metrics.json"
    assert not (tmp_path / "metrics_history.jsonl").exists()
    write_metrics(tmp_path, second)
    write_metrics(tmp_path, third)
    assert json.loads((tmp_path / "metrics.json").read_text()) == third
    history = [json.loads(line) for line in (tmp_path / "metrics_history.jsonl").read_text().splitlines()]
    assert history == [first, second]  # oldest first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "metrics_history.jsonl"]  # no temporary file


def test_a_damaged_metrics_json_is_kept_aside_not_lost(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text('{"half": ')
    write_metrics(tmp_path, {"n": 1})
    [kept] = tmp_path.glob("metrics.damaged-*.json")
    assert kept.read_text() == '{"half": '
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"n": 1}
    assert not (tmp_path / "metrics_history.jsonl").exists()
    assert capsys.readouterr().err == f"warning: {tmp_path / 'metrics.json'} was not valid JSON; kept as {kept.name}\n"


def test_show_prints_values_beside_the_reference_and_the_whole_protocol(tmp_path, capsys):
    record = {"variant": "vaegan", "iteration": 4, "values": {"fid": 41.234567, "rfid": 12.0},
              "reference_values": {"fid": 1.5}, "protocol_key": "0123456789abcdef",
              "protocol": {"num_samples": 64, "split": "train", "extractor_file": "/a/very/long/path/" + "x" * 150}}
    show(record, tmp_path / "metrics.json")
    out = capsys.readouterr().out
    assert "vaegan at iteration 4" in out and "41.2346" in out and "1.5" in out
    lines = out.splitlines()
    assert "protocol 0123456789abcdef:" in lines
    assert "  num_samples: 64" in lines and "  split: train" in lines
    assert f"  extractor_file: /a/very/long/path/{'x' * 150}" in lines  # whole, never wrapped
    assert lines[-1] == f"wrote {tmp_path / 'metrics.json'}"


# ------------------------------------------------------------------------------ the checkpoint
def cfg_of_size(image_size: int, channels: int):
    return OmegaConf.create({"data": {"image_size": image_size, "channels": channels}})


def test_a_file_that_is_no_checkpoint_is_a_config_error_naming_it(tmp_path):
    import torch

    from vaegan.evaluate import load_checkpoint

    tensor, foreign, cut = tmp_path / "tensor.pt", tmp_path / "classifier.ckpt", tmp_path / "cut.ckpt"
    torch.save(torch.zeros(3), tensor)
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "hyper_parameters": {"num_classes": 10}}, foreign)
    cut.write_bytes(foreign.read_bytes()[:100])
    cases = {tensor: f"ckpt_path: {tensor}: not a vaegan training checkpoint (no state_dict or hyper_parameters)",
             foreign: f"ckpt_path: {foreign} is not a checkpoint of a vaegan model (",
             cut: f"ckpt_path: {cut}: not a readable checkpoint, truncated or corrupt (100 bytes"}
    for path, start in cases.items():
        with pytest.raises(ConfigError) as err:
            load_checkpoint(cfg_of_size(16, 1), path, "cpu")
        assert str(err.value).startswith(start), str(err.value)
        assert "\n" not in str(err.value)


def test_data_settings_other_than_the_checkpoints_name_both_and_the_fix(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from vaegan import evaluate
    from vaegan.models.module import VAEGANModule

    trained = SimpleNamespace(hparams={"image_size": 16, "channels": 1})
    monkeypatch.setattr(VAEGANModule, "from_checkpoint", classmethod(lambda cls, path, device: (trained, 4)))
    assert evaluate.load_checkpoint(cfg_of_size(16, 1), tmp_path / "x.ckpt", "cpu") == (trained, 4)
    with pytest.raises(ConfigError) as err:
        evaluate.load_checkpoint(cfg_of_size(32, 1), tmp_path / "x.ckpt", "cpu")
    assert str(err.value) == ("data.image_size=32 but the checkpoint's model was trained with 16; pass data.image_size=16, "
                              "or use the data it trained on")
    with pytest.raises(ConfigError) as err:
        evaluate.load_checkpoint(cfg_of_size(32, 3), tmp_path / "x.ckpt", "cpu")
    assert str(err.value) == ("data.image_size=32 but the checkpoint's model was trained with 16, data.channels=3 but the "
                              "checkpoint's model was trained with 1; pass data.image_size=16 data.channels=1, or use the "
                              "data it trained on")
