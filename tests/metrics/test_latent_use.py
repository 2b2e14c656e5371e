"""The latent-use figures (KL nats, active units, PSNR, SSIM, the mean-image floor) against hand
computations, and the collapse warning on constructed collapsed and healthy encoders."""

from __future__ import annotations

import logging
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from vaegan.metrics.callback import LatentUseMonitor
from vaegan.metrics.latent_use import LatentUse, active_units, latent_use, psnr_per_image, ssim_per_image

gen = torch.Generator().manual_seed(0)
X = torch.rand(6, 3, 12, 12, generator=gen) * 2 - 1  # model input in [-1, 1]


def numpy_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean()
    return 10 * math.log10(2.0**2 / mse)


def test_active_units_on_a_constructed_code():
    base = torch.linspace(-1, 1, 100)
    mu = torch.stack([base, 0.05 * base, 0.2 * base, torch.zeros(100)], dim=1)
    variances = mu.var(0, correction=0)  # 0.34, 0.00085, 0.0136, 0
    assert variances[1] < 0.01 < variances[2]
    assert active_units(mu) == 2
    assert active_units(mu, threshold=1e-4) == 3


def test_psnr_and_ssim_match_torchmetrics_and_numpy():
    x_rec = (X + 0.1 * torch.randn(X.shape, generator=gen)).clamp(-1, 1)
    ours = psnr_per_image(x_rec, X)
    for i in range(len(X)):
        assert ours[i].item() == pytest.approx(numpy_psnr(x_rec[i].numpy(), X[i].numpy()), rel=1e-5)
        assert ours[i].item() == pytest.approx(peak_signal_noise_ratio(x_rec[i:i + 1], X[i:i + 1], data_range=2.0).item(),
                                               rel=1e-5)
    ssim = ssim_per_image(x_rec, X)
    expected = structural_similarity_index_measure(x_rec, X, data_range=2.0, kernel_size=11, reduction="none")
    torch.testing.assert_close(ssim, expected)
    assert ssim_per_image(X, X).min().item() == pytest.approx(1.0, abs=1e-5)


class Linear(nn.Module):
    """A VAE stand-in: encode gives (mu, logvar) = (x W, c), decode maps back with W's pseudo-inverse."""

    def __init__(self, scale: float, logvar: float, dim: int = 8):
        super().__init__()
        self.W = torch.randn(3 * 12 * 12, dim, generator=torch.Generator().manual_seed(1)) * scale / 20
        self.logvar, self.mean_image = logvar, X.mean(0)

    def encode(self, x):
        mu = x.flatten(1) @ self.W
        return mu, torch.full_like(mu, self.logvar)

    def decode(self, z):
        if self.W.abs().max() == 0:
            return self.mean_image.expand(len(z), -1, -1, -1)
        return (z @ torch.linalg.pinv(self.W)).view(-1, 3, 12, 12)


def test_latent_use_by_hand():
    model = Linear(scale=1.0, logvar=math.log(0.25))
    use = latent_use(model.encode, model.decode, lambda: X.split(4))
    mu, logvar = model.encode(X)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1).mean()
    assert use.kl_nats == pytest.approx(kl.item(), rel=1e-5)
    assert use.active_units == active_units(mu) and use.latent_dim == 8 and use.images == 6
    x_rec = model.decode(mu)
    assert use.psnr == pytest.approx(np.mean([numpy_psnr(x_rec[i].numpy(), X[i].numpy()) for i in range(6)]), rel=1e-4)
    mean_image = X.mean(0).numpy()
    assert use.psnr_mean_image == pytest.approx(np.mean([numpy_psnr(mean_image, X[i].numpy()) for i in range(6)]), rel=1e-5)
    assert use.ssim == pytest.approx(ssim_per_image(x_rec, X).mean().item(), rel=1e-5)


def test_collapse_rule():
    healthy = LatentUse(kl_nats=80.0, active_units=60, latent_dim=64, psnr=20.0, ssim=0.5, psnr_mean_image=12.0, images=9)
    assert healthy.collapse(10.0, 3.0) is None
    few_nats = LatentUse(3.7, 60, 64, 15.7, 0.3, 11.9, 9)  # today's collapse: 60 "active" units, 3.7 nats, +3.8 dB
    assert "KL 3.7 nats" in few_nats.collapse(10.0, 3.0)
    near_mean = LatentUse(50.0, 64, 64, 13.0, 0.2, 12.0, 9)
    assert "+1.00 dB" in near_mean.collapse(10.0, 3.0)


