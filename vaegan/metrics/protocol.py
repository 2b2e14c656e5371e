"""The evaluation protocol: every choice that changes a metric's value, recorded with each result.

``Protocol.key()`` identifies a result's protocol; ``Protocol.reference_key()`` identifies the
reference features and changes with every field they depend on, so cached features can never
be reused under a different protocol by mistake.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from vaegan.utils.hashing import digest

# Fields the generated side alone depends on: changing them does not change the reference features,
# so in-training evaluation (a few thousand samples) and the final one (50,000) share them.
GENERATED_ONLY = ("num_samples", "model_mode", "weights", "precision", "train_precision", "sample_quantization", "metrics",
                  "isc_splits", "kid_subsets", "kid_subset_size", "prc_neighborhood")


@dataclass(frozen=True)
class Protocol:
    dataset: str  # data.name
    data_id: str  # the source's cache directory (content fingerprint) or a digest of its pixels
    split: str  # reference split: train, valid, test or all
    num_reference: int  # reference images used (a seeded subset when the split is larger)
    image_size: int
    channels: int  # 1-channel images are fed to Inception as R = G = B
    num_samples: int  # generated images
    extractor: str  # inception-v3-compat or torchscript-inception
    extractor_file: str
    extractor_sha256: str
    resize: str
    metrics: str  # comma-separated: is, fid, kid, prc
    seed: int  # latent codes of the generated images and the reference subset
    isc_splits: int
    kid_subsets: int
    kid_subset_size: int
    prc_neighborhood: int
    torch_fidelity: str  # library version that computed the metrics
    model_mode: str = "eval"
    weights: str = "raw"  # raw: the trained generator; ema: its moving average (model.ema.decay > 0)
    precision: str = "fp32"  # of sampling and feature extraction
    train_precision: str = "32-true"  # trainer.precision the generator was trained in (bf16-mixed is opt-in)
    sample_quantization: str = "generated images rounded to uint8, as the real images are stored"

    def as_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        return digest(self.as_dict())[:16]

    def reference_key(self) -> str:
        return digest({k: v for k, v in self.as_dict().items() if k not in GENERATED_ONLY})[:16]

    def lines(self) -> list[str]:
        return [f"{f.name}: {getattr(self, f.name)}" for f in fields(self)]
