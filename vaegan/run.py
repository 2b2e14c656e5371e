"""Command line: ``python -m vaegan.run +experiment=NAME [key=value ...]``."""

from __future__ import annotations

import logging
import sys
import warnings

import hydra
from omegaconf import DictConfig

from vaegan.config import ConfigError, register_configs

register_configs()


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Trains one run; returns the final convergence measure M (the objective sweeps minimise)."""
    from vaegan.data import DataError  # imported here, like train, so that --help and config errors stay fast
    from vaegan.metrics import MetricsError
    from vaegan.train import train

    # Hydra's logging config already prints to the console and run.log; Lightning's own
    # console handler would print every message twice.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # Lightning internals

    try:
        metrics = train(cfg)
    except ConfigError as err:
        sys.exit(f"Config error: {err}")
    except DataError as err:
        sys.exit(f"Data error: {err}")
    except MetricsError as err:
        sys.exit(f"Metrics error: {err}")
    return metrics.get("train/M")


if __name__ == "__main__":
    main()
