"""The iteration's loss terms and gradients as means over all ranks, and each network's gradient norm."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import get_total_norm

from vaegan.training import distributed


def synchronize(terms: dict[str, Tensor], networks: dict[str, nn.Module]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The loss terms and gradients as means over all ranks (one all-reduce; nothing to do in one
    process), then each network's gradient norm."""
    stacked = torch.stack([value.detach().float() for value in terms.values()])
    grads = [p.grad for net in networks.values() for p in net.parameters() if p.grad is not None]
    distributed.average_across_ranks([*grads, stacked])
    norms = {name: get_total_norm([p.grad for p in net.parameters() if p.grad is not None])
             for name, net in networks.items()}
    return dict(zip(terms, stacked.unbind())), norms
