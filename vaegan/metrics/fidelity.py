"""IS, FID, KID and precision/recall of a generator against a reference split, via torch-fidelity.

``evaluate_generator`` is the single call: it draws ``num_samples`` latent codes from one seeded
generator (so the images do not depend on the batch size), decodes them in eval mode, rounds them
to uint8 like the stored real images, extracts Inception features and compares them with the
reference split's features, which are cached on disk under ``Protocol.reference_key()``.
The metric formulas are torch-fidelity's; this module only feeds them.
"""

from __future__ import annotations

import hashlib
import time
import zipfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from rich.progress import Progress
from torch import Tensor
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_features_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from vaegan.config.schema import MetricsConfig
from vaegan.data.datamodules import ArrayDataModule
from vaegan.data.transforms import to_model_input, to_uint8
from vaegan.utils.files import write_npz
from vaegan.metrics.extractors import Extractor, MetricsError
from vaegan.metrics.latent_use import latent_use
from vaegan.metrics.protocol import Protocol

ALL_METRICS = ("is", "fid", "kid", "prc")


# ------------------------------------------------------------------------- the metrics themselves
def inception_score(logits: Tensor, splits: int = MetricsConfig.isc_splits, seed: int = MetricsConfig.seed) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016; the paper's Sec. 5.4), mean and std
    over ``splits`` shuffled chunks, from unnormalised class logits."""
    out = isc_features_to_metric(logits, splits=splits, shuffle=True, rng_seed=seed)
    return out["inception_score_mean"], out["inception_score_std"]


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """FID = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) of two feature sets (Heusel et al. 2017)."""
    stats_a, stats_b = fid_features_to_statistics(features_a), fid_features_to_statistics(features_b)
    return fid_statistics_to_metric(stats_a, stats_b, verbose=False)[KEY_METRIC_FID]


def kernel_inception_distance(features_a: Tensor, features_b: Tensor, subsets: int = MetricsConfig.kid_subsets,
                              subset_size: int = MetricsConfig.kid_subset_size,
                              seed: int = MetricsConfig.seed) -> tuple[float, float]:
    """KID: the unbiased MMD^2 with the kernel (x.y / d + 1)^3, mean and std over random subsets
    (Binkowski et al. 2018)."""
    out = kid_features_to_metric(features_a, features_b, kid_subsets=subsets, kid_subset_size=subset_size,
                                 kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                                 kid_kernel_poly_coef0=1, rng_seed=seed, verbose=False)
    return out[KEY_METRIC_KID_MEAN], out[KEY_METRIC_KID_STD]


def precision_recall(generated: Tensor, real: Tensor, neighborhood: int = MetricsConfig.prc_neighborhood) -> tuple[float, float]:
    """Improved precision and recall with k-NN balls (Kynkaanniemi et al. 2019)."""
    out = prc_features_to_metric(generated, real, prc_neighborhood=neighborhood, prc_batch_size=10000,
                                 save_cpu_ram=True, verbose=False)
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


# ------------------------------------------------------------------------------ images in, features out
def generated_images(generator: torch.nn.Module, latent_dim: int, n: int, seed: int, batch_size: int,
                     device: torch.device) -> Iterator[Tensor]:
    """uint8 (B, C, H, W) batches of F_vae-d(z), z ~ N(0, I), all z drawn at once on the CPU."""
    z = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))
    for chunk in z.split(batch_size):
        with torch.no_grad():
            x = generator(chunk.to(device))
        yield to_uint8(x).permute(0, 3, 1, 2)


def extract(batches: Iterable[Tensor], extractor: Extractor, total: int, progress: Progress | None = None,
            description: str = "features") -> dict[str, Tensor]:
    """Concatenated features of uint8 (B, C, H, W) batches."""
    task = progress.add_task(description, total=total) if progress is not None else None
    parts: dict[str, list[Tensor]] = {name: [] for name in extractor.features}
    for images in batches:
        for name, value in extractor(images).items():
            parts[name].append(value)
        if progress is not None:
            progress.advance(task, len(images))
    return {name: torch.cat(values) for name, values in parts.items()}


def reference_indices(dm: ArrayDataModule, split: str, limit: int, seed: int) -> np.ndarray:
    """The split's rows, or a seeded subset of ``limit`` of them (sorted, for sequential reads)."""
    dm.setup()
    if split not in dm.splits or len(dm.splits[split]) == 0:
        available = [name for name, rows in dm.splits.items() if len(rows)]
        raise MetricsError(f"metrics.split={split!r}: this dataset has no such split; use one of {available}")
    rows = dm.splits[split]
    if len(rows) > limit:
        rows = np.sort(np.random.default_rng(seed).choice(rows, limit, replace=False))
    return rows


