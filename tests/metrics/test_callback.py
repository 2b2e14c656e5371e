"""In-training evaluation (``callbacks.evaluation``): FID in metrics.csv on the right rows, best.ckpt by
FID, no Inception inside checkpoints, state across resumes, an unchanged training trajectory, DDP.

Two tiny runs are trained per module (4 iterations on the digits at 16x16, the same seed), one
evaluating every 2 iterations with conftest's TorchScript stand-in Inception, one without.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, ROOT, TINY, free_port
from vaegan.config import register_configs
from vaegan.metrics.callback import EvaluationCallback

ITERATIONS = 4
EVERY = 2
STEPS_PER_ITERATION = 3  # the full model's three optimizers


def compose_train(overrides: list[str], out: Path):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides + [f"paths.output_dir={out}"])


def metrics_overrides(extractor: Path, cache: Path) -> list[str]:
    return [f"metrics.feature_extractor={extractor}", f"metrics.cache_dir={cache}", "metrics.num_reference=64",
            "metrics.kid_subset_size=32", "metrics.kid_subsets=10", "metrics.batch_size=64",
            "callbacks.evaluation.num_samples=32"]


@pytest.fixture(scope="module")
def refcache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("refcache")


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, tiny_extractor_file, refcache) -> tuple[Path, dict]:
    """4 iterations evaluating every 2: the run directory and what train() returned."""
    from vaegan.training.train import train

    torch.set_grad_enabled(True)
    out = tmp_path_factory.mktemp("evaluated")
    cfg = compose_train(TINY + [f"iterations={ITERATIONS}", f"callbacks.evaluation.every_n_iterations={EVERY}",
                                *metrics_overrides(tiny_extractor_file, refcache)], out)
    return out, train(cfg)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, tiny_extractor_file, refcache) -> Path:
    """The same run without in-training evaluation."""
    from vaegan.training.train import train

    torch.set_grad_enabled(True)
    out = tmp_path_factory.mktemp("plain")
    train(compose_train(TINY + [f"iterations={ITERATIONS}", *metrics_overrides(tiny_extractor_file, refcache)], out))
    return out


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def evaluation_state(ckpt: dict) -> dict:
    states = [v for k, v in ckpt["callbacks"].items() if "EvaluationCallback" in k]
    assert len(states) == 1, list(ckpt["callbacks"])
    return states[0]


def csv_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------ logging and best.ckpt
@pytest.mark.slow
def test_fid_is_logged_once_per_evaluation_on_its_iterations_row(evaluated_run):
    run, result = evaluated_run
    rows = csv_rows(run)
    assert "metrics/fid" in rows[0] and "metrics/kid_mean" in rows[0] and "metrics/kid_std" in rows[0]
    with_fid = [row for row in rows if row["metrics/fid"] != ""]
    # Lightning's row for iteration i is step i - 1: evaluations after iterations 2 and 4
    assert [int(row["step"]) for row in with_fid] == [EVERY - 1, 2 * EVERY - 1]
    for row in with_fid:
        assert math.isfinite(float(row["metrics/fid"])) and float(row["metrics/fid"]) >= 0
        assert row["metrics/kid_mean"] != "" and row["metrics/kid_std"] != ""
    # the training rows carry no (repeated) FID
    training = [row for row in rows if row["train/L_d"] != ""]
    assert [int(row["step"]) for row in training] == list(range(ITERATIONS))
    assert all(row["metrics/fid"] == "" for row in training)

    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert result["metrics/fid"] == pytest.approx(float(with_fid[-1]["metrics/fid"]), rel=1e-6)
    assert {"metrics/kid_mean", "metrics/kid_std", "train/L_d"} <= set(result)


@pytest.mark.slow
def test_best_checkpoint_is_the_lowest_fid_so_far(evaluated_run):
    run, _ = evaluated_run
    fids = {int(row["step"]) + 1: float(row["metrics/fid"]) for row in csv_rows(run) if row["metrics/fid"] != ""}
    best_iteration = min(fids, key=fids.get)
    best = load(run / "checkpoints" / "best.ckpt")
    assert best["global_step"] == best_iteration * STEPS_PER_ITERATION
    assert evaluation_state(best) == {"best_fid": pytest.approx(fids[best_iteration], rel=1e-6),
                                      "best_iteration": best_iteration}
    last = load(run / "checkpoints" / "last.ckpt")
    assert evaluation_state(last) == evaluation_state(best)  # last.ckpt knows the best FID so far


@pytest.mark.slow
def test_checkpoints_hold_no_inception(evaluated_run, plain_run):
    run, _ = evaluated_run
    plain = load(plain_run / "checkpoints" / "last.ckpt")
    for name in ("last.ckpt", "best.ckpt"):
        ckpt = load(run / "checkpoints" / name)  # weights_only: nothing of the extractor is pickled either
        assert not [k for k in ckpt["state_dict"] if "extractor" in k or "net.conv" in k or "inception" in k.lower()]
        assert set(ckpt["state_dict"]) == set(plain["state_dict"])
        assert evaluation_state(ckpt).keys() == {"best_fid", "best_iteration"}
        size, plain_size = (run / "checkpoints" / name).stat().st_size, (plain_run / "checkpoints" / "last.ckpt").stat().st_size
        assert abs(size - plain_size) < 4096, (name, size, plain_size)
    assert not [k for k in plain["callbacks"] if "EvaluationCallback" in k]


@pytest.mark.slow
def test_evaluation_does_not_change_the_training_trajectory(evaluated_run, plain_run):
    run, _ = evaluated_run
    with_eval = load(run / "checkpoints" / "last.ckpt")
    without = load(plain_run / "checkpoints" / "last.ckpt")
    assert with_eval["global_step"] == without["global_step"] == ITERATIONS * STEPS_PER_ITERATION
    generator = [k for k in without["state_dict"] if k.startswith("generator.")]
    assert generator
    for key, value in without["state_dict"].items():  # the generator's, and every other network's
        assert torch.equal(with_eval["state_dict"][key], value), key
    for a, b in zip(with_eval["optimizer_states"], without["optimizer_states"]):
        for sa, sb in zip(a["state"].values(), b["state"].values()):
            assert all(torch.equal(sa[k], sb[k]) for k in ("exp_avg", "exp_avg_sq"))
    k = [row["train/k"] for row in csv_rows(run) if row["train/k"] != ""]
    assert k == [row["train/k"] for row in csv_rows(plain_run) if row["train/k"] != ""]


# ------------------------------------------------------------------------------ keep_best, with fakes
class FakeStrategy:
    def broadcast(self, obj, src=0):
        return obj

    def barrier(self, name=None):
        pass


class FakeLogger:
    def __init__(self):
        self.logged: list[tuple[dict, int]] = []

    def log_metrics(self, metrics, step):
        self.logged.append((dict(metrics), step))


class FakeTrainer:
    """What EvaluationCallback and save_checkpoint_atomically use of a Trainer, on one process."""

    is_global_zero = True

    def __init__(self, module):
        self.module, self.strategy, self.loggers = module, FakeStrategy(), [FakeLogger()]
        self.callback_metrics: dict = {}
        self.datamodule = None
        self.callback: EvaluationCallback | None = None

    def save_checkpoint(self, path, weights_only=False):
        torch.save({"global_step": self.module.global_step, "callbacks": {"EvaluationCallback": self.callback.state_dict()}},
                   path)


def fake_module(iteration: int) -> SimpleNamespace:
    return SimpleNamespace(iteration=iteration, global_step=iteration * STEPS_PER_ITERATION, device=torch.device("cpu"),
                           generator=torch.nn.Linear(2, 2), hparams=SimpleNamespace(latent_dim=2))


def fake_evaluations(monkeypatch, fids: list[float]) -> list[dict]:
    """Replaces evaluate_generator by one returning the FIDs of ``fids`` in turn; returns its calls."""
    calls: list[dict] = []

    def fake(generator, latent_dim, dm, extractor, **kwargs):
        calls.append(kwargs)
        fid = fids[len(calls) - 1]
        protocol = SimpleNamespace(num_samples=kwargs.get("num_samples", 0), key=lambda: "fake-protocol",
                                   lines=lambda: ["fake: protocol"], as_dict=lambda: {})
        return SimpleNamespace(values={"fid": fid, "kid_mean": fid / 10}, reference_values={}, protocol=protocol,
                               seconds=0.0)

    monkeypatch.setattr("vaegan.metrics.callback.evaluate_generator", fake)
    return calls


def drive(callback: EvaluationCallback, iterations: range) -> list[tuple[int, float | None, int | None, int | None]]:
    """Runs the callback's batch-end hook for ``iterations``; per iteration: FID logged (or None) and
    best.ckpt's global_step and inode (None while absent)."""
    best = callback.dirpath / "best.ckpt"
    trace = []
    for it in iterations:
        module = fake_module(it)
        trainer = FakeTrainer(module)
        trainer.callback = callback
        callback.on_train_batch_end(trainer, module, None, None, 0)
        fid = trainer.callback_metrics.get("metrics/fid")
        assert [step for _, step in trainer.loggers[0].logged] == ([it - 1] if fid is not None else [])
        trace.append((it, None if fid is None else float(fid), load(best)["global_step"] if best.exists() else None,
                      best.stat().st_ino if best.exists() else None))
    return trace


