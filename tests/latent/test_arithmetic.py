"""``vaegan.latent.arithmetic``: interpolation, encoding, attribute tables and vectors, edits. Every value is
checked against numpy computed by hand; the real-data checks of Sec. 5.5 are in test_explore.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vaegan.latent.arithmetic import attribute_vectors, edit_codes, encode_images, interpolate, lerp, presence, slerp


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread


def rand(seed: int, *shape: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=shape)).float()


# ------------------------------------------------------------------------------ lerp / slerp
def test_lerp_is_the_affine_combination_for_every_t():
    a, b = rand(0, 3, 5), rand(1, 3, 5)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    out = lerp(a, b, t)
    assert out.shape == (3, 4, 5)
    an, bn = a.numpy(), b.numpy()
    for j, tj in enumerate(t.tolist()):
        np.testing.assert_allclose(out[:, j].numpy(), (1 - tj) * an + tj * bn, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_linear_midpoint_is_the_average(seed):
    a, b = rand(seed, 4, 16), rand(seed + 100, 4, 16)
    out = interpolate(a, b, 3, "linear")
    np.testing.assert_allclose(out[:, 1].numpy(), (a.numpy() + b.numpy()) / 2, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_slerp_norms_lie_between_the_endpoints_norms(seed):
    a = rand(seed, 8, 32) * 3.0
    b = rand(seed + 50, 8, 32) * 0.5  # different scales, so the bounds are far apart
    out = interpolate(a, b, 11, "spherical")
    norms = np.linalg.norm(out.numpy().astype(np.float64), axis=2)  # (8, 11)
    na, nb = np.linalg.norm(a.numpy(), axis=1), np.linalg.norm(b.numpy(), axis=1)
    lo, hi = np.minimum(na, nb)[:, None], np.maximum(na, nb)[:, None]
    assert np.all(norms >= lo * (1 - 1e-5)) and np.all(norms <= hi * (1 + 1e-5))
    # and the norm moves linearly from |a| to |b|
    t = np.linspace(0, 1, 11)
    np.testing.assert_allclose(norms, na[:, None] * (1 - t) + nb[:, None] * t, rtol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_slerp_midpoint_direction_is_the_normalised_sum_of_unit_directions(seed):
    a, b = rand(seed, 6, 20), rand(seed + 7, 6, 20) * 2.0
    mid = slerp(a, b, torch.tensor([0.5]))[:, 0].numpy().astype(np.float64)
    an, bn = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    ua = an / np.linalg.norm(an, axis=1, keepdims=True)
    ub = bn / np.linalg.norm(bn, axis=1, keepdims=True)
    s = ua + ub
    expected_dir = s / np.linalg.norm(s, axis=1, keepdims=True)
    np.testing.assert_allclose(mid / np.linalg.norm(mid, axis=1, keepdims=True), expected_dir, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(mid, axis=1),
                               (np.linalg.norm(an, axis=1) + np.linalg.norm(bn, axis=1)) / 2, rtol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_slerp_follows_the_great_circle_at_constant_angular_speed(seed):
    a, b = rand(seed, 4, 10), rand(seed + 9, 4, 10)
    t = torch.linspace(0, 1, 7)
    out = slerp(a, b, t).numpy().astype(np.float64)
    an, bn = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    ua = an / np.linalg.norm(an, axis=1, keepdims=True)
    ub = bn / np.linalg.norm(bn, axis=1, keepdims=True)
    omega = np.arccos(np.sum(ua * ub, axis=1))
    u = out / np.linalg.norm(out, axis=2, keepdims=True)
    # angle from a's direction grows as t * omega; the path stays in the plane of a and b
    angle_from_a = np.arccos(np.clip(np.einsum("ntd,nd->nt", u, ua), -1, 1))
    np.testing.assert_allclose(angle_from_a, t.numpy()[None] * omega[:, None], atol=2e-3)
    for i in range(4):
        basis = np.linalg.qr(np.stack([ua[i], ub[i]], axis=1))[0]  # (D, 2)
        residual = u[i] - (u[i] @ basis) @ basis.T
        assert np.abs(residual).max() < 1e-5


@pytest.mark.parametrize("mode", ["linear", "spherical"])
def test_interpolation_endpoints_are_the_inputs(mode):
    a, b = rand(3, 5, 8), rand(4, 5, 8)
    out = interpolate(a, b, 6, mode)
    assert out.shape == (5, 6, 8)
    np.testing.assert_allclose(out[:, 0].numpy(), a.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[:, -1].numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


def test_interpolation_uses_evenly_spaced_t():
    a, b = torch.zeros(1, 2), torch.tensor([[4.0, -8.0]])
    out = interpolate(a, b, 5, "linear")[0].numpy()
    np.testing.assert_allclose(out, np.array([[0, 0], [1, -2], [2, -4], [3, -6], [4, -8]], dtype=np.float32))


def test_slerp_of_parallel_vectors_is_finite_and_scales_the_norm():
    a = torch.tensor([[1.0, 2.0, 2.0]])
    b = 3 * a  # same direction: omega = 0 must not produce NaN
    out = slerp(a, b, torch.tensor([0.0, 0.5, 1.0]))[0].numpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, np.array([[1, 2, 2], [2, 4, 4], [3, 6, 6]], dtype=np.float32), rtol=1e-4)


@pytest.mark.parametrize("bad", [dict(steps=3, mode="cubic"), dict(steps=1, mode="linear"),
                                 dict(steps=0, mode="spherical")])
def test_interpolate_rejects_bad_arguments(bad):
    with pytest.raises(ValueError, match="cubic|steps"):
        interpolate(torch.zeros(1, 2), torch.ones(1, 2), **bad)


# ------------------------------------------------------------------------------ encode_images
class StubEncoder(nn.Module):
    """mu = flattened input @ W + row index marker; records its mode and batch sizes."""

    def __init__(self, in_features: int, latent: int = 3):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(in_features, latent, generator=gen))
        self.modes: list[bool] = []
        self.sizes: list[int] = []

    def forward(self, x):
        self.modes.append(self.training)
        self.sizes.append(len(x))
        mu = x.flatten(1) @ self.weight
        return mu, torch.full_like(mu, -7.0)


def expected_codes(images_u8: np.ndarray, weight: np.ndarray) -> np.ndarray:
    x = images_u8.astype(np.float64).transpose(0, 3, 1, 2) / 127.5 - 1.0  # NCHW in [-1, 1]
    return x.reshape(len(x), -1) @ weight.astype(np.float64)


@pytest.fixture
def uint8_images():
    return np.random.default_rng(0).integers(0, 256, size=(7, 4, 4, 3), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["numpy", "uint8 tensor", "float tensor"])
def test_encode_images_returns_posterior_means_of_every_input_kind(uint8_images, kind):
    enc = StubEncoder(4 * 4 * 3)
    images = {"numpy": uint8_images, "uint8 tensor": torch.from_numpy(uint8_images),
              "float tensor": torch.from_numpy(uint8_images).permute(0, 3, 1, 2).float() / 127.5 - 1}[kind]
    seen = []
    codes = encode_images(enc, images, batch_size=3, progress=seen.append)
    assert codes.device.type == "cpu" and codes.dtype == torch.float32 and codes.shape == (7, 3)
    np.testing.assert_allclose(codes.numpy(), expected_codes(uint8_images, enc.weight.detach().numpy()),
                               rtol=1e-4, atol=1e-4)
    assert enc.sizes == [3, 3, 1] and seen == [3, 3, 1]


@pytest.mark.parametrize("training", [True, False])
def test_encode_images_runs_in_eval_mode_and_restores_the_mode(uint8_images, training):
    enc = StubEncoder(48)
    enc.train(training)
    codes = encode_images(enc, uint8_images, batch_size=4)
    assert enc.modes == [False, False]
    assert enc.training is training
    assert not codes.requires_grad


def test_encode_images_restores_the_mode_after_an_error(uint8_images):
    class Broken(StubEncoder):
        def forward(self, x):
            raise RuntimeError("boom")

    enc = Broken(48).train()
    with pytest.raises(RuntimeError, match="boom"):
        encode_images(enc, uint8_images)
    assert enc.training


# ------------------------------------------------------------------------------ presence
def test_presence_of_celeba_attributes_is_plus_one():
    attrs = np.array([[1, -1, -1], [-1, -1, 1], [1, 1, -1]], dtype=np.int8)
    got = presence(attrs)
    assert got.dtype == torch.bool
    np.testing.assert_array_equal(got.numpy(), attrs == 1)
    np.testing.assert_array_equal(presence((attrs + 1) // 2).numpy(), attrs == 1)  # a 0/1 table too


def test_presence_of_class_labels_is_one_hot():
    labels = np.array([2, 0, 2, 1])
    got = presence(labels, 5)
    assert got.dtype == torch.bool and got.shape == (4, 5)
    np.testing.assert_array_equal(got.numpy(), np.eye(5, dtype=bool)[labels])
    assert presence(torch.tensor(labels)).shape == (4, 3)  # default: max label + 1 classes


# ------------------------------------------------------------------------------ attribute_vectors
def test_attribute_vectors_are_mean_with_minus_mean_without():
    rng = np.random.default_rng(1)
    codes = rng.normal(size=(40, 6)).astype(np.float32)
    present = rng.random((40, 4)) < np.array([0.5, 0.1, 0.9, 0.3])
    present[0, 1] = True  # at least one with attribute 1
    vectors, n_with, n_without = attribute_vectors(torch.from_numpy(codes), torch.from_numpy(present))
    assert vectors.shape == (4, 6)
    c = codes.astype(np.float64)
    for a in range(4):
        expected = c[present[:, a]].mean(0) - c[~present[:, a]].mean(0)
        np.testing.assert_allclose(vectors[a].numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(n_with.numpy(), present.sum(0))
    np.testing.assert_array_equal(n_without.numpy(), (~present).sum(0))


def test_attribute_vector_of_a_one_sided_attribute_is_nan():
    codes = torch.arange(12, dtype=torch.float32).view(4, 3)
    present = torch.tensor([[True, False, True], [True, False, False], [True, False, True], [True, False, False]])
    vectors, n_with, n_without = attribute_vectors(codes, present)
    assert torch.isnan(vectors[0]).all() and torch.isnan(vectors[1]).all()  # all with / none with
    assert n_with.tolist() == [4, 0, 2] and n_without.tolist() == [0, 4, 2]
    # rows 0, 2 with; rows 1, 3 without: ([0,1,2]+[6,7,8])/2 - ([3,4,5]+[9,10,11])/2 = -3
    np.testing.assert_allclose(vectors[2].numpy(), [-3.0, -3.0, -3.0])


# ------------------------------------------------------------------------------ edit_codes
def test_edit_codes_adds_weighted_vector():
    z, v = rand(5, 3, 4), rand(6, 4)
    weights = [-2.0, 0.0, 0.5, 3.0]
    out = edit_codes(z, v, weights)
    assert out.shape == (3, 4, 4)
    for j, w in enumerate(weights):
        np.testing.assert_allclose(out[:, j].numpy(), z.numpy() + w * v.numpy()[None], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(out[:, 1].numpy(), z.numpy())  # w = 0 is the code itself
    same = edit_codes(z, v, torch.tensor(weights))
    np.testing.assert_array_equal(same.numpy(), out.numpy())


@pytest.mark.parametrize("kind", ["memory map", "float tensor"])
def test_encode_images_of_chosen_rows_reads_a_batch_at_a_time(tmp_path, uint8_images, kind):
    np.save(tmp_path / "images.npy", uint8_images)
    images = {"memory map": np.load(tmp_path / "images.npy", mmap_mode="r"),
              "float tensor": torch.from_numpy(uint8_images).permute(0, 3, 1, 2).float() / 127.5 - 1}[kind]
    rows = np.array([5, 0, 3, 3, 6])
    enc = StubEncoder(48)
    codes = encode_images(enc, images, batch_size=2, rows=rows)
    assert enc.sizes == [2, 2, 1] and codes.shape == (5, 3)
    np.testing.assert_allclose(codes.numpy(), expected_codes(uint8_images[rows], enc.weight.detach().numpy()),
                               rtol=1e-4, atol=1e-4)
