"""Callbacks indexed by iterations (batches), not optimizer steps: checkpoints, image grids, progress.

(The PID controller's callback lives beside the controller, in ``vaegan.models.controller``.)
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torchvision.utils import save_image

from vaegan.config.schema import ON_SIGNALS, CheckpointConfig, ImagesConfig, ProgressBarConfig, TrainConfig
from vaegan.training import checkpoints, distributed, logged, run_lock

from vaegan.latent import panels
from vaegan.utils.files import write_atomic
from vaegan.utils.messages import final_line
from vaegan.models.module import images_of


class IterationCheckpoint(L.Callback):
    """Writes ``last.ckpt`` every ``every_n_iterations`` and at the end of training, and keeps a
    copy ``iter_XXXXXXX.ckpt`` every ``keep_every_n_iterations`` (0 = never).

    Each file is written under a temporary name and renamed, so an interrupted write never
    replaces a good checkpoint with a partial one.
    """

    def __init__(self, dirpath: str | Path, every_n_iterations: int = CheckpointConfig.every_n_iterations,
                 keep_every_n_iterations: int = CheckpointConfig.keep_every_n_iterations):
        self.dirpath = Path(dirpath)
        self.every, self.keep_every = every_n_iterations, keep_every_n_iterations
        self.saved_at = -1

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, *args: Any) -> None:
        it = pl_module.iteration
        keep = self.keep_every > 0 and it % self.keep_every == 0
        if not (keep or it % self.every == 0):
            return
        if isinstance(outputs, dict) and not bool(outputs.get("stepped", True)):
            return  # a skipped (non-finite) iteration: the last good checkpoint stays
        self.save_last(trainer, it)
        if keep and trainer.is_global_zero:
            kept = self.dirpath / f"iter_{it:07d}.ckpt"
            tmp = kept.with_name(f".{kept.name}.tmp")
            shutil.copyfile(self.dirpath / "last.ckpt", tmp)
            os.replace(tmp, kept)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.iteration != self.saved_at:
            self.save_last(trainer, pl_module.iteration)

    def save_last(self, trainer: L.Trainer, iteration: int) -> None:
        checkpoints.save_checkpoint_atomically(trainer, self.dirpath / "last.ckpt")
        self.saved_at = iteration


class Interrupted(Exception):
    """Training stopped on a signal after writing last.ckpt."""

    def __init__(self, signum: int, iteration: int, path: Path):
        self.signum, self.iteration, self.path = signum, iteration, path
        super().__init__(f"stopped by {signal.Signals(signum).name} after iteration {iteration}, saved in {path}; "
                         f"to continue, rerun the same command with ckpt_path={path}")


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM, SIGUSR1, SIGUSR2 or SIGINT (``signals``: callbacks.checkpoint.on_signals), the run
    finishes its iteration, writes ``last.ckpt`` and stops; ``train`` then raises ``Interrupted``. The handler only sets a flag;
    the ranks agree on it every ``trainer.log_every_n_steps`` iterations (one tiny all-reduce; a
    single process looks after every iteration), so all of them save the same iteration. A second
    SIGINT (Ctrl-C twice) exits at once, saying which iterations were not saved.

    A handler the signal had when this callback was made, before the Trainer added its own
    (submitit's requeue on SLURM, for which Lightning's SLURM requeue is turned off), is called
    after the checkpoint is written.
    """

    def __init__(self, checkpoint: IterationCheckpoint, signals: tuple[str, ...] = ON_SIGNALS):
        self.checkpoint, self.signals = checkpoint, [signal.Signals[name] for name in signals]
        self.received: int | None = None
        self.interrupted: Interrupted | None = None
        self._outer = {signum: signal.getsignal(signum) for signum in self.signals}
        self._previous: dict[int, Any] = {}
        self._module: L.LightningModule | None = None
        self._start = 0  # the iteration training started (resumed) from

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """From here on (before the first iteration), a signal stops the run after an iteration."""
        self._module = pl_module
        self._install()

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread can install signal handlers
        for signum in self.signals:
            if signal.getsignal(signum) != self._handle:
                self._previous.setdefault(signum, signal.signal(signum, self._handle))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = pl_module.iteration
        self._install()  # again: Lightning puts in its own SIGTERM handler after setup

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received is not None:
            self._exit_unsaved()
        self.received = self.received or signum
        if signum == signal.SIGINT and distributed.global_rank() == 0:
            print("\nCtrl-C: stopping after this iteration and saving last.ckpt; press Ctrl-C again to exit at once "
                  "without saving", file=sys.stderr, flush=True)

    def _exit_unsaved(self) -> None:
        """The second Ctrl-C: exits now (status 130), naming what is lost."""
        now = self._module.iteration if self._module is not None else 0
        saved = self.checkpoint.saved_at if self.checkpoint.saved_at >= 0 else self._start
        last = self.checkpoint.dirpath / "last.ckpt"
        if saved == 0:
            lost = f"none of its {now} iterations are saved (no checkpoint was written yet)"
        elif now > saved:
            lost = f"iterations {saved + 1}-{now} are not saved; {last} holds iteration {saved}"
        else:
            lost = f"only the iteration in progress is lost; {last} holds iteration {saved}, the last completed one"
        if distributed.global_rank() == 0:
            final_line(f"Interrupted: second Ctrl-C, exited without saving: {lost}")
        run_lock.release_all()
        os._exit(128 + signal.SIGINT)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if distributed.world_size() > 1 and not pl_module.is_logging_iteration():
            return
        if not distributed.any_rank(self.received is not None, pl_module.device):
            return
        signum = self.received or signal.SIGTERM  # a rank that was not signalled follows the others
        self.checkpoint.save_last(trainer, pl_module.iteration)
        self.interrupted = Interrupted(signum, pl_module.iteration, self.checkpoint.dirpath / "last.ckpt")
        trainer.should_stop = True
        self._restore()
        outer = self._outer.get(signum)
        if callable(outer) and outer is not signal.default_int_handler:  # Python's own raises KeyboardInterrupt
            outer(signum, None)  # e.g. submitit: requeue the job (rank 0), then exit

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous = {}


