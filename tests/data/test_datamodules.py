"""vaegan.data.datamodules: splits, loaders of uint8 batches, the on-device transform and flips,
for the offline sources (digits, synthetic) and the cached ones (CelebA, npz, CIFAR-10)."""

import pickle
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.utils
from PIL import Image

from tests.conftest import make_celeba_layout, require_shared, write_cifar10_batches
from vaegan.data import (
    CelebADataModule, CIFAR10DataModule, DataError, DigitsDataModule, NpzDataModule, SyntheticDataModule,
    build_datamodule, crop_and_resize, to_model_input,
)
from vaegan.data.datamodules import FLIP_STREAM

ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair Blond_Hair "
    "Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup High_Cheekbones "
    "Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose Receding_Hairline "
    "Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick "
    "Wearing_Necklace Wearing_Necktie Young"
).split()


# ------------------------------------------------------------------------------------ digits, synthetic
def test_digits_are_real_images_in_range():
    dm = DigitsDataModule(batch_size=32, image_size=32, channels=1, val_fraction=0.1, seed=0)
    dm.setup()
    assert len(dm.splits["train"]) + len(dm.splits["valid"]) == 1797
    assert len(dm.splits["valid"]) == 179 and len(dm.splits["test"]) == 0
    assert dm.val_split == "valid"
    batch = next(iter(dm.train_dataloader()))
    assert batch.dtype == torch.uint8 and batch.shape == (32, 32, 32, 1)  # uint8 NHWC until the device
    x = dm.on_after_batch_transfer(batch, 0)
    assert x.dtype == torch.float32 and x.shape == (32, 1, 32, 32)
    assert x.min() == -1 and x.max() > 0.9  # black background, bright strokes
    images, labels = next(iter(dm.dataloader("train", target="labels")))
    assert labels.shape == (32,) and set(labels.tolist()) <= set(range(10))
    assert dm.class_names == [str(d) for d in range(10)]


def test_digits_match_scikit_learn_pixels_at_native_size():
    from sklearn.datasets import load_digits

    digits = load_digits()
    dm = DigitsDataModule(image_size=8, channels=1, val_fraction=0.0)
    dm.setup()
    assert dm.data.images.dtype == np.uint8 and dm.data.images.shape == (1797, 8, 8, 1)
    x = to_model_input(torch.from_numpy(dm.data.images))[:, 0]
    expected = torch.from_numpy(digits.images).float() / 16 * 2 - 1
    torch.testing.assert_close(x, expected, rtol=0, atol=1 / 255 + 1e-6)  # uint8 rounding: half a level of 255
    assert not torch.allclose(x[5], expected[6], atol=0.1)
    image, label = dm.dataset("train", target="labels")[5]
    assert label == digits.target[5] and torch.equal(image, torch.from_numpy(dm.data.images[5]))


def test_three_channel_digits_repeat_gray():
    dm = DigitsDataModule(image_size=16, channels=3)
    x = dm.fixed_images(4)
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert torch.equal(x, to_model_input(torch.from_numpy(dm.data.images[dm.splits["valid"][:4]])))


def test_split_is_seeded_by_split_seed_not_by_the_runs_seed():
    a, b, c, d = (DigitsDataModule(seed=s, split_seed=t) for s, t in ((0, 0), (1, 0), (0, 1), (0, 0)))
    for dm in (a, b, c, d):
        dm.setup()
    assert np.array_equal(a.splits["valid"], d.splits["valid"])
    assert np.array_equal(a.splits["valid"], b.splits["valid"])  # every seed of a sweep: the same split
    assert not np.array_equal(a.splits["valid"], c.splits["valid"])
    for dm in (a, c):  # disjoint and complete
        assert sorted(np.concatenate([dm.splits["train"], dm.splits["valid"]]).tolist()) == list(range(1797))


def test_train_split_all_trains_on_everything():
    dm = SyntheticDataModule(length=20, image_size=8, val_fraction=0.2, train_split="all", batch_size=4)
    dm.setup()
    assert dm.splits["train"].tolist() == list(range(20)) and len(dm.splits["valid"]) == 4
    with pytest.raises(DataError, match="data.train_split='most': use train"):
        SyntheticDataModule(train_split="most")


def test_synthetic_is_deterministic_noise():
    dm = SyntheticDataModule(length=10, image_size=16, channels=3, val_fraction=0.0, batch_size=4)
    dm.setup()
    ds = dm.dataset("train")
    assert len(ds) == 10
    assert torch.equal(ds[3], ds[3]) and not torch.equal(ds[3], ds[4])
    assert ds[0].shape == (16, 16, 3) and ds[0].dtype == torch.uint8
    assert torch.equal(ds[-1], ds[9])
    with pytest.raises(IndexError):
        ds[10]
    again, other = (SyntheticDataModule(length=10, image_size=16, batch_size=4, seed=s) for s in (0, 1))
    again.setup(), other.setup()
    assert np.array_equal(again.data.images, dm.data.images) and not np.array_equal(other.data.images, dm.data.images)
    assert torch.equal(ds.__getitems__([4, 1]), torch.stack([ds[4], ds[1]]))


