"""In-training evaluation: FID/KID (and IS with class logits) every N iterations, best.ckpt by FID;
and the VAE's latent use (KL nats, active units, PSNR, SSIM) at the image panels' interval."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from vaegan.config.schema import EvaluationConfig, LatentUseConfig
from vaegan.training import logged
from vaegan.training.checkpoints import save_checkpoint_atomically
from vaegan.metrics.extractors import Extractor
from vaegan.metrics.fidelity import evaluate_generator
from vaegan.metrics.latent_use import LatentUse, latent_use
from vaegan.latent.panels import evaluating

log = logging.getLogger(__name__)


class EvaluationCallback(L.Callback):
    """Evaluates the generator every ``every_n_iterations`` with the protocol of ``evaluation_kwargs``
    (the arguments of ``evaluate_generator``) and logs ``metrics/<name>``; with ``keep_best`` it writes
    ``<dirpath>/best.ckpt`` whenever the FID improves.

    The Inception network lives in this callback, never in the LightningModule, so checkpoints do
    not carry it; ``state_dict`` holds only the best FID. Under DDP rank 0 evaluates while the
    other ranks wait in the broadcast of its values, so every rank logs and decides the same.
    """

    def __init__(self, extractor: Extractor, dirpath: str | Path, every_n_iterations: int,
                 keep_best: bool = EvaluationConfig.keep_best, **evaluation_kwargs: Any):
        self.extractor, self.dirpath = extractor, Path(dirpath)
        self.every, self.keep_best = every_n_iterations, keep_best
        self.kwargs = evaluation_kwargs
        self.best_fid, self.best_iteration = math.inf, -1
        self._announced = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.every and pl_module.iteration % self.every == 0:
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        values: dict[str, float] | None = None
        if trainer.is_global_zero:
            self.extractor.network.to(pl_module.device)
            # VAEGANModule's outputs come from its EMA generator when it keeps one; any module with a
            # ``generator`` can be evaluated.
            generator = getattr(pl_module, "output_generator", pl_module.generator)
            result = evaluate_generator(generator, pl_module.hparams.latent_dim, trainer.datamodule, self.extractor,
                                        **{**self.kwargs, "device": pl_module.device},
                                        weights=getattr(pl_module, "output_weights", "raw"),
                                        train_precision=getattr(pl_module, "train_precision", "32-true"),
                                        encoder=getattr(pl_module, "encoder", None))
            values = result.values
            if not self._announced:  # the protocol, once per run
                rank_zero_info(f"evaluation protocol {result.protocol.key()}:\n  " + "\n  ".join(result.protocol.lines()))
                self._announced = True
            shown = ", ".join(f"{name} {value:.4g}" for name, value in values.items())
            rank_zero_info(f"iteration {pl_module.iteration}: {shown} ({result.protocol.num_samples} samples, {result.seconds:.0f} s)")
        values = trainer.strategy.broadcast(values, src=0)  # the other ranks wait here
        row = {logged.metric(name): value for name, value in values.items()}
        # Straight to the loggers: values logged through pl_module.log would be repeated on every
        # later row of the epoch. Lightning numbers the rows of iteration i from 0, as i - 1.
        for logger in trainer.loggers:
            logger.log_metrics(row, step=pl_module.iteration - 1)
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in row.items()})
        if self.keep_best and values.get("fid", math.inf) < self.best_fid:
            self.best_fid, self.best_iteration = values["fid"], pl_module.iteration
            save_checkpoint_atomically(trainer, self.dirpath / "best.ckpt")
        return values

    def state_dict(self) -> dict[str, Any]:
        return {"best_fid": self.best_fid, "best_iteration": self.best_iteration}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_fid, self.best_iteration = float(state_dict["best_fid"]), int(state_dict["best_iteration"])


class LatentUseMonitor(L.Callback):
    """The VAE's use of its latent code on fixed held-out images (``vaegan.metrics.latent_use``):
    every ``every_n_iterations`` (the image panels' interval) and at the end, ``val/kl_nats``,
    ``val/active_units``, ``val/psnr``, ``val/ssim`` and ``val/psnr_mean_image`` go to every logger.

    From ``warn_after`` iterations on, a posterior that carries almost nothing (``LatentUse.collapse``)
    gets one warning line naming the setting to change; with ``stop_if_collapsed`` training also
    stops there (last.ckpt is written as at any end). Every rank measures the same images with the
    same weights, so all of them decide alike.
    """

    def __init__(self, every_n_iterations: int, num_images: int = LatentUseConfig.num_images,
                 warn_after: int = LatentUseConfig.warn_after, min_kl_nats: float = LatentUseConfig.min_kl_nats,
                 min_psnr_gain_db: float = LatentUseConfig.min_psnr_gain_db,
                 stop_if_collapsed: bool = LatentUseConfig.stop_if_collapsed):
        self.every, self.num_images, self.warn_after = every_n_iterations, num_images, warn_after
        self.min_kl_nats, self.min_psnr_gain_db, self.stop_if_collapsed = min_kl_nats, min_psnr_gain_db, stop_if_collapsed
        self.x: torch.Tensor | None = None
        self._warned = False
        self._measured_at = -1

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(pl_module, "encoder", None) is not None:
            self.x = trainer.datamodule.fixed_images(self.num_images)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.x is not None and pl_module.iteration % self.every == 0:
            self.measure(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.x is not None and pl_module.iteration != self._measured_at:
            self.measure(trainer, pl_module)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> LatentUse:
        it = self._measured_at = pl_module.iteration
        x = self.x.to(pl_module.device)
        with evaluating(pl_module):
            use = latent_use(pl_module.encode, pl_module.decode, lambda: x.split(256))
        row = {logged.val(name): value for name, value in use.as_dict().items()}
        for logger in trainer.loggers:  # as EvaluationCallback: straight to the loggers, on iteration i's row
            logger.log_metrics(row, step=it - 1)
        trainer.callback_metrics.update({name: torch.tensor(float(value)) for name, value in row.items()})
        reason = use.collapse(self.min_kl_nats, self.min_psnr_gain_db) if it >= self.warn_after else None
        if reason and self.stop_if_collapsed:
            log.warning(f"stopping at iteration {it}: the posterior has collapsed ({reason}); "
                        "callbacks.latent_use.stop_if_collapsed=true")
            trainer.should_stop = True
        elif reason and not self._warned:
            reduction = pl_module.hparams.get("kl_reduction")
            fix = (f"set model.kl_reduction=elbo (now {reduction})" if reduction != "elbo" else
                   f"raise model.gamma (now {pl_module.hparams.get('gamma')}) or set model.free_nats")
            log.warning(f"the VAE's posterior carries almost nothing at iteration {it} ({reason}): its latent code is "
                        f"not used; {fix} (docs/model.md, The loss convention)")
            self._warned = True
        return use
