"""One training process per run directory: a second one stops at once, naming the first; a killed
run's lock is taken over; the ranks of one run share it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, TINY, run_cli
from vaegan.training import run_lock

HOLD = ("import sys, time; from vaegan.training import run_lock; run_lock.acquire(sys.argv[1]); "
        "print('locked', flush=True); time.sleep(600)")


def holder(directory, env=None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.fixture
def other_run_id(monkeypatch):
    monkeypatch.setenv(run_lock.RUN_ID, "this-test")


def test_a_second_process_is_refused_naming_the_first(tmp_path, other_run_id):
    proc = holder(tmp_path)
    try:
        with pytest.raises(run_lock.RunDirectoryInUse, match=rf"{tmp_path} is in use by pid {proc.pid} on .*hydra.run.dir"):
            run_lock.acquire(tmp_path)
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, other_run_id):
    proc = holder(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        previous = run_lock.acquire(tmp_path)
        assert previous["pid"] == proc.pid  # the note names the run that died
        assert json.loads((tmp_path / run_lock.LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        run_lock.release(tmp_path)
    assert (tmp_path / run_lock.LOCK_NAME).read_text() == ""  # released: the next run has nothing to take over
    assert run_lock.acquire(tmp_path) is None
    run_lock.release(tmp_path)


def test_ranks_of_one_run_share_the_lock_and_others_are_refused(tmp_path, other_run_id):
    proc = holder(tmp_path, env={run_lock.RUN_ID: "run-a"})
    try:
        os.environ[run_lock.RUN_ID] = "run-a"
        run_lock.join(tmp_path, timeout=5)  # a rank of run-a
        os.environ[run_lock.RUN_ID] = "run-b"
        with pytest.raises(run_lock.RunDirectoryInUse, match=f"in use by pid {proc.pid}.*another run"):
            run_lock.join(tmp_path, timeout=5)
    finally:
        proc.kill()
        proc.wait()
    with pytest.raises(run_lock.RunDirectoryInUse, match="rank 0 of this run did not lock"):
        run_lock.join(tmp_path / "never", timeout=0.5)


@pytest.mark.slow
def test_two_runs_in_one_directory(tmp_path):
    """The second command stops at once; the first keeps its records (one seed, steps in order)."""
    run = [*TINY, "iterations=100000", f"hydra.run.dir={tmp_path}", "logger=csv", "logger.csv.flush_every_n_iterations=1"]
    first = subprocess.Popen([sys.executable, "-m", "vaegan.run", *run, "seed=1"], cwd=ROOT, stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "metrics.csv").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-2000:]
            time.sleep(0.1)
        second = run_cli(*run, "seed=2")
        assert second.returncode == 1
        assert second.stderr.strip().splitlines() == [
            f"Run directory in use: {tmp_path} is in use by pid {first.pid} on {os.uname().nodename} "
            f"(started {json.loads((tmp_path / run_lock.LOCK_NAME).read_text())['started']}: "
            f"{' '.join([*run, 'seed=1'])}); two runs in one directory would mix their metrics and checkpoints. "
            "Wait for it or stop it, or give this run its own hydra.run.dir"]
        assert "seed=2" not in (tmp_path / ".hydra" / "overrides.yaml").read_text()
        assert "seed: 1" in (tmp_path / "config.yaml").read_text()
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
