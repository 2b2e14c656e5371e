"""Runs that survive anything: SIGKILL at random moments then resume gives bit-identical weights;
SIGTERM writes last.ckpt and exits; a requeue handler (submitit's) runs after the checkpoint."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import ROOT, TINY
from vaegan.training.callbacks import Interrupted
from vaegan.training.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

ITERATIONS = 60
RUN = [*TINY, f"iterations={ITERATIONS}", "callbacks.checkpoint.every_n_iterations=5", "trainer.deterministic=true",
       "callbacks.images.every_n_iterations=20"]


def start(*overrides: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "vaegan.run", *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120, newer_than: float = 0.0) -> None:
    """Until ``path`` exists (and was written after ``newer_than``, an mtime): training is under way."""
    deadline = time.monotonic() + timeout
    while not path.exists() or path.stat().st_mtime_ns <= newer_than:
        assert proc.poll() is None, f"the run ended before {path} appeared: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def training_state(path: Path) -> dict:
    ckpt = torch.load(path, weights_only=True)
    return {"global_step": ckpt["global_step"], "state_dict": ckpt["state_dict"],
            "optimizers": ckpt["optimizer_states"], "callbacks": ckpt["callbacks"]}


def assert_identical(a, b, where: str = "") -> None:
    """Equal structures whose tensors are bit for bit equal."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """last.ckpt of RUN trained straight through, in a process of its own (as the interrupted runs
    are): the one run that every interrupted and resumed run of this module must match bit for bit."""
    folder = tmp_path_factory.mktemp("reference")
    code, err = finish(start(*RUN, f"hydra.run.dir={folder}"))
    assert code == 0, err[-2000:]
    return folder / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, reference):
    killed = tmp_path / "killed"
    rng = random.Random(int(time.time()))  # a new set of kill points each time; printed on failure
    last = killed / "checkpoints" / "last.ckpt"
    kills = []
    for attempt in range(2):
        # Two kills: of a fresh run, then of a run resumed with ckpt_path=, as a user resuming
        # elsewhere would; the last command resumes from the run directory's own last.ckpt, as the
        # same command does when it finds one.
        extra = [f"ckpt_path={last}"] if attempt == 1 else []
        before = torch.load(last, weights_only=True)["global_step"] // 3 if attempt else 0
        written = last.stat().st_mtime_ns if attempt else 0
        proc = start(*RUN, f"hydra.run.dir={killed}", *extra)
        wait_for(last, proc, newer_than=written)  # the resumed run is training again
        # About a checkpoint interval or more (5 iterations, ~0.2 s here): anywhere in the save cycle, writes included.
        delay = rng.uniform(0.05, 0.3)
        time.sleep(delay)
        proc.kill()  # SIGKILL: no handler, no cleanup, possibly in the middle of a checkpoint write
        proc.wait()
        kills.append((round(delay, 2), before, torch.load(last, weights_only=True)["global_step"] // 3))
    code, err = finish(start(*RUN, f"hydra.run.dir={killed}"))
    assert code == 0, err[-2000:]
    assert "dataloader is not resumable" not in err
    progress = [k[2] for k in kills]
    assert all(saved > start for _, start, saved in kills), f"kills (delay s, from, saved): {kills}"
    assert progress[-1] < ITERATIONS, f"kills (delay s, from, saved): {kills}"
    assert_identical(training_state(last), training_state(reference), f"kills {kills}")
    assert not list((killed / "checkpoints").glob(".*.tmp"))  # no half-written file left behind


@pytest.mark.slow
def test_sigterm_writes_last_ckpt_and_exits(compose_cfg, tmp_path):
    long_run = [*TINY, "iterations=100000", "callbacks.checkpoint.every_n_iterations=20", f"hydra.run.dir={tmp_path}"]
    proc = start(*long_run)
    last = tmp_path / "checkpoints" / "last.ckpt"
    wait_for(last, proc)
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc, timeout=30)
    seconds = time.monotonic() - sent
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert seconds < 15
    iteration = torch.load(last, weights_only=True)["global_step"] // 3
    assert f"Interrupted: stopped by SIGTERM after iteration {iteration}" in err
    assert iteration > 20  # saved where it stopped, not at the last periodic checkpoint
    # It continues from there, to a new end (here, in this process: the command line's resumption
    # of a signal's last.ckpt is test_ctrl_c_saves_like_sigterm_and_the_run_resumes_bit_identical's).
    train(compose_cfg([*long_run[:-1], f"iterations={iteration + 5}", f"ckpt_path={last}"], tmp_path))
    assert torch.load(last, weights_only=True)["global_step"] == 3 * (iteration + 5)


class SignalAt(L.Callback):
    """Sends ``signum`` to this process at the start of iteration ``iteration`` (1-based)."""

    def __init__(self, signum: int, iteration: int):
        self.signum, self.iteration = signum, iteration

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.iteration + 1 == self.iteration:
            os.kill(os.getpid(), self.signum)


def test_requeue_signal_saves_then_calls_the_handler_it_found(compose_cfg, tmp_path, monkeypatch):
    """As under submitit, whose SIGUSR2 handler requeues the job: it runs once last.ckpt holds the
    iteration the signal stopped."""
    import vaegan.training.train as train_module

    calls = []
    last = tmp_path / "checkpoints" / "last.ckpt"

    def requeue(signum, frame):
        calls.append((signum, torch.load(last, weights_only=True)["global_step"] // 3))

    build = train_module.build_callbacks
    monkeypatch.setattr(train_module, "build_callbacks", lambda *a, **k: build(*a, **k) + [SignalAt(signal.SIGUSR2, 7)])
    original = signal.signal(signal.SIGUSR2, requeue)
    try:
        cfg = compose_cfg([*TINY, "iterations=50", "callbacks.checkpoint.every_n_iterations=5"], tmp_path)
        with pytest.raises(Interrupted, match="stopped by SIGUSR2 after iteration 7"):
            train(cfg)
    finally:
        signal.signal(signal.SIGUSR2, original)
    assert calls == [(signal.SIGUSR2, 7)]


@pytest.mark.slow
def test_ctrl_c_saves_like_sigterm_and_the_run_resumes_bit_identical(tmp_path, reference):
    stopped = tmp_path / "stopped"
    proc = start(*RUN, f"hydra.run.dir={stopped}")
    last = stopped / "checkpoints" / "last.ckpt"
    wait_for(last, proc)
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc, timeout=30)
    iteration = torch.load(last, weights_only=True)["global_step"] // 3
    line = (f"Interrupted: stopped by SIGINT after iteration {iteration}, saved in {last}; to continue, rerun the "
            f"same command with ckpt_path={last}")
    assert code == 128 + signal.SIGINT and err.strip().splitlines()[-1] == line, err[-2000:]
    assert (stopped / "run.log").read_text().strip().splitlines()[-1] == line
    assert 0 < iteration < ITERATIONS
    code, err = finish(start(*RUN, f"hydra.run.dir={stopped}"))
    assert code == 0, err[-2000:]
    assert_identical(training_state(last), training_state(reference))


@pytest.mark.slow
def test_a_second_ctrl_c_exits_at_once_naming_what_is_not_saved(tmp_path):
    slow = ("import sys, time, runpy; from vaegan.models.module import VAEGANModule; step = VAEGANModule.training_step; "
            "VAEGANModule.training_step = lambda self, *a: (time.sleep(0.5), step(self, *a))[1]; "  # iterations of 0.5 s
            "sys.argv = ['vaegan.run', *sys.argv[1:]]; runpy.run_module('vaegan.run', run_name='__main__')")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", slow, *TINY, "iterations=100000", f"hydra.run.dir={tmp_path}",
                             "callbacks.checkpoint.every_n_iterations=2"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = tmp_path / "checkpoints" / "last.ckpt"
    wait_for(last, proc)
    written = last.stat().st_mtime_ns
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)  # well inside the iteration the first Ctrl-C waits for
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc, timeout=30)
    lines = err.strip().splitlines()
    assert code == 128 + signal.SIGINT, err[-2000:]
    assert "press Ctrl-C again to exit at once without saving" in lines[-2]
    assert lines[-1].startswith("Interrupted: second Ctrl-C, exited without saving: "), lines[-1]
    saved = torch.load(last, weights_only=True)["global_step"] // 3
    assert f"{last} holds iteration {saved}" in lines[-1] and last.stat().st_mtime_ns == written
    assert (tmp_path / "run.log").read_text().strip().splitlines()[-1] == lines[-1]


@pytest.mark.parametrize("delay", [0.1, 1.0])  # importing Hydra, importing torch and Lightning
def test_ctrl_c_before_training_starts(tmp_path, delay):
    proc = start(*TINY, "iterations=100000", f"hydra.run.dir={tmp_path}")
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc, timeout=30)
    assert code == 128 + signal.SIGINT
    assert err.strip().splitlines()[-1] == "Interrupted: Ctrl-C before training started; nothing was trained or saved"
