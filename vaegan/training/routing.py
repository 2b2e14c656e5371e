"""Gradient routing: each network's gradient of its own objective (Eqs. 13-15), then its Adam step.

The objectives come from one table (``losses.objective_table``). ``backward(inputs=...)`` restricts
every pass to the networks it is for, so the discriminator never sees L_gen's gradient, the generator
never sees L_dis's, and the discriminator's gradient equals that of L_dis with the generator's outputs
detached. By default (``performance.shared_backward``) each part of the table that several networks
take is differentiated once for all of them, and scaled to each one's weight afterwards:

    grad_D L_dis = grad_D L_d - k grad_D A,   grad_G L_gen = grad_G A + grad_G C,   grad_E L_enc = grad_E (L_n + C),

so the discriminator's passes over x_g and x_v are traversed once for both networks. Else there is one
pass per objective (bit-identical to experiments/baseline.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import clip_grads_with_norm_

from vaegan import compat
from vaegan.models.losses import Weights, weighted_sum

ALL = {"encoder", "generator", "discriminator"}
# The networks whose parameters each loss term depends on (VAEGANModule.compute_losses).
DEPENDS_ON = {"L_e": {"encoder", "generator"}, "L_n": {"encoder"}, "L_d": {"discriminator"},
              "L_g": {"generator", "discriminator"}, "L_v": ALL, "L_s": ALL}


@dataclass
class Pass:
    """One backward pass: ``loss`` differentiated for ``networks``, then each gradient in ``scale``
    multiplied by its factor."""

    loss: Tensor
    networks: list[str]
    scale: dict[str, float | Tensor] = field(default_factory=dict)


def is_one(weight: float | Tensor) -> bool:
    """Whether a table weight is the literal 1 (a fixed weight of Eqs. 13-15, not a hyper-parameter)."""
    return isinstance(weight, int) and weight == 1


def per_objective_passes(objectives: dict[str, Tensor], networks: list[str]) -> list[Pass]:
    """One pass per network, on its own objective."""
    return [Pass(objectives[name], [name]) for name in networks]


def shared_passes(terms: dict[str, Tensor], parts: dict[str, Weights], table: dict[str, Weights],
                  networks: list[str]) -> list[Pass]:
    """The fewest passes giving every network the gradient of its objective in ``table``.

    A part that several networks take is one pass, taken with weight 1 (each shared part has a network
    that weighs it by 1) and rescaled for the others (those passes come first, before anything else adds to their
    gradients). A part that one network takes rides along in a pass that network takes unscaled and
    whose other networks it does not reach (``DEPENDS_ON``); else it is a pass of its own.
    """
    rows = {net: row for net, row in table.items() if net in networks}
    passes: list[Pass] = []
    for name, part in parts.items():
        value = weighted_sum(part, terms)
        if value is None:
            continue
        users = {net: row[name] for net, row in rows.items() if name in row}
        if len(users) > 1:
            passes.append(Pass(value, list(users), {net: w for net, w in users.items() if not is_one(w)}))
            continue
        if not users:
            continue
        (net, weight), = users.items()
        reaches = set().union(*(DEPENDS_ON[term] for term in part if term in terms))
        host = next((p for p in passes if net in p.networks and net not in p.scale
                     and not reaches & (set(p.networks) - {net})), None)
        own = weighted_sum({name: weight}, {name: value})
        if host is None:
            passes.append(Pass(own, [net]))
        else:
            host.loss = own + host.loss
    return sorted(passes, key=lambda p: not p.scale)


def backward(module, passes: list[Pass]) -> None:
    """Every network's gradient, from ``passes``, all taken before any step."""
    for opt in module.optimizer_list():
        opt.zero_grad(set_to_none=True)
    for i, p in enumerate(passes):
        params = [q for name in p.networks for q in module.networks[name].parameters()]
        module.manual_backward(p.loss, inputs=params, retain_graph=i < len(passes) - 1)
        for name, factor in p.scale.items():
            torch._foreach_mul_([q.grad for q in module.networks[name].parameters()], factor)


def step(networks: dict[str, nn.Module], optimizers: list, norms: dict[str, Tensor],
         clip: dict[str, float | None], stepped: Tensor | None = None) -> None:
    """Algorithm 1, lines 8, 11, 13: each optimizer steps on its network's gradient, clipped to
    ``clip[name]`` when set. Where ``stepped`` is False (read on the device by fused Adam) Adam leaves
    weights, moments and step counts as they were; Lightning still counts the step. Adam without a
    fused kernel for the device reads the flag from it."""
    for (name, net), opt in zip(networks.items(), optimizers):
        if clip.get(name):
            clip_grads_with_norm_(net.parameters(), clip[name], norms[name])
        adam = getattr(opt, "optimizer", opt)  # Lightning wraps it
        if stepped is not None and adam.defaults.get("fused"):
            compat.fused_adam_step(opt, (~stepped).float())
            continue
        if stepped is not None and not bool(stepped):
            opt.zero_grad(set_to_none=True)  # Adam skips parameters without gradients
        opt.step()