def test_bad_requests_say_what_to_change():
    with pytest.raises(DataError, match="data.batch_size=64 exceeds the 9 training images; lower data.batch_size"):
        SyntheticDataModule(length=10, batch_size=64, val_fraction=0.1).setup()
    choices = "['celeba', 'cifar10', 'digits', 'folder', 'npz', 'synthetic']"
    with pytest.raises(DataError, match=re.escape(f"data='mnist' is not a data source; choose one of {choices}")):
        build_datamodule("mnist")
    with pytest.raises(DataError, match=r"data.root is not set: point it at the celeba data"):
        build_datamodule("celeba").setup()
    with pytest.raises(DataError, match="data.on_bad_image='ignore': use error or skip"):
        build_datamodule("folder", on_bad_image="ignore")
    dm = SyntheticDataModule(length=10, batch_size=2)
    with pytest.raises(DataError, match=r"split 'validation' does not exist; use one of \['test', 'train', 'valid'\]"):
        dm.dataset("validation")
    with pytest.raises(DataError, match=r"this dataset has no 'labels'; it has \[\]"):
        dm.dataset("train", target="labels")


# ------------------------------------------------------------------------------------ flips
class FakeTrainer(SimpleNamespace):
    """What on_after_batch_transfer reads of a Trainer (one process unless told otherwise)."""

    global_rank = 0
    world_size = 1


def test_flips_only_while_training_and_seeded_by_iteration():
    dm = SyntheticDataModule(length=32, image_size=8, batch_size=16, val_fraction=0.0, seed=3, flip=True)
    dm.setup()
    batch = next(iter(dm.dataloader("train")))
    plain = to_model_input(batch)
    assert torch.equal(dm.on_after_batch_transfer(batch, 0), plain)  # no trainer: no flips

    dm.trainer = FakeTrainer(training=False, global_step=0, lightning_module=SimpleNamespace(iteration=5))
    assert torch.equal(dm.on_after_batch_transfer(batch, 0), plain)  # not training: no flips

    dm.trainer.training = True
    out = dm.on_after_batch_transfer(batch, 0)
    selected = torch.rand(16, generator=torch.Generator().manual_seed(3 * 1_000_003 + 5 + FLIP_STREAM)) < 0.5
    assert 0 < int(selected.sum()) < 16
    for i in range(16):
        assert torch.equal(out[i], plain[i].flip(-1) if selected[i] else plain[i])
    assert torch.equal(dm.on_after_batch_transfer(batch, 0), out)  # the same iteration, the same flips
    dm.trainer.lightning_module.iteration = 6
    assert not torch.equal(dm.on_after_batch_transfer(batch, 0), out)

    dm.flip = False
    assert torch.equal(dm.on_after_batch_transfer(batch, 0), plain)


def test_batch_transfer_keeps_targets():
    dm = DigitsDataModule(image_size=8, channels=1, batch_size=4)
    images, labels = next(iter(dm.dataloader("valid", target="labels")))
    x, y = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(x, to_model_input(images)) and torch.equal(y, labels)


# ------------------------------------------------------------------------------------ CelebA
@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    """A CelebA datamodule at 64x64 over the 200 shared images (cache built once for this module)."""
    require_shared("celeba")
    tmp = tmp_path_factory.mktemp("celeba")
    root = make_celeba_layout(tmp / "data")
    dm = CelebADataModule(root=str(root), cache_dir=str(tmp / "cache"), image_size=64, batch_size=8, cache_workers=2)
    dm.prepare_data()
    return dm


def test_celeba_splits_follow_the_official_partition(celeba, celeba_npz):
    npz = celeba_npz(64)
    names = celeba.data.arrays["filenames"].tolist()
    partition = npz["partition"][[npz["row"][n] for n in names]]
    counts = {name: len(celeba.splits[name]) for name in ("train", "valid", "test")}
    assert counts == {"train": int((partition == 0).sum()), "valid": int((partition == 1).sum()), "test": int((partition == 2).sum())}
    assert sum(counts.values()) == 200 and min(counts.values()) > 0
    for name, code in (("train", 0), ("valid", 1), ("test", 2)):
        assert np.array_equal(celeba.splits[name], np.flatnonzero(partition == code))
    assert celeba.val_split == "valid"