def test_best_ckpt_is_rewritten_only_when_fid_improves(monkeypatch, tmp_path):
    calls = fake_evaluations(monkeypatch, [5.0, 3.0, 4.0])
    callback = EvaluationCallback(SimpleNamespace(network=torch.nn.Identity()), tmp_path, every_n_iterations=2,
                                  keep_best=True, num_samples=10, device="cpu", split="train")
    trace = drive(callback, range(1, 7))

    assert len(calls) == 3 and all("device" in c and c["num_samples"] == 10 for c in calls)
    assert [fid for _, fid, _, _ in trace] == [None, 5.0, None, 3.0, None, 4.0]
    assert [step for _, _, step, _ in trace] == [None, 6, 6, 12, 12, 12]  # written at iterations 2 and 4 only
    inodes = [ino for _, _, _, ino in trace]
    assert inodes[1] != inodes[3] and inodes[3] == inodes[4] == inodes[5]  # untouched by the worse FID at 6
    assert callback.state_dict() == {"best_fid": 3.0, "best_iteration": 4}
    assert load(tmp_path / "best.ckpt")["callbacks"]["EvaluationCallback"] == {"best_fid": 3.0, "best_iteration": 4}
    assert not list(tmp_path.glob(".*.tmp"))

    restored = EvaluationCallback(SimpleNamespace(network=torch.nn.Identity()), tmp_path, every_n_iterations=2)
    restored.load_state_dict(callback.state_dict())
    assert (restored.best_fid, restored.best_iteration) == (3.0, 4)


