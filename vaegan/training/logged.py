"""The names of what a run logs: ``metrics.csv``'s columns and W&B's keys.

The code that logs a value and the code that reads it back (the W&B dashboard, reports, sweep
objectives) both take its name from here, so a rename is one edit and a dashboard panel cannot
point at a key that no run writes (tests/test_dashboard.py checks them against a real run).
"""

from __future__ import annotations

STEP = "trainer/global_step"  # W&B's x-axis: the iteration from 0, as metrics.csv's step column


def train(name: str) -> str:
    """A value of the training step, every ``trainer.log_every_n_steps`` iterations."""
    return f"train/{name}"


def metric(name: str) -> str:
    """A value of in-training evaluation (``vaegan.metrics.fidelity.evaluate_generator``)."""
    return f"metrics/{name}"


def val(name: str) -> str:
    """A latent-use figure on fixed held-out images (``vaegan.metrics.callback.LatentUseMonitor``)."""
    return f"val/{name}"


def image(name: str) -> str:
    """An image panel (``vaegan.training.callbacks.ImageLogger``)."""
    return f"images/{name}"


def grad_norm(network: str) -> str:
    return train(f"grad_norm_{network}")


def lr(network: str) -> str:
    return train(f"lr_{network}")


def pid_term(name: str) -> str:
    """The controller's I, P or D term of Eq. 12 (``train/k_I``, ...)."""
    return train(f"k_{name}")


NETWORKS = ("encoder", "generator", "discriminator")
LOSSES = tuple(train(name) for name in ("L_d", "L_g", "L_v", "L_e", "L_n", "L_s"))  # the six terms of Eqs. 4-9
E, K, M = train("e"), train("k"), train("M")  # Eq. 11's e_t, Eq. 12's k_t, Sec. 3.4's convergence measure
PID_TERMS = tuple(pid_term(name) for name in "PID")
IMAGES_PER_S, ITERATIONS_PER_S = train("images_per_s"), train("iterations_per_s")
SKIPPED = train("skipped_iterations")
FID, KID, IS = metric("fid"), metric("kid_mean"), metric("is_mean")
LATENT_USE = ("kl_nats", "active_units", "psnr", "ssim", "psnr_mean_image")  # vaegan.metrics.latent_use.LatentUse
PANELS = ("samples", "reconstructions", "discriminator", "interpolations")  # vaegan.latent.panels.training_panels
EQUILIBRIUM_CHART = "equilibrium"  # the ControllerChart's W&B custom chart (a table of e_t, k_t and 0)

# What each W&B run's summary keeps of a key (define_metric): the best value and the last, as
# "<key>.min" or "<key>.max" and "<key>.last" in the run table; the other keys keep their last value.
SUMMARIES = {M: "min,last", FID: "min,last", KID: "min,last", IS: "max,last",
             **{val(name): "max,last" for name in ("kl_nats", "psnr", "ssim")}}  # latent use: higher is better


def best(key: str) -> str:
    """The summary path of ``key``'s best value (``train/M.min``), or its last value."""
    return f"{key}.{SUMMARIES[key].split(',')[0]}" if key in SUMMARIES else key
