"""Data-parallel training on many processes (GPUs, nodes, or CPU processes over gloo).

The three optimizers step on gradients of different objectives taken from one forward pass
(``backward(inputs=...)``), which PyTorch's DistributedDataParallel wrapper cannot follow: its
reducer expects every parameter's gradient from every backward. So ``ManualDDPStrategy`` keeps
Lightning's DDP process group, ranks and device placement but does not wrap the module; the
module averages its own gradients and losses across ranks (``average_across_ranks``), once per
iteration and before any optimizer steps, so that every rank takes the same step and computes the
same e_t, hence the same k_t.

Processes are started in one of two ways:

- externally, by SLURM (one task per GPU; Lightning's SLURMEnvironment) or ``torchrun``;
- by ``ConfigLauncher`` on a single machine: the rank-0 process starts the others as
  ``python -m vaegan.training.rank <run dir>/config.yaml``, the run's resolved config, not by
  re-running the command line, so a Hydra multirun does not start a sweep in every rank.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from vaegan import compat
from vaegan.training import run_lock

LAUNCH_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "RANK")


def global_rank() -> int:
    """This process's rank, from the launcher's environment (0 before any launch)."""
    return run_lock.launcher_rank()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank_and_world() -> tuple[int, int]:
    """(rank, number of ranks) of the running process group; (0, 1) without one."""
    n = world_size()
    return (dist.get_rank() if n > 1 else 0), n


def average_across_ranks(tensors: list[Tensor]) -> None:
    """Replaces each tensor by its mean over all ranks, in place, with one all-reduce."""
    n = world_size()
    if n == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= n
    for t, mean in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(mean.view_as(t))


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on at least one rank (every rank must call this)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class ConfigLauncher(compat.SubprocessLauncher):
    """Lightning's subprocess launcher, starting ranks 1..N-1 from the run's resolved config."""

    def __init__(self, *args, config_file: Path, **kwargs):
        super().__init__(*args, **kwargs)
        self.config_file = Path(config_file)
        self.saved_environment: dict[str, str | None] = {}

    def start_children(self) -> None:
        self.saved_environment = {key: os.environ.get(key) for key in LAUNCH_VARIABLES}
        env = self.cluster_environment
        node_rank = env.node_rank()
        os.environ.update(MASTER_ADDR=env.main_address, MASTER_PORT=str(env.main_port), NODE_RANK=str(node_rank),
                          LOCAL_RANK="0", RANK=str(node_rank * self.num_processes),
                          WORLD_SIZE=str(self.num_processes * self.num_nodes))
        command = [sys.executable, "-m", "vaegan.training.rank", str(self.config_file)]
        for local_rank in range(1, self.num_processes):
            child = {**os.environ, "LOCAL_RANK": str(local_rank), "RANK": str(node_rank * self.num_processes + local_rank)}
            self.procs.append(subprocess.Popen(command, env=child))

    def restore_environment(self) -> None:
        """Undoes the variables set for the children, so the next job of a multirun launches its own."""
        for key, value in self.saved_environment.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.saved_environment = {}


class ManualDDPStrategy(compat.LauncherDDPStrategy):
    """DDP without the DistributedDataParallel wrapper: the module averages its own gradients."""

    def __init__(self, config_file: Path, **kwargs):
        super().__init__(**kwargs)
        self.config_file = config_file

    def make_launcher(self) -> ConfigLauncher:
        return ConfigLauncher(self.cluster_environment, self.num_processes, self.num_nodes, config_file=self.config_file)

    def configure_ddp(self) -> None:
        """Every rank starts from rank 0's weights (they already agree when seeded alike)."""
        for tensor in [*self.model.parameters(), *self.model.buffers()]:
            dist.broadcast(tensor.data, src=0)
        # Lightning's loop broadcasts its SIGTERM flag before every batch (and waits for it);
        # PreemptionCheckpoint handles the signals instead, so the flag is always 0.
        compat.disable_sigterm_broadcast(self.lightning_module.trainer)

    def teardown(self) -> None:
        super().teardown()
        if isinstance(self.launcher, ConfigLauncher):
            self.launcher.restore_environment()
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # the next job of a multirun builds its own group

