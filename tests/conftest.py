import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from vaegan.config import register_configs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A tiny but real configuration: the full model on the digits at 16x16, width 4.
TINY = [
    "+experiment=quickstart", "data.image_size=16", "data.batch_size=16", "model.width=4", "model.latent_dim=8",
    "model.optimizer.lr=1e-3", "trainer.log_every_n_steps=1", "callbacks.progress_bar.enabled=false",
    "trainer.enable_model_summary=false",
]


@pytest.fixture
def compose_cfg():
    register_configs()

    def _compose(overrides: list[str], output_dir: Path | None = None):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            extra = [f"paths.output_dir={output_dir}"] if output_dir else []
            return compose("train", overrides=overrides + extra)

    return _compose


def run_cli(*overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m vaegan.run`` as a user types it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "vaegan.run", *overrides], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout,
    )
