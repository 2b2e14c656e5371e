"""``vaegan.latent.classifier``: the judge of attribute edits. The network, its training and caching (on
the digits, offline), the balanced accuracy, and ``measure_edits`` with a hand-made decoder and
judge whose answers are known in closed form. The run on a trained CelebA model is in
test_explore.py (``edit --measure``)."""

from __future__ import annotations

import math
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from tests.conftest import CONF, TINY
from vaegan.latent import classifier
from vaegan.latent.classifier import Classifier, Judge, accuracy, fit, fit_steps, load_or_train, means, measure_edits, table
from vaegan.config import register_configs


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread


def sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


# ------------------------------------------------------------------------------ the network
def test_classifier_output_shape_and_pooling_of_large_inputs():
    torch.manual_seed(0)
    model = Classifier(3, 5).eval()
    x = torch.rand(2, 3, 128, 128) * 2 - 1
    pooled = torch.from_numpy(x.numpy().reshape(2, 3, 64, 2, 64, 2).mean((3, 5)))  # 2x2 means, by hand
    with torch.no_grad():
        big, small = model(x), model(pooled)
        assert model(torch.zeros(4, 3, 16, 16)).shape == (4, 5)
    assert big.shape == (2, 5)
    np.testing.assert_allclose(big.numpy(), small.numpy(), rtol=1e-4, atol=1e-5)


class Linear(nn.Module):
    """logits = flattened input @ W (no bias)."""

    def __init__(self, weight: np.ndarray):
        super().__init__()
        self.weight = torch.from_numpy(np.asarray(weight, dtype=np.float32))

    def forward(self, x):
        return x.flatten(1) @ self.weight


def test_judge_probabilities_sigmoid_or_softmax():
    w = np.array([[1.0, -2.0, 0.5], [0.3, 0.0, -1.0]])
    x = np.array([[0.5, -1.0], [2.0, 3.0]], dtype=np.float32)
    logits = x.astype(np.float64) @ w
    multi = Judge(Linear(w), ["a", "b", "c"], True, [1.0] * 3, "valid").probabilities(torch.from_numpy(x))
    single = Judge(Linear(w), ["a", "b", "c"], False, [1.0] * 3, "valid").probabilities(torch.from_numpy(x))
    np.testing.assert_allclose(multi.numpy(), sigmoid(logits), rtol=1e-5)
    np.testing.assert_allclose(single.numpy(), softmax(logits), rtol=1e-5)
    np.testing.assert_allclose(single.sum(1).numpy(), 1.0, rtol=1e-6)


# ------------------------------------------------------------------------------ accuracy
class Lookup(nn.Module):
    """Logits read from a table by the image's index, written into its first pixel."""

    def __init__(self, table: np.ndarray):
        super().__init__()
        self.table = torch.from_numpy(table.astype(np.float32))

    def forward(self, x):
        index = ((x[:, 0, 0, 0] + 1) * 127.5).round().long()
        return self.table[index]


