"""vaegan.training.logged: the names every logger and reader shares agree with what the code produces
(the latent-use figures, the image panels, the controller's terms, the losses of the objective table)."""

from __future__ import annotations

import dataclasses

import torch

from vaegan.metrics.latent_use import LatentUse
from vaegan.models import losses
from vaegan.models.controller import PIDController
from vaegan.models.module import VAEGANModule
from vaegan.latent import panels
from vaegan.training import logged


def test_key_families_have_their_prefixes():
    assert (logged.train("e"), logged.metric("fid"), logged.val("psnr"), logged.image("samples")) == (
        "train/e", "metrics/fid", "val/psnr", "images/samples")
    assert logged.grad_norm("encoder") == "train/grad_norm_encoder" and logged.lr("generator") == "train/lr_generator"
    assert logged.PID_TERMS == ("train/k_P", "train/k_I", "train/k_D")


def test_the_latent_use_names_are_latent_uses_logged_fields():
    fields = [f.name for f in dataclasses.fields(LatentUse)]
    logged_fields = LatentUse(**{name: 0 for name in fields}).as_dict()
    assert list(logged_fields) == list(logged.LATENT_USE)


def test_the_six_losses_are_the_terms_of_the_objective_table():
    parts, _ = losses.objective_table(alpha=0.5, beta=1.0, gamma=0.5, k=0.1)
    terms = {term for weights in parts.values() for term in weights}
    assert {logged.train(t) for t in terms} == set(logged.LOSSES) and len(logged.LOSSES) == 6


def test_the_panel_names_are_those_training_panels_draws():
    module = VAEGANModule(image_size=16, channels=1, width=4, latent_dim=8, seed=0)
    z, x = torch.randn(4, 8), torch.rand(4, 1, 16, 16) * 2 - 1
    assert tuple(panels.training_panels(module, z, x, pairs=1, steps=3)) == logged.PANELS


def test_the_controllers_terms_are_the_logged_ones():
    assert {logged.pid_term(name) for name in PIDController().pid_terms} == set(logged.PID_TERMS)


def test_best_is_the_summary_path_of_the_best_value():
    assert logged.best(logged.M) == "train/M.min" and logged.best(logged.IS) == "metrics/is_mean.max"
    assert logged.best(logged.E) == "train/e"  # no summary of its own: the last value
