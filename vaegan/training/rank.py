"""``python -m vaegan.training.rank <run dir>/config.yaml``: a rank started by ``ConfigLauncher``.

It trains the run of that resolved config as ``python -m vaegan.run`` would, with the same one-line
failures (``vaegan.run.execute``).
"""

from __future__ import annotations

import sys

from omegaconf import OmegaConf

from vaegan.config import TrainConfig
from vaegan.run import execute


def main(config_file: str) -> None:
    execute(OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(config_file)))


if __name__ == "__main__":
    main(sys.argv[1])
