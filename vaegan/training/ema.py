"""The exponential moving average of the generator's weights, which makes every output once it averages."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


def average_of(generator: nn.Module) -> AveragedModel:
    """The EMA copy of ``generator``: ``AveragedModel``'s buffers and ``n_averaged``, updated by ``update``."""
    ema = AveragedModel(generator, use_buffers=True)
    ema.requires_grad_(False)
    return ema


def update(ema: AveragedModel, generator: nn.Module, decay: float, stepped: Tensor) -> None:
    """One EMA step, as ``AveragedModel``'s EMA (the first update copies) but on the device: a skipped
    iteration changes nothing."""
    current = [*generator.parameters(), *generator.buffers()]
    weight = (torch.where(ema.n_averaged == 0, 1.0, 1.0 - decay) * stepped).to(current[0].dtype)
    for average, value in zip([*ema.module.parameters(), *ema.module.buffers()], current):
        average.detach().lerp_(value.detach(), weight)
    ema.n_averaged += stepped.long()


def output_generator(ema: AveragedModel | None, generator: nn.Module) -> nn.Module:
    """The EMA copy once it averages, else the trained generator."""
    return ema.module if ema is not None and int(ema.n_averaged) > 0 else generator