class ImageLogger(L.Callback):
    """The panels of ``vaegan.latent.panels.training_panels``, every ``every_n_iterations`` and at the end:

    ``samples/``: F_vae-d(z) for the same z every time, so grids are comparable over training;
    ``reconstructions/``: fixed real images, each beside its VAE reconstruction F_vae-d(mu_v(x))
    (the discriminator's x'_d for models without an encoder); ``discriminator/``: Fig. 4, generated
    and real images with the discriminator's reconstructions; ``interpolations/``: Fig. 6 between
    pairs of the fixed real images (of fixed codes without an encoder). Each is a PNG
    ``<panel>/iter_XXXXXXX.png`` in the run directory and an image in every logger that takes
    images (TensorBoard; any logger with ``log_image``, such as W&B's, as uint8). Rank 0 only.
    """

    def __init__(self, dirpath: str | Path, every_n_iterations: int = ImagesConfig.every_n_iterations,
                 num_samples: int = ImagesConfig.num_samples, num_reconstructions: int = ImagesConfig.num_reconstructions,
                 seed: int = TrainConfig.seed, num_interpolations: int = ImagesConfig.num_interpolations,
                 interpolation_steps: int = ImagesConfig.interpolation_steps):
        self.dirpath = Path(dirpath)
        self.every, self.num_samples, self.num_reconstructions = every_n_iterations, num_samples, num_reconstructions
        self.seed, self.pairs, self.steps = seed, num_interpolations, interpolation_steps
        self._written_at = -1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gen = torch.Generator().manual_seed(self.seed)
        self.z = torch.randn(max(self.num_samples, 2 * self.pairs), pl_module.hparams.latent_dim, generator=gen)
        self.x = trainer.datamodule.fixed_images(max(self.num_reconstructions, 2 * self.pairs))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if pl_module.iteration % self.every == 0:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.iteration != self._written_at:
            self.write(trainer, pl_module)

    def grids(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        return panels.training_panels(pl_module, self.z[:self.num_samples], self.x[:self.num_reconstructions],
                                      self.pairs, self.steps, x_pairs=self.x, z_pairs=self.z)

    def write(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        it = self._written_at = pl_module.iteration
        if not trainer.is_global_zero:
            return
        for name, picture in self.grids(pl_module).items():
            write_atomic(self.dirpath / name / f"iter_{it:07d}.png", lambda tmp: save_image(picture, tmp, format="png"))
            log_picture(trainer.loggers, logged.image(name), picture, it)


def log_picture(loggers: list, key: str, picture: torch.Tensor, step: int) -> None:
    """A (3, H, W) picture in [0, 1] to every logger that takes images: TensorBoard's add_image,
    or ``log_image`` (W&B's signature) with uint8 HWC pixels, which no logger can misread (float
    images in [-1, 1] turn into black squares in ``wandb.Image``), rounded as the PNG files are."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, picture, global_step=step)
        elif hasattr(logger, "log_image"):
            pixels = picture.mul(255).add(0.5).clamp(0, 255).byte().permute(1, 2, 0).numpy()  # as save_image's PNG
            logger.log_image(key=key, images=[pixels], step=step)


class TrainingStats(L.Callback):
    """Logs each optimizer's learning rate (``train/lr_<network>``) and the throughput since the
    previous log (``train/iterations_per_s``, ``train/images_per_s``) every ``every_n_iterations``,
    the iterations at which Lightning writes to the loggers."""

    def __init__(self, every_n_iterations: int):
        self.every = every_n_iterations
        self._since: tuple[float, int] | None = None  # (time, iteration) of the last log
        self._images = 0  # images trained on since then

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        it, now = pl_module.iteration, time.perf_counter()
        if self._since is None:  # the clock starts at the end of the first batch (after warm-up)
            self._since, self._images = (now, it), 0
            return
        self._images += len(images_of(batch))
        if it % self.every:
            return
        seconds, iterations = now - self._since[0], it - self._since[1]
        pl_module.log_dict({logged.ITERATIONS_PER_S: iterations / seconds, logged.IMAGES_PER_S: self._images / seconds})
        pl_module.log_dict({logged.lr(name): opt.param_groups[0]["lr"]
                            for name, opt in zip(pl_module.networks, trainer.optimizers)})
        self._since, self._images = (now, it), 0


class IterationProgressBar(ProgressBar):
    """One rich progress bar over the run's iterations, with k and M (not per-epoch batches)."""

    def __init__(self, total_iterations: int, refresh_every: int = ProgressBarConfig.refresh_every):
        super().__init__()
        self.total, self.refresh_every = total_iterations, refresh_every
        self._enabled = True
        self._progress: Progress | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled:
            return
        self._progress = Progress(
            TextColumn("[bold]iteration"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
        )
        self._stats = ""
        self._task = self._progress.add_task("train", total=self.total, completed=pl_module.iteration, stats="")
        self._progress.start()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._progress is None or pl_module.iteration % self.refresh_every:
            return
        if pl_module.is_logging_iteration():  # k and M are read from the device only when logged
            metrics = trainer.callback_metrics
            self._stats = "  ".join(f"{name.split('/')[-1]}={float(metrics[name]):.4f}"
                                    for name in (logged.K, logged.M) if name in metrics)
        self._progress.update(self._task, completed=pl_module.iteration, stats=self._stats)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=pl_module.iteration)
            self._progress.stop()
            self._progress = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.on_train_end(trainer, pl_module)
