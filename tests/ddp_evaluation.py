"""In-training evaluation under DDP on two CPU processes, launched by tests/metrics/test_callback.py:

    python -m torch.distributed.run --nproc_per_node=2 tests/ddp_evaluation.py <out dir> <extractor .pt>

Each rank writes ``<out dir>/rank<r>.json``: the metrics/fid values it saw after every evaluation,
how often it called ``evaluate_generator`` (only rank 0 should) and its callback's best FID.

The script uses a minimal LightningModule with what ``EvaluationCallback`` needs: ``generator``
(z -> images in [-1, 1]), ``hparams.latent_dim`` and ``iteration`` (tests/ddp_training.py trains
VAEGANModule itself under DDP). The datamodule shards batches by rank itself, hence
``use_distributed_sampler=False``, as in vaegan.training.train.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import vaegan.metrics.callback as callback_module  # noqa: E402
from vaegan.data import build_datamodule  # noqa: E402
from vaegan.metrics import load_extractor  # noqa: E402
from vaegan.metrics.callback import EvaluationCallback  # noqa: E402

EVERY = 2
ITERATIONS = 4


class TinyGenerator(nn.Module):
    def __init__(self, latent_dim: int, image_size: int):
        super().__init__()
        self.image_size = image_size
        self.net = nn.Linear(latent_dim, image_size * image_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(z)).view(-1, 1, self.image_size, self.image_size)


class TinyModule(L.LightningModule):
    """Fits the generator's output for fixed noise to the batch (any loss would do)."""

    def __init__(self, latent_dim: int = 8, image_size: int = 16):
        super().__init__()
        self.save_hyperparameters()
        self.generator = TinyGenerator(latent_dim, image_size)

    @property
    def iteration(self) -> int:
        return self.global_step

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        z = torch.randn(x.shape[0], self.hparams.latent_dim, generator=torch.Generator().manual_seed(batch_idx))
        return (self.generator(z.to(x.device)) - x).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


class Recorder(L.Callback):
    """After each evaluation (it runs after EvaluationCallback): the FID this rank was given."""

    def __init__(self):
        self.fids: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if pl_module.iteration % EVERY == 0:
            self.fids.append(float(trainer.callback_metrics["metrics/fid"]))


def main() -> None:
    out, extractor_file = Path(sys.argv[1]), sys.argv[2]
    calls: list[int] = []
    original = callback_module.evaluate_generator

    def counted(*args, **kwargs):
        calls.append(int(os.environ.get("RANK", "-1")))
        return original(*args, **kwargs)

    callback_module.evaluate_generator = counted  # EvaluationCallback looks it up in its module

    L.seed_everything(0, verbose=False)
    datamodule = build_datamodule("digits", batch_size=16, image_size=16, channels=1, seed=0)
    evaluation = EvaluationCallback(
        load_extractor(extractor_file), out / "checkpoints", every_n_iterations=EVERY, keep_best=True, split="train",
        num_samples=32, num_reference=64, names=None, seed=0, batch_size=16, cache_dir=out / "refcache",
        isc_splits=10, kid_subsets=10, kid_subset_size=32, prc_neighborhood=3,
    )
    recorder = Recorder()
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=ITERATIONS, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[evaluation, recorder],
        limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
    )
    trainer.fit(TinyModule(), datamodule=datamodule)
    record = dict(rank=trainer.global_rank, fids=recorder.fids, evaluate_calls=len(calls),
                  best_fid=None if math.isinf(evaluation.best_fid) else evaluation.best_fid,
                  best_iteration=evaluation.best_iteration)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
