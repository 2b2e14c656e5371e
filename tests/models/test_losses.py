"""Each equation against values computed by hand on tiny tensors."""

import math

import pytest
import torch

from vaegan.models import losses

t = torch.tensor


def test_content_loss_is_mean_absolute_error():  # Eq. 2
    x = t([[0.0, 1.0], [-1.0, 0.5]])
    x_v = t([[0.5, 1.0], [1.0, 0.0]])
    # |diffs| = 0.5, 0, 2, 0.5 -> mean 0.75
    assert losses.content_loss(x, x_v).item() == pytest.approx(0.75)


def test_kl_matches_closed_form_by_hand():  # Eq. 3
    mu = t([[1.0, 0.0]])
    logvar = t([[0.0, math.log(4.0)]])
    # KL per dim = 0.5 (sigma^2 + mu^2 - 1 - log sigma^2): dim 0 -> 0.5, dim 1 -> 0.5 (3 - ln 4)
    per_dim = [0.5, 0.5 * (3 - math.log(4.0))]
    assert losses.kl_loss(mu, logvar, "mean").item() == pytest.approx(sum(per_dim) / 2)
    assert losses.kl_loss(mu, logvar, "sum_latent").item() == pytest.approx(sum(per_dim))


def test_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(5, 3), torch.ones(5, 3))
    expected = torch.distributions.kl_divergence(q, p)
    assert torch.allclose(losses.kl_loss(mu, logvar, "mean"), expected.mean(), atol=1e-6)
    assert torch.allclose(losses.kl_loss(mu, logvar, "sum_latent"), expected.sum(1).mean(), atol=1e-6)
    with pytest.raises(ValueError, match="elbo, mean or sum_latent"):
        losses.kl_loss(mu, logvar, "sum")


def test_kl_is_zero_at_the_prior():
    for reduction in ("mean", "sum_latent"):
        assert losses.kl_loss(torch.zeros(2, 4), torch.zeros(2, 4), reduction).item() == 0.0
    assert losses.kl_loss(torch.zeros(2, 4), torch.zeros(2, 4), "elbo", pixels=12).item() == 0.0


def test_kl_elbo_is_the_per_image_kl_over_the_pixel_count_by_hand():
    # image 0: dims (mu 1, var 1) -> 0.5 and (mu 0, var 4) -> 0.5 (3 - ln 4); image 1: (mu 0, var 1) twice -> 0
    mu = t([[1.0, 0.0], [0.0, 0.0]])
    logvar = t([[0.0, math.log(4.0)], [0.0, 0.0]])
    per_image = [0.5 + 0.5 * (3 - math.log(4.0)), 0.0]
    torch.testing.assert_close(losses.kl_per_image(mu, logvar), t(per_image))
    D = 3 * 4 * 4
    assert losses.kl_loss(mu, logvar, "elbo", pixels=D).item() == pytest.approx(sum(per_image) / 2 / D)
    with pytest.raises(ValueError, match="number of pixel values"):
        losses.kl_loss(mu, logvar, "elbo")


def test_elbo_convention_is_the_per_image_elbo_scaled_by_one_over_d():
    """gamma L_e + L_n (elbo) = (gamma sum_pixels |x - x_v| + KL) / D, per image, averaged over the batch."""
    gen = torch.Generator().manual_seed(1)
    x, x_v = torch.rand(3, 2, 4, 4, generator=gen), torch.rand(3, 2, 4, 4, generator=gen)
    mu, logvar = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    gamma, D = 0.7, 2 * 4 * 4
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
    elbo = (gamma * (x - x_v).abs().flatten(1).sum(1) + kl).mean() / D
    ours = gamma * losses.content_loss(x, x_v) + losses.kl_loss(mu, logvar, "elbo", pixels=D)
    torch.testing.assert_close(ours, elbo)


def test_free_nats_floor_the_kl_and_stop_its_gradient_below():
    mu = torch.full((2, 3), 0.5, requires_grad=True)
    logvar = torch.zeros(2, 3)
    kl = 3 * 0.5 * 0.25  # 0.375 nats per image
    assert losses.kl_loss(mu, logvar, "sum_latent", free_nats=1.0).item() == pytest.approx(1.0)
    losses.kl_loss(mu, logvar, "elbo", pixels=10, free_nats=1.0).backward()
    assert mu.grad.abs().sum().item() == 0.0  # below the floor the encoder pays nothing
    assert losses.kl_loss(mu, logvar, "elbo", pixels=10, free_nats=0.1).item() == pytest.approx(kl / 10)
    losses.kl_loss(mu, logvar, "elbo", pixels=10, free_nats=0.1).backward()
    assert mu.grad.abs().sum().item() > 0