def test_keep_best_false_writes_no_best_ckpt(monkeypatch, tmp_path):
    fake_evaluations(monkeypatch, [5.0, 3.0])
    callback = EvaluationCallback(SimpleNamespace(network=torch.nn.Identity()), tmp_path, every_n_iterations=1,
                                  keep_best=False)
    trace = drive(callback, range(1, 3))
    assert [fid for _, fid, _, _ in trace] == [5.0, 3.0]
    assert not (tmp_path / "best.ckpt").exists()


def test_every_zero_never_evaluates(monkeypatch, tmp_path):
    calls = fake_evaluations(monkeypatch, [])
    drive(EvaluationCallback(SimpleNamespace(network=torch.nn.Identity()), tmp_path, every_n_iterations=0), range(1, 4))
    assert calls == []


# ------------------------------------------------------------------------------ resume
@pytest.mark.slow
def test_best_fid_survives_a_resume(evaluated_run, tmp_path, monkeypatch, tiny_extractor_file, refcache):
    """Resumed from last.ckpt, a worse FID must not replace best.ckpt (as it would if the callback
    had restarted from best_fid = inf), and a better one still must."""
    import vaegan.metrics.callback as callback_module
    from vaegan.training.train import train

    source, _ = evaluated_run
    run = Path(shutil.copytree(source, tmp_path / "run"))  # resumed in its own directory, as users do
    saved = evaluation_state(load(run / "checkpoints" / "last.ckpt"))
    assert math.isfinite(saved["best_fid"]) and saved["best_iteration"] in (EVERY, 2 * EVERY)
    calls = fake_evaluations(monkeypatch, [saved["best_fid"] + 1.0, saved["best_fid"] / 2])
    states, writes = [], []
    save = callback_module.save_checkpoint_atomically

    def spy(trainer, path):
        writes.append((trainer.lightning_module.iteration, path.name))
        save(trainer, path)

    monkeypatch.setattr(callback_module, "save_checkpoint_atomically", spy)
    load_state = EvaluationCallback.load_state_dict

    def spy_load(self, state):
        states.append(dict(state))
        load_state(self, state)

    monkeypatch.setattr(EvaluationCallback, "load_state_dict", spy_load)

    cfg = compose_train(TINY + ["iterations=6", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                                "callbacks.evaluation.every_n_iterations=1",
                                *metrics_overrides(tiny_extractor_file, refcache)], run)
    train(cfg)

    assert states == [saved]
    assert len(calls) == 2  # iterations 5 and 6
    fids = {int(row["step"]) + 1: float(row["metrics/fid"]) for row in csv_rows(run) if row["metrics/fid"] != ""}
    assert fids == {5: pytest.approx(saved["best_fid"] + 1.0), 6: pytest.approx(saved["best_fid"] / 2)}
    assert writes == [(6, "best.ckpt")]  # not at 5, whose FID is worse than the saved best
    best = load(run / "checkpoints" / "best.ckpt")
    assert best["global_step"] == 6 * STEPS_PER_ITERATION
    assert evaluation_state(best) == {"best_fid": pytest.approx(saved["best_fid"] / 2), "best_iteration": 6}
    assert evaluation_state(load(run / "checkpoints" / "last.ckpt")) == evaluation_state(best)


# ------------------------------------------------------------------------------ DDP
@pytest.mark.slow
def test_ddp_evaluates_on_rank_zero_and_shares_the_values(tmp_path, tiny_extractor_file):
    out = tmp_path / "ddp"
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               str(ROOT / "tests" / "ddp_evaluation.py"), str(out), str(tiny_extractor_file)]
    start = time.monotonic()
    try:
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"DDP evaluation did not finish within 240 s (deadlock?): {str(err.stderr)[-2000:]}")
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-4000:])
    assert time.monotonic() - start < 240

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]["fids"]) == 2  # after iterations 2 and 4
    assert all(math.isfinite(f) for f in ranks[0]["fids"])
    assert ranks[0]["fids"] == ranks[1]["fids"]  # every rank logs the same values
    assert ranks[0]["evaluate_calls"] == 2 and ranks[1]["evaluate_calls"] == 0  # only rank 0 evaluates
    assert ranks[0]["best_fid"] == ranks[1]["best_fid"] == pytest.approx(min(ranks[0]["fids"]), rel=1e-6)
    assert ranks[0]["best_iteration"] == ranks[1]["best_iteration"]  # every rank decides the same
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert not list((out / "checkpoints").glob(".*.tmp"))
