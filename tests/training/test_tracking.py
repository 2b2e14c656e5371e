"""W&B tracking (vaegan.training.tracking): mode resolution that never prompts or hangs, offline runs on real
data holding the scalars and the image panels, resumed run ids, one W&B run per multirun job."""

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, TINY, require_shared, run_cli

wandb = pytest.importorskip("wandb")
from tests.wandb_log import config_of, history, offline_runs, run_record  # noqa: E402

from vaegan.training import tracking  # noqa: E402
from vaegan.config import ConfigError  # noqa: E402

FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"
PROMPTS = ("Enter your choice", "Create a W&B account", "Paste an API key")


# ------------------------------------------------------------------------------ helpers
def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user without W&B credentials (no key, an empty home), one thread."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    return {**env, "HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def train(run_dir: Path, *overrides: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli(*overrides, f"hydra.run.dir={run_dir}", env=env, timeout=timeout)


# ------------------------------------------------------------------------------ mode resolution
def test_without_a_key_the_mode_is_offline_with_one_warning(tmp_path, monkeypatch):
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "NETRC", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for requested in ("auto", "online"):
        mode, warning = tracking.resolve_mode(requested)
        assert mode == "offline" and "no API key" in warning and "\n" not in warning
    assert tracking.resolve_mode("offline") == ("offline", None)
    assert tracking.resolve_mode("disabled") == ("disabled", None)
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the user's own W&B setting wins over auto
    assert tracking.resolve_mode("auto") == ("disabled", None)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert tracking.resolve_mode("auto") == ("offline", None)


def test_a_key_in_the_environment_or_netrc_allows_online(tmp_path, monkeypatch):
    monkeypatch.delenv("NETRC", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    assert tracking.resolve_mode("auto") == ("online", None)
    monkeypatch.delenv("WANDB_API_KEY")
    (tmp_path / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    assert tracking.resolve_mode("auto") == ("online", None)
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")  # a key for another host does not count
    assert tracking.resolve_mode("auto")[0] == "offline"
    with pytest.raises(ConfigError, match="logger.wandb.mode='cloud'"):
        tracking.resolve_mode("cloud")


# ------------------------------------------------------------------------------ real runs, offline
@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """10 iterations of the full model on the shared CIFAR-10 images, logged offline to W&B."""
    require_shared("cifar10", "cifar10_test_10k.npz")
    tmp = tmp_path_factory.mktemp("wandb")
    run_dir = tmp / "run"
    overrides = ["+experiment=table1_cpu", "model.width=8", "iterations=10", "trainer.log_every_n_steps=1",
                 "callbacks.images.every_n_iterations=5", "callbacks.images.num_samples=16",
                 "callbacks.progress_bar.enabled=false", "logger=[csv,wandb]", "logger.wandb.tags=[test]"]
    result = train(run_dir, *overrides, env=clean_env(tmp / "home"))
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, overrides, result


@pytest.mark.slow
def test_offline_run_holds_every_scalar_at_every_iteration(cifar_run):
    run_dir, _, result = cifar_run
    assert "W&B: no API key" in result.stderr + result.stdout
    (run,) = offline_runs(run_dir)
    rows = history(run)
    logged = {r["trainer/global_step"]: r for r in rows if "train/M" in r}
    assert sorted(logged) == list(range(10))  # every iteration, the x-axis the iteration from 0
    keys = set().union(*(r.keys() for r in logged.values()))
    for key in ("train/L_d", "train/L_g", "train/L_v", "train/L_s", "train/L_e", "train/L_n", "train/e", "train/k",
                "train/k_P", "train/k_I", "train/k_D", "train/lr_encoder", "train/lr_generator",
                "train/lr_discriminator", "train/iterations_per_s", "train/images_per_s"):
        assert key in keys, key
    csv_rows = (run_dir / "metrics.csv").read_text().splitlines()
    header = csv_rows[0].split(",")
    last = dict(zip(header, csv_rows[-1].split(",")))
    assert logged[9]["train/k"] == pytest.approx(float(last["train/k"]), rel=1e-6)  # the same numbers as the CSV
    assert logged[9]["train/lr_generator"] == pytest.approx(2e-4)
    assert logged[9]["train/images_per_s"] == pytest.approx(16 * logged[9]["train/iterations_per_s"])  # batch 16
    assert json.loads((run_dir / "wandb_run.json").read_text())["id"] == run_record(run).run_id


@pytest.mark.slow
def test_offline_run_uploads_the_resolved_config_tags_and_group(cifar_run):
    run_dir, _, _ = cifar_run
    (run,) = offline_runs(run_dir)
    config = config_of(run)
    assert config["model"]["controller"]["ki"] == pytest.approx(1e-3)
    assert config["data"]["root"].endswith("cifar10_test_10k.npz")  # interpolations resolved
    record = run_record(run)
    assert list(record.tags) == ["test"] and record.project == "vaegan" and record.display_name == "run"


@pytest.mark.slow
def test_offline_run_images_are_the_panels_as_uint8_not_black(cifar_run):
    run_dir, _, _ = cifar_run
    (run,) = offline_runs(run_dir)
    for panel in ("samples", "reconstructions", "discriminator", "interpolations"):
        rows = [r for r in history(run) if f"images/{panel}/filenames" in r]
        assert [r["trainer/global_step"] for r in rows] == [5, 10], panel
        for row in rows:
            (name,) = row[f"images/{panel}/filenames"]
            pixels = np.asarray(Image.open(run / "files" / name).convert("RGB"))
            assert pixels.mean() > 20 and pixels.max() > 100, panel  # not black
            png = run_dir / panel / f"iter_{row['trainer/global_step']:07d}.png"
            np.testing.assert_array_equal(pixels, np.asarray(Image.open(png).convert("RGB")))  # the run's PNG panel
            if panel == "reconstructions":  # real CIFAR-10 images in [-1, 1] survived the conversion to uint8
                assert pixels.std() > 30 and len(np.unique(pixels)) > 200


@pytest.mark.slow
def test_the_equilibrium_chart_holds_e_k_and_the_target_of_every_logged_iteration(cifar_run):
    run_dir, _, _ = cifar_run
    (run,) = offline_runs(run_dir)
    (row,) = [r for r in history(run) if "equilibrium_table/path" in r]  # the chart's data
    table = json.loads((run / "files" / row["equilibrium_table/path"]).read_text())
    assert table["columns"] == ["step", "lineKey", "lineVal"]
    series = {key: {step: v for step, k, v in table["data"] if k == key} for key in ("e_t", "k_t", "target (e = 0)")}
    csv_rows = [r.split(",") for r in (run_dir / "metrics.csv").read_text().splitlines()]
    columns = {name: i for i, name in enumerate(csv_rows[0])}
    expected_e = {int(r[columns["step"]]) + 1: float(r[columns["train/e"]]) for r in csv_rows[1:] if r[columns["train/e"]]}
    assert sorted(series["e_t"]) == sorted(expected_e) == list(range(1, 11))  # the chart's x is the iteration
    for it, e in expected_e.items():
        assert series["e_t"][it] == pytest.approx(e, rel=1e-6)
    assert set(series["target (e = 0)"].values()) == {0.0} and all(0 <= k <= 1 for k in series["k_t"].values())


def test_the_equilibrium_chart_of_a_long_run_is_thinned_to_fit_a_wandb_table():
    logged = []

    class Run:
        def log(self, data):
            logged.append(data)

    tracking.log_equilibrium_chart(Run(), [(it, 0.5 / it, it / 1e5) for it in range(10, 300_001, 10)])
    ((name, chart),) = logged[0].items()
    steps = sorted({row[0] for row in chart.table.data})
    assert name == "equilibrium" and len(chart.table.data) == 3 * len(steps)
    assert len(steps) <= tracking.MAX_CHART_POINTS and steps[-1] == 300_000  # the last iteration is kept
    assert len(set(np.diff(steps))) == 1  # evenly spaced


@pytest.mark.slow
def test_a_resumed_run_continues_the_same_wandb_run(cifar_run, tmp_path):
    run_dir, overrides, _ = cifar_run
    first = json.loads((run_dir / "wandb_run.json").read_text())["id"]
    resumed = tmp_path / "resumed"
    result = train(resumed, *overrides, "iterations=12", f"ckpt_path={run_dir}/checkpoints/last.ckpt",
                   env=clean_env(tmp_path / "home"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((resumed / "wandb_run.json").read_text())["id"] == first
    (run,) = offline_runs(resumed)
    assert run.name.endswith(first) and run_record(run).run_id == first
    assert sorted(r["trainer/global_step"] for r in history(run) if "train/M" in r) == [10, 11]


# ------------------------------------------------------------------------------ never a prompt, never a hang
def run_in_terminal(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Runs ``cmd`` with a pseudo-terminal as stdin, stdout and stderr, typing nothing; returns its exit
    status (None when it was still running after ``timeout`` s, then killed) and what it printed."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.5)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            out += chunk
            if any(p.encode() in out for p in PROMPTS):
                break
        elif proc.poll() is not None:
            break
    if any(p.encode() in out for p in PROMPTS):
        proc.kill()
    try:
        status = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        status = None
    os.close(master)
    return status, out.decode(errors="replace")


@pytest.mark.slow
def test_the_harness_sees_wandbs_own_prompt(tmp_path):
    """Control: plain ``wandb.init()`` without a key at a terminal prompts, and the harness sees it."""
    code = f"import wandb; wandb.init(project='x', dir={str(tmp_path)!r})"
    status, out = run_in_terminal([sys.executable, "-c", code], clean_env(tmp_path), timeout=60)
    assert any(p in out for p in PROMPTS), out[-2000:]


@pytest.mark.parametrize("mode", ["auto", "online"])
@pytest.mark.slow
def test_no_key_at_a_terminal_trains_offline_without_a_prompt(tmp_path, mode):
    cmd = [sys.executable, "-m", "vaegan.run", *TINY, "iterations=3", "logger=wandb", f"logger.wandb.mode={mode}",
           f"hydra.run.dir={tmp_path / 'run'}"]
    status, out = run_in_terminal(cmd, clean_env(tmp_path), timeout=180)
    assert not any(p in out for p in PROMPTS), out[-2000:]
    assert status == 0, out[-3000:]
    assert "no API key" in out and len(offline_runs(tmp_path / "run")) == 1


@pytest.mark.slow
def test_an_unreachable_server_falls_back_to_offline_within_the_timeout(tmp_path):
    env = clean_env(tmp_path, WANDB_API_KEY=FAKE_KEY, WANDB_BASE_URL="http://10.255.255.1:8080")  # unroutable
    start = time.monotonic()
    result = train(tmp_path / "run", *TINY, "iterations=2", "logger=wandb", "logger.wandb.init_timeout=3", env=env,
                   timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert time.monotonic() - start < 90  # W&B's own default waits 90 s for the server, then fails
    assert "could not start online within 3 s" in result.stderr + result.stdout
    assert json.loads((tmp_path / "run" / "wandb_run.json").read_text())["mode"] == "offline"
    assert len(offline_runs(tmp_path / "run")) == 1


@pytest.mark.slow
def test_disabled_writes_nothing(tmp_path):
    result = train(tmp_path / "run", *TINY, "iterations=2", "logger=wandb", "logger.wandb.mode=disabled",
                   env=clean_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (tmp_path / "run" / "wandb").exists() and not (tmp_path / "run" / "wandb_run.json").exists()


@pytest.mark.slow
def test_a_multirun_makes_one_wandb_run_per_job_grouped_by_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", *TINY, "iterations=2", "seed=0,1", "logger=wandb", "logger.wandb.mode=offline",
                     f"hydra.sweep.dir={sweep}", env=clean_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [offline_runs(sweep / str(job)) for job in (0, 1)]
    assert [len(r) for r in runs] == [1, 1]
    records = [run_record(r[0]) for r in runs]
    assert records[0].run_id != records[1].run_id
    assert {r.run_group for r in records} == {str(sweep)}
    assert [r.display_name for r in records] == ["quickstart#0", "quickstart#1"]
    assert ["seed=0" in config_of(r[0])["overrides"] for r in runs] == [True, False]
    assert ["seed=1" in config_of(r[0])["overrides"] for r in runs] == [False, True]
    for r in runs:  # each job's run holds its own two iterations, not the other's
        assert sorted(h["trainer/global_step"] for h in history(r[0]) if "train/M" in h) == [0, 1]
