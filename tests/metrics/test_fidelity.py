"""IS, FID, KID and precision/recall against hand computations, the protocol keys, and
``evaluate_generator`` end to end with a tiny TorchScript stand-in for Inception."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import scipy.linalg
import torch

from vaegan.data import DigitsDataModule
from vaegan.metrics import fidelity
from vaegan.metrics.extractors import MetricsError, load_extractor
from vaegan.metrics.fidelity import (
    cached_reference_features, evaluate_generator, extract, frechet_distance, generated_images, inception_score,
    kernel_inception_distance, metric_names, precision_recall, reference_indices,
)
from vaegan.metrics.protocol import GENERATED_ONLY, Protocol
from vaegan.models.module import VAEGANModule

LATENT = 8


# ------------------------------------------------------------------------------ hand computations
def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hand_inception_score(logits: np.ndarray) -> float:
    p = softmax(logits)
    marginal = p.mean(axis=0, keepdims=True)
    kl = (p * (np.log(p) - np.log(marginal))).sum(axis=1)
    return float(np.exp(kl.mean()))


def hand_fid(a: np.ndarray, b: np.ndarray) -> float:
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a, s_b = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def hand_kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3."""
    d = x.shape[1]

    def k(a, b):
        return (a @ b.T / d + 1.0) ** 3

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m = len(x)
    off = ~np.eye(m, dtype=bool)
    return float(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())


# ------------------------------------------------------------------------------ IS
def test_inception_score_matches_hand_computation():
    logits = torch.randn(200, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    mean, std = inception_score(logits, splits=1, seed=0)
    expected = hand_inception_score(logits.numpy())
    assert mean == pytest.approx(expected, rel=1e-9)
    assert std == 0.0
    assert 1.0 < mean < 10.0
    # one split: the shuffle seed cannot matter
    assert inception_score(logits, splits=1, seed=123)[0] == pytest.approx(mean, rel=1e-12)
    # several splits: a spread between the chunks' scores
    mean10, std10 = inception_score(logits, splits=10, seed=0)
    assert std10 > 0 and np.isfinite(mean10)


def test_inception_score_extremes():
    same = torch.tensor([[9.0, 0.5, -1.0, 0.0, 2.0]], dtype=torch.float64).repeat(100, 1)
    assert inception_score(same, splits=1)[0] == pytest.approx(1.0, abs=1e-9)

    k = 7
    confident = torch.full((k * 30, k), -20.0, dtype=torch.float64)
    confident[torch.arange(k * 30), torch.arange(k * 30) % k] = 20.0
    mean, _ = inception_score(confident, splits=1)
    assert mean == pytest.approx(k, rel=1e-6)


# ------------------------------------------------------------------------------ FID
def test_frechet_distance_matches_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 1.0, (300, 16))
    mix = rng.normal(0.0, 0.3, (16, 16))
    b = rng.normal(0.5, 1.0, (300, 16)) @ (np.eye(16) + mix)
    expected = hand_fid(a, b)
    got = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert expected > 1.0
    assert got == pytest.approx(expected, rel=1e-6)
    # symmetric, and zero for identical sets
    assert frechet_distance(torch.from_numpy(b), torch.from_numpy(a)) == pytest.approx(expected, rel=1e-6)
    assert abs(frechet_distance(torch.from_numpy(a), torch.from_numpy(a))) < 1e-8


# ------------------------------------------------------------------------------ KID
def test_kernel_inception_distance_matches_hand_computation():
    rng = np.random.default_rng(1)
    n, d = 120, 24
    x = rng.normal(0.0, 1.0, (n, d))
    y = rng.normal(0.3, 1.2, (n, d))
    expected = hand_kid(x, y)
    mean, std = kernel_inception_distance(torch.from_numpy(x), torch.from_numpy(y), subsets=1, subset_size=n, seed=5)
    assert expected > 0
    assert mean == pytest.approx(expected, rel=1e-6)
    assert std == 0.0
    # the unbiased estimate of two samples from one distribution is near 0, far below the above
    same, _ = kernel_inception_distance(torch.from_numpy(x[:60]), torch.from_numpy(x[60:]), subsets=1, subset_size=60)
    assert abs(same) < expected / 5
    # several subsets: a mean and a spread
    m, s = kernel_inception_distance(torch.from_numpy(x), torch.from_numpy(y), subsets=20, subset_size=50, seed=0)
    assert s > 0 and m > 0


# ------------------------------------------------------------------------------ precision / recall
def test_precision_recall_extremes_and_argument_order():
    rng = np.random.default_rng(2)
    real = torch.from_numpy(rng.normal(0.0, 1.0, (200, 4)))
    assert precision_recall(real, real.clone(), neighborhood=3) == (1.0, 1.0)
    far = real + 100.0
    assert precision_recall(far, real, neighborhood=3) == (0.0, 0.0)
    # generated samples collapsed into the middle of the real ones: precise but without recall
    collapsed = torch.from_numpy(rng.normal(0.0, 0.05, (200, 4)))
    precision, recall = precision_recall(collapsed, real, neighborhood=3)
    assert precision == 1.0
    assert recall < 0.3


