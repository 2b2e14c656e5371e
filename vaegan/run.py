"""Command line: ``python -m vaegan.run +experiment=NAME [key=value ...]``."""

from __future__ import annotations

import signal
import sys

NOTHING_SAVED = "Interrupted: Ctrl-C before training started; nothing was trained or saved"


def _stopped_while_importing(signum: int, frame: object) -> None:
    print(NOTHING_SAVED, file=sys.stderr)
    sys.exit(128 + signal.SIGINT)


if __name__ == "__main__":  # a Ctrl-C while Hydra is imported gets the same line as later, not a traceback
    signal.signal(signal.SIGINT, _stopped_while_importing)

import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NoReturn  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from vaegan.config import preflight  # noqa: E402

from vaegan.training import run_lock
from vaegan.config import ConfigError, register_configs, validate  # noqa: E402
from vaegan.utils.messages import final_line  # noqa: E402

log = logging.getLogger(__name__)

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
def hydra_main(cfg: DictConfig) -> float | None:
    """Trains one run; returns its objective (``objective_of``), which sweeps minimise."""
    # Hydra's logging config already prints to the console and run.log; Lightning's own
    # console handler would print every message twice.
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).handlers.clear()
    return execute(cfg)


def main() -> None:
    """Checks the command line first (each problem in one line, well under a second), then runs Hydra."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on Ctrl-C raises KeyboardInterrupt
    try:
        preflight.check(sys.argv[1:])
    except ConfigError as err:
        fail(f"Config error: {err}")
    except run_lock.RunDirectoryInUse as err:
        fail(f"Run directory in use: {err}")
    try:
        hydra_main()
    except KeyboardInterrupt:  # from training on, Ctrl-C is a signal that saves (PreemptionCheckpoint)
        fail(NOTHING_SAVED, 128 + signal.SIGINT)


def fail(line: str, status: int = 1) -> NoReturn:
    """Ends the process with ``line`` on stderr and as the last line of run.log."""
    if status == 1:
        final_line(line, console=False)
        sys.exit(line)  # printed by Python; the exception carries the line for callers of execute
    final_line(line)
    sys.exit(status)


def execute(cfg: DictConfig) -> float | None:
    """Trains ``cfg``; known failures exit with one line naming the problem and the fix (a
    signal-stopped run with status 128 + the signal's number, as a killed process would)."""
    try:
        validate(cfg)  # before torch is imported, so that a config error answers at once
    except ConfigError as err:
        fail(f"Config error: {err}")
    out = Path(cfg.paths.output_dir)
    try:
        return _execute(cfg, out)
    finally:
        run_lock.release(out)


def _execute(cfg: DictConfig, out: Path) -> float | None:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from vaegan.training import distributed  # imported here, like train, so that --help and config errors stay fast
    from vaegan.training.callbacks import Interrupted
    from vaegan.training.checkpoints import CheckpointError
    from vaegan.data import DataError
    from vaegan.training.guard import DivergenceError
    from vaegan.metrics import MetricsError
    from vaegan.training.train import train

    failures = {ConfigError: "Config error", MisconfigurationException: "Config error", DataError: "Data error",
                MetricsError: "Metrics error", CheckpointError: "Checkpoint error",
                run_lock.RunDirectoryInUse: "Run directory in use"}
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")  # Lightning internals
    try:
        hold(out, distributed.global_rank())
        return objective_of(cfg, train(cfg))
    except Interrupted as err:
        if distributed.global_rank() == 0:  # every rank stops; one says so
            fail(f"Interrupted: {err}", 128 + err.signum)
        sys.exit(128 + err.signum)
    except KeyboardInterrupt:
        fail(NOTHING_SAVED, 128 + signal.SIGINT)
    except DivergenceError as err:
        fail(f"Training diverged: {err}; {after_divergence(out)}")
    except tuple(failures) as err:
        prefix = next(name for kind, name in failures.items() if isinstance(err, kind))
        text = str(err).strip().splitlines()[0] if isinstance(err, MisconfigurationException) else err  # Lightning's
        fail(f"{prefix}: {text}")  # run to several lines; a missing dataset's shows the expected layout below its line
    except OSError as err:
        if err.filename is None:
            raise
        fail(f"File error: {file_error(err, out)}")
    except RuntimeError as err:
        if not str(err).startswith(("DataLoader worker", "DataLoader timed out")):
            raise
        fail(f"Data error: {loader_died(err, cfg.data.num_workers)}")


def hold(out: Path, rank: int) -> None:
    """Rank 0 locks the run directory (a killed run's lock is taken over, with a note); the other ranks
    check that it is their run's."""
    if rank:
        return run_lock.join(out)
    previous = run_lock.acquire(out)
    if previous:
        log.warning(f"took over the lock of {out} from {run_lock.describe(previous)}, which no longer runs")


def after_divergence(out: Path) -> str:
    """What to do after a divergence: it depends on whether a checkpoint was written before it."""
    last, fix = out / "checkpoints" / "last.ckpt", "a lower learning rate or gradient clipping (model.optimizer.clip)"
    if last.is_file():
        return f"{last} is the last checkpoint written before it: resume from it with {fix}"
    return f"no checkpoint was written before it: start again with {fix}"


def loader_died(err: RuntimeError, workers: int) -> str:
    """The usual cause of a DataLoader worker's death, or of one stuck (data.worker_timeout), is a
    small /dev/shm (Docker's default is 64 MB)."""
    shm = Path("/dev/shm")
    free = f", {shutil.disk_usage(shm).free / 2**20:.1f} MB free" if shm.is_dir() else ""
    return (f"{str(err).splitlines()[0].rstrip('.')} (data.num_workers={workers}): batches pass through shared memory "
            f"({shm}{free}), which was probably full, or memory ran out; set data.num_workers=0, or give the "
            "machine more shared memory (docker run --shm-size=8g)")


def file_error(err: OSError, out: Path) -> str:
    """One line for a failed read or write: the path, the reason, and where to look."""
    path, temp = Path(err.filename).absolute(), Path(tempfile.gettempdir())
    if path.is_relative_to(temp) and not path.is_relative_to(out.absolute()):
        return (f"{path}: {err.strerror} in the temporary directory {temp}; free space there or point TMPDIR at "
                "another folder")
    return f"{path}: {err.strerror}; free disk space, fix the permissions, or choose another hydra.run.dir"


if __name__ == "__main__":
    main()
