"""Tests of ``vaegan.training.callbacks`` with stand-in trainers and modules (no training): when
checkpoints and pictures are written and under which names, what a signal does, the messages of an
interrupted run, what the progress bar shows. Trainings that use these callbacks are in
test_train.py, test_resume.py and test_lr_decay.py."""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from vaegan.training import callbacks
from vaegan.training.callbacks import (
    ImageLogger, Interrupted, IterationCheckpoint, IterationProgressBar, PreemptionCheckpoint, TrainingStats, log_picture,
)


class FakeTrainer:
    """What the callbacks use of a Trainer; ``save_checkpoint`` writes the iteration it was called at."""

    def __init__(self, module, global_zero: bool = True):
        self.module, self.is_global_zero = module, global_zero
        self.should_stop, self.loggers, self.callback_metrics, self.optimizers = False, [], {}, []
        self.saved: list[int] = []
        self.strategy = SimpleNamespace(barrier=lambda name=None: None)

    def save_checkpoint(self, path, weights_only=False):
        self.saved.append(self.module.iteration)
        Path(path).write_text(f"iteration {self.module.iteration}")


class FakeModule:
    def __init__(self, iteration: int = 0, log_every: int = 1):
        self.iteration, self.log_every, self.device = iteration, log_every, torch.device("cpu")
        self.logged: list[dict] = []

    def is_logging_iteration(self) -> bool:
        return self.iteration % self.log_every == 0

    def log_dict(self, values: dict) -> None:
        self.logged.append(values)


def run_batches(callback, trainer, module, iterations, outputs=None):
    for it in iterations:
        module.iteration = it
        callback.on_train_batch_end(trainer, module, outputs, None, 0)


# ------------------------------------------------------------------------------ IterationCheckpoint
def test_last_ckpt_every_n_iterations_and_kept_copies(tmp_path):
    module = FakeModule()
    trainer = FakeTrainer(module)
    ckpt = IterationCheckpoint(tmp_path, every_n_iterations=3, keep_every_n_iterations=4)
    run_batches(ckpt, trainer, module, range(1, 10))
    assert trainer.saved == [3, 4, 6, 8, 9]
    assert (tmp_path / "last.ckpt").read_text() == "iteration 9"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iter_0000004.ckpt", "iter_0000008.ckpt", "last.ckpt"]
    assert (tmp_path / "iter_0000008.ckpt").read_text() == "iteration 8"
    ckpt.on_train_end(trainer, module)  # iteration 9 is saved already
    assert trainer.saved == [3, 4, 6, 8, 9]
    module.iteration = 10
    ckpt.on_train_end(trainer, module)
    assert trainer.saved[-1] == 10 and ckpt.saved_at == 10


def test_a_skipped_iteration_keeps_the_last_good_checkpoint(tmp_path):
    module = FakeModule()
    trainer = FakeTrainer(module)
    ckpt = IterationCheckpoint(tmp_path, every_n_iterations=2, keep_every_n_iterations=2)
    run_batches(ckpt, trainer, module, [2])
    run_batches(ckpt, trainer, module, [4], outputs={"stepped": torch.tensor(False)})
    run_batches(ckpt, trainer, module, [6], outputs={"stepped": True})
    assert trainer.saved == [2, 6] and not (tmp_path / "iter_0000004.ckpt").exists()


def test_only_rank_zero_keeps_copies(tmp_path):
    module = FakeModule()
    trainer = FakeTrainer(module, global_zero=False)
    ckpt = IterationCheckpoint(tmp_path, every_n_iterations=100, keep_every_n_iterations=2)
    run_batches(ckpt, trainer, module, [2])
    assert trainer.saved == [2]  # every rank takes part in saving
    assert list(tmp_path.glob("iter_*")) == [] and not (tmp_path / "last.ckpt").exists()  # rank 0 renames


# ------------------------------------------------------------------------------ signals
def test_interrupted_says_how_to_continue():
    err = Interrupted(signal.SIGUSR1, 42, Path("/runs/a/checkpoints/last.ckpt"))
    assert str(err) == ("stopped by SIGUSR1 after iteration 42, saved in /runs/a/checkpoints/last.ckpt; to continue, "
                        "rerun the same command with ckpt_path=/runs/a/checkpoints/last.ckpt")
    assert (err.signum, err.iteration) == (signal.SIGUSR1, 42)