def data_id(dm: ArrayDataModule, rows: np.ndarray) -> str:
    """The cache directory (named by its content fingerprint) and the rows, or a digest of the pixels."""
    h = hashlib.sha256(np.ascontiguousarray(rows).tobytes())
    if dm.data.path is None:
        h.update(np.ascontiguousarray(dm.data.images[rows]).tobytes())
        return f"{type(dm).__name__}-{h.hexdigest()[:16]}"
    return f"{dm.data.path.name}/rows-{h.hexdigest()[:16]}"


def reference_batches(dm: ArrayDataModule, rows: np.ndarray, batch_size: int) -> Iterator[Tensor]:
    images = dm.data.images
    for start in range(0, len(rows), batch_size):
        yield torch.from_numpy(np.asarray(images[rows[start:start + batch_size]])).permute(0, 3, 1, 2)


def reference_inputs(dm: ArrayDataModule, rows: np.ndarray, batch_size: int, device: torch.device) -> Iterator[Tensor]:
    """The reference rows as model input (float (B, C, H, W) in [-1, 1]) on ``device``."""
    for images in reference_batches(dm, rows, batch_size):
        yield to_model_input(images.permute(0, 2, 3, 1)).to(device)


def reconstructed_images(encoder: torch.nn.Module, generator: torch.nn.Module, inputs: Iterable[Tensor]) -> Iterator[Tensor]:
    """uint8 (B, C, H, W) batches of F_vae-d(mu_v(x)), the VAE's reconstructions of the inputs."""
    for x in inputs:
        with torch.no_grad():
            yield to_uint8(generator(encoder(x)[0])).permute(0, 3, 1, 2)


