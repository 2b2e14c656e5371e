"""BEGAN's learning-rate decay (``model.optimizer.lr_decay``): step and plateau modes, stepped by the
training step under manual optimization, and exact across a resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tests.conftest import TINY
from tests.training.test_resume import assert_identical
from vaegan.training.lr_decay import LearningRateDecay

pytestmark = pytest.mark.usefixtures("one_thread")
LR = 1e-3  # TINY's


def fake_module(decay: LearningRateDecay, lr: float = 1.0):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    schedulers = decay.schedulers([opt])
    return SimpleNamespace(lr_schedulers=lambda: schedulers[0]), opt


def test_plateau_halves_when_a_windows_mean_m_is_not_below_the_best():
    decay = LearningRateDecay("plateau", factor=0.5, every_n_iterations=2)
    module, opt = fake_module(decay)
    lrs = []
    for iteration, M in enumerate([1.0, 1.0, 0.6, 0.4, 0.6, 0.5, 0.3, 0.3, 0.3, 0.3], start=1):
        decay.step(module, iteration, torch.tensor(M))
        lrs.append(opt.param_groups[0]["lr"])
    # window means 1.0, 0.5, 0.55 (not below 0.5: halve), 0.3, 0.3 (not below: halve)
    assert lrs == [1.0] * 5 + [0.5] * 4 + [0.25]


def test_plateau_window_survives_a_state_round_trip():
    decay = LearningRateDecay("plateau", every_n_iterations=4)
    module, _ = fake_module(decay)
    for iteration in (1, 2):
        decay.step(module, iteration, torch.tensor(0.25))
    restored = LearningRateDecay("plateau", every_n_iterations=4)
    restored.load_state_dict(decay.state_dict())
    assert restored.state_dict() == {"window_sum": 0.5}


def test_plateau_needs_m():
    decay = LearningRateDecay("plateau", every_n_iterations=2)
    module, _ = fake_module(decay)
    with pytest.raises(ValueError, match="needs a discriminator"):
        decay.step(module, 1, None)
    with pytest.raises(ValueError, match="null, step or plateau"):
        LearningRateDecay("cosine")


def lrs_of(out) -> dict[int, float]:
    import csv

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    return {int(r["step"]) + 1: float(r["train/lr_generator"]) for r in rows if r.get("train/lr_generator")}


STEP = [*TINY, "model.optimizer.lr_decay.mode=step", "model.optimizer.lr_decay.every_n_iterations=3"]


def test_step_mode_halves_every_n_iterations_in_a_real_run(compose_cfg, tmp_path):
    from vaegan.training.train import train

    train(compose_cfg([*STEP, "iterations=7"], tmp_path))
    lrs = lrs_of(tmp_path)
    # iterations 1-3 train at LR, 4-6 at LR/2, 7 at LR/4; train/lr_* of iteration i is logged after its
    # decay step (the rate of iteration i + 1), from iteration 2 on (TrainingStats starts its clock at 1)
    assert lrs == pytest.approx({2: LR, 3: LR / 2, 4: LR / 2, 5: LR / 2, 6: LR / 4, 7: LR / 4})


@pytest.mark.slow
def test_step_mode_resumes_exactly(compose_cfg, tmp_path):
    from vaegan.training.train import train

    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    train(compose_cfg([*STEP, "iterations=7", "trainer.deterministic=true"], straight))
    train(compose_cfg([*STEP, "iterations=4", "trainer.deterministic=true"], pieces))
    train(compose_cfg([*STEP, "iterations=7", "trainer.deterministic=true"], pieces))  # resumes from its last.ckpt
    a = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(pieces / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(a["lr_schedulers"]) == 3
    assert_identical(a["lr_schedulers"], b["lr_schedulers"])
    assert_identical(a["state_dict"], b["state_dict"])
    assert a["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(LR / 4)
