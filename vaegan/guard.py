"""The divergence guard: an iteration whose losses or gradients are not finite is skipped (no
weights, optimizer state or k change), counted, and after ``max_in_a_row`` such iterations in a
row training stops with a message naming what went bad and where, before a checkpoint is written,
so the last good ``last.ckpt`` survives."""

from __future__ import annotations

import logging

import torch
from torch import Tensor

log = logging.getLogger(__name__)


class DivergenceError(RuntimeError):
    """Training stopped after too many non-finite iterations in a row."""


class DivergenceGuard:
    def __init__(self, max_in_a_row: int = 10):
        if max_in_a_row < 1:
            raise ValueError(f"model.guard.max_bad_in_a_row={max_in_a_row}: must be >= 1")
        self.max_in_a_row = max_in_a_row
        self.skipped = 0  # all skipped iterations of the run
        self.in_a_row = 0
        self.first_bad: tuple[int, list[str]] | None = None  # (iteration, names) starting the current run of skips

    def check(self, iteration: int, values: dict[str, Tensor]) -> bool:
        """True when every value (scalars: losses, gradient norms) is finite, with one read from the
        device; else counts iteration ``iteration`` (1-based) as skipped, or raises DivergenceError."""
        finite = torch.isfinite(torch.stack([v.detach().float().reshape(()) for v in values.values()]))
        if bool(finite.all()):
            self.in_a_row, self.first_bad = 0, None
            return True
        bad = [name for name, ok in zip(values, finite.tolist()) if not ok]
        self.skipped += 1
        self.in_a_row += 1
        if self.first_bad is None:
            self.first_bad = (iteration, bad)
        log.warning(f"iteration {iteration}: {', '.join(bad)} not finite; iteration skipped ({self.skipped} so far)")
        if self.in_a_row >= self.max_in_a_row:
            start, names = self.first_bad
            raise DivergenceError(
                f"{', '.join(names)} went non-finite at iteration {start} and the {self.in_a_row} iterations "
                f"{start}-{iteration} were all skipped (model.guard.max_bad_in_a_row={self.max_in_a_row}). "
                f"The weights are those after iteration {start - 1}; checkpoints/last.ckpt is the last one written "
                "before. Resume from it with a lower learning rate or gradient clipping (model.optimizer.clip)")
        return False

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "in_a_row": self.in_a_row,
                "first_bad": None if self.first_bad is None else [self.first_bad[0], list(self.first_bad[1])]}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.in_a_row = int(state["skipped"]), int(state["in_a_row"])
        self.first_bad = None if state["first_bad"] is None else (int(state["first_bad"][0]), list(state["first_bad"][1]))
