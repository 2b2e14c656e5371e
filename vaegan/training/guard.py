"""The divergence guard: an iteration whose losses or gradients are not finite is skipped (no
weights, optimizer state or k change), counted, and after ``max_bad_in_a_row`` (``model.guard``)
such iterations in a row training stops with a message naming what went bad and where, before a
checkpoint is written, so the last good ``last.ckpt`` survives.

The bookkeeping lives on the device, in buffers of the guard (an ``nn.Module`` inside the
LightningModule, so it moves with the model: ``module.to(device)``, Lightning's placement, a
checkpoint loaded anywhere). ``record`` decides whether an iteration steps without waiting
for the device, and ``poll`` (every few iterations) reads the counts back, warns and raises.
Once ``max_bad_in_a_row`` is reached no iteration steps until the next poll stops training, so the
weights stay those before the run of bad iterations however late the poll comes.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from vaegan.config.schema import GuardConfig

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """Training stopped after too many non-finite iterations in a row."""


class DivergenceGuard(nn.Module):
    # Device counters, one int64 each; `first` is the iteration starting the current run of skips,
    # `trip_start`/`trip_end` the run that reached max_bad_in_a_row (0 = none yet).
    COUNTERS = ("skipped", "in_a_row", "first", "trip_start", "trip_end")

    def __init__(self, max_bad_in_a_row: int = GuardConfig.max_bad_in_a_row):
        if max_bad_in_a_row < 1:
            raise ValueError(f"model.guard.max_bad_in_a_row={max_bad_in_a_row}: must be >= 1")
        super().__init__()
        self.max_bad_in_a_row = max_bad_in_a_row
        self.names: list[str] = []  # of the values recorded, in order
        # Not persistent: the model's state_dict stays the networks'; checkpoint_state saves these.
        self.register_buffer("counters", torch.zeros(len(self.COUNTERS), dtype=torch.int64), persistent=False)
        self.register_buffer("first_mask", torch.zeros(0, dtype=torch.bool), persistent=False)  # bad at `first`
        self.register_buffer("trip_mask", torch.zeros(0, dtype=torch.bool), persistent=False)
        self._warned = 0  # skipped iterations already reported

    def record(self, iteration: int, values: dict[str, Tensor]) -> Tensor:
        """A bool tensor on the guard's device (that of the values): True when every value (scalars:
        losses, gradient norms) is finite and no earlier run of bad iterations is pending, i.e. the
        iteration ``iteration`` (1-based) may step. Never reads from the device."""
        if list(values) != self.names:  # the first call, or other names: lay the masks out for all of them
            self._extend(list(values))
        zero = next(iter(values.values())).new_zeros((), dtype=torch.float32)
        bad = ~torch.isfinite(torch.stack([values[n].detach().float().reshape(()) if n in values else zero
                                           for n in self.names]))
        skipped, in_a_row, first, trip_start, trip_end = self.counters.unbind()
        any_bad = bad.any()
        starts = any_bad & (in_a_row == 0)
        self.first_mask = torch.where(starts, bad, self.first_mask)
        first = torch.where(starts, iteration, first)
        in_a_row = torch.where(any_bad, in_a_row + 1, 0)
        trips = (trip_end == 0) & (in_a_row >= self.max_bad_in_a_row)
        self.trip_mask = torch.where(trips, self.first_mask, self.trip_mask)
        trip_start, trip_end = torch.where(trips, first, trip_start), torch.where(trips, iteration, trip_end)
        stepped = ~any_bad & (trip_end == 0)
        self.counters = torch.stack([skipped + (~stepped).long(), in_a_row, first, trip_start, trip_end])
        return stepped

    def poll(self) -> None:
        """Reads the counts (one read from the device): warns about iterations skipped since the last
        poll, raises DivergenceError when a run of ``max_bad_in_a_row`` bad iterations was recorded."""
        skipped, in_a_row, first, trip_start, trip_end = self.counters.tolist()
        if skipped > self._warned:
            log.warning(f"{skipped - self._warned} iteration(s) skipped since the last check, {skipped} so far: "
                        f"non-finite losses or gradients (the latest run: {', '.join(self.bad_names(self.first_mask))} "
                        f"from iteration {first})")
            self._warned = skipped
        if trip_end:
            names = self.bad_names(self.trip_mask)
            raise DivergenceError(
                f"{', '.join(names)} went non-finite at iteration {trip_start} and the {trip_end - trip_start + 1} "
                f"iterations {trip_start}-{trip_end} were all skipped (model.guard.max_bad_in_a_row={self.max_bad_in_a_row}). "
                f"The weights are those after iteration {trip_start - 1}")

    def bad_names(self, mask: Tensor) -> list[str]:
        return [name for name, bad in zip(self.names, mask.tolist()) if bad]

    @property
    def skipped(self) -> int:
        return int(self.counters[0])

    @property
    def in_a_row(self) -> int:
        return int(self.counters[1])

    @property
    def first_bad(self) -> tuple[int, list[str]] | None:
        """(iteration, names) starting the current run of skipped iterations; None outside one."""
        return (int(self.counters[2]), self.bad_names(self.first_mask)) if self.in_a_row else None

    def _extend(self, names: list[str]) -> None:
        new = [name for name in names if name not in self.names]
        pad = self.first_mask.new_zeros(len(new))
        self.first_mask = torch.cat([self.first_mask, pad])
        self.trip_mask = torch.cat([self.trip_mask, pad])
        self.names = self.names + new

    # Not state_dict/load_state_dict: nn.Module's state_dict calls those of its children.
    def checkpoint_state(self) -> dict:
        """The counts as Python values, for the checkpoint (one read from the device)."""
        first = self.first_bad
        return {"skipped": self.skipped, "in_a_row": self.in_a_row,
                "first_bad": None if first is None else [first[0], list(first[1])]}

    def load_checkpoint_state(self, state: dict) -> None:
        """Restores ``checkpoint_state``, on the guard's device."""
        first = state["first_bad"] or [0, []]
        self.names = list(first[1])  # the masks are laid out again at the next record
        on_device = dict(device=self.counters.device)
        self.first_mask = torch.ones(len(self.names), dtype=torch.bool, **on_device)
        self.trip_mask = torch.zeros(len(self.names), dtype=torch.bool, **on_device)
        counts = [int(state["skipped"]), int(state["in_a_row"]), int(first[0]), 0, 0]
        self.counters = torch.tensor(counts, dtype=torch.int64, **on_device)
        self._warned = int(state["skipped"])
