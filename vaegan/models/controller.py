"""The equilibrium controller of Eq. 12 and the Lightning Callback that runs it.

``PIDController`` is the arithmetic alone; ``EquilibriumCallback`` puts it on the module's device
when fitting starts, hands k_{t-1} to the LightningModule before each iteration, feeds it e_t
afterwards, logs k, and stores the controller's full state in checkpoints.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor


class PIDController:
    """Velocity-form PID update of the balance term k (Eq. 12).

    k_t = clamp(k_{t-1} + ki e_t + kp (s_t - s_{t-1}) + kd (s_t - 2 s_{t-1} + s_{t-2}), 0, 1)

    where s_t is e_t smoothed by a moving average over the last ``smoothing`` errors (1 = no
    smoothing, exactly Eq. 12), because the paper takes the derivative "using multiple error
    samples". The integral term always uses the raw e_t. The error history starts at the first
    error seen, so the first update has no proportional or derivative kick. ki is the paper's
    lambda_1 (integral), kp lambda_2 (proportional), kd lambda_3 (differential); with
    kp = kd = 0 this is BEGAN's update k_t = k_{t-1} + lambda_k e_t.

    The state is float64 tensors on one device (``to``), so the update never waits for the device:
    ``k`` is a tensor, ``update`` of a tensor returns one (of a Python float, a float).
    ``load_state_dict`` keeps the device; ``state_dict`` reads the state back as Python numbers.
    """

    def __init__(
        self,
        ki: float = 1e-3,
        kp: float = 1e-5,
        kd: float = 1e-5,
        smoothing: int = 1,
        k_init: float = 0.0,
        k_min: float = 0.0,
        k_max: float = 1.0,
    ):
        if smoothing < 1:
            raise ValueError(f"model.controller.smoothing={smoothing}: must be >= 1 (1 disables smoothing)")
        if not k_min <= k_init <= k_max:
            raise ValueError(f"model.controller.k_init={k_init} must lie in [{k_min}, {k_max}]")
        self.ki, self.kp, self.kd = ki, kp, kd
        self.smoothing, self.k_min, self.k_max = smoothing, k_min, k_max
        self.load_state_dict({"k": k_init, "window": [], "history": [], "terms": {"P": 0.0, "I": 0.0, "D": 0.0}})

    def update(self, e: Tensor | float, stepped: Tensor | None = None) -> Tensor | float:
        """Feed e_t, return k_t. ``stepped`` (a bool tensor, read on the device): where it is False
        the iteration was skipped and the state stays as it was."""
        host = not isinstance(e, Tensor)
        e = torch.as_tensor(e, dtype=torch.float64, device=self.k.device if host else e.device).reshape(())
        if e.device != self.k.device:  # only a controller used on its own: EquilibriumCallback places it
            self.to(e.device)
        window = torch.cat([self.window[1:], e.reshape(1)])
        seen = torch.clamp(self.seen + 1, max=self.smoothing)
        recent = torch.arange(self.smoothing, device=e.device) >= self.smoothing - seen
        s = (window * recent).sum() / seen  # the mean of the last `seen` errors
        s1 = torch.where(self.seen > 0, self.history[0], s)
        s2 = torch.where(self.seen > 0, self.history[1], s1)
        terms = torch.stack([self.ki * e, self.kp * (s - s1), self.kd * (s - 2 * s1 + s2)])  # I, P, D
        k = torch.clamp(self.k + (terms[0] + terms[1] + terms[2]), self.k_min, self.k_max)
        new = {"k": k, "window": window, "seen": seen, "history": torch.stack([s, s1]), "_terms": terms}
        for name, value in new.items():
            setattr(self, name, value if stepped is None else torch.where(stepped, value, getattr(self, name)))
        return self.k.item() if host else self.k

    @property
    def terms(self) -> dict[str, float]:
        """The I, P and D terms of the last update, as Python floats (one read from the device)."""
        return dict(zip("IPD", self._terms.tolist()))

    @property
    def term_tensors(self) -> dict[str, Tensor]:
        """The I, P and D terms of the last update, on the device."""
        return dict(zip("IPD", self._terms.unbind()))

    def to(self, device: torch.device | str) -> "PIDController":
        """Moves the state to ``device``, in place."""
        for name in ("k", "window", "seen", "history", "_terms"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def state_dict(self) -> dict[str, Any]:
        seen = int(self.seen)
        window = self.window.tolist()[self.smoothing - seen:]
        history = self.history.tolist() if seen else []
        return {"k": self.k.item(), "window": window, "history": history, "terms": self.terms}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        as64 = dict(dtype=torch.float64, device=self.k.device if hasattr(self, "k") else None)
        window = list(state["window"])[-self.smoothing:]
        self.k = torch.tensor(float(state["k"]), **as64)
        self.window = torch.tensor([0.0] * (self.smoothing - len(window)) + window, **as64)
        self.seen = torch.tensor(len(window), **as64)  # errors in the window, up to `smoothing`
        self.history = torch.tensor((list(state["history"]) + [0.0, 0.0])[:2], **as64)  # [s_{t-1}, s_{t-2}]
        self._terms = torch.tensor([state["terms"][name] for name in "IPD"], **as64)


class EquilibriumCallback(L.Callback):
    """Runs the controller once per iteration (Algorithm 1, line 12) around the training step."""

    def __init__(self, **controller_kwargs: Any):
        self.controller = PIDController(**controller_kwargs)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # On the module's device before the first iteration (a restored state too: Lightning loads
        # it before this hook, or after it, where load_state_dict keeps the device).
        self.controller.to(pl_module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        pl_module.k = self.controller.k  # k_{t-1} for L_dis (Eq. 13)

    def on_train_batch_end(self, trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        k = self.controller.update(outputs["e"], outputs["stepped"])  # on the device; a skipped iteration keeps k
        if pl_module.is_logging_iteration():
            pl_module.log("train/k", k.float())
            pl_module.log_dict({f"train/k_{name}": v.float() for name, v in self.controller.term_tensors.items()})

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.controller.load_state_dict(state_dict)
