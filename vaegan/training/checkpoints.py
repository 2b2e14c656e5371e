"""Checkpoints: written through a temporary file, read without running code, checked against the
run before it resumes from them.

``torch.load(..., weights_only=True)`` unpickles tensors and plain containers only, so a file from
a stranger cannot execute code. Every checkpoint this project writes loads that way; the opt-out
``ckpt_weights_only=false`` exists for files written by other code and is unsafe for files you
did not make.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

# Settings that change the shapes of the weights: a checkpoint resumes only a run that agrees on all.
ARCHITECTURE = ("variant", "vae", "discriminator", "lsm", "image_size", "channels", "width", "latent_dim")
# The VAE's loss convention (docs/model.md, The loss convention): a run resumed under another one would change
# its objective half-way. Checkpoints written before a key existed trained with these values.
CONVENTION = ("kl_reduction", "lsm_normalize")
BEFORE_THE_KEY = {"lsm_normalize": False}


def saved_hyper_parameters(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's hyper-parameters, with the values it trained with for keys added since."""
    return {**BEFORE_THE_KEY, **ckpt["hyper_parameters"]}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, written or resumed; the message names the problem and the fix."""


def load(path: str | Path, weights_only: bool = True, own_run: bool = False) -> dict[str, Any]:
    """The checkpoint at ``path`` (memory-mapped), or CheckpointError naming what is wrong with it.
    ``own_run``: the run directory's own last.ckpt, which the same command would meet again."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file (resume from <run dir>/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except Exception as err:  # noqa: BLE001 - truncated, not a checkpoint, unsafe pickle: one message each
        raise CheckpointError(unreadable(path, err, weights_only, own_run)) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CheckpointError(f"{path}: not a vaegan training checkpoint (no state_dict or hyper_parameters)")
    return ckpt


def unreadable(path: Path, err: Exception, weights_only: bool, own_run: bool) -> str:
    """Why torch could not load ``path``, and what to do: torch's own hints (such as
    ``_use_new_zipfile_serialization``) are about writing files and never apply here."""
    first = str(err).strip().splitlines()[0].split(". ")[0][:200] if str(err).strip() else type(err).__name__
    if weights_only and "Weights only load failed" in str(err):
        return (f"{path}: holds objects other than tensors, which can run code when loaded; "
                "if you trust the file, load it with ckpt_weights_only=false")
    size = path.stat().st_size
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive
    if size == 0:
        what = "an empty file"
    elif not zipped:
        what = f"not a checkpoint ({size} bytes that are not the zip archive torch.save writes)"
    else:
        what = f"not a readable checkpoint, truncated or corrupt ({size} bytes; {first})"
    if own_run:
        return (f"{path}: {what}. This run directory resumes from it by default: move it aside "
                f"(mv {path} {path}.bad) to start again or to resume from checkpoints/iter_*.ckpt with ckpt_path=, "
                "or give the run another hydra.run.dir")
    return f"{path}: {what}; resume from an earlier checkpoint (checkpoints/iter_*.ckpt) or start again"


def iterations_done(global_step: int, optimizers: int) -> int:
    """Iterations of Algorithm 1 in ``global_step`` optimizer steps (Lightning counts each network's)."""
    return int(global_step) // optimizers


def check_more_to_do(ckpt: dict[str, Any], path: str | Path, iterations: int, optimizers: int) -> None:
    """A resumed run whose ``iterations`` the checkpoint has already reached would train nothing."""
    done = iterations_done(ckpt.get("global_step", 0), optimizers)
    if iterations <= done:
        raise CheckpointError(f"{path} has already trained {done} iterations, so iterations={iterations} leaves "
                              f"nothing to do; set iterations above {done} to train on")


def check_resumable(ckpt: dict[str, Any], path: str | Path, hparams: dict[str, Any]) -> None:
    """Raises CheckpointError naming each architecture setting where the checkpoint and the run differ."""
    saved = saved_hyper_parameters(ckpt)
    keys = ARCHITECTURE + CONVENTION + ("ema",)
    mine = {**{k: hparams.get(k) for k in ARCHITECTURE + CONVENTION}, "ema": hparams.get("ema_decay", 0.0) > 0}
    theirs = {**{k: saved.get(k) for k in ARCHITECTURE + CONVENTION}, "ema": saved.get("ema_decay", 0.0) > 0}
    differ = [f"{key}: checkpoint {theirs[key]!r}, this run {mine[key]!r}" for key in keys if theirs[key] != mine[key]]
    if differ:
        raise CheckpointError(f"{path} was trained with other model settings ({'; '.join(differ)}); resume it with "
                              "the settings of its run (its config.yaml), or start a new run without ckpt_path")


def save_checkpoint_atomically(trainer: L.Trainer, path: Path) -> None:
    """The full training state (optimizers, callbacks, loops) to ``path`` through a temporary file,
    so a failed or interrupted write never replaces a good checkpoint. Called on every rank."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:
            os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if path.exists():
            raise CheckpointError(f"could not write {path} ({err.strerror or err}); the previous one is intact. "
                                  "Free disk space and resume from it") from None
        raise CheckpointError(f"could not write {path} ({err.strerror or err}), the run's first checkpoint, so "
                              "nothing is saved. Free disk space and start the run again") from None
    trainer.strategy.barrier("save_checkpoint_atomically")


def resume_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``ckpt_path``, or else the run directory's own ``checkpoints/last.ckpt`` when it exists: a
    requeued SLURM job, or a command rerun with the same ``hydra.run.dir``, continues its run."""
    if ckpt_path is not None:
        return ckpt_path
    last = output_dir / "checkpoints" / "last.ckpt"
    return str(last) if last.is_file() else None
