"""The private and undocumented APIs of Lightning, torch, wandb and wandb-workspaces that vaegan relies
on, in one place.

Each entry names what it relies on and why; ``tests/test_compat.py`` checks every one against the
installed versions and names the upstream change to follow when an upgrade breaks it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from torch import Tensor

if TYPE_CHECKING:
    import lightning as L


class SubprocessLauncher(_SubprocessScriptLauncher):
    """Lightning's private ``_SubprocessScriptLauncher`` with its children started by ``start_children``.

    Relies on: ``__init__(cluster_environment, num_processes, num_nodes)`` and those attributes,
    ``procs`` (the started children, which Lightning watches and signals), ``launch`` calling
    ``_call_children_scripts`` on local rank 0 unless the environment starts processes externally,
    and ``_check_can_spawn_children``. We need it to start ranks from the run's config, not by
    re-running the command line (``distributed.ConfigLauncher``)."""

    def _call_children_scripts(self) -> None:
        self._check_can_spawn_children()
        self.start_children()

    def start_children(self) -> None:
        """Starts local ranks 1..num_processes-1, appending each process to ``procs``."""
        raise NotImplementedError


class LauncherDDPStrategy(DDPStrategy):
    """Lightning's DDPStrategy with the launcher ``make_launcher`` returns.

    Relies on: the Trainer calling ``Strategy._configure_launcher`` once, and ``Strategy.launcher``
    returning what it stored in ``_launcher``. We need it for ``distributed.ManualDDPStrategy``."""

    def _configure_launcher(self) -> None:
        self._launcher = self.make_launcher()

    def make_launcher(self) -> Any:
        raise NotImplementedError


def disable_sigterm_broadcast(trainer: L.Trainer) -> None:
    """Turns off the broadcast of rank 0's SIGTERM flag that Lightning >= 2.5.2 (#20825) runs, and
    waits for, before every training batch, by replacing ``_TrainingEpochLoop._broadcast_sigterm_tensor``
    on the trainer's epoch loop. ``PreemptionCheckpoint`` handles the signals instead."""
    trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor = lambda: None


def wandb_run(logger: Any) -> Any | None:
    """The W&B run of a Lightning ``WandbLogger`` if one was started or passed in, else None, read
    from its private ``_experiment``: the public ``experiment`` property would start a run."""
    return logger._experiment


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX), from oneDNN's private
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported``: torch has no public check for CPUs."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def disable_donated_buffers() -> None:
    """Sets the private ``torch._functorch.config.donated_buffer`` to False: the iteration takes
    several backward passes over one graph (``retain_graph``), which compiled backward functions
    only allow without donated buffers."""
    torch._functorch.config.donated_buffer = False


def fused_adam_step(optimizer: Any, found_inf: Tensor) -> None:
    """``optimizer.step()`` that fused Adam skips on the device where ``found_inf`` is 1.0 (weights,
    moments and step counts unchanged), with no read from the device.

    Relies on: fused ``torch.optim.Adam.step`` reading the ``found_inf`` attribute that
    ``torch.amp.GradScaler`` sets on optimizers with ``_step_supports_amp_scaling``. ``optimizer``
    may be Lightning's ``LightningOptimizer``; the attribute goes on the torch optimizer it wraps and
    is removed afterwards, also when the step raises."""
    adam = getattr(optimizer, "optimizer", optimizer)
    adam.found_inf = found_inf
    try:
        optimizer.step()
    finally:
        vars(adam).pop("found_inf", None)


def attached_trainer(module: L.LightningModule) -> L.Trainer | None:
    """The Trainer a LightningModule is attached to, or None, from its private ``_trainer``: the
    public ``trainer`` property raises when there is none."""
    return module._trainer


# --------------------------------------------------------------------------- wandb-workspaces
def workspace_spec(workspace: Any) -> dict:
    """The view a wandb-workspaces ``Workspace.save()`` uploads, as a dict (its private ``_spec``:
    ``_to_model()`` dumped by alias), for ``python -m vaegan.dashboard --dry-run``."""
    return workspace._spec


def saved_view_id(entity: str, project: str, view_name: str) -> str | None:
    """The id of the saved workspace view named ``view_name`` (``nw-<id>-v``), or None where there is
    none, by the library's private ``internal.View.from_name``: the public ``Workspace.from_url`` needs
    the view's URL, which a teammate who never saved it cannot know."""
    from wandb_workspaces.workspaces import internal

    try:
        return internal.View.from_name(entity, project, view_name).id or None
    except (ValueError, IndexError):  # "Workspace ... not found", or a project without views
        return None


def name_view(workspace: Any, view_name: str, view_id: str | None) -> None:
    """Makes ``workspace.save()`` write the view ``view_name`` (updating view ``view_id`` when it
    exists) instead of a new view with a random name, through the private ``_internal_name`` and
    ``_internal_id`` that ``Workspace.from_url`` sets: so that saving twice updates one view."""
    object.__setattr__(workspace, "_internal_name", view_name)
    object.__setattr__(workspace, "_internal_id", view_id or "")
