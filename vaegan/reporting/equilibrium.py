"""Equilibrium diagnostics of one run: how fast the controller drives e_t to 0, and where k_t sits.

For e_t logged at steps s_0 < s_1 < ... < s_last (iteration indices, logged every n iterations):

- window (iterations): e_smooth(s) is the trailing moving average of e over the samples whose step
  lies in (s - window, s]; at the start it averages as many as exist (the window expands). With
  samples every n iterations a window of 50 iterations averages ~50/n samples; window=1 means no
  smoothing.
- e0 (``initial_error``): e_smooth at the first sample whose window is full (step >= s_0 + window - 1),
  or the mean of all e when the run is shorter than the window.
- band: ``band`` when given (absolute, in units of e), else band_fraction * |e0|; when that is 0
  (e0 == 0) a tiny positive EPSILON, so that a run starting at 0 and staying there settles at once.
- settling_iteration: the first logged step s with |e_smooth| <= band at s and at every later logged
  step; None (never settled) when the last sample is outside the band.
- overshoot: with sgn = sign(e0), after the first sample where sgn * e_smooth < 0 (e crossed 0), the
  largest -sgn * e_smooth over the remaining samples, as a fraction of |e0| (0.25 = 25 %); 0 when e
  never crosses 0, or when e0 == 0.
- tail: the samples with step >= s_last - tail * (s_last - s_0). steady_state_error is the mean
  |e_smooth| over them, bias the mean raw e over them (signed).
- oscillation: the sign changes of e_smooth (exact zeros skipped: consecutive non-zero signs are
  compared) per 1,000 iterations, iterations = s_last - s_0 + 1.
- k_at_0, k_at_1: the fractions of the logged k_t with k <= pin_tol and with k >= 1 - pin_tol
  (NaN when no k is logged).

Rows whose step or e is NaN are left out of the e diagnostics, NaN values of k out of the k fractions.
numpy only: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vaegan.training import logged

EPSILON = 1e-12  # the band when band_fraction * |e0| is 0


@dataclass
class Diagnostics:
    """The equilibrium diagnostics of one run (definitions: the module docstring)."""

    iterations: int  # span of logged iterations (last step - first step + 1)
    band: float  # the settling band used (absolute, in units of e)
    initial_error: float  # e0
    settling_iteration: int | None  # None = never settled
    overshoot: float  # fraction of |e0| (0.25 = 25 %), 0 when e never crosses 0
    steady_state_error: float  # mean |e_smooth| over the tail
    bias: float  # mean raw e over the tail (signed)
    oscillation: float  # sign changes of e_smooth per 1,000 iterations
    k_at_0: float  # fraction of logged k with k <= pin_tol
    k_at_1: float  # fraction of logged k with k >= 1 - pin_tol


def _check_length(name: str, x: np.ndarray, steps: np.ndarray) -> None:
    """ValueError unless ``x`` has one value per step."""
    if x.shape != steps.shape:
        raise ValueError(f"{name} has {x.size} values but steps has {steps.size}: they must have the same length")


def _check_increasing(steps: np.ndarray) -> None:
    """ValueError unless the steps strictly increase."""
    if steps.size > 1 and not np.all(np.diff(steps) > 0):
        at = int(np.flatnonzero(~(np.diff(steps) > 0))[0]) + 1
        raise ValueError(f"steps must be strictly increasing (after dropping NaN rows); step {steps[at]:g} "
                         f"at position {at} follows {steps[at - 1]:g}")


def _check_options(window: float, band: float | None, band_fraction: float, tail: float, pin_tol: float) -> None:
    """ValueError naming the first option out of its range."""
    if not window >= 1:
        raise ValueError(f"window={window}: must be >= 1 (iterations; 1 = no smoothing)")
    if band is not None and not band >= 0:
        raise ValueError(f"band={band}: must be >= 0 (absolute, in units of e), or None for band_fraction * |e0|")
    if not band_fraction >= 0:
        raise ValueError(f"band_fraction={band_fraction}: must be >= 0")
    if not 0 < tail <= 1:
        raise ValueError(f"tail={tail}: must lie in (0, 1] (the fraction of the run that is the steady state)")
    if not 0 <= pin_tol < 0.5:
        raise ValueError(f"pin_tol={pin_tol}: must lie in [0, 0.5)")


def smooth(steps: np.ndarray, e: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average of ``e`` over the samples whose step lies in (s - window, s]."""
    steps, e = np.asarray(steps, dtype=float), np.asarray(e, dtype=float)
    _check_length("e", e, steps)
    _check_increasing(steps)
    if not window >= 1:
        raise ValueError(f"window={window}: must be >= 1 (iterations; 1 = no smoothing)")
    n = e.size
    if n == 0:
        return e.copy()
    lo = np.searchsorted(steps, steps - window, side="right")  # first sample inside each window
    bounds = np.empty(2 * n, dtype=np.intp)
    bounds[0::2], bounds[1::2] = lo, np.arange(1, n + 1)
    sums = np.add.reduceat(np.append(e, 0.0), bounds)[0::2]  # plain sums: exact for window=1, no drift
    return sums / (np.arange(1, n + 1) - lo)


