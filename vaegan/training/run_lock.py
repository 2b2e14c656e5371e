"""One training process per run directory.

Rank 0 holds ``<run dir>/.vaegan.lock`` with ``flock`` for as long as it trains; the kernel
releases it when the process dies however it dies, so a lock left by a killed run is taken over
(its record says who it was). The file records the holder (pid, host, start time, command) and a
run id that the run's other ranks share: ranks started by this process inherit it through
``VAEGAN_RUN_ID``, and ranks started by torchrun or srun derive the same one from their launcher.
Other ranks never take the lock; they check that it is their run's.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

LOCK_NAME = ".vaegan.lock"
RUN_ID = "VAEGAN_RUN_ID"

_held: dict[Path, int] = {}  # run directory -> file descriptor holding its lock


class RunDirectoryInUse(RuntimeError):
    """Another process trains in this run directory; the message names it and the fix."""


def launcher_rank() -> int:
    """This process's rank, from the launcher's environment (0 before any launch)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))


def run_id() -> str:
    """The id every rank of this run shares (set for the ranks this process starts)."""
    if RUN_ID not in os.environ:
        external = os.environ.get("TORCHELASTIC_RUN_ID")
        if external is None and "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", 1)) > 1:
            external = f"slurm-{os.environ.get('SLURM_JOB_ID')}.{os.environ.get('SLURM_STEP_ID', '')}"
        os.environ[RUN_ID] = external or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    return os.environ[RUN_ID]


def _record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "run_id": run_id(), "command": " ".join(sys.argv[1:])[:500]}


def _read(path: Path) -> dict | None:
    try:
        text = path.read_text()
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


def describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')}: {holder.get('command')})"


def acquire(directory: str | Path) -> dict | None:
    """Locks ``directory`` for this process (again: nothing); returns the record of a killed run
    whose lock was taken over, else None. Raises RunDirectoryInUse when a live process holds it."""
    directory = Path(directory).absolute()
    if directory in _held:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _lock(fd)
    except BlockingIOError:
        os.close(fd)
        raise RunDirectoryInUse(
            f"{directory} is in use by {describe(_read(path))}; two runs in one directory would mix their metrics "
            "and checkpoints. Wait for it or stop it, or give this run its own hydra.run.dir") from None
    except OSError:  # a filesystem without locks: run unguarded rather than not at all
        os.close(fd)
        print(f"warning: {directory} cannot be locked (its filesystem has no flock); nothing stops a second run "
              "from using it", file=sys.stderr)
        return None
    previous = _read(path)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_record()).encode(), 0)
    _held[directory] = fd
    return previous


def _lock(fd: int, tries: int = 5) -> None:
    """flock, retried briefly: another rank's probe (``_is_held``) holds a shared lock for an instant."""
    for attempt in range(tries):
        try:
            return fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(0.05)


def release(directory: str | Path) -> None:
    """Empties and unlocks this process's lock of ``directory`` (the file stays: removing a locked
    file would let a third process lock a new file while a second holds the old one)."""
    fd = _held.pop(Path(directory).absolute(), None)
    if fd is not None:
        os.ftruncate(fd, 0)
        os.close(fd)


def release_all() -> None:
    for directory in list(_held):
        release(directory)


def join(directory: str | Path, timeout: float = 60.0) -> None:
    """For ranks other than 0: waits until ``directory`` is locked by this run's rank 0; raises
    RunDirectoryInUse when another run holds it, or when rank 0 never locks it."""
    path = Path(directory).absolute() / LOCK_NAME
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holder = _read(path)
        if holder and holder.get("run_id") == run_id():
            return
        if holder and _is_held(path):
            raise RunDirectoryInUse(f"{path.parent} is in use by {describe(holder)}, another run; give this run its "
                                    "own hydra.run.dir")
        time.sleep(0.2)
    raise RunDirectoryInUse(f"rank 0 of this run did not lock {path.parent} within {timeout:.0f} s; check that every "
                            "rank was given the same hydra.run.dir")


def _is_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
