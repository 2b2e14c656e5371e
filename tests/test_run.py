"""Tests of ``vaegan.run``'s own logic with a stand-in ``train`` (no training): the objective a sweep
minimises, the one-line failures ``execute`` turns each known error into, the run directory's lock,
and ``main``'s checks before Hydra. Real trainings through the command line are in tests/training/."""

from __future__ import annotations

import copy
import errno
import gc
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import vaegan.run as run
from tests.conftest import TINY
from vaegan.config import ConfigError
from vaegan.training import run_lock


def cfg_of(objective="auto", evaluation_every=0):
    return OmegaConf.create({"objective": objective, "callbacks": {"evaluation": {"every_n_iterations": evaluation_every}}})


# ------------------------------------------------------------------------------ objective
def test_the_auto_objective_is_final_m_without_evaluation_and_fid_with_it():
    logged = {"train/M": 0.3, "metrics/fid": 40.0, "train/L_d": 0.1}
    assert run.objective_of(cfg_of(), logged) == 0.3
    assert run.objective_of(cfg_of(evaluation_every=500), logged) == 40.0
    assert run.objective_of(cfg_of("train/L_d"), logged) == 0.1
    assert run.objective_of(cfg_of(), {"train/L_e": 0.2}) is None  # a VAE has no M


def test_an_objective_never_logged_names_what_was():
    with pytest.raises(ConfigError) as err:
        run.objective_of(cfg_of("metrics/kid"), {"train/M": 0.3, "train/L_d": 0.1})
    assert str(err.value) == "objective='metrics/kid': 'metrics/kid' was never logged; logged: train/L_d, train/M"
    with pytest.raises(ConfigError, match="'metrics/fid' was never logged"):  # evaluation on but nothing evaluated
        run.objective_of(cfg_of(evaluation_every=100), {"train/M": 0.3})


# ------------------------------------------------------------------------------ messages
def test_after_divergence_depends_on_a_written_checkpoint(tmp_path):
    fix = "a lower learning rate or gradient clipping (model.optimizer.clip)"
    assert run.after_divergence(tmp_path) == f"no checkpoint was written before it: start again with {fix}"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"")
    assert run.after_divergence(tmp_path) == (f"{tmp_path / 'checkpoints' / 'last.ckpt'} is the last checkpoint written "
                                              f"before it: resume from it with {fix}")


def test_a_dead_loader_points_at_shared_memory():
    err = RuntimeError("DataLoader worker (pid 123) is killed by signal: Bus error.\nIt is possible that ...")
    line = run.loader_died(run.loader_failure(err), 4)
    assert line.startswith("DataLoader worker (pid 123) is killed by signal: Bus error (data.num_workers=4): "
                           "batches pass through shared memory (/dev/shm")
    assert line.endswith("set data.num_workers=0, or give the machine more shared memory (docker run --shm-size=8g)")
    assert "\n" not in line
    if Path("/dev/shm").is_dir():
        assert " MB free)" in line


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the half-built iterator's __del__
def test_workers_that_cannot_start_for_a_full_dev_shm_are_found_under_lightnings_error(monkeypatch):
    """A full /dev/shm fails the workers' queue semaphores while the DataLoader starts; Lightning's
    teardown raises its own RuntimeError over that OSError, which has no file name."""
    import torch.multiprocessing
    from torch.utils.data import DataLoader

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.multiprocessing, "Queue", full)
    with pytest.raises(RuntimeError) as masked:
        try:
            iter(DataLoader(range(4), num_workers=2))
        except OSError:
            raise RuntimeError("Please call `iter(combined_loader)` first.")
    assert run.loader_failure(masked.value) == "DataLoader workers could not start (No space left on device)"
    masked = None  # the failed iterator goes now, under this test's warning filter, not in a later test
    gc.collect()
    assert run.loader_failure(OSError(errno.ENOSPC, "No space left on device")) is None  # not the loader's
    assert run.loader_failure(RuntimeError("Please call `iter(combined_loader)` first.")) is None


def test_a_file_error_in_the_temporary_directory_says_to_move_tmpdir(tmp_path):
    temp = Path(tempfile.gettempdir())
    err = OSError(28, "No space left on device", str(temp / "torch_extensions" / "x.so"))
    out = Path("/nonexistent/run")
    assert run.file_error(err, out) == (f"{temp / 'torch_extensions' / 'x.so'}: No space left on device in the temporary "
                                        f"directory {temp}; free space there or point TMPDIR at another folder")


def test_a_file_error_in_the_run_directory_names_the_usual_fixes(tmp_path):
    err = OSError(13, "Permission denied", str(tmp_path / "checkpoints" / "last.ckpt"))
    assert run.file_error(err, tmp_path) == (f"{tmp_path / 'checkpoints' / 'last.ckpt'}: Permission denied; free disk "
                                             "space, fix the permissions, or choose another hydra.run.dir")