def _initial_error(steps: np.ndarray, e: np.ndarray, e_smooth: np.ndarray, window: float) -> float:
    """e0: e_smooth once the window is full, else the mean of all e."""
    full = np.flatnonzero(steps >= steps[0] + window - 1)
    return float(e_smooth[full[0]]) if full.size else float(np.mean(e))


def _settling(steps: np.ndarray, e_smooth: np.ndarray, band: float) -> int | None:
    """First step from which |e_smooth| stays within the band; None when the last sample is outside."""
    outside = np.flatnonzero(np.abs(e_smooth) > band)
    if not outside.size:
        return int(steps[0])
    return None if outside[-1] == e_smooth.size - 1 else int(steps[outside[-1] + 1])


def _overshoot(e_smooth: np.ndarray, e0: float) -> float:
    """Largest excursion past 0 against the sign of e0, after the first crossing, over |e0|."""
    sgn = float(np.sign(e0))
    crossed = np.flatnonzero(sgn * e_smooth < 0)
    if sgn == 0 or not crossed.size:
        return 0.0
    return float(np.max(-sgn * e_smooth[crossed[0]:]) / abs(e0))


def sign_changes(x: np.ndarray) -> int:
    """Number of sign changes of ``x``, exact zeros skipped."""
    signs = np.sign(x)
    signs = signs[signs != 0]
    return int(np.count_nonzero(signs[1:] != signs[:-1]))


def _pinned(k: np.ndarray, pin_tol: float) -> tuple[float, float]:
    """Fractions of the non-NaN k at 0 and at 1 (within pin_tol); NaN without k."""
    k = k[~np.isnan(k)]
    if not k.size:
        return float("nan"), float("nan")
    return float(np.mean(k <= pin_tol)), float(np.mean(k >= 1 - pin_tol))


def diagnose(steps: np.ndarray, e: np.ndarray, k: np.ndarray, *, window: int = 50, band: float | None = None,
             band_fraction: float = 0.1, tail: float = 0.2, pin_tol: float = 1e-6) -> Diagnostics:
    """The Diagnostics of e_t and k_t logged at ``steps`` (one value of e and of k per step, NaN = not
    logged); definitions in the module docstring. ValueError on inconsistent input."""
    steps, e, k = (np.asarray(x, dtype=float).ravel() for x in (steps, e, k))
    _check_length("e", e, steps)
    _check_length("k", k, steps)
    _check_options(window, band, band_fraction, tail, pin_tol)
    ok = ~(np.isnan(steps) | np.isnan(e))
    steps, e = steps[ok], e[ok]
    if not e.size:
        raise ValueError("e is empty: no logged error (after dropping NaN rows)")
    _check_increasing(steps)
    e_smooth = smooth(steps, e, window)
    e0 = _initial_error(steps, e, e_smooth, window)
    width = float(band if band is not None else band_fraction * abs(e0)) or EPSILON
    in_tail = steps >= steps[-1] - tail * (steps[-1] - steps[0])
    iterations = int(steps[-1] - steps[0]) + 1
    k_at_0, k_at_1 = _pinned(k, pin_tol)
    return Diagnostics(
        iterations=iterations, band=width, initial_error=e0, settling_iteration=_settling(steps, e_smooth, width),
        overshoot=_overshoot(e_smooth, e0), steady_state_error=float(np.mean(np.abs(e_smooth[in_tail]))),
        bias=float(np.mean(e[in_tail])), oscillation=sign_changes(e_smooth) / iterations * 1000,
        k_at_0=k_at_0, k_at_1=k_at_1)


def error_curve(curves: dict[str, np.ndarray], window: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, e_smooth) of a run's ``train/e`` (NaN rows dropped); None when no e is logged."""
    e = curves.get(logged.E)
    if e is None or not (ok := ~(np.isnan(e) | np.isnan(curves["step"]))).any():
        return None
    return curves["step"][ok], smooth(curves["step"][ok], e[ok], window)


def diagnose_curves(curves: dict[str, np.ndarray], **kwargs) -> Diagnostics | None:
    """``diagnose`` of a run's ``step``, ``train/e`` and ``train/k`` columns (``read_curves``); None
    when no e is logged (a VAE without discriminator). ``kwargs`` go to ``diagnose``."""
    e = curves.get(logged.E)
    if e is None or np.isnan(e).all():
        return None
    return diagnose(curves["step"], e, curves.get(logged.K, np.full(e.shape, np.nan)), **kwargs)