@pytest.fixture
def preemption(tmp_path):
    """A PreemptionCheckpoint on SIGUSR2 only, its handlers installed; restored afterwards."""
    before = signal.getsignal(signal.SIGUSR2)
    module = FakeModule()
    trainer = FakeTrainer(module)
    callback = PreemptionCheckpoint(IterationCheckpoint(tmp_path, every_n_iterations=1000), signals=("SIGUSR2",))
    callback.setup(trainer, module, "fit")
    yield callback, trainer, module
    callback.teardown(trainer, module, "fit")
    signal.signal(signal.SIGUSR2, before)


def test_a_signal_stops_after_the_iteration_with_a_checkpoint(preemption, tmp_path):
    callback, trainer, module = preemption
    assert signal.getsignal(signal.SIGUSR2) == callback._handle
    run_batches(callback, trainer, module, [1, 2])
    assert trainer.saved == [] and not trainer.should_stop
    signal.raise_signal(signal.SIGUSR2)  # only sets a flag
    assert callback.received == signal.SIGUSR2 and trainer.saved == []
    run_batches(callback, trainer, module, [3])
    assert trainer.saved == [3] and trainer.should_stop
    assert (tmp_path / "last.ckpt").read_text() == "iteration 3"
    assert isinstance(callback.interrupted, Interrupted) and callback.interrupted.iteration == 3
    assert callback.interrupted.signum == signal.SIGUSR2 and callback.interrupted.path == tmp_path / "last.ckpt"
    assert signal.getsignal(signal.SIGUSR2) != callback._handle  # the previous handler is back


def test_the_handler_the_signal_had_before_runs_after_the_checkpoint(tmp_path):
    calls = []
    before = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append((signum, frame)))
    try:
        module = FakeModule(iteration=5)
        trainer = FakeTrainer(module)
        callback = PreemptionCheckpoint(IterationCheckpoint(tmp_path), signals=("SIGUSR2",))
        callback.setup(trainer, module, "fit")
        callback._handle(signal.SIGUSR2, None)
        assert calls == []
        callback.on_train_batch_end(trainer, module, None, None, 0)
        assert trainer.saved == [5] and calls == [(signal.SIGUSR2, None)]  # e.g. submitit's requeue
    finally:
        signal.signal(signal.SIGUSR2, before)


@pytest.mark.parametrize("start, saved_at, now, lost", [
    (0, -1, 7, "none of its 7 iterations are saved (no checkpoint was written yet)"),
    (0, 4, 7, "iterations 5-7 are not saved; {last} holds iteration 4"),
    (10, -1, 12, "iterations 11-12 are not saved; {last} holds iteration 10"),  # resumed at 10
    (0, 7, 7, "only the iteration in progress is lost; {last} holds iteration 7, the last completed one"),
])
def test_a_second_ctrl_c_exits_at_once_naming_what_is_lost(tmp_path, monkeypatch, start, saved_at, now, lost):
    lines, exits = [], []
    monkeypatch.setattr(callbacks, "final_line", lines.append)
    monkeypatch.setattr(callbacks.os, "_exit", exits.append)
    monkeypatch.setattr(callbacks.run_lock, "release_all", lambda: lines.append("released"))
    module = FakeModule(iteration=start)
    callback = PreemptionCheckpoint(IterationCheckpoint(tmp_path), signals=("SIGUSR2",))
    callback._module = module
    callback.on_train_start(None, module)
    callback.checkpoint.saved_at = saved_at
    module.iteration = now
    callback._handle(signal.SIGINT, None)
    assert exits == [] and callback.received == signal.SIGINT  # the first one only asks to stop
    callback._handle(signal.SIGINT, None)
    callback._restore()
    assert lines == [f"Interrupted: second Ctrl-C, exited without saving: {lost.format(last=tmp_path / 'last.ckpt')}",
                     "released"]
    assert exits == [128 + signal.SIGINT]


def test_the_first_ctrl_c_says_what_happens(tmp_path, capsys):
    callback = PreemptionCheckpoint(IterationCheckpoint(tmp_path), signals=("SIGUSR2",))
    callback._handle(signal.SIGINT, None)
    assert "Ctrl-C: stopping after this iteration and saving last.ckpt; press Ctrl-C again" in capsys.readouterr().err
    assert callback.received == signal.SIGINT


# ------------------------------------------------------------------------------ pictures
class ImageLoggerWithFixedGrids(ImageLogger):
    def grids(self, pl_module):
        picture = torch.zeros(3, 4, 6)
        picture[0] = 1.0  # red
        return {"samples": picture, "reconstructions": torch.ones(3, 4, 6)}


class RecordingLogger:
    def __init__(self):
        self.images = []

    def log_image(self, key, images, step):
        self.images.append((key, images, step))