@pytest.fixture
def run_log(tmp_path):
    path = tmp_path / "run.log"
    handler = logging.FileHandler(path)
    logging.getLogger().addHandler(handler)
    yield path
    logging.getLogger().removeHandler(handler)
    handler.close()


def test_fail_exits_with_the_line_and_ends_run_log_with_it(run_log, capsys):
    with pytest.raises(SystemExit) as exit_:
        run.fail("Data error: no digits")
    assert exit_.value.code == "Data error: no digits"  # status 1; Python prints it
    assert run_log.read_text().splitlines()[-1] == "Data error: no digits"
    assert capsys.readouterr().err == ""  # not twice
    with pytest.raises(SystemExit) as exit_:
        run.fail("Interrupted: stopped", 128 + signal.SIGTERM)
    assert exit_.value.code == 143
    assert capsys.readouterr().err == "Interrupted: stopped\n"
    assert run_log.read_text().splitlines()[-1] == "Interrupted: stopped"


# ------------------------------------------------------------------------------ execute
@pytest.fixture(scope="module")
def composed():
    """TINY composed once for the module (composing takes most of a second on a busy machine)."""
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*TINY, "paths.output_dir=unset"])


@pytest.fixture
def tiny_cfg(composed, tmp_path):
    cfg = copy.deepcopy(composed)
    cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


def fake_train(monkeypatch, result):
    """Replaces the training ``execute`` calls; ``result`` is returned or, if an exception, raised."""
    import vaegan.training.train as train_module

    seen = {}

    def train(cfg):
        lock = Path(cfg.paths.output_dir) / run_lock.LOCK_NAME
        seen["lock"] = lock.read_text() if lock.exists() else None
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(train_module, "train", train)
    return seen


def test_execute_returns_the_objective_and_holds_the_lock_while_training(tiny_cfg, monkeypatch):
    seen = fake_train(monkeypatch, {"train/M": 0.25, "train/L_d": 1.0})
    assert run.execute(tiny_cfg) == 0.25
    assert f'"pid": {os.getpid()}' in seen["lock"]
    out = Path(tiny_cfg.paths.output_dir).absolute()
    assert out not in run_lock._held and (out / run_lock.LOCK_NAME).read_text() == ""  # released, emptied


@pytest.mark.parametrize("override, line", [
    ("data.batch_size=0", "Config error: data.batch_size=0: must be positive"),
    ("data=folder", "Config error: data.root=None: data=folder needs data.root"),
])
def test_execute_refuses_a_bad_config_before_training(compose_cfg, tmp_path, monkeypatch, override, line):
    seen = fake_train(monkeypatch, {"train/M": 0.25})
    cfg = compose_cfg([*TINY, override], tmp_path / "run")
    with pytest.raises(SystemExit) as exit_:
        run.execute(cfg)
    assert exit_.value.code.startswith(line)
    assert seen == {}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
def test_a_gpu_asked_for_on_a_machine_without_one_is_a_config_error(tiny_cfg):
    """The real ``train`` (no stand-in): it stops before any iteration, and ``execute`` says so in one line."""
    cfg = copy.deepcopy(tiny_cfg)
    cfg.trainer.accelerator = "gpu"
    with pytest.raises(SystemExit) as exit_:
        run.execute(cfg)
    assert exit_.value.code == ("Config error: trainer.accelerator=gpu: no CUDA GPU is visible here "
                                "(torch.cuda.is_available() is False); run on a machine with a GPU, or use trainer=cpu")
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def known_failures():
    from vaegan.data import DataError
    from vaegan.metrics import MetricsError
    from vaegan.training.checkpoints import CheckpointError

    return [(DataError("no images in /data"), "Data error: no images in /data"),
            (MetricsError("no such file"), "Metrics error: no such file"),
            (CheckpointError("not a checkpoint"), "Checkpoint error: not a checkpoint"),
            (ConfigError("model.width=3: odd"), "Config error: model.width=3: odd"),
            (run_lock.RunDirectoryInUse("used by pid 1"), "Run directory in use: used by pid 1")]


@pytest.mark.parametrize("index", range(5))
def test_execute_turns_each_known_error_into_one_line(tiny_cfg, monkeypatch, index):
    error, line = known_failures()[index]
    fake_train(monkeypatch, error)
    with pytest.raises(SystemExit) as exit_:
        run.execute(tiny_cfg)
    assert exit_.value.code == line
    assert Path(tiny_cfg.paths.output_dir).absolute() not in run_lock._held


def test_lightnings_misconfiguration_keeps_its_first_line(tiny_cfg, monkeypatch):
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    fake_train(monkeypatch, MisconfigurationException("`devices=4` is bad.\n  details\n  more"))
    with pytest.raises(SystemExit) as exit_:
        run.execute(tiny_cfg)
    assert exit_.value.code == "Config error: `devices=4` is bad."