# ------------------------------------------------------------------------------ protocol
def make_protocol(**changes) -> Protocol:
    base = dict(dataset="digits", data_id="DigitsDataModule-0123", split="train", num_reference=100, image_size=16,
                channels=1, num_samples=64, extractor="torchscript-inception", extractor_file="tiny.pt",
                extractor_sha256="ab" * 32, resize="tf", metrics="fid,kid", seed=0, isc_splits=10, kid_subsets=100,
                kid_subset_size=64, prc_neighborhood=3, torch_fidelity="0.4.0")
    base.update(changes)
    return Protocol(**base)


def changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, str):
        return value + "x"
    raise AssertionError(f"no way to change a {type(value).__name__}")


def test_protocol_keys_cover_every_field():
    p = make_protocol()
    names = [f.name for f in dataclasses.fields(Protocol)]
    assert set(GENERATED_ONLY) <= set(names), "GENERATED_ONLY names a field Protocol does not have"
    assert p.key() == make_protocol().key() and p.reference_key() == make_protocol().reference_key()
    for name in names:
        q = dataclasses.replace(p, **{name: changed(getattr(p, name))})
        assert q.key() != p.key(), name
        if name in GENERATED_ONLY:
            assert q.reference_key() == p.reference_key(), name
        else:
            assert q.reference_key() != p.reference_key(), name
    # what the reference features depend on must never be treated as generated-only
    for name in ("dataset", "data_id", "split", "num_reference", "image_size", "channels", "extractor",
                 "extractor_sha256", "resize", "seed"):
        assert name not in GENERATED_ONLY
    assert len(p.lines()) == len(names)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seed = 3


# ------------------------------------------------------------------------------ images and features
@pytest.fixture
def model() -> VAEGANModule:
    torch.manual_seed(0)
    return VAEGANModule(image_size=16, channels=1, width=4, latent_dim=LATENT)


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=16, image_size=16, channels=1)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def tiny(tiny_extractor_file):
    return load_extractor(str(tiny_extractor_file))


def test_generated_images_do_not_depend_on_batch_size(model):
    g = model.generator.eval()
    a = torch.cat(list(generated_images(g, LATENT, 50, seed=3, batch_size=7, device=torch.device("cpu"))))
    b = torch.cat(list(generated_images(g, LATENT, 50, seed=3, batch_size=50, device=torch.device("cpu"))))
    c = torch.cat(list(generated_images(g, LATENT, 50, seed=4, batch_size=50, device=torch.device("cpu"))))
    assert a.dtype == torch.uint8 and a.shape == (50, 1, 16, 16)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    batches = list(generated_images(g, LATENT, 50, seed=3, batch_size=7, device=torch.device("cpu")))
    assert [len(x) for x in batches] == [7] * 7 + [1]


def test_extract_concatenates_and_reports_progress(tiny, digits):
    images = torch.from_numpy(digits.data.images[:10]).permute(0, 3, 1, 2)

    class Progress:
        def __init__(self):
            self.advanced = 0

        def add_task(self, description, total):
            self.total = total
            return 1

        def advance(self, task, n):
            self.advanced += n

    progress = Progress()
    out = extract([images[:4], images[4:]], tiny, 10, progress)
    assert set(out) == {"2048"} and out["2048"].shape == (10, 8)
    assert progress.total == 10 and progress.advanced == 10
    assert torch.allclose(out["2048"], tiny(images)["2048"], rtol=1e-5, atol=1e-6)


def test_metric_names(tiny):
    assert metric_names(None, tiny) == ("fid", "kid")
    assert metric_names(["fid", "prc"], tiny) == ("fid", "prc")
    with pytest.raises(MetricsError, match="unknown"):
        metric_names(["fid", "lpips"], tiny)
    with pytest.raises(MetricsError, match="inception-v3-compat"):
        metric_names(["is"], tiny)


EVAL = dict(split="train", num_samples=48, num_reference=80, seed=0, device="cpu", kid_subsets=10,
            kid_subset_size=40)