def test_kl_warmup_weight():
    assert losses.kl_warmup_weight(1, 0) == 1.0
    assert [losses.kl_warmup_weight(i, 4) for i in (1, 2, 4, 9)] == [0.25, 0.5, 1.0, 1.0]
    enc = losses.encoder_objective(t(0.8), t(0.1), t(0.05), beta=0.1, gamma=0.1, kl_weight=0.25)
    assert enc.item() == pytest.approx(0.2 + 0.01 + 0.005)


def test_normalized_similarity_loss_is_relative_to_the_codes_scale():
    z_d = t([[1.0, -3.0], [2.0, 2.0]])  # mean |z_d| = 2
    z_v = t([[0.0, -3.0], [2.0, 0.0]])  # mean |diff| = 0.75
    assert losses.similarity_loss(z_d, z_v, normalize=True).item() == pytest.approx(0.375)
    assert losses.similarity_loss(10 * z_d, 10 * z_v, normalize=True).item() == pytest.approx(0.375)
    assert losses.similarity_loss(10 * z_d, 10 * z_v).item() == pytest.approx(7.5)
    z_d.requires_grad_(True)
    losses.similarity_loss(z_d, z_v, normalize=True).backward()  # the scale is not differentiated
    torch.testing.assert_close(z_d.grad, torch.sign(z_d.detach() - z_v) / 4 / 2)
    # each image against its own scale: image 0 (scale 1) errs by 0.5, image 1 (scale 10) by 1 -> (0.5 + 0.1) / 2
    z_d, z_v = t([[1.0, -1.0], [10.0, 10.0]]), t([[0.5, -1.5], [9.0, 11.0]])
    assert losses.similarity_loss(z_d, z_v, normalize=True).item() == pytest.approx(0.3)


def test_reparameterize():  # Eq. 4
    z = losses.reparameterize(t([1.0, -1.0]), t([math.log(4.0), 0.0]), eps=t([0.5, 2.0]))
    assert torch.allclose(z, t([1.0 + 0.5 * 2.0, -1.0 + 2.0]))


def test_reconstruction_loss():  # Eq. 7
    x = torch.zeros(1, 1, 2, 2)
    x_rec = t([[[[1.0, -1.0], [0.0, 2.0]]]])
    assert losses.reconstruction_loss(x, x_rec).item() == pytest.approx(1.0)


def test_similarity_loss_pairs_codes():  # Eq. 9
    z_d = t([[1.0, 2.0], [3.0, 4.0]])
    z_v = t([[1.0, 0.0], [0.0, 4.0]])
    assert losses.similarity_loss(z_d, z_v).item() == pytest.approx((0 + 2 + 3 + 0) / 4)


def test_feature_matching_similarity_compares_batch_means():
    z_d = t([[1.0, 2.0], [3.0, 4.0]])  # means (2, 3)
    z_g = t([[2.0, 2.0], [2.0, 2.0]])  # means (2, 2)
    assert losses.feature_matching_similarity_loss(z_d, z_g).item() == pytest.approx(0.5)
    # a permutation of the batch changes nothing (unlike the paired Eq. 9)
    assert losses.feature_matching_similarity_loss(z_d.flip(0), z_g).item() == pytest.approx(0.5)


def test_objectives_by_hand():  # Eqs. 13-15
    L_d, L_g, L_v, L_s, L_e, L_n = t(0.4), t(0.3), t(0.2), t(0.1), t(0.05), t(0.7)
    assert losses.discriminator_objective(L_d, L_g, L_v, k=0.5, alpha=0.3).item() == pytest.approx(0.4 - 0.5 * (0.3 + 0.06))
    gen = losses.generator_objective(L_g, L_v, L_s, L_e, alpha=0.3, beta=0.1, gamma=0.1)
    assert gen.item() == pytest.approx(0.3 + 0.06 + 0.01 + 0.005)
    enc = losses.encoder_objective(L_n, L_s, L_e, beta=0.1, gamma=0.1)
    assert enc.item() == pytest.approx(0.7 + 0.01 + 0.005)


def test_equilibrium_error_sign_and_convergence_measure():  # Eq. 11, M
    L_d, L_g, L_v = t(0.4), t(0.1), t(0.2)
    e = losses.equilibrium_error(L_d, L_g, L_v, eta=0.5, alpha=0.3)
    assert e.item() == pytest.approx(0.2 - 0.1 - 0.06)  # not 0.2 - 0.1 + 0.06 as printed in the paper
    M = losses.convergence_measure(L_d, L_g, L_v, eta=0.5, alpha=0.3)
    assert M.item() == pytest.approx(0.4 + 0.04)
    M_neg = losses.convergence_measure(L_d, t(0.5), L_v, eta=0.5, alpha=0.3)
    assert M_neg.item() == pytest.approx(0.4 + abs(0.2 - 0.5 - 0.06))