def cached_reference_features(path: Path, compute) -> dict[str, Tensor]:
    """Features from ``path`` (an .npz written by an earlier run), else ``compute()``d and saved
    through a temporary file so that an interrupted write leaves no half-written cache."""
    if path.is_file():
        try:
            with np.load(path) as f:
                return {name: torch.from_numpy(f[name]) for name in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # damaged: recompute and replace
            pass
    features = compute()
    write_npz(path, {name: value.numpy() for name, value in features.items()})
    return features


# ------------------------------------------------------------------------------------ one call
@dataclass
class Evaluation:
    values: dict[str, float]
    reference_values: dict[str, float]
    protocol: Protocol
    seconds: float
    reference_cache: str | None = None

    def as_dict(self) -> dict:
        return dict(values=self.values, reference_values=self.reference_values, protocol=self.protocol.as_dict(),
                    protocol_key=self.protocol.key(), reference_key=self.protocol.reference_key(),
                    reference_cache=self.reference_cache, seconds=round(self.seconds, 2))


def metric_names(requested: Iterable[str] | None, extractor: Extractor) -> tuple[str, ...]:
    """The requested metrics (default: all but prc that the extractor supports), checked."""
    if requested is None:
        return ("is", "fid", "kid") if extractor.has_logits else ("fid", "kid")
    names = tuple(requested)
    unknown = sorted(set(names) - set(ALL_METRICS))
    if unknown:
        raise MetricsError(f"metrics.names: unknown {unknown}; choose from {list(ALL_METRICS)}")
    if "is" in names and not extractor.has_logits:
        raise MetricsError("metrics.names includes is, which needs class logits: use "
                           "metrics.feature_extractor=inception-v3-compat (a TorchScript extractor gives features only)")
    return names


def evaluate_generator(generator: torch.nn.Module, latent_dim: int, dm: ArrayDataModule, extractor: Extractor, *,
                       split: str = MetricsConfig.split, num_samples: int = MetricsConfig.num_samples,
                       num_reference: int = MetricsConfig.num_reference, names: Iterable[str] | None = MetricsConfig.names,
                       seed: int = MetricsConfig.seed, batch_size: int = MetricsConfig.batch_size,
                       device: torch.device | str = "cpu", cache_dir: Path | None = None,
                       isc_splits: int = MetricsConfig.isc_splits, kid_subsets: int = MetricsConfig.kid_subsets,
                       kid_subset_size: int = MetricsConfig.kid_subset_size,
                       prc_neighborhood: int = MetricsConfig.prc_neighborhood, progress: Progress | None = None,
                       weights: str = "raw", train_precision: str = "32-true", encoder: torch.nn.Module | None = None) -> Evaluation:
    """Metrics of ``generator`` (z -> images in [-1, 1]) against ``dm``'s ``split``; see the module doc.

    With the VAE's ``encoder`` (x -> (mu_v, logvar_v)) the reference images are also reconstructed,
    F_vae-d(mu_v(x)): ``rfid`` is their FID against the reference through the same extractor, and the
    latent-use figures of ``vaegan.metrics.latent_use`` (``kl_nats``, ``active_units``, ``psnr``,
    ``ssim``, ``psnr_mean_image``) are measured on the same images."""
    start = time.perf_counter()
    device = torch.device(device)
    names = metric_names(names, extractor)
    rows = reference_indices(dm, split, num_reference, seed)
    subset = min(kid_subset_size, num_samples, len(rows))
    protocol = Protocol(
        dataset=type(dm).__name__.removesuffix("DataModule").lower(), data_id=data_id(dm, rows), split=split,
        num_reference=len(rows), image_size=dm.image_size, channels=dm.channels, num_samples=num_samples,
        extractor=extractor.name, extractor_file=extractor.file.name, extractor_sha256=extractor.sha256,
        resize=extractor.resize, metrics=",".join(names), seed=seed, isc_splits=isc_splits, kid_subsets=kid_subsets,
        kid_subset_size=subset, prc_neighborhood=prc_neighborhood, torch_fidelity=version("torch-fidelity"),
        weights=weights, train_precision=train_precision,
    )

    def compute_reference() -> dict[str, Tensor]:
        return extract(reference_batches(dm, rows, batch_size), extractor, len(rows), progress, f"reference {split}")

    cache = None if cache_dir is None else Path(cache_dir) / f"{protocol.reference_key()}.npz"
    real = compute_reference() if cache is None else cached_reference_features(cache, compute_reference)
    networks = [net for net in (generator, encoder) if net is not None]
    was_training = [net.training for net in networks]
    for net in networks:
        net.eval()
    try:
        batches = generated_images(generator, latent_dim, num_samples, seed, batch_size, device)
        fake = extract(batches, extractor, num_samples, progress, "generated")
        if encoder is not None:
            inputs = lambda: reference_inputs(dm, rows, batch_size, device)  # noqa: E731
            recon = extract(reconstructed_images(encoder, generator, inputs()), extractor, len(rows), progress,
                            "reconstructions")
            with torch.no_grad():
                use = latent_use(encoder, generator, inputs)
    finally:
        for net, mode in zip(networks, was_training):
            net.train(mode)

    values: dict[str, float] = {}
    reference_values: dict[str, float] = {}
    if "is" in names:
        values["is_mean"], values["is_std"] = inception_score(fake["logits_unbiased"], isc_splits, seed)
        reference_values["is_mean"], reference_values["is_std"] = inception_score(real["logits_unbiased"], isc_splits, seed)
    if "fid" in names:
        values["fid"] = frechet_distance(fake["2048"], real["2048"])
    if "kid" in names:
        values["kid_mean"], values["kid_std"] = kernel_inception_distance(fake["2048"], real["2048"], kid_subsets, subset, seed)
    if "prc" in names:
        values["precision"], values["recall"] = precision_recall(fake["2048"], real["2048"], prc_neighborhood)
    if encoder is not None:
        values["rfid"] = frechet_distance(recon["2048"], real["2048"])
        values.update(use.as_dict())
    return Evaluation(values, reference_values, protocol, time.perf_counter() - start,
                      None if cache is None else str(cache))
