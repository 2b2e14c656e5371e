"""Training under DDP on two CPU processes, launched by tests/training/test_distributed.py:

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_training.py <out dir> [overrides ...]

Each rank trains the composed config with the real ``vaegan.training.train.train`` and writes
``<out dir>/rank<r>.pt``: k and the controller's state after every iteration, and its final
weights and optimizer states, so the test can check that the ranks agree at every step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import vaegan.training.train as train_module  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from vaegan.config import register_configs  # noqa: E402
from vaegan.models.controller import PIDUpdate  # noqa: E402


class RankRecorder(L.Callback):
    def __init__(self, out: Path):
        self.out, self.history = out, []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        controller = next(c for c in trainer.callbacks if isinstance(c, PIDUpdate)).controller
        self.history.append({"iteration": pl_module.iteration, **controller.state_dict()})

    def on_train_end(self, trainer, pl_module) -> None:
        torch.save({"history": self.history, "state_dict": pl_module.state_dict(),
                    "optimizers": [opt.state_dict() for opt in trainer.optimizers], "world_size": trainer.world_size},
                   self.out / f"rank{trainer.global_rank}.pt")


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides + [f"paths.output_dir={out / 'run'}"])
    build = train_module.build_callbacks
    train_module.build_callbacks = lambda *args, **kwargs: build(*args, **kwargs) + [RankRecorder(out)]
    train_module.train(cfg)


if __name__ == "__main__":
    main()
