"""The equilibrium controller of Eq. 12 and the Lightning Callback that runs it.

``PIDController`` is the arithmetic alone; ``PIDUpdate`` (the callback that runs the PID update of
k_t, Eq. 12) puts it on the module's device when fitting starts, hands k_{t-1} to the LightningModule
before each iteration, feeds it e_t afterwards, logs k, and stores the controller's full state in
checkpoints. The gains' defaults are ``ControllerConfig``'s (vaegan.config.schema).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor

from vaegan.config.schema import ControllerConfig
from vaegan.training import logged


class PIDController:
    """Velocity-form PID update of the balance term k (Eq. 12).

    k_t = clamp(k_{t-1} + ki e_t + kp (s_t - s_{t-1}) + kd (s_t - 2 s_{t-1} + s_{t-2}), 0, 1)

    where s_t is e_t smoothed by a moving average over the last ``smoothing`` errors (1 = no
    smoothing, exactly Eq. 12), because the paper takes the derivative "using multiple error
    samples". The integral term always uses the raw e_t. The error history starts at the first
    error fed in, so the first update has no proportional or derivative kick. ki is the paper's
    lambda_1 (integral), kp lambda_2 (proportional), kd lambda_3 (differential); with
    kp = kd = 0 this is BEGAN's update k_t = k_{t-1} + lambda_k e_t.

    The state is float64 tensors on one device (``to``), so the update never waits for the device:
    ``k`` is a tensor, ``update`` of a tensor returns one (of a Python float, a float).
    ``load_state_dict`` keeps the device; ``state_dict`` reads the state back as Python numbers.
    """

    def __init__(
        self,
        ki: float = ControllerConfig.ki,
        kp: float = ControllerConfig.kp,
        kd: float = ControllerConfig.kd,
        smoothing: int = ControllerConfig.smoothing,
        k_init: float = ControllerConfig.k_init,
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
        if e.device != self.k.device:  # only a controller used on its own: PIDUpdate places it
            self.to(e.device)
        window = torch.cat([self.window[1:], e.reshape(1)])
        num_errors = torch.clamp(self.num_errors + 1, max=self.smoothing)
        recent = torch.arange(self.smoothing, device=e.device) >= self.smoothing - num_errors
        s = (window * recent).sum() / num_errors  # the mean of the last `num_errors` errors
        s1 = torch.where(self.num_errors > 0, self.history[0], s)
        s2 = torch.where(self.num_errors > 0, self.history[1], s1)
        pid_terms = torch.stack([self.ki * e, self.kp * (s - s1), self.kd * (s - 2 * s1 + s2)])  # I, P, D
        k = torch.clamp(self.k + (pid_terms[0] + pid_terms[1] + pid_terms[2]), self.k_min, self.k_max)
        new = {"k": k, "window": window, "num_errors": num_errors, "history": torch.stack([s, s1]),
               "_pid_terms": pid_terms}
        for name, value in new.items():
            setattr(self, name, value if stepped is None else torch.where(stepped, value, getattr(self, name)))
        return self.k.item() if host else self.k

    @property
    def pid_terms(self) -> dict[str, float]:
        """The I, P and D terms of the last update, as Python floats (one read from the device)."""
        return dict(zip("IPD", self._pid_terms.tolist()))

    @property
    def pid_term_tensors(self) -> dict[str, Tensor]:
        """The I, P and D terms of the last update, on the device."""
        return dict(zip("IPD", self._pid_terms.unbind()))

    def to(self, device: torch.device | str) -> "PIDController":
        """Moves the state to ``device``, in place."""
        for name in ("k", "window", "num_errors", "history", "_pid_terms"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def state_dict(self) -> dict[str, Any]:
        """Python numbers; the keys (k, window, history, terms) are those of every checkpoint so far."""
        num_errors = int(self.num_errors)
        window = self.window.tolist()[self.smoothing - num_errors:]
        history = self.history.tolist() if num_errors else []
        return {"k": self.k.item(), "window": window, "history": history, "terms": self.pid_terms}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        as64 = dict(dtype=torch.float64, device=self.k.device if hasattr(self, "k") else None)
        window = list(state["window"])[-self.smoothing:]
        self.k = torch.tensor(float(state["k"]), **as64)
        self.window = torch.tensor([0.0] * (self.smoothing - len(window)) + window, **as64)
        self.num_errors = torch.tensor(len(window), **as64)  # errors in the window, up to `smoothing`
        self.history = torch.tensor((list(state["history"]) + [0.0, 0.0])[:2], **as64)  # [s_{t-1}, s_{t-2}]
        self._pid_terms = torch.tensor([state["terms"][name] for name in "IPD"], **as64)


class PIDUpdate(L.Callback):
    """Runs the PID update of k_t (Eq. 12) once per iteration (Algorithm 1, line 12) around the
    training step. ``controller_kwargs``: ``PIDController``'s, i.e. ``model.controller``."""

    def __init__(self, **controller_kwargs: Any):
        self.controller = PIDController(**controller_kwargs)

    @property
    def state_key(self) -> str:
        """The key of its state in checkpoints: the class's name before it was renamed, so that
        checkpoints written before and after the rename resume alike."""
        return "EquilibriumCallback"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # On the module's device before the first iteration (a restored state too: Lightning loads
        # it before this hook, or after it, where load_state_dict keeps the device).
        self.controller.to(pl_module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        pl_module.k = self.controller.k  # k_{t-1} for L_dis (Eq. 13)

    def on_train_batch_end(self, trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        k = self.controller.update(outputs["e"], outputs["stepped"])  # on the device; a skipped iteration keeps k
        if pl_module.is_logging_iteration():
            pl_module.log(logged.K, k.float())
            pl_module.log_dict({logged.pid_term(name): v.float() for name, v in self.controller.pid_term_tensors.items()})

    def state_dict(self) -> dict[str, Any]:
        return self.controller.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.controller.load_state_dict(state_dict)
