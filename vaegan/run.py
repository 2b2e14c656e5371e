"""Command line: ``python -m vaegan.run +experiment=NAME [key=value ...]``."""

from __future__ import annotations

import logging
import sys
import warnings

import hydra
from omegaconf import DictConfig

from vaegan.config import ConfigError, register_configs

register_configs()


def objective_of(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value sweeps minimise: ``cfg.objective``, a logged metric's last value; ``auto`` is the
    last FID with in-training evaluation on, else the final convergence measure M (None for models
    without a discriminator, which have no M)."""
    name = cfg.objective
    if name == "auto":
        name = "metrics/fid" if cfg.callbacks.evaluation.every_n_iterations else "train/M"
        if name == "train/M" and "train/M" not in metrics:
            return None
    if name not in metrics:
        raise ConfigError(f"objective={cfg.objective!r}: {name!r} was never logged; logged: {', '.join(sorted(metrics))}")
    return metrics[name]


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Trains one run; returns its objective (``objective_of``), which sweeps minimise."""
    # Hydra's logging config already prints to the console and run.log; Lightning's own
    # console handler would print every message twice.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
    return execute(cfg)


def execute(cfg: DictConfig) -> float | None:
    """Trains ``cfg``; known failures exit with one line naming the problem and the fix (a
    signal-stopped run with status 128 + the signal's number, as a killed process would)."""
    from vaegan.callbacks import Interrupted  # imported here, like train, so that --help and config errors stay fast
    from vaegan.checkpoints import CheckpointError
    from vaegan.data import DataError
    from vaegan.guard import DivergenceError
    from vaegan.metrics import MetricsError
    from vaegan.train import train

    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # Lightning internals
    try:
        return objective_of(cfg, train(cfg))
    except ConfigError as err:
        sys.exit(f"Config error: {err}")
    except DataError as err:
        sys.exit(f"Data error: {err}")
    except MetricsError as err:
        sys.exit(f"Metrics error: {err}")
    except CheckpointError as err:
        sys.exit(f"Checkpoint error: {err}")
    except DivergenceError as err:
        sys.exit(f"Training diverged: {err}")
    except Interrupted as err:
        from vaegan.distributed import global_rank

        if global_rank() == 0:  # every rank stops; one says so
            print(f"Interrupted: {err}", file=sys.stderr)
        sys.exit(128 + err.signum)


if __name__ == "__main__":
    main()
