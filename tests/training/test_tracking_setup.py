"""Fast tests of ``vaegan.training.tracking``'s setup of a W&B run, without starting one: the resumed
run's id, the arguments of ``wandb.init``, the dashboard's metrics, the controller's chart data and a
missing wandb package. (test_tracking.py trains real offline W&B runs; those tests are slow.)"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from vaegan.config import ConfigError
from vaegan.config.schema import TrainConfig, WandbLoggerConfig
from vaegan.training import tracking


def cfg_with_wandb(tmp_path: Path, **wandb):
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig),
                          {"run_name": "quick", "paths": {"output_dir": str(tmp_path / "run")},
                           "logger": {"wandb": OmegaConf.merge(OmegaConf.structured(WandbLoggerConfig), wandb)}})
    return cfg


def test_previous_run_id_comes_from_the_checkpoints_run_directory_first(tmp_path):
    old, out = tmp_path / "old", tmp_path / "new"
    (old / "checkpoints").mkdir(parents=True)
    out.mkdir()
    (old / tracking.RUN_FILE).write_text(json.dumps({"id": "abc123"}))
    (out / tracking.RUN_FILE).write_text(json.dumps({"id": "out456"}))
    assert tracking.previous_run_id(str(old / "checkpoints" / "last.ckpt"), out) == "abc123"
    assert tracking.previous_run_id(None, out) == "out456"  # the run directory's own run
    (old / tracking.RUN_FILE).unlink()
    assert tracking.previous_run_id(str(old / "checkpoints" / "last.ckpt"), out) == "out456"


def test_previous_run_id_of_a_fresh_or_damaged_run_is_none(tmp_path, caplog):
    assert tracking.previous_run_id(None, tmp_path) is None
    (tmp_path / tracking.RUN_FILE).write_text("{not json")
    assert tracking.previous_run_id(None, tmp_path) is None
    (tmp_path / tracking.RUN_FILE).write_text(json.dumps({"no_id": 1}))
    assert tracking.previous_run_id(None, tmp_path) is None
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="vaegan.training.tracking"):
        assert tracking.previous_run_id(str(tmp_path / "elsewhere" / "checkpoints" / "last.ckpt"), tmp_path / "x") is None
    [record] = caplog.records
    assert record.getMessage().startswith(f"W&B: no readable {tracking.RUN_FILE} beside ")
    assert record.getMessage().endswith("the resumed run starts a new W&B run")


def test_outside_a_multirun_there_is_no_hydra_job():
    assert tracking.hydra_job() == {}


def test_init_kwargs_of_a_single_run(tmp_path):
    cfg = cfg_with_wandb(tmp_path, project="p", entity="team", tags=["a", "b"], notes="n")
    out = tmp_path / "run"
    kwargs = tracking.init_kwargs(cfg, out, None)
    assert {k: v for k, v in kwargs.items() if k != "config"} == dict(
        project="p", entity="team", group=None, name="run", job_type="train", tags=["a", "b"], notes="n", dir=str(out),
        id=None, resume=None)
    assert kwargs["config"]["run_name"] == "quick" and kwargs["config"]["paths"]["output_dir"] == str(out)
    assert type(kwargs["tags"]) is list and "overrides" not in kwargs["config"]


def test_init_kwargs_of_a_resumed_named_run(tmp_path):
    cfg = cfg_with_wandb(tmp_path, name="mine", group="g")
    kwargs = tracking.init_kwargs(cfg, tmp_path / "run", "abc123")
    assert (kwargs["name"], kwargs["group"], kwargs["id"], kwargs["resume"]) == ("mine", "g", "abc123", "allow")


def test_init_kwargs_of_a_multirun_job(tmp_path, monkeypatch):
    job = {"group": "/sweeps/s1", "name": "3", "job_type": "sweep", "overrides": ["seed=1", "model.alpha=0.2"]}
    monkeypatch.setattr(tracking, "hydra_job", lambda: job)
    kwargs = tracking.init_kwargs(cfg_with_wandb(tmp_path), tmp_path / "run", None)
    assert (kwargs["group"], kwargs["name"], kwargs["job_type"]) == ("/sweeps/s1", "quick#3", "sweep")
    assert kwargs["config"]["overrides"] == ["seed=1", "model.alpha=0.2"]


def test_the_dashboard_plots_every_metric_against_the_iteration():
    calls = []
    run = SimpleNamespace(define_metric=lambda name, **kw: calls.append((name, kw)))
    tracking.define_summaries(run)
    assert calls[0] == ("trainer/global_step", {})
    assert calls[1] == ("*", {"step_metric": "trainer/global_step", "step_sync": True})
    summaries = {name: kw["summary"] for name, kw in calls[2:]}
    assert summaries == {"train/M": "min,last", "metrics/fid": "min,last", "metrics/kid_mean": "min,last",
                         "metrics/is_mean": "max,last", "val/kl_nats": "max,last", "val/psnr": "max,last",
                         "val/ssim": "max,last"}
    assert all(kw["step_metric"] == "trainer/global_step" for _, kw in calls[2:])


def test_the_controller_chart_collects_e_and_k_of_its_iterations():
    chart = tracking.ControllerChart(every_n_iterations=2)
    trainer = SimpleNamespace(callback_metrics={"train/e": torch.tensor(0.5), "train/k": torch.tensor(0.01)})
    module = SimpleNamespace(iteration=0)
    for it in (1, 2, 3, 4):
        module.iteration = it
        trainer.callback_metrics = {"train/e": torch.tensor(0.5 / it), "train/k": torch.tensor(0.01 * it)}
        chart.on_train_batch_end(trainer, module)
    module.iteration = 6
    trainer.callback_metrics = {"train/L_e": torch.tensor(1.0)}  # a VAE: no e, no k
    chart.on_train_batch_end(trainer, module)
    assert chart.history == [(2, pytest.approx(0.25), pytest.approx(0.02)), (4, pytest.approx(0.125), pytest.approx(0.04))]


def test_an_empty_chart_logs_nothing():
    logged = []
    tracking.log_equilibrium_chart(SimpleNamespace(log=logged.append), [])
    assert logged == []


def test_logger_wandb_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(ConfigError) as err:
        tracking.start_run(cfg_with_wandb(tmp_path), tmp_path / "run")
    assert str(err.value) == "logger=wandb needs the wandb package: pip install 'vaegan[wandb]' (or logger=default)"


def test_a_mode_that_is_no_mode_is_refused_before_wandb_starts(tmp_path, monkeypatch):
    started = []
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(init=lambda **kw: started.append(kw), Settings=dict))
    with pytest.raises(ConfigError, match="logger.wandb.mode='cloud': use one of auto, online, offline, disabled"):
        tracking.start_run(cfg_with_wandb(tmp_path, mode="cloud"), tmp_path / "run")
    assert started == []


def test_start_run_falls_back_to_offline_and_records_the_run(tmp_path, monkeypatch, caplog):
    """A fake wandb whose online start fails: the run starts offline, and wandb_run.json says so."""
    modes = []

    def init(mode, settings, **kwargs):
        modes.append(mode)
        if mode == "online":
            raise TimeoutError("timed out after 15 s\nmore")
        return SimpleNamespace(id="off1", offline=True, define_metric=lambda *a, **k: None)

    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(init=init, Settings=lambda **kw: kw))
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="vaegan.training.tracking"):
        run = tracking.start_run(cfg_with_wandb(tmp_path, mode="online", project="p"), out)
    assert run.id == "off1" and modes == ["online", "offline"]
    [record] = caplog.records
    assert record.getMessage() == ("W&B: could not start online within 15 s (TimeoutError: timed out after 15 s); "
                                   "logging offline instead")
    assert json.loads((out / tracking.RUN_FILE).read_text()) == {"id": "off1", "project": "p", "entity": None,
                                                                 "group": None, "mode": "offline"}
