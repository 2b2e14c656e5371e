"""Metrics: Inception feature extractors (``extractors``), the recorded protocol (``protocol``), IS,
FID, KID and precision/recall of a generator through torch-fidelity (``fidelity``), the glue from
``cfg.metrics`` (``settings``) and the in-training callback (``callback``)."""

from vaegan.metrics.extractors import INCEPTION, Extractor, MetricsError, load_extractor
from vaegan.metrics.fidelity import (
    Evaluation, evaluate_generator, frechet_distance, inception_score, kernel_inception_distance, precision_recall,
)
from vaegan.metrics.protocol import Protocol

__all__ = [
    "INCEPTION", "Evaluation", "Extractor", "MetricsError", "Protocol", "evaluate_generator", "frechet_distance",
    "inception_score", "kernel_inception_distance", "load_extractor", "precision_recall",
]