def test_a_divergence_says_what_to_do(tiny_cfg, monkeypatch):
    from vaegan.training.guard import DivergenceError

    fake_train(monkeypatch, DivergenceError("L_d was NaN"))
    with pytest.raises(SystemExit) as exit_:
        run.execute(tiny_cfg)
    assert exit_.value.code == (f"Training diverged: L_d was NaN; {run.after_divergence(Path(tiny_cfg.paths.output_dir))}")


def test_file_and_loader_errors_become_one_line_and_others_propagate(tiny_cfg, monkeypatch):
    out = Path(tiny_cfg.paths.output_dir)
    fake_train(monkeypatch, OSError(28, "No space left on device", str(out / "metrics.csv")))
    with pytest.raises(SystemExit) as exit_:
        run.execute(tiny_cfg)
    assert exit_.value.code.startswith(f"File error: {(out / 'metrics.csv').absolute()}: No space left on device; ")
    fake_train(monkeypatch, RuntimeError("DataLoader timed out after 120 seconds"))
    with pytest.raises(SystemExit) as exit_:
        run.execute(tiny_cfg)
    assert exit_.value.code.startswith("Data error: DataLoader timed out after 120 seconds (data.num_workers=0): ")
    for error in (OSError("no file name"), RuntimeError("CUDA out of memory")):  # bugs keep their traceback
        fake_train(monkeypatch, error)
        with pytest.raises(type(error), match=str(error)):
            run.execute(tiny_cfg)
    assert out.absolute() not in run_lock._held


def test_an_interrupted_run_exits_with_128_plus_the_signal(tiny_cfg, monkeypatch, capsys):
    from vaegan.training.callbacks import Interrupted

    fake_train(monkeypatch, Interrupted(signal.SIGUSR1, 7, Path("/r/last.ckpt")))
    with pytest.raises(SystemExit) as exit_:
        run.execute(tiny_cfg)
    assert exit_.value.code == 128 + signal.SIGUSR1
    assert capsys.readouterr().err.startswith("Interrupted: stopped by SIGUSR1 after iteration 7, saved in /r/last.ckpt")
    fake_train(monkeypatch, KeyboardInterrupt())
    with pytest.raises(SystemExit) as exit_:
        run.execute(tiny_cfg)
    assert exit_.value.code == 130 and capsys.readouterr().err == run.NOTHING_SAVED + "\n"


def test_a_run_directory_in_use_is_refused_without_training(tiny_cfg, monkeypatch):
    import fcntl
    import json

    seen = fake_train(monkeypatch, {"train/M": 0.5})
    out = Path(tiny_cfg.paths.output_dir)
    out.mkdir(parents=True)
    lock = out / run_lock.LOCK_NAME
    lock.write_text(json.dumps({"pid": 4242, "host": "node7", "started": "2026-12-01 10:00:00", "command": "x"}))
    with open(lock) as other:  # another open file: flock conflicts as with another process
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SystemExit) as exit_:
            run.execute(tiny_cfg)
    assert exit_.value.code.startswith(f"Run directory in use: {out.absolute()} is in use by pid 4242 on node7 "
                                       "(started 2026-12-01 10:00:00: x)")
    assert seen == {}


def test_a_killed_runs_lock_is_taken_over_with_a_note(tiny_cfg, monkeypatch, caplog):
    import json

    fake_train(monkeypatch, {"train/M": 0.5})
    out = Path(tiny_cfg.paths.output_dir)
    out.mkdir(parents=True)
    (out / run_lock.LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "node7", "started": "then", "command": "x"}))
    with caplog.at_level(logging.WARNING, logger="vaegan.run"):
        assert run.execute(tiny_cfg) == 0.5
    assert [r.getMessage() for r in caplog.records] == [
        f"took over the lock of {out} from pid 4242 on node7 (started then: x), which no longer runs"]


# ------------------------------------------------------------------------------ main
def exit_of_main(monkeypatch, *argv: str):
    """The SystemExit of ``run.main()`` on ``argv``, with the SIGINT handler it installs undone."""
    monkeypatch.setattr(sys, "argv", ["vaegan.run", *argv])
    before = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exit_:
            run.main()
    finally:
        signal.signal(signal.SIGINT, before)
    return exit_


def test_main_reports_a_misspelled_key_before_hydra(monkeypatch, tmp_path):
    called = []
    monkeypatch.setattr(run, "hydra_main", lambda: called.append(True))
    exit_ = exit_of_main(monkeypatch, "+experiment=quickstart", "data.batch_sise=3")
    assert str(exit_.value.code).startswith("Config error: data.batch_sise: no key 'batch_sise' in data; did you mean "
                                            "data.batch_size?")
    assert called == []


def test_main_turns_ctrl_c_during_startup_into_one_line(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "hydra_main", interrupted)
    exit_ = exit_of_main(monkeypatch, "--help")
    assert exit_.value.code == 130
    assert capsys.readouterr().err == run.NOTHING_SAVED + "\n"
