"""In-training evaluation: FID/KID (and IS with class logits) every N iterations, best.ckpt by FID."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from vaegan.checkpoints import save_checkpoint_atomically
from vaegan.metrics.extractors import Extractor
from vaegan.metrics.fidelity import evaluate_generator


class EvaluationCallback(L.Callback):
    """Evaluates the generator every ``every_n_iterations`` with the protocol of ``evaluation_kwargs``
    (the arguments of ``evaluate_generator``) and logs ``metrics/<name>``; with ``keep_best`` it writes
    ``<dirpath>/best.ckpt`` whenever the FID improves.

    The Inception network lives in this callback, never in the LightningModule, so checkpoints do
    not carry it; ``state_dict`` holds only the best FID. Under DDP rank 0 evaluates while the
    other ranks wait in the broadcast of its values, so every rank logs and decides the same.
    """

    def __init__(self, extractor: Extractor, dirpath: str | Path, every_n_iterations: int, keep_best: bool = True,
                 **evaluation_kwargs: Any):
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
                                        train_precision=getattr(pl_module, "train_precision", "32-true"))
            values = result.values
            if not self._announced:  # the protocol, once per run
                rank_zero_info(f"evaluation protocol {result.protocol.key()}:\n  " + "\n  ".join(result.protocol.lines()))
                self._announced = True
            shown = ", ".join(f"{name} {value:.4g}" for name, value in values.items())
            rank_zero_info(f"iteration {pl_module.iteration}: {shown} ({result.protocol.num_samples} samples, {result.seconds:.0f} s)")
        values = trainer.strategy.broadcast(values, src=0)  # the other ranks wait here
        logged = {f"metrics/{name}": value for name, value in values.items()}
        # Straight to the loggers: values logged through pl_module.log would be repeated on every
        # later row of the epoch. Lightning numbers the rows of iteration i from 0, as i - 1.
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=pl_module.iteration - 1)
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in logged.items()})
        if self.keep_best and values.get("fid", math.inf) < self.best_fid:
            self.best_fid, self.best_iteration = values["fid"], pl_module.iteration
            save_checkpoint_atomically(trainer, self.dirpath / "best.ckpt")
        return values

    def state_dict(self) -> dict[str, Any]:
        return {"best_fid": self.best_fid, "best_iteration": self.best_iteration}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_fid, self.best_iteration = float(state_dict["best_fid"]), int(state_dict["best_iteration"])
