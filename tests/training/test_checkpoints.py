"""Checkpoints: a bad one fails in seconds naming the mismatch; a failed write keeps the previous
good one; files load with weights_only=True, and full unpickling is an explicit opt-in."""

import errno
import shutil

import lightning as L
import pytest
import torch

from tests.conftest import TINY
from vaegan.training import checkpoints
from vaegan.run import execute
from vaegan.training.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT = [*TINY, "iterations=4", "callbacks.checkpoint.every_n_iterations=2"]


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """last.ckpt of a 4-iteration run of the full model at 16x16."""
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF
    from vaegan.config import register_configs

    out = tmp_path_factory.mktemp("good")
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        train(compose("train", overrides=SHORT + [f"paths.output_dir={out}"]))
    return out / "checkpoints" / "last.ckpt"


def resume_error(compose_cfg, tmp_path, ckpt, *overrides: str) -> str:
    """The one-line exit message of resuming ``ckpt`` with ``overrides``."""
    cfg = compose_cfg([*SHORT, "iterations=6", f"ckpt_path={ckpt}", *overrides], tmp_path / "resumed")
    with pytest.raises(SystemExit) as exit_info:
        execute(cfg)
    return str(exit_info.value.code)


def test_our_checkpoints_load_with_weights_only(good_checkpoint):
    ckpt = torch.load(good_checkpoint, weights_only=True)
    assert ckpt["global_step"] == 12 and "divergence_guard" in ckpt and "optimizer_states" in ckpt