@pytest.mark.slow
def test_evaluate_generator_with_tiny_extractor(model, digits, tiny, tiny_extractor_file):
    g = model.generator
    g.train()
    result = evaluate_generator(g, LATENT, digits, tiny, batch_size=16, **EVAL)
    assert g.training, "the generator's training mode is restored"
    assert {"fid", "kid_mean", "kid_std"} <= set(result.values)
    assert "is_mean" not in result.values and "is_mean" not in result.reference_values
    assert result.reference_cache is None and result.seconds > 0
    p = result.protocol
    assert (p.num_samples, p.num_reference, p.split, p.seed) == (48, 80, "train", 0)
    assert p.extractor_sha256 == hashlib.sha256(tiny_extractor_file.read_bytes()).hexdigest()
    assert p.extractor == "torchscript-inception" and p.extractor_file == tiny_extractor_file.name
    assert (p.image_size, p.channels, p.metrics, p.kid_subset_size) == (16, 1, "fid,kid", 40)
    d = result.as_dict()
    assert d["protocol_key"] == p.key() and d["reference_key"] == p.reference_key()
    assert d["values"] == result.values

    # the same numbers from features extracted by hand
    rows = reference_indices(digits, "train", 80, 0)
    assert len(rows) == 80
    real = tiny(torch.from_numpy(digits.data.images[rows]).permute(0, 3, 1, 2))["2048"]
    g.eval()
    fake_images = torch.cat(list(generated_images(g, LATENT, 48, 0, 48, torch.device("cpu"))))
    fake = tiny(fake_images)["2048"]
    assert result.values["fid"] == pytest.approx(frechet_distance(fake, real), rel=1e-6)
    kid = kernel_inception_distance(fake, real, subsets=10, subset_size=40, seed=0)
    assert result.values["kid_mean"] == pytest.approx(kid[0], rel=1e-4, abs=1e-7)

    # the batch size changes nothing; eval mode stays eval mode
    g.eval()
    other = evaluate_generator(g, LATENT, digits, tiny, batch_size=64, **EVAL)
    assert not g.training
    assert other.values["fid"] == pytest.approx(result.values["fid"], rel=1e-6)
    assert other.protocol == result.protocol

    with pytest.raises(MetricsError, match="inception-v3-compat"):
        evaluate_generator(g, LATENT, digits, tiny, batch_size=16, names=["is"], **EVAL)

    prc = evaluate_generator(g, LATENT, digits, tiny, batch_size=64, names=["prc"], **EVAL)
    assert set(prc.values) == {"precision", "recall"}
    assert all(0.0 <= v <= 1.0 for v in prc.values.values())


def test_generator_mode_restored_after_an_error(model, digits, tiny):
    g = model.generator.train()

    class FailsOnGenerated:
        """The tiny extractor, failing on its third call: the first generated batch (80 reference
        images in batches of 64 take two calls)."""

        features, has_logits = tiny.features, tiny.has_logits
        name, file, sha256, resize = tiny.name, tiny.file, tiny.sha256, tiny.resize
        calls = 0

        def __call__(self, images):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("extractor failed")
            return tiny(images)

    with pytest.raises(RuntimeError, match="extractor failed"):
        evaluate_generator(g, LATENT, digits, FailsOnGenerated(), batch_size=64, **EVAL)
    assert g.training


# ------------------------------------------------------------------------------ reference cache
def count_reference_batches(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = fidelity.reference_batches

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fidelity, "reference_batches", counting)
    return calls


@pytest.mark.slow
def test_reference_cache(model, digits, tiny, tmp_path, monkeypatch):
    g = model.generator
    small = {**EVAL, "num_samples": 24, "num_reference": 40, "kid_subset_size": 20}
    cache = tmp_path / "refcache"
    calls = count_reference_batches(monkeypatch)

    first = evaluate_generator(g, LATENT, digits, tiny, batch_size=32, cache_dir=cache, **small)
    key = first.protocol.reference_key()
    assert first.reference_cache == str(cache / f"{key}.npz")
    assert sorted(p.name for p in cache.iterdir()) == [f"{key}.npz"]
    assert len(calls) == 1
    with np.load(cache / f"{key}.npz") as f:
        assert f.files == ["2048"] and f["2048"].shape == (40, 8)

    # the same numbers as without a cache
    uncached = evaluate_generator(g, LATENT, digits, tiny, batch_size=32, **small)
    assert len(calls) == 2
    assert first.values["fid"] == pytest.approx(uncached.values["fid"], rel=1e-9)

    # another num_samples: the reference features are reused, not recomputed
    more = evaluate_generator(g, LATENT, digits, tiny, batch_size=32, cache_dir=cache, **{**small, "num_samples": 32})
    assert len(calls) == 2
    assert more.protocol.reference_key() == key and more.protocol.key() != first.protocol.key()
    assert more.reference_cache == first.reference_cache

    # another num_reference or split: another key, another file
    fewer = evaluate_generator(g, LATENT, digits, tiny, batch_size=32, cache_dir=cache, **{**small, "num_reference": 30})
    valid = evaluate_generator(g, LATENT, digits, tiny, batch_size=32, cache_dir=cache, **{**small, "split": "valid"})
    assert len(calls) == 4
    keys = {key, fewer.protocol.reference_key(), valid.protocol.reference_key()}
    assert len(keys) == 3
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{k}.npz" for k in keys)

    # a damaged file is recomputed and replaced
    path = cache / f"{key}.npz"
    path.write_bytes(b"this is not an npz file" * 10)
    again = evaluate_generator(g, LATENT, digits, tiny, batch_size=32, cache_dir=cache, **small)
    assert len(calls) == 5
    assert again.values["fid"] == pytest.approx(first.values["fid"], rel=1e-9)
    with np.load(path) as f:
        assert f["2048"].shape == (40, 8)
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{k}.npz" for k in keys), "no temporary files left"


