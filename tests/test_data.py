"""The offline data sources: digits (real images shipped with scikit-learn) and synthetic."""

import pytest
import torch

from vaegan.data import DigitsDataModule, SyntheticDataModule, build_datamodule


def test_digits_are_real_images_in_range():
    dm = DigitsDataModule(batch_size=32, image_size=32, channels=1, val_fraction=0.1, seed=0)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 1797
    assert len(dm.val_set) == 179
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 32, 32) and y.shape == (32,)
    assert x.min() >= -1 and x.max() <= 1
    assert x.min() == -1 and x.max() > 0.9  # black background, bright strokes
    assert set(y.tolist()) <= set(range(10))


def test_digits_match_scikit_learn_pixels_at_native_size():
    from sklearn.datasets import load_digits

    dm = DigitsDataModule(image_size=8, channels=1, val_fraction=0.0)
    dm.setup()
    full = dm.train_set.dataset
    expected = torch.from_numpy(load_digits().images[5]).float() / 16 * 2 - 1
    torch.testing.assert_close(full[5][0][0], expected)


def test_three_channel_digits_repeat_gray():
    dm = DigitsDataModule(image_size=16, channels=3)
    x = dm.fixed_images(4)
    assert x.shape == (4, 3, 16, 16)
    assert torch.equal(x[:, 0], x[:, 2])


def test_split_is_seeded():
    a, b, c = (DigitsDataModule(seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert a.val_set.indices == b.val_set.indices != c.val_set.indices


def test_synthetic_is_deterministic_noise():
    dm = SyntheticDataModule(length=10, image_size=16, channels=3, val_fraction=0.0, batch_size=4)
    dm.setup()
    ds = dm.train_set.dataset
    assert torch.equal(ds[3][0], ds[3][0]) and not torch.equal(ds[3][0], ds[4][0])
    assert ds[0][0].shape == (3, 16, 16) and ds[0][0].abs().max() <= 1
    with pytest.raises(IndexError):
        ds[10]


def test_bad_requests_say_what_to_change():
    with pytest.raises(ValueError, match="data.batch_size=64 exceeds the 9"):
        SyntheticDataModule(length=10, batch_size=64, val_fraction=0.1).setup()
    with pytest.raises(ValueError, match="choose one of"):
        build_datamodule("mnist")
    with pytest.raises(NotImplementedError, match="data=digits or data=synthetic"):
        build_datamodule("celeba")