def indexed_images(n: int) -> np.ndarray:
    images = np.zeros((n, 2, 2, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return images


def test_balanced_accuracy_per_attribute():
    rng = np.random.default_rng(3)
    n = 60
    targets = (rng.random((n, 4)) < np.array([0.5, 0.1, 1.0, 0.3])).astype(np.float32)  # attribute 2: everyone
    logits = rng.normal(size=(n, 4)) + (targets * 2 - 1) * 0.7  # better than chance, not perfect
    got = accuracy(Lookup(logits), indexed_images(n), torch.from_numpy(targets), True, "cpu")
    pred = logits > 0
    expected = []
    for a in range(4):
        pos = targets[:, a] == 1
        if pos.any() and (~pos).any():
            expected.append((np.mean(pred[pos, a]) + np.mean(~pred[~pos, a])) / 2)
        else:
            expected.append(np.mean(pred[:, a] == pos))
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # balanced: a rare attribute never predicted scores 0.5, not its (high) plain accuracy
    rare = np.zeros((n, 1), dtype=np.float32)
    rare[:3] = 1
    assert accuracy(Lookup(np.full((n, 1), -1.0)), indexed_images(n), torch.from_numpy(rare), True, "cpu") == [0.5]


def test_accuracy_per_class_is_recall():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    logits = np.zeros((10, 4))
    pred = np.array([0, 1, 0, 1, 1, 2, 0, 2, 3, 0])
    logits[np.arange(10), pred] = 5.0
    got = accuracy(Lookup(logits), indexed_images(10), torch.from_numpy(labels), False, "cpu")
    assert got[:3] == pytest.approx([3 / 4, 2 / 2, 2 / 4])
    assert math.isnan(got[3])  # no image of class 3


# ------------------------------------------------------------------------------ fit
def easy_data(n: int = 256, seed: int = 0):
    """Class / attribute 0: bright or dark image; attribute 1: left half white or black."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    a1 = rng.integers(0, 2, n)
    images = np.where(y[:, None, None, None] == 1, rng.integers(170, 256, (n, 8, 8, 1)),
                      rng.integers(0, 86, (n, 8, 8, 1))).astype(np.uint8)
    multi = images.copy()
    multi[:, :, :4] = np.where(a1[:, None, None, None] == 1, 250, 5)
    return images, y, multi, np.stack([y, a1], 1).astype(np.float32)


def test_fit_learns_an_easy_task_and_counts_its_steps():
    images, y, multi, attrs = easy_data()
    steps = []
    model = fit(images, torch.from_numpy(y), 2, False, 2, 0, torch.device("cpu"), progress=steps.append)
    assert not model.training
    assert sum(steps) == 2 * (256 // 64) == len(steps)
    assert min(accuracy(model, images, torch.from_numpy(y), False, "cpu")) >= 0.9
    model = fit(multi, torch.from_numpy(attrs), 2, True, 3, 0, torch.device("cpu"))
    assert min(accuracy(model, multi, torch.from_numpy(attrs), True, "cpu")) >= 0.9


def test_fit_is_reproducible_by_seed():
    images, y, _, _ = easy_data(128)
    a, b, c = (fit(images, torch.from_numpy(y), 2, False, 1, seed, torch.device("cpu")) for seed in (5, 5, 6))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert any(not torch.equal(v, c.state_dict()[k]) for k, v in a.state_dict().items() if v.is_floating_point())


def test_fit_steps():
    dm = types.SimpleNamespace(splits={"train": np.arange(200)})
    assert fit_steps(dm, 3) == 3 * 3
    assert fit_steps(types.SimpleNamespace(splits={"train": np.arange(10)}), 2) == 2  # at least one a pass


# ------------------------------------------------------------------------------ load_or_train (digits)
@pytest.fixture(scope="module")
def digits():
    from vaegan.training.train import build_datamodule_from

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=TINY)
    dm = build_datamodule_from(cfg)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def trained_judge(digits, tmp_path_factory):
    cache = tmp_path_factory.mktemp("classifiers")
    return load_or_train(digits, cache, epochs=1, seed=0), cache


def test_load_or_train_trains_on_the_train_split_and_reports_held_out_recall(digits, trained_judge):
    judge, cache = trained_judge
    assert judge.names == [str(d) for d in range(10)] and judge.multilabel is False and judge.held_out == "valid"
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.startswith("classifier-") and files[0].suffix == ".pt"
    assert len(files[0].stem.split("-", 1)[1]) == 16
    # the recorded accuracy is the recall per class on the valid split, recomputed here with numpy
    rows = digits.splits["valid"]
    x = torch.from_numpy(np.asarray(digits.data.images[rows])).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        pred = judge.model(x).argmax(1).numpy()
    labels = np.asarray(digits.data.arrays["labels"])[rows]
    expected = [np.mean(pred[labels == c] == c) for c in range(10)]
    np.testing.assert_allclose(judge.accuracy, expected, rtol=1e-6)
    assert np.mean(pred == labels) > 0.3  # one epoch learns something (chance: 0.1)


def test_load_or_train_reads_the_cache_instead_of_training(digits, trained_judge, monkeypatch):
    judge, cache = trained_judge
    (path,) = cache.iterdir()
    mtime = path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the classifier was cached")

    monkeypatch.setattr(classifier, "fit", no_training)
    again = load_or_train(digits, cache, epochs=1, seed=0)
    assert path.stat().st_mtime_ns == mtime
    assert again.accuracy == judge.accuracy and again.names == judge.names and again.held_out == "valid"
    for k, v in judge.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    assert not again.model.training


@pytest.mark.slow
def test_load_or_train_keys_the_cache_by_its_settings(digits, trained_judge, tmp_path, monkeypatch):
    calls = []
    real_fit = classifier.fit

    def counting_fit(*args, **kwargs):
        calls.append(args[4:6])  # epochs, seed
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(classifier, "fit", counting_fit)
    cache = tmp_path / "c"
    load_or_train(digits, cache, epochs=1, seed=0)
    load_or_train(digits, cache, epochs=1, seed=1)
    load_or_train(digits, cache, epochs=1, seed=1)  # cached
    assert calls == [(1, 0), (1, 1)]
    assert len(list(cache.glob("classifier-*.pt"))) == 2
    assert {p.name for p in cache.iterdir()} == {p.name for p in cache.glob("classifier-*.pt")}  # no temporary files
    assert trained_judge[1] != cache and {p.name for p in trained_judge[1].iterdir()} <= {p.name for p in cache.iterdir()}


@pytest.mark.slow
def test_a_damaged_cache_is_retrained(digits, trained_judge, tmp_path, monkeypatch):
    judge, cache = trained_judge
    (good,) = cache.iterdir()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / good.name).write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # truncated
    calls = []
    real_fit = classifier.fit
    monkeypatch.setattr(classifier, "fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    again = load_or_train(digits, damaged, epochs=1, seed=0)
    assert calls == [1]
    saved = torch.load(damaged / good.name, weights_only=True)  # readable again
    assert saved["accuracy"] == again.accuracy
    np.testing.assert_allclose(again.accuracy, judge.accuracy)  # same data and seed: the same classifier


def test_load_or_train_needs_labels():
    data = types.SimpleNamespace(arrays={}, images=np.zeros((4, 8, 8, 1), np.uint8))
    dm = types.SimpleNamespace(setup=lambda: None, data=data)
    with pytest.raises(ValueError, match="neither attributes nor class labels"):
        load_or_train(dm, Path("/nonexistent"), epochs=1)


# ------------------------------------------------------------------------------ measure_edits
class Recorder:
    """decode = identity, recording every batch of codes it decodes."""

    def __init__(self):
        self.seen: list[torch.Tensor] = []

    def __call__(self, z):
        self.seen.append(z.clone())
        return z


def multilabel_case():
    # logits = codes (identity judge): attribute a's probability is sigmoid(z[:, a])
    z = torch.tensor([[-3.0, 0.4], [-1.5, -2.0], [-0.2, 1.0], [1.0, -0.5], [0.5, 0.1], [2.0, 3.0]])
    present = torch.tensor([[False, True], [False, False], [False, True], [False, False], [True, True],
                            [True, False]])
    vectors = torch.tensor([[1.0, 0.0],    # attribute 0: along its own logit
                            [1.0, 0.0]])   # attribute 1: orthogonal to its logit, changes nothing
    judge = Judge(Linear(np.eye(2)), ["bright", "wide"], True, [0.9, 0.8], "valid")
    return z, present, vectors, judge


def test_measure_edits_multilabel_against_closed_form():
    z, present, vectors, judge = multilabel_case()
    decode = Recorder()
    rows = measure_edits(decode, judge, z, present, vectors, [0, 1], weight=1.0, seed=7, batch_size=4)
    assert [r["attribute"] for r in rows] == ["bright", "wide"]
    zn = z.numpy().astype(np.float64)
    gen = torch.Generator().manual_seed(7)  # one random direction per column, in order
    u = [torch.randn(2, generator=gen), torch.randn(2, generator=gen)]

    r0 = rows[0]
    toward, away = zn[[0, 1, 2, 3], 0], zn[[4, 5], 0]
    assert r0["n_toward"] == 4 and r0["n_away"] == 2
    assert r0["toward"] == 1.0 and r0["away"] == 1.0  # the vector raises / lowers the logit of every image
    assert r0["toward_mean_dp"] == pytest.approx(np.mean(sigmoid(toward + 1) - sigmoid(toward)), rel=1e-5)
    assert r0["away_mean_dp"] == pytest.approx(np.mean(sigmoid(away - 1) - sigmoid(away)), rel=1e-5)
    # judged without before: -3, -1.5, -0.2 (not 1.0); after +1: -2, -0.5, 0.8 -> one of three flips
    assert r0["n_judged_without"] == 3
    assert r0["flipped"] == pytest.approx(1 / 3)
    # the random direction moves every logit 0 by u[0] (scaled): all up or all down
    up = float(u[0][0] > 0)
    assert r0["toward_random"] == up and r0["away_random"] == up

    r1 = rows[1]
    assert r1["n_toward"] == 3 and r1["n_away"] == 3  # without: rows 1, 3, 5
    assert r1["toward"] == 0.0 and r1["away"] == 0.0 and r1["toward_mean_dp"] == 0.0 and r1["away_mean_dp"] == 0.0
    assert r1["flipped"] == 0.0
    assert r1["n_judged_without"] == int(np.sum(sigmoid(zn[[1, 3, 5], 1]) < 0.5))  # -2.0, -0.5 -> 2
    up = float(u[1][1] > 0)
    assert r1["toward_random"] == up and r1["away_random"] == up


def test_measure_edits_random_direction_has_the_vector_norm():
    z, present, vectors, judge = multilabel_case()
    vectors = vectors * 3.0
    decode = Recorder()
    measure_edits(decode, judge, z, present, vectors, [0], weight=0.5, seed=1, batch_size=100)
    base, edited, random_ = decode.seen[:3]  # toward: p0, p1 (vector), random direction
    rows = ~present[:, 0]
    np.testing.assert_allclose(base.numpy(), z[rows].numpy())
    np.testing.assert_allclose((edited - base).numpy(), np.tile([[1.5, 0.0]], (4, 1)), rtol=1e-6)  # 0.5 * 3 * e_0
    step = (random_ - base).numpy()
    np.testing.assert_allclose(step, np.tile(step[:1], (4, 1)), atol=1e-6)  # one direction for all images
    assert np.linalg.norm(step[0]) == pytest.approx(0.5 * 3.0, rel=1e-5)


def test_measure_edits_random_baseline_varies_with_the_seed():
    z, present, vectors, judge = multilabel_case()
    ups = [measure_edits(lambda c: c, judge, z, present, vectors, [0], 1.0, seed=s)[0]["toward_random"]
           for s in range(40)]
    assert set(ups) <= {0.0, 1.0} and 8 <= sum(ups) <= 32


def test_measure_edits_multiclass_against_closed_form():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 0, 1, 2, 2, 1])
    z = torch.from_numpy(rng.normal(size=(8, 3))).float()
    present = torch.nn.functional.one_hot(torch.from_numpy(labels), 3).bool()
    vectors = 2.0 * torch.eye(3)
    judge = Judge(Linear(np.eye(3)), ["zero", "one", "two"], False, [1.0, 1.0, 1.0], "valid")
    rows = measure_edits(lambda c: c, judge, z, present, vectors, [2, 0], weight=0.5, seed=0, batch_size=3)
    assert [r["attribute"] for r in rows] == ["two", "zero"]
    zn = z.numpy().astype(np.float64)
    for r, a in zip(rows, [2, 0]):
        assert not any(k.startswith("away") or k == "n_away" for k in r)  # no removal for class labels
        without = labels != a
        assert r["n_toward"] == int(without.sum())
        before = zn[without]
        after = before + 0.5 * 2.0 * np.eye(3)[a]
        p0, p1 = softmax(before)[:, a], softmax(after)[:, a]
        assert r["toward"] == 1.0
        assert r["toward_mean_dp"] == pytest.approx(np.mean(p1 - p0), rel=1e-5)
        judged_without = before.argmax(1) != a
        assert r["n_judged_without"] == int(judged_without.sum())
        assert r["flipped"] == pytest.approx(np.mean(after[judged_without].argmax(1) == a))
        assert 0.0 <= r["toward_random"] <= 1.0


def test_measure_edits_when_no_image_lacks_the_attribute():
    z, _, vectors, judge = multilabel_case()
    present = torch.ones(6, 2, dtype=torch.bool)
    (row,) = measure_edits(lambda c: c, judge, z, present, vectors, [0], 1.0)
    assert row["n_toward"] == 0 and "toward" not in row and "flipped" not in row
    assert row["n_away"] == 6 and row["away"] == 1.0


# ------------------------------------------------------------------------------ means / table
ROWS = [
    {"attribute": "a", "n_toward": 4, "toward": 1.0, "toward_random": 0.0, "flipped": float("nan"), "classifier_accuracy": 0.9},
    {"attribute": "b", "n_toward": 6, "toward": 0.5, "toward_random": 0.5, "flipped": 0.25, "classifier_accuracy": 0.7},
]


def test_means_skip_nan_and_missing_keys():
    assert means(ROWS) == {"toward": pytest.approx(0.75), "toward_random": pytest.approx(0.25), "flipped": pytest.approx(0.25)}
    with_away = ROWS + [{"attribute": "c", "toward": 0.0, "toward_random": 1.0, "flipped": 1.0, "away": 0.4,
                         "away_random": 0.2}]
    m = means(with_away)
    assert m["away"] == pytest.approx(0.4) and m["away_random"] == pytest.approx(0.2)
    assert m["toward"] == pytest.approx(0.5) and m["flipped"] == pytest.approx(0.625)


def test_table_has_a_row_per_attribute_and_the_mean():
    from rich.console import Console

    t = table(ROWS, "edit success")
    assert t.row_count == 3 and t.title == "edit success"
    headers = [str(c.header) for c in t.columns]
    assert headers == ["attribute", "n", "toward", "random dir.", "flipped", "clf. acc."]  # no removal columns
    console = Console(record=True, width=200)
    console.print(t)
    text = console.export_text()
    lines = [line for line in text.splitlines() if "mean" in line]
    assert len(lines) == 1 and "0.750" in lines[0] and "0.250" in lines[0]
    assert any("1.000" in line and " a " in line for line in text.splitlines())
