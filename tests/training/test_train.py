"""End to end on real images (scikit-learn's digits): the CLI trains, writes every output, resumes."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY, iteration_rows, run_cli
from vaegan.models.controller import PIDController
from vaegan.models.module import VAEGANModule


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    result = run_cli(
        *TINY, "iterations=40", "model.controller.ki=0.02", "callbacks.images.every_n_iterations=20",
        "callbacks.checkpoint.every_n_iterations=20", "callbacks.checkpoint.keep_every_n_iterations=20",
        "callbacks.progress_bar.enabled=true", f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir / "stdout.txt").write_text(result.stdout)
    return run_dir


@pytest.mark.slow
def test_training_learns_and_moves_k(trained_run):
    rows = iteration_rows(trained_run)
    assert [r["step"] for r in rows] == list(range(40))  # one row per iteration, indexed by iteration
    L_d = [r["train/L_d"] for r in rows]
    assert sum(L_d[-5:]) / 5 < 0.8 * sum(L_d[:5]) / 5  # the discriminator learns to reconstruct real digits
    assert max(r["train/k"] for r in rows) > 0.0  # the controller moved k away from k_0 = 0
    for name in ("L_d", "L_g", "L_v", "L_s", "L_e", "L_n", "e", "k", "M"):
        assert all(torch.isfinite(torch.tensor(r[f"train/{name}"])) for r in rows), name


@pytest.mark.slow
def test_progress_bar_shows_iteration_k_and_m(trained_run):
    out = (trained_run / "stdout.txt").read_text()
    last = [line for line in out.splitlines() if line.startswith("iteration")][-1]
    assert "40/40" in last and " k=" in last and " M=" in last


@pytest.mark.slow
def test_every_output_is_written(trained_run):
    for path in ["config.yaml", ".hydra/config.yaml", "metrics.csv", "checkpoints/last.ckpt",
                 "checkpoints/iter_0000020.ckpt", "checkpoints/iter_0000040.ckpt", "run.log"]:
        assert (trained_run / path).is_file(), path
    assert list((trained_run / "tensorboard").glob("events.out.tfevents.*"))
    for grid in ("samples", "reconstructions"):
        assert sorted(p.name for p in (trained_run / grid).glob("*.png")) == ["iter_0000020.png", "iter_0000040.png"]
    assert not list(trained_run.rglob("*.tmp"))
    samples = (trained_run / "samples" / "iter_0000040.png").read_bytes()
    assert samples[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_every_panel_is_written_and_logged_to_tensorboard(trained_run):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    panels = ("samples", "reconstructions", "discriminator", "interpolations")
    for panel in panels:
        assert sorted(p.name for p in (trained_run / panel).glob("*.png")) == ["iter_0000020.png", "iter_0000040.png"]
    # 4 pairs of fixed real 16x16 digits, 8 steps between them plus the two real images: 10 columns
    assert Image.open(trained_run / "interpolations" / "iter_0000040.png").size == (10 * 18 + 2, 4 * 18 + 2)
    events = EventAccumulator(str(trained_run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    for panel in panels:
        assert [e.step for e in events.Images(f"images/{panel}")] == [20, 40], panel


def test_loggers_with_log_image_get_uint8_pixels():
    from vaegan.training.callbacks import log_picture

    class Recorder:
        def log_image(self, key, images, step):
            self.call = (key, images, step)

    picture = torch.rand(3, 5, 7)
    recorder = Recorder()
    log_picture([recorder], "images/samples", picture, 12)
    key, [pixels], step = recorder.call
    assert (key, step) == ("images/samples", 12)
    assert pixels.dtype == np.uint8 and pixels.shape == (5, 7, 3)
    assert np.array_equal(pixels, (picture * 255 + 0.5).byte().permute(1, 2, 0).numpy())  # torchvision's save_image


@pytest.mark.slow
def test_checkpoint_loads_into_the_public_api(trained_run):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    state = load(ckpt)
    assert state["global_step"] == 40 * 3  # three optimizer steps per iteration
    model = VAEGANModule.load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    assert model.hparams.width == 4 and model.hparams.image_size == 16
    x = model.sample(3)
    assert x.shape == (3, 1, 16, 16)
    mu, _ = model.encode(x)
    assert model.decode(mu).shape == x.shape and model.discriminate(x)[1].shape == x.shape


@pytest.mark.slow
def test_resume_restores_iteration_controller_and_optimizers(trained_run, tmp_path):
    ckpt = trained_run / "checkpoints" / "iter_0000020.ckpt"
    saved = load(ckpt)
    before = iteration_rows(trained_run)
    result = run_cli(
        *TINY, "iterations=25", "model.controller.ki=0.02", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    after = iteration_rows(tmp_path)
    assert [r["step"] for r in after] == list(range(20, 25))  # the iteration count continues

    # k: the first resumed update starts from the saved controller state, not from k = 0
    state = next(v for k, v in saved["callbacks"].items() if "EquilibriumCallback" in k)
    assert state["k"] > 0  # otherwise a controller reset to k = 0 would pass unnoticed
    assert state["k"] == pytest.approx(before[19]["train/k"])
    controller = PIDController(ki=0.02, kp=1e-5, kd=1e-5)
    controller.load_state_dict(state)
    assert after[0]["train/k"] == pytest.approx(controller.update(after[0]["train/e"]), abs=1e-7)

    final = load(tmp_path / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 25 * 3
    for opt_state in final["optimizer_states"]:  # Adam's moments were restored, not restarted
        assert {int(s["step"]) for s in opt_state["state"].values()} == {25}


@pytest.mark.parametrize("variant", ["vaegan", "began", "began_pid", "began_pid_lsm", "vae"])
def test_every_variant_trains_in_process(compose_cfg, tmp_path, variant):
    from vaegan.training.train import train

    cfg = compose_cfg([*TINY, f"model={variant}", "iterations=3", "data=synthetic", "data.image_size=16",
                       "data.channels=1", "data.batch_size=4", "data.length=32"], tmp_path)
    metrics = train(cfg)
    assert load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 3 * (2 if variant != "vaegan" else 3)
    assert ("train/k" in metrics) == (variant != "vae")
    assert ("train/L_e" in metrics) == (variant in ("vaegan", "vae"))


def test_resuming_in_the_same_directory_keeps_earlier_metrics(tmp_path):
    from vaegan.training.train import keep_previous_metrics

    (tmp_path / "metrics.csv").write_text("step\n0\n")
    (tmp_path / "metrics.1.csv").write_text("older\n")
    keep_previous_metrics(tmp_path)
    assert not (tmp_path / "metrics.csv").exists()
    assert (tmp_path / "metrics.1.csv").read_text() == "older\n"
    assert (tmp_path / "metrics.2.csv").read_text() == "step\n0\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has a GPU")
@pytest.mark.slow
def test_asking_for_a_gpu_on_a_machine_without_one(tmp_path):
    result = run_cli(*TINY, "trainer=gpu", "iterations=2", f"hydra.run.dir={tmp_path}")
    line = ("Config error: trainer.accelerator=gpu: no CUDA GPU is visible here (torch.cuda.is_available() is False); "
            "run on a machine with a GPU, or use trainer=cpu")
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1] == line, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert (tmp_path / "run.log").read_text().strip().splitlines()[-1] == line


def test_a_write_that_fails_in_the_run_directory_names_the_file(compose_cfg, tmp_path):
    from vaegan.run import execute

    (tmp_path / "config.yaml").mkdir()  # where the run writes its resolved config: a folder is in the way
    with pytest.raises(SystemExit) as exit_info:
        execute(compose_cfg([*TINY, "iterations=2"], tmp_path))
    assert str(exit_info.value.code) == (f"File error: {tmp_path / 'config.yaml'}: Is a directory; free disk space, "
                                         "fix the permissions, or choose another hydra.run.dir")


@pytest.mark.slow
@pytest.mark.parametrize("shm, batch, starts", [
    # room for the workers' queues but not for one batch: every batch is lost, the loader waits
    ("64k", 32, ("Data error: DataLoader worker (pid(s) ", "Data error: DataLoader timed out after 5.0 seconds")),
    # one page: not even the queues' semaphores fit, so the workers cannot start
    ("4k", 16, ("Data error: DataLoader workers could not start (No space left on device)",)),
])
def test_a_full_dev_shm_names_the_loader_workers_and_the_fix(tmp_path, shm, batch, starts):
    """DataLoader workers hand batches over in /dev/shm; a tiny one (as in Docker) kills them (large
    batches), leaves them stuck (small ones; data.worker_timeout turns that into an error) or stops
    them starting. A batch must not fit: with room for one, whether the run fails depends on which
    batches the workers prefetch (CI's run with 64k and 16 images of 16x16 finished)."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import ROOT

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode:
        pytest.skip("needs a private mount namespace (unshare -m, as root) to shrink /dev/shm")
    command = (f"mount -t tmpfs -o size={shm} tmpfs /dev/shm && exec {sys.executable} -m vaegan.run {' '.join(TINY)} "
               f"data.batch_size={batch} data.num_workers=2 data.worker_timeout=5 iterations=3 hydra.run.dir={tmp_path}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1 and last.startswith(starts), done.stderr[-2000:]
    assert "(data.num_workers=2): batches pass through shared memory (/dev/shm, 0.0 MB free)" in last
    assert last.endswith("set data.num_workers=0, or give the machine more shared memory (docker run --shm-size=8g)")
    # (the workers' feeder threads and the loader's __del__ still print torch's tracebacks above it)
