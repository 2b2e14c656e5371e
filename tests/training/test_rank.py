"""Tests of ``vaegan.training.rank``: a rank started by ConfigLauncher trains the run of a resolved
config.yaml as ``python -m vaegan.run`` would (here with a stand-in ``train``; the real DDP launch
is in test_distributed.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import ROOT, TINY
from vaegan.training import rank


def write_config(compose_cfg, tmp_path, *extra: str) -> Path:
    cfg = compose_cfg([*TINY, *extra], tmp_path / "run")
    path = tmp_path / "config.yaml"
    OmegaConf.save(cfg, path, resolve=True)
    return path


def test_a_rank_trains_the_merged_config(compose_cfg, tmp_path, monkeypatch):
    import vaegan.training.train as train_module

    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg: seen.append(cfg) or {"train/M": 0.5})
    path = write_config(compose_cfg, tmp_path, "iterations=7")
    rank.main(str(path))
    [cfg] = seen
    assert cfg.iterations == 7 and cfg.model.width == 4 and cfg.paths.output_dir == str(tmp_path / "run")
    assert OmegaConf.get_type(cfg) is not None and cfg.data.name == "digits"


def test_a_config_file_missing_keys_gets_the_schema_defaults(tmp_path, monkeypatch):
    import vaegan.training.train as train_module

    seen = []
    monkeypatch.setattr(train_module, "train", lambda cfg: seen.append(cfg) or {})
    path = tmp_path / "config.yaml"
    path.write_text(f"iterations: 3\nmodel:\n  width: 4\npaths:\n  output_dir: {tmp_path / 'run'}\n")
    rank.main(str(path))
    [cfg] = seen
    assert (cfg.iterations, cfg.model.width, cfg.model.latent_dim, cfg.data.batch_size) == (3, 4, 64, 16)


def test_a_bad_config_fails_with_the_runs_one_line(compose_cfg, tmp_path):
    path = write_config(compose_cfg, tmp_path, "model.width=0")
    with pytest.raises(SystemExit) as exit_:
        rank.main(str(path))
    assert exit_.value.code == "Config error: model.width=0: must be positive"


def test_the_module_entry_point_exits_with_the_line(compose_cfg, tmp_path):
    path = write_config(compose_cfg, tmp_path, "data.batch_size=0")
    done = subprocess.run([sys.executable, "-m", "vaegan.training.rank", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "Config error: data.batch_size=0: must be positive"