def test_a_truncated_checkpoint_names_the_problem(compose_cfg, tmp_path, good_checkpoint):
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good_checkpoint.read_bytes()[: good_checkpoint.stat().st_size // 2])
    message = resume_error(compose_cfg, tmp_path, cut)
    assert message.startswith("Checkpoint error:") and "truncated or corrupt" in message and str(cut) in message


def test_a_checkpoint_of_another_variant_names_the_mismatch(compose_cfg, tmp_path, good_checkpoint):
    message = resume_error(compose_cfg, tmp_path, good_checkpoint, "model=began")
    assert "variant: checkpoint 'vaegan', this run 'began'" in message
    assert "vae: checkpoint True, this run False" in message


def test_a_checkpoint_of_another_image_size_names_the_mismatch(compose_cfg, tmp_path, good_checkpoint):
    message = resume_error(compose_cfg, tmp_path, good_checkpoint, "data.image_size=32")
    assert "image_size: checkpoint 16, this run 32" in message and "variant" not in message


def test_a_missing_checkpoint_names_the_path(compose_cfg, tmp_path):
    message = resume_error(compose_cfg, tmp_path, tmp_path / "nope.ckpt")
    assert "no such checkpoint file" in message and "nope.ckpt" in message


class Unsafe:
    """Any class: unpickling it could run code."""


def test_full_unpickling_is_opt_in(compose_cfg, tmp_path, good_checkpoint):
    ckpt = torch.load(good_checkpoint, weights_only=True)
    ckpt["extra"] = Unsafe()
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save(ckpt, unsafe)
    message = resume_error(compose_cfg, tmp_path, unsafe)
    assert "holds objects other than tensors" in message and "ckpt_weights_only=false" in message
    cfg = compose_cfg([*SHORT, "iterations=6", f"ckpt_path={unsafe}", "ckpt_weights_only=false"], tmp_path / "trusted")
    train(cfg)  # the user's explicit choice: it resumes
    assert torch.load(tmp_path / "trusted" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 18


class FullDisk(L.Callback):
    """From iteration ``at`` on, checkpoint writes fail half-way, as on a full disk."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.iteration + 1 != self.at:
            return
        io = trainer.strategy.checkpoint_io

        def fail(checkpoint, path, storage_options=None):
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")

        io.save_checkpoint = fail


def test_a_failed_write_keeps_the_previous_last_ckpt(compose_cfg, tmp_path, monkeypatch):
    import vaegan.training.train as train_module

    build = train_module.build_callbacks
    monkeypatch.setattr(train_module, "build_callbacks", lambda *a, **k: build(*a, **k) + [FullDisk(at=3)])
    cfg = compose_cfg([*SHORT, "iterations=6"], tmp_path)
    with pytest.raises(checkpoints.CheckpointError, match="No space left on device.*the previous one is intact"):
        train(cfg)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 6  # iteration 2, written before the disk filled
    assert not list(last.parent.glob(".*.tmp"))


def test_a_run_directory_with_last_ckpt_resumes_from_it(tmp_path, good_checkpoint):
    assert checkpoints.resume_path(None, tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    shutil.copyfile(good_checkpoint, tmp_path / "checkpoints" / "last.ckpt")
    assert checkpoints.resume_path(None, tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    assert checkpoints.resume_path("other.ckpt", tmp_path) == "other.ckpt"


def test_a_checkpoint_of_another_loss_convention_names_the_mismatch(compose_cfg, tmp_path, good_checkpoint):
    message = resume_error(compose_cfg, tmp_path, good_checkpoint, "model.kl_reduction=mean")
    assert "kl_reduction: checkpoint 'elbo', this run 'mean'" in message and "its config.yaml" in message


def test_a_checkpoint_from_before_lsm_normalize_counts_as_eq_9_as_printed(compose_cfg, tmp_path, good_checkpoint):
    ckpt = torch.load(good_checkpoint, weights_only=True)
    del ckpt["hyper_parameters"]["lsm_normalize"]  # as written before the option existed
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    assert "lsm_normalize: checkpoint False, this run True" in resume_error(compose_cfg, tmp_path, old)


@pytest.mark.parametrize("content,what", [(b"", "an empty file"), (bytes(range(256)) * 40, "not a checkpoint (10240 bytes that are not the zip archive")])
def test_an_empty_or_random_file_gets_no_advice_about_saving(compose_cfg, tmp_path, content, what):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    message = resume_error(compose_cfg, tmp_path, bad)
    assert message.startswith(f"Checkpoint error: {bad}: {what}") and "\n" not in message, message
    assert "_use_new_zipfile_serialization" not in message and "resume from an earlier checkpoint" in message


def test_a_corrupt_last_ckpt_of_the_run_directory_says_how_to_get_past_it(compose_cfg, tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04 half a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        execute(compose_cfg(SHORT, tmp_path))
    message = str(exit_info.value.code)
    assert message.startswith(f"Checkpoint error: {last}: not a readable checkpoint")
    assert f"move it aside (mv {last} {last}.bad)" in message and "another hydra.run.dir" in message


def test_resuming_to_no_more_iterations_says_there_is_nothing_to_do(compose_cfg, tmp_path, good_checkpoint):
    for iterations in (4, 3):
        cfg = compose_cfg([*SHORT, f"iterations={iterations}", f"ckpt_path={good_checkpoint}"], tmp_path / "again")
        with pytest.raises(SystemExit) as exit_info:
            execute(cfg)
        assert str(exit_info.value.code) == (
            f"Checkpoint error: {good_checkpoint} has already trained 4 iterations, so iterations={iterations} leaves "
            "nothing to do; set iterations above 4 to train on")


def test_a_full_disk_before_any_checkpoint_says_nothing_is_saved(compose_cfg, tmp_path, monkeypatch):
    import vaegan.training.train as train_module

    build = train_module.build_callbacks
    monkeypatch.setattr(train_module, "build_callbacks", lambda *a, **k: build(*a, **k) + [FullDisk(at=1)])
    (tmp_path / "checkpoints").mkdir(parents=True)  # FullDisk's half-written file goes there
    with pytest.raises(checkpoints.CheckpointError) as err:
        train(compose_cfg([*SHORT, "iterations=6"], tmp_path))
    assert str(err.value) == (f"could not write {tmp_path / 'checkpoints' / 'last.ckpt'} (No space left on device), the "
                              "run's first checkpoint, so nothing is saved. Free disk space and start the run again")