def test_celeba_dataset_with_attributes(celeba, celeba_npz):
    npz = celeba_npz(64)
    ds = celeba.dataset("valid", target="attrs")
    assert len(ds) == len(celeba.splits["valid"])
    names = celeba.data.arrays["filenames"][celeba.splits["valid"]]
    for i in (0, 1, len(ds) - 1):
        image, attrs = ds[i]
        row = npz["row"][str(names[i])]
        assert image.dtype == torch.uint8 and image.shape == (64, 64, 3)
        assert torch.equal(image, torch.from_numpy(npz["x"][row]))
        assert attrs.dtype == torch.int8 and attrs.tolist() == npz["attrs"][row].tolist()
    images, attrs = next(iter(celeba.dataloader("valid", target="attrs")))
    assert images.shape == (8, 64, 64, 3) and attrs.shape == (8, 40)
    rows = [npz["row"][str(n)] for n in names[:8]]
    assert np.array_equal(images.numpy(), npz["x"][rows]) and np.array_equal(attrs.numpy(), npz["attrs"][rows])


def test_celeba_fixed_images_come_from_the_valid_split(celeba, celeba_npz):
    npz = celeba_npz(64)
    x = celeba.fixed_images(8)
    assert x.dtype == torch.float32 and x.shape == (8, 3, 64, 64)
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.9 and x.max() > 0.9
    names = celeba.data.arrays["filenames"][celeba.splits["valid"][:8]]
    expected = torch.from_numpy(npz["x"][[npz["row"][str(n)] for n in names]])
    assert torch.equal(x, to_model_input(expected))


def test_celeba_attribute_names(celeba):
    assert celeba.attr_names == ATTRIBUTES
    assert celeba.class_names == []


def test_celeba_train_loader_serves_whole_uint8_batches(celeba):
    loader = celeba.train_dataloader()
    batches = list(loader)
    n_train = len(celeba.splits["train"])
    assert len(batches) == n_train // 8  # drop_last
    assert all(b.dtype == torch.uint8 and b.shape == (8, 64, 64, 3) for b in batches)
    seen = {bytes(b[i].numpy()) for b in batches for i in range(8)}
    train_images = {bytes(celeba.data.images[r]) for r in celeba.splits["train"]}
    assert len(seen) == len(batches) * 8 and seen <= train_images  # distinct training images only
    assert len(celeba.val_dataloader().dataset) == len(celeba.splits["valid"])
    assert len(celeba.test_dataloader().dataset) == len(celeba.splits["test"])


def test_loader_worker_yields_the_same_batches(celeba):
    ds = celeba.dataset("train", target="attrs")
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives: the path, not the pixels
    assert clone.data.images is None and clone.data.path == celeba.data.path
    assert torch.equal(clone[3][0], ds[3][0]) and isinstance(clone.data.images, np.memmap)

    def batches(workers: int) -> list:
        celeba.num_workers = workers
        try:
            return list(celeba.dataloader("train", target="attrs"))
        finally:
            celeba.num_workers = 0

    in_process, in_worker = batches(0), batches(1)
    assert len(in_process) == len(in_worker) == -(-len(celeba.splits["train"]) // 8)
    for (xa, ya), (xb, yb) in zip(in_process, in_worker):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_seeded_shuffle_is_reproducible(celeba, monkeypatch):
    def first_batch(seed: int) -> torch.Tensor:  # the order follows the run's seed (IterationBatchSampler)
        monkeypatch.setattr(celeba, "seed", seed)
        return next(iter(celeba.train_dataloader()))

    assert torch.equal(first_batch(0), first_batch(0)) and not torch.equal(first_batch(0), first_batch(1))


# ------------------------------------------------------------------------------------ npz
@pytest.fixture(scope="module")
def npz_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("npz-cache")


def test_npz_at_native_size_is_identical(celeba_npz, npz_cache):
    path = require_shared("celeba", "celeba_64.npz")
    dm = NpzDataModule(root=str(path), cache_dir=str(npz_cache), image_size=64, batch_size=16, cache_workers=2)
    dm.setup()
    npz = celeba_npz(64)
    assert np.array_equal(dm.data.images, npz["x"])
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 3120, "valid": 480, "test": 420}
    for name, code in (("train", 0), ("valid", 1), ("test", 2)):
        assert np.array_equal(dm.splits[name], np.flatnonzero(npz["partition"] == code))
    assert dm.attr_names == ATTRIBUTES
    _, attrs = dm.dataset("test", target="attrs")[0]
    assert attrs.tolist() == npz["attrs"][dm.splits["test"][0]].tolist()
    _, identity = dm.dataset("train", target="identity")[0]
    assert identity == npz["identity"][dm.splits["train"][0]]


