"""BEGAN's learning-rate decay under manual optimization (``model.optimizer.lr_decay``)."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from vaegan.config.schema import LRDecayConfig


class LearningRateDecay:
    """BEGAN's learning-rate decay (SPEC.md, Sec. 4), stepped by the training step itself (manual
    optimization): every optimizer's learning rate is multiplied by ``factor`` (BEGAN: 0.5)

    - ``mode="step"``: every ``every_n_iterations`` iterations (``torch.optim.lr_scheduler.StepLR``);
    - ``mode="plateau"``: when the mean of M over the last ``every_n_iterations`` iterations is
      not below the best such mean so far (``ReduceLROnPlateau`` with no patience, fed window means:
      M is summed on the device and read once per window; not below ``min_lr``);
    - ``mode=None``: never.

    Lightning saves and restores the schedulers' state in checkpoints; the window's running sum is
    saved by the module, so a resumed run decays exactly as an uninterrupted one.
    """

    MODES = (None, "step", "plateau")

    def __init__(self, mode: str | None = LRDecayConfig.mode, factor: float = LRDecayConfig.factor,
                 every_n_iterations: int = LRDecayConfig.every_n_iterations, min_lr: float = LRDecayConfig.min_lr):
        if mode not in self.MODES:
            raise ValueError(f"lr_decay mode {mode!r}: use null, step or plateau")
        self.mode, self.factor, self.every, self.min_lr = mode, factor, every_n_iterations, min_lr
        self._sum: Tensor | float = 0.0  # M summed over the current window (plateau)

    def schedulers(self, optimizers: list[torch.optim.Optimizer]) -> list:
        if self.mode == "step":
            return [torch.optim.lr_scheduler.StepLR(opt, self.every, self.factor) for opt in optimizers]
        if self.mode == "plateau":
            return [torch.optim.lr_scheduler.ReduceLROnPlateau(opt, "min", self.factor, patience=0, threshold=0.0,
                                                               min_lr=self.min_lr) for opt in optimizers]
        return []

    def step(self, module: L.LightningModule, iteration: int, M: Tensor | None) -> None:
        if self.mode is None:
            return
        schedulers = module.lr_schedulers()
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        if self.mode == "step":
            for scheduler in schedulers:
                scheduler.step()
            return
        if M is None:
            raise ValueError("lr_decay mode 'plateau' follows M, which needs a discriminator; use mode=step")
        self._sum = self._sum + M.detach().double()
        if iteration % self.every == 0:
            mean = float(self._sum) / self.every
            self._sum = 0.0
            for scheduler in schedulers:
                scheduler.step(mean)

    def state_dict(self) -> dict[str, float]:
        return {"window_sum": float(self._sum)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._sum = state["window_sum"]
