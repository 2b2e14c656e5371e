"""How an iteration runs, not what it computes: memory layout, backward passes shared by the
objectives, one batched discriminator pass and torch.compile (CUDA graphs with ``reduce-overhead``).

Each option keeps the losses of Eqs. 2-15 and changes fp32 results only by float rounding
(other convolution algorithms, reassociated sums). bf16 is ``trainer.precision=bf16-mixed``
(Lightning's autocast). ``experiments/bench_step.py`` measures each option; docs/performance.md
has the numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from vaegan import compat
from vaegan.config.schema import PerformanceConfig

log = logging.getLogger(__name__)


@dataclass
class Performance(PerformanceConfig):
    """The options of ``cfg.performance``: ``PerformanceConfig``'s fields and defaults, defined there
    once (channels_last, shared_backward, batched_discriminator, compile), with what they decide."""

    def use_channels_last(self, device: torch.device, width: int) -> bool:
        """auto: on GPUs (tensor cores take NHWC); on CPUs below width 64, where it measured faster
        (x1.3 at the quickstart's width 16; x1.0 at width 64, x0.89 at width 128: docs/performance.md)."""
        if self.channels_last is not None:
            return self.channels_last
        return device.type == "cuda" or width < 64


def bf16_is_fast(device: torch.device) -> bool:
    """Whether ``device`` has bf16 arithmetic: GPUs from Ampere on, CPUs with AVX512-BF16 or AMX.
    Elsewhere bf16 convolutions are emulated, many times slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return compat.cpu_has_bf16()
    return True


def warn_if_bf16_is_emulated(precision: str, device: torch.device) -> None:
    if precision == "bf16-mixed" and not bf16_is_fast(device):
        log.warning(f"trainer.precision=bf16-mixed on a {device.type} without bf16 arithmetic (AVX512-BF16/AMX on "
                    "CPUs, Ampere or newer GPUs): it is emulated and runs many times slower than 32-true")


def apply(module) -> None:
    """Sets ``module.performance`` on a VAEGANModule on its device, in place: the memory format of its
    networks and inputs, and compilation. State dicts, and so checkpoints, do not change."""
    options = module.performance
    channels_last = options.use_channels_last(module.device, module.hparams.width)
    module.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if options.compile is not None:
        compat.disable_donated_buffers()
    for net in module.networks.values():
        net.to(memory_format=module.memory_format)
        if options.compile is not None:
            net.compile(mode=options.compile)