def test_image_logger_writes_each_panel_every_n_iterations_and_at_the_end(tmp_path):
    module = FakeModule()
    trainer = FakeTrainer(module)
    logger = RecordingLogger()
    trainer.loggers = [logger]
    images = ImageLoggerWithFixedGrids(tmp_path, every_n_iterations=2)
    run_batches(images, trainer, module, [1, 2, 3, 4, 5])
    images.on_train_end(trainer, module)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == [
        f"{panel}/iter_{it:07d}.png" for panel in ("reconstructions", "samples") for it in (2, 4, 5)]
    with Image.open(tmp_path / "samples" / "iter_0000002.png") as im:
        assert im.size == (6, 4) and im.getpixel((0, 0)) == (255, 0, 0)
    assert [(key, step) for key, _, step in logger.images] == [
        (f"images/{panel}", it) for it in (2, 4, 5) for panel in ("samples", "reconstructions")]
    images.on_train_end(trainer, module)  # iteration 5 is written already
    assert len(logger.images) == 6


def test_image_logger_writes_nothing_on_other_ranks(tmp_path):
    module = FakeModule(iteration=2)
    trainer = FakeTrainer(module, global_zero=False)
    ImageLoggerWithFixedGrids(tmp_path, every_n_iterations=2).on_train_batch_end(trainer, module, None, None, 0)
    assert list(tmp_path.iterdir()) == []


def test_log_picture_gives_loggers_uint8_pixels_rounded_as_the_png():
    picture = torch.tensor([0.0, 0.5, 1.0, 0.999]).view(1, 2, 2).expand(3, 2, 2)
    logger, other = RecordingLogger(), object()
    log_picture([logger, other], "images/samples", picture, 7)
    [(key, [pixels], step)] = logger.images
    assert (key, step) == ("images/samples", 7)
    assert pixels.dtype.name == "uint8" and pixels.shape == (2, 2, 3)
    assert pixels[..., 0].tolist() == [[0, 128], [255, 255]]


# ------------------------------------------------------------------------------ stats and progress
def test_training_stats_measure_from_the_end_of_the_first_batch(monkeypatch):
    clock = iter([10.0, 11.0, 12.0, 14.0])
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    module = FakeModule()
    module.networks = {"generator": None, "discriminator": None}
    trainer = FakeTrainer(module)
    trainer.optimizers = [SimpleNamespace(param_groups=[{"lr": 1e-3}]), SimpleNamespace(param_groups=[{"lr": 5e-4}])]
    stats = TrainingStats(every_n_iterations=2)
    batch = torch.zeros(8, 3, 4, 4)
    for it in (1, 2, 3, 4):
        module.iteration = it
        stats.on_train_batch_end(trainer, module, None, batch, 0)
    # clock starts at iteration 1 (t=10); logs at 2 (t=11: 1 iteration, 8 images) and 4 (t=14 from 11: 2, 16)
    assert module.logged == [
        {"train/iterations_per_s": 1.0, "train/images_per_s": 8.0}, {"train/lr_generator": 1e-3, "train/lr_discriminator": 5e-4},
        {"train/iterations_per_s": 2 / 3, "train/images_per_s": 16 / 3}, {"train/lr_generator": 1e-3, "train/lr_discriminator": 5e-4}]


def test_progress_bar_shows_k_and_m_of_logging_iterations():
    module = FakeModule(iteration=0, log_every=2)
    trainer = FakeTrainer(module)
    bar = IterationProgressBar(total_iterations=4)
    bar.on_train_start(trainer, module)
    task = bar._progress.tasks[0]
    trainer.callback_metrics = {"train/k": torch.tensor(0.0123456), "train/M": torch.tensor(0.5), "train/L_d": torch.tensor(1.0)}
    module.iteration = 1
    bar.on_train_batch_end(trainer, module)
    assert task.completed == 1 and task.fields["stats"] == ""  # not a logging iteration: nothing read
    module.iteration = 2
    bar.on_train_batch_end(trainer, module)
    assert task.completed == 2 and task.fields["stats"] == "k=0.0123  M=0.5000"
    module.iteration = 4
    bar.on_train_end(trainer, module)
    assert task.completed == 4 and bar._progress is None


def test_a_disabled_progress_bar_shows_nothing():
    module = FakeModule()
    bar = IterationProgressBar(total_iterations=4)
    bar.disable()
    bar.on_train_start(FakeTrainer(module), module)
    assert bar._progress is None
    bar.on_train_batch_end(FakeTrainer(module), module)
    bar.on_train_end(FakeTrainer(module), module)
