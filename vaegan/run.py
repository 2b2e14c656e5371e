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

import errno  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NoReturn  # noqa: E402

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from vaegan.config import ConfigError, preflight, register_configs, validate  # noqa: E402
from vaegan.training import logged, run_lock  # noqa: E402
from vaegan.utils.messages import final_line  # noqa: E402

log = logging.getLogger(__name__)

register_configs()


def objective_of(cfg: DictConfig, metrics: dict[str, float]) -> float | None:
    """The value sweeps minimise: ``cfg.objective``, a logged metric's last value; ``auto`` is the
    last FID with in-training evaluation on, else the final convergence measure M (None for models
    without a discriminator, which have no M)."""
    name = cfg.objective
    if name == "auto":
        name = logged.FID if cfg.callbacks.evaluation.every_n_iterations else logged.M
        if name == logged.M and logged.M not in metrics:
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
    except (OSError, RuntimeError) as err:
        headline = loader_failure(err)
        if headline:
            fail(f"Data error: {loader_died(headline, cfg.data.num_workers)}")
        if not isinstance(err, OSError) or err.filename is None:
            raise
        fail(f"File error: {file_error(err, out)}")


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


def loader_failure(err: BaseException | None) -> str | None:
    """The first line of the DataLoader's own failure in ``err``'s chain, if there is one: a worker
    that died or stuck, or workers that could not start for want of shared memory (their queues'
    semaphores live in /dev/shm, and Lightning's teardown then raises its own error over that one)."""
    while err is not None:
        if isinstance(err, RuntimeError) and str(err).startswith(("DataLoader worker", "DataLoader timed out")):
            return str(err).splitlines()[0].rstrip(".")
        if isinstance(err, OSError) and err.errno == errno.ENOSPC and err.filename is None and raised_in_dataloader(err):
            return f"DataLoader workers could not start ({err.strerror})"
        err = err.__cause__ or err.__context__
    return None


def raised_in_dataloader(err: BaseException) -> bool:
    return any(Path(frame.filename).parts[-4:] == ("torch", "utils", "data", "dataloader.py")
               for frame in traceback.extract_tb(err.__traceback__))


def loader_died(headline: str, workers: int) -> str:
    """The usual cause of a DataLoader worker's death, of one stuck (data.worker_timeout), or of
    workers that cannot start is a small /dev/shm (Docker's default is 64 MB)."""
    shm = Path("/dev/shm")
    free = f", {shutil.disk_usage(shm).free / 2**20:.1f} MB free" if shm.is_dir() else ""
    return (f"{headline} (data.num_workers={workers}): batches pass through shared memory "
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
