"""The equilibrium controller of Eq. 12 and the Lightning Callback that runs it.

``PIDController`` is the arithmetic alone; ``EquilibriumCallback`` hands k_{t-1} to the
LightningModule before each iteration, feeds it e_t afterwards, logs k, and stores the
controller's full state in checkpoints.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import lightning as L


class PIDController:
    """Velocity-form PID update of the balance term k (Eq. 12).

    k_t = clamp(k_{t-1} + ki e_t + kp (s_t - s_{t-1}) + kd (s_t - 2 s_{t-1} + s_{t-2}), 0, 1)

    where s_t is e_t smoothed by a moving average over the last ``smoothing`` errors (1 = no
    smoothing, exactly Eq. 12), because the paper takes the derivative "using multiple error
    samples". The integral term always uses the raw e_t. The error history starts at the first
    error seen, so the first update has no proportional or derivative kick. ki is the paper's
    lambda_1 (integral), kp lambda_2 (proportional), kd lambda_3 (differential); with
    kp = kd = 0 this is BEGAN's update k_t = k_{t-1} + lambda_k e_t.
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
        self.k = float(k_init)
        self.window: deque[float] = deque(maxlen=smoothing)  # raw errors behind s_t
        self.history: list[float] = []  # [s_{t-1}, s_{t-2}] once seen
        self.terms = {"P": 0.0, "I": 0.0, "D": 0.0}

    def update(self, e: float) -> float:
        """Feed e_t, return k_t."""
        e = float(e)
        self.window.append(e)
        s = sum(self.window) / len(self.window)
        s1 = self.history[0] if self.history else s
        s2 = self.history[1] if len(self.history) > 1 else s1
        self.terms = {"I": self.ki * e, "P": self.kp * (s - s1), "D": self.kd * (s - 2 * s1 + s2)}
        self.k = min(self.k_max, max(self.k_min, self.k + sum(self.terms.values())))
        self.history = [s, s1]
        return self.k

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k, "window": list(self.window), "history": list(self.history), "terms": dict(self.terms)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.k = float(state["k"])
        self.window = deque(state["window"], maxlen=self.smoothing)
        self.history = list(state["history"])
        self.terms = dict(state["terms"])


class EquilibriumCallback(L.Callback):
    """Runs the controller once per iteration (Algorithm 1, line 12) around the training step."""

    def __init__(self, **controller_kwargs: Any):
        self.controller = PIDController(**controller_kwargs)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        pl_module.k = self.controller.k  # k_{t-1} for L_dis (Eq. 13)

    def on_train_batch_end(self, trainer, pl_module, outputs: Any, batch: Any, batch_idx: int) -> None:
        k = self.controller.update(outputs["e"].item()) if outputs["stepped"] else self.controller.k  # skipped: k stays
        pl_module.log("train/k", k, prog_bar=True)
        pl_module.log_dict({f"train/k_{name}": v for name, v in self.controller.terms.items()})

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.controller.load_state_dict(state_dict)
