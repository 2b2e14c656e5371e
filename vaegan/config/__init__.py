"""The run's configuration: typed schemas (``schema``), their checks (``validate``), the command
line checked before Hydra (``preflight``)."""

from vaegan.config.schema import ConfigError, TrainConfig, register_configs
from vaegan.config.validate import validate

__all__ = ["ConfigError", "TrainConfig", "register_configs", "validate"]
