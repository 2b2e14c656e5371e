"""experiments/table1.py end to end on a tiny real multirun: train, evaluate, report."""

import csv
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT, require_shared

pytestmark = pytest.mark.slow  # trains, evaluates and reports a 4-variant multirun through experiments/table1.py

VARIANTS = ["began", "began_pid", "began_pid_lsm", "vaegan"]


def test_table1_cpu_one_command(tmp_path, tiny_extractor_file):
    require_shared("cifar10", "cifar10_test_10k.npz")
    sweep = tmp_path / "sweep"
    overrides = [
        "iterations=3", "data.image_size=16", "model.width=4", "model.latent_dim=8", "callbacks.progress_bar.enabled=false",
        "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1", f"data.cache_dir={tmp_path / 'cache'}",
        f"metrics.feature_extractor={tiny_extractor_file}", "metrics.num_samples=40", "metrics.num_reference=60",
        "metrics.kid_subset_size=20", f"metrics.cache_dir={tmp_path / 'refcache'}",
    ]
    command = [sys.executable, "experiments/table1.py", "--scale", "cpu", "--seeds", "0", "--sweep-dir", str(sweep),
               "--", *overrides]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    # Every stage ran and said what it ran.
    assert "-m vaegan.run -m +experiment=table1_cpu" in done.stdout
    assert done.stdout.count("-m vaegan.evaluate") == len(VARIANTS)
    for job in sorted(sweep.glob("[0-9]*")):
        record = json.loads((job / "metrics.json").read_text())
        assert record["iteration"] == 3 and record["protocol"]["num_samples"] == 40
        assert record["protocol"]["dataset"] == "npz" and record["protocol"]["num_reference"] == 60

    rows = list(csv.DictReader((sweep / "table1.csv").open()))
    assert [row["variant"] for row in rows] == VARIANTS
    for row in rows:
        assert row["runs"] == "1" and row["seeds"] == "0"
        assert float(row["fid_mean"]) >= 0 and row["kid_mean"] != ""
        assert row["is_mean"] == ""  # the stand-in extractor has no class logits
    assert [row["paper_is"] for row in rows] == ["5.62", "", "6.12", "6.8"]

    markdown = (sweep / "table1.md").read_text()
    for name in ("BEGAN", "BEGAN*", "BEGAN* + LSM", "VAE + BEGAN* + LSM", "## Protocol", "num_samples: 40"):
        assert name in markdown
    assert "Warning" not in markdown  # one protocol for all runs
    assert (sweep / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Evaluating again is skipped for jobs that already have their metrics.json.
    again = subprocess.run([sys.executable, "experiments/table1.py", "--scale", "cpu", "--evaluate-only", str(sweep)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "-m vaegan.evaluate" not in again.stdout and "-m vaegan.report" in again.stdout