def test_npz_resized(celeba_npz, npz_cache):
    path = require_shared("celeba", "celeba_64.npz")
    dm = NpzDataModule(root=str(path), cache_dir=str(npz_cache), image_size=32, batch_size=16, cache_workers=2)
    dm.setup()
    x = celeba_npz(64)["x"]
    assert dm.data.images.shape == (4020, 32, 32, 3)
    for i in range(0, 4020, 97):
        assert np.array_equal(dm.data.images[i], crop_and_resize(Image.fromarray(x[i]), 32)), i
        assert np.array_equal(dm.data.images[i], np.asarray(Image.fromarray(x[i]).resize((32, 32), Image.BILINEAR)))
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 3120, "valid": 480, "test": 420}


def test_npz_without_partition_gets_a_seeded_split(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 256, (50, 16, 16, 3), dtype=np.uint8), y=np.arange(50) % 5)

    def splits(split_seed: int) -> dict:
        dm = NpzDataModule(root=str(tmp_path / "d.npz"), cache_dir=str(tmp_path / "cache"), image_size=16,
                           batch_size=4, val_fraction=0.2, split_seed=split_seed, cache_workers=1)
        dm.setup()
        return dm.splits

    a, b, c = splits(0), splits(0), splits(1)
    assert (len(a["train"]), len(a["valid"]), len(a["test"])) == (40, 10, 0)
    assert sorted(np.concatenate([a["train"], a["valid"]]).tolist()) == list(range(50))
    assert np.array_equal(a["valid"], b["valid"]) and not np.array_equal(a["valid"], c["valid"])


# ------------------------------------------------------------------------------------ CIFAR-10
@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    """cifar-10-batches-py/ made from the shared test images in the official pickle format: five
    training batches of 1,000 and a test batch of 5,000 (rows in a seeded order, classes mixed)."""
    with np.load(require_shared("cifar10", "cifar10_test_10k.npz")) as f:
        x, y, class_names = f["x"], f["y"], f["class_names"].tolist()
    order = np.random.default_rng(0).permutation(len(x))
    root = write_cifar10_batches(tmp_path_factory.mktemp("cifar10"), x[order], y[order], class_names,
                                 (1000,) * 5 + (5000,))
    return SimpleNamespace(root=root, x=x[order], y=y[order], class_names=class_names)


def cifar10_dm(root, cache) -> CIFAR10DataModule:
    dm = CIFAR10DataModule(root=str(root), cache_dir=str(cache), image_size=32, batch_size=64, cache_workers=2)
    dm.setup()
    return dm


def test_cifar10_batches_have_the_official_format(cifar10):
    with open(cifar10.root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # as on the CIFAR-10 page
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (1000, 3072)
    assert batch[b"labels"] == cifar10.y[:1000].tolist()
    assert np.array_equal(batch[b"data"][0, :1024].reshape(32, 32), cifar10.x[0, :, :, 0])  # red plane first


def test_cifar10_copies_are_read_directly_with_a_warning(cifar10, tmp_path):
    with pytest.warns(UserWarning, match="not the official CIFAR-10 files .*; reading them directly"):
        dm = cifar10_dm(cifar10.root, tmp_path / "cache")
    assert np.array_equal(dm.data.images, cifar10.x)
    assert np.array_equal(dm.data.arrays["labels"], cifar10.y)
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 5000, "valid": 0, "test": 5000}
    assert np.array_equal(dm.splits["test"], np.arange(5000, 10000))
    assert dm.val_split == "test"
    assert dm.class_names == cifar10.class_names == ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                     "horse", "ship", "truck"]
    images, labels = next(iter(dm.dataloader(dm.val_split, target="labels")))
    assert np.array_equal(images.numpy(), cifar10.x[5000:5064]) and labels.tolist() == cifar10.y[5000:5064].tolist()
    assert torch.equal(dm.fixed_images(4), to_model_input(torch.from_numpy(cifar10.x[5000:5004])))


def test_cifar10_official_files_are_read_through_torchvision(cifar10, tmp_path, monkeypatch):
    """With matching MD5s the source hands the files to torchvision's CIFAR10, which must give the same."""
    checked = []

    def check_integrity(path, md5=None):
        checked.append(path)
        return True

    monkeypatch.setattr(torchvision.datasets.utils, "check_integrity", check_integrity)  # looked up by the source
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", check_integrity)  # used by CIFAR10 itself
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = cifar10_dm(cifar10.root, tmp_path / "cache")
    assert not [w for w in caught if "not the official" in str(w.message)]  # this branch does not warn
    assert any(str(p).endswith("test_batch") for p in checked)
    assert np.array_equal(dm.data.images, cifar10.x)
    assert np.array_equal(dm.data.arrays["labels"], cifar10.y)
    assert dm.class_names == cifar10.class_names
    assert {k: len(v) for k, v in dm.splits.items()} == {"train": 5000, "valid": 0, "test": 5000}
    assert dm.val_split == "test"