def test_truncated_reference_cache_is_recomputed(tmp_path):
    path = tmp_path / "ref.npz"
    features = {"2048": torch.arange(40, dtype=torch.float32).reshape(5, 8)}
    cached_reference_features(path, lambda: features)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # e.g. a copy or a sync that stopped half way
    calls = []

    def compute():
        calls.append(1)
        return features

    out = cached_reference_features(path, compute)
    assert calls == [1]
    assert torch.equal(out["2048"], features["2048"])


def test_cached_reference_features_roundtrip(tmp_path):
    path = tmp_path / "sub" / "ref.npz"
    features = {"2048": torch.randn(6, 8), "logits_unbiased": torch.randn(6, 3)}
    calls = []

    def compute():
        calls.append(1)
        return features

    cached_reference_features(path, compute)
    second = cached_reference_features(path, compute)
    assert calls == [1]
    assert set(second) == set(features)
    for name in features:
        assert torch.equal(second[name], features[name])
    assert [p.name for p in path.parent.iterdir()] == ["ref.npz"]
    # an empty file counts as damaged too
    path.write_bytes(b"")
    cached_reference_features(path, compute)
    assert calls == [1, 1]


# ------------------------------------------------------------------------------ reference rows
def test_reference_indices(digits):
    with pytest.raises(MetricsError, match=r"nonexistent.*use one of \['train', 'valid'\]"):
        reference_indices(digits, "nonexistent", 100, 0)
    assert len(digits.splits["test"]) == 0  # the digits have no test split: it is empty
    with pytest.raises(MetricsError, match=r"'test'.*use one of \['train', 'valid'\]$"):
        reference_indices(digits, "test", 100, 0)

    train = digits.splits["train"]
    rows = reference_indices(digits, "train", 50, seed=1)
    assert len(rows) == 50 and len(set(rows.tolist())) == 50
    assert np.all(np.diff(rows) > 0), "sorted"
    assert set(rows.tolist()) <= set(train.tolist())
    assert np.array_equal(rows, reference_indices(digits, "train", 50, seed=1))
    assert not np.array_equal(rows, reference_indices(digits, "train", 50, seed=2))
    # a limit at least the split's size: the whole split
    valid = digits.splits["valid"]
    assert np.array_equal(reference_indices(digits, "valid", len(valid), 0), valid)
    assert np.array_equal(reference_indices(digits, "valid", 10**6, 0), valid)


class Flatten(torch.nn.Module):
    """A lossless 'VAE': x -> (x as a code, log-variance 0); the generator reshapes codes back."""

    def forward(self, x):
        return x.flatten(1), torch.zeros_like(x.flatten(1))


class Unflatten(torch.nn.Module):
    def forward(self, z):
        return z.view(-1, 1, 16, 16).clamp(-1, 1)


@pytest.mark.slow
def test_rfid_and_latent_use_of_the_reconstructions(digits, tiny):
    """With an encoder, the reference images are reconstructed through F_vae-d(mu_v(x)) and compared
    through the same extractor: lossless reconstructions have rFID 0 (up to the rounding of the
    covariance square root); the latent use is measured on the same images."""
    encoder, generator = Flatten(), Unflatten()
    encoder.train()
    result = evaluate_generator(generator, 256, digits, tiny, batch_size=64, encoder=encoder, **EVAL)
    assert encoder.training, "the encoder's mode is restored"
    values = result.values
    assert values["rfid"] == pytest.approx(0.0, abs=1e-6) and values["fid"] > 0.01  # noise samples are far
    rows = fidelity.reference_indices(digits, EVAL["split"], EVAL["num_reference"], EVAL["seed"])
    x = torch.from_numpy(np.asarray(digits.data.images[rows])).permute(0, 3, 1, 2).float() / 127.5 - 1
    kl = (0.5 * x.flatten(1).pow(2)).sum(1).mean()  # KL of N(x, 1) against N(0, 1), per image
    assert values["kl_nats"] == pytest.approx(kl.item(), rel=1e-4)
    assert values["psnr"] == float("inf") and values["ssim"] == pytest.approx(1.0, abs=1e-4)
    assert values["psnr_mean_image"] < 30