class FakeModule(nn.Module):
    def __init__(self, model: Linear, iteration: int):
        super().__init__()
        self.model, self.iteration = model, iteration
        self.hparams = {"kl_reduction": "mean", "gamma": 0.1}
        self.device = torch.device("cpu")

    def encode(self, x):
        return self.model.encode(x)

    def decode(self, z):
        return self.model.decode(z)


class RecordingLogger:
    def __init__(self):
        self.rows = []

    def log_metrics(self, metrics, step):
        self.rows.append((step, metrics))


def monitor_on(model: Linear, iteration: int, **kwargs):
    monitor = LatentUseMonitor(every_n_iterations=10, warn_after=100, **kwargs)
    monitor.x = X
    trainer = SimpleNamespace(loggers=[RecordingLogger()], callback_metrics={}, should_stop=False)
    return monitor, trainer, FakeModule(model, iteration)


COLLAPSED = Linear(scale=0.0, logvar=0.0)  # every image -> N(0, I), decoded to the mean image
HEALTHY = Linear(scale=20.0, logvar=math.log(1e-2), dim=3 * 12 * 12)  # invertible: exact reconstructions


def test_monitor_logs_to_every_logger_and_warns_once_on_a_collapsed_encoder(caplog):
    monitor, trainer, module = monitor_on(COLLAPSED, iteration=100)
    with caplog.at_level(logging.WARNING, logger="vaegan.metrics.callback"):
        use = monitor.measure(trainer, module)
        module.iteration = 110
        monitor.measure(trainer, module)
    assert use.kl_nats == 0.0 and use.psnr == pytest.approx(use.psnr_mean_image)
    step, logged = trainer.loggers[0].rows[0]
    assert step == 99 and set(logged) == {"val/kl_nats", "val/active_units", "val/psnr", "val/ssim", "val/psnr_mean_image"}
    assert float(trainer.callback_metrics["val/kl_nats"]) == 0.0
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "model.kl_reduction=elbo (now mean)" in warnings[0] and "iteration 100" in warnings[0]
    assert not trainer.should_stop


def test_monitor_is_silent_on_a_healthy_encoder_and_before_the_warm_up(caplog):
    with caplog.at_level(logging.WARNING, logger="vaegan.metrics.callback"):
        monitor, trainer, module = monitor_on(HEALTHY, iteration=500)
        use = monitor.measure(trainer, module)
        monitor, trainer, module = monitor_on(COLLAPSED, iteration=90)  # before warn_after
        monitor.measure(trainer, module)
    assert use.kl_nats > 10 and use.psnr_gain > 3
    assert not caplog.records


def test_monitor_can_stop_a_collapsed_run(caplog):
    monitor, trainer, module = monitor_on(COLLAPSED, iteration=200, stop_if_collapsed=True)
    with caplog.at_level(logging.WARNING, logger="vaegan.metrics.callback"):
        monitor.measure(trainer, module)
    assert trainer.should_stop and "stopping at iteration 200" in caplog.records[0].getMessage()


# ------------------------------------------------------------------------------ real data
@pytest.mark.slow
def test_the_default_convention_keeps_its_code_on_real_faces(compose_cfg, tmp_path):
    """200 iterations of +experiment=celeba_cpu with its defaults, measured on 256 held-out faces by
    the in-training monitor. The earlier default (kl_reduction=mean, docs/model.md, The loss convention)
    fails both bounds there: measured, 5.6 nats per image and +2.3 dB over the mean image (64 nats and
    +3.6 dB for the default). At 300 iterations it gave 5.7 nats and +2.7 dB (the default 71 nats, +4.3 dB):
    200 is as far from the 3 dB bound on either side, and a third shorter."""
    import csv

    from tests.conftest import require_shared
    from vaegan.training.train import train

    npz = require_shared("celeba", "celeba_64.npz")
    torch.set_num_threads(2)
    cfg = compose_cfg(["+experiment=celeba_cpu", f"data.root={npz}", "iterations=200",
                       "callbacks.images.every_n_iterations=200", "callbacks.progress_bar.enabled=false",
                       "trainer.enable_model_summary=false"], tmp_path)
    assert cfg.model.kl_reduction == "elbo"
    train(cfg)
    row = next(r for r in csv.DictReader(open(tmp_path / "metrics.csv")) if r.get("val/kl_nats"))
    kl, gain = float(row["val/kl_nats"]), float(row["val/psnr"]) - float(row["val/psnr_mean_image"])
    assert kl >= 20, f"KL {kl:.1f} nats per image"
    assert gain >= 3.0, f"PSNR {gain:+.2f} dB over the mean image"
    assert int(float(row["val/active_units"])) >= cfg.model.latent_dim // 2
