"""``python -m vaegan.evaluate``: metrics.json with its protocol, history, the run's saved config, and
clear errors (exit status 2, no traceback) for every way the command can be misused.

One tiny run (4 iterations on the digits at 16x16) is trained per module; every test evaluates a
copy of it, with the TorchScript stand-in Inception of conftest so that evaluations take seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests.conftest import CONF, ROOT, TINY, read_only
from vaegan.config import register_configs
from vaegan.evaluate import main, run_dir_of

ITERATIONS = 4



def trained(tmp_path_factory, name: str, overrides: list[str]) -> Path:
    """The run directory of a tiny run on the digits with ``overrides``."""
    from vaegan.training.train import train

    torch.set_grad_enabled(True)
    out = tmp_path_factory.mktemp(name)
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        train(compose("train", overrides=[*TINY, *overrides, f"paths.output_dir={out}"]))
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "config.yaml").is_file()
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, refcache) -> Path:
    """A 4-iteration run of the full model, without in-training evaluation."""
    return trained(tmp_path_factory, "evalrun", [f"iterations={ITERATIONS}", f"metrics.cache_dir={refcache}"])


@pytest.fixture(scope="module")
def refcache(tmp_path_factory) -> Path:
    """Reference features shared by the tests of this module (keyed by protocol, so sharing is safe)."""
    return tmp_path_factory.mktemp("refcache")


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A private copy of the trained run, so that tests can write metrics.json independently."""
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


@pytest.fixture
def fast(tiny_extractor_file, refcache):
    """The evaluate overrides of a small, fast protocol."""
    return [f"metrics.feature_extractor={tiny_extractor_file}", f"metrics.cache_dir={refcache}",
            "metrics.num_samples=64", "metrics.num_reference=100", "metrics.kid_subset_size=50",
            "metrics.kid_subsets=10", "metrics.batch_size=50"]


def ckpt_of(run: Path) -> Path:
    return run / "checkpoints" / "last.ckpt"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def evaluate_cli(*overrides: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m vaegan.evaluate`` as a user types it."""
    return subprocess.run([sys.executable, "-m", "vaegan.evaluate", *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


# ------------------------------------------------------------------------------ results
def test_writes_metrics_json_with_its_protocol(run, fast, tiny_extractor_file, capsys):
    before = time.time()
    assert main([f"ckpt_path={ckpt_of(run)}", *fast]) == 0
    out = capsys.readouterr().out
    record = json.loads((run / "metrics.json").read_text())

    assert record["checkpoint"] == "checkpoints/last.ckpt"
    assert record["iteration"] == ITERATIONS
    assert record["variant"] == "vaegan" and record["seed"] == 0
    latent = {"rfid", "kl_nats", "active_units", "psnr", "ssim", "psnr_mean_image"}  # the VAE's reconstructions
    assert set(record["values"]) == {"fid", "kid_mean", "kid_std"} | latent  # no IS without class logits
    assert all(isinstance(v, (int, float)) and v == v for v in record["values"].values())
    values = record["values"]
    assert values["fid"] >= 0 and values["kid_std"] >= 0 and values["rfid"] >= 0 and values["kl_nats"] >= 0
    assert 0 <= values["active_units"] <= 8 and -1 <= values["ssim"] <= 1
    assert all(f"│ {name}" in out for name in latent)  # in the printed table
    protocol = record["protocol"]
    assert protocol["num_samples"] == 64 and protocol["num_reference"] == 100 and protocol["split"] == "train"
    assert protocol["extractor_sha256"] == sha256_of(tiny_extractor_file)
    assert protocol["extractor"] == "torchscript-inception" and protocol["model_mode"] == "eval"
    assert protocol["metrics"] == "fid,kid" and protocol["kid_subset_size"] == 50
    assert len(record["protocol_key"]) == 16 and len(record["reference_key"]) == 16
    assert record["protocol_key"] != record["reference_key"]
    created = record["created"]
    assert created.endswith("+00:00")
    from datetime import datetime

    assert datetime.fromisoformat(created).timestamp() >= int(before) - 1

    assert f"protocol {record['protocol_key']}:" in out
    assert "num_samples: 64" in out and "split: train" in out and "model_mode: eval" in out
    assert "wrote" in out and str(run / "metrics.json") in "".join(out.split())  # rich may wrap the path
    assert not (run / "metrics_history.jsonl").exists()
    assert not list(run.glob(".metrics.json.*"))  # no temporary file left behind


@pytest.mark.slow
def test_second_evaluation_keeps_the_first_in_history(run, fast, capsys):
    assert main([f"ckpt_path={ckpt_of(run)}", *fast]) == 0
    first = json.loads((run / "metrics.json").read_text())
    assert main([f"ckpt_path={ckpt_of(run)}", *fast, "metrics.num_samples=32"]) == 0
    second = json.loads((run / "metrics.json").read_text())

    history = [json.loads(line) for line in (run / "metrics_history.jsonl").read_text().splitlines()]
    assert history == [first]
    assert second["protocol"]["num_samples"] == 32
    assert second["protocol_key"] != first["protocol_key"]
    assert second["reference_key"] == first["reference_key"]  # the reference features are reused
    assert second["reference_cache"] == first["reference_cache"]

    assert main([f"ckpt_path={ckpt_of(run)}", *fast]) == 0  # a third: the history grows, in order
    history = [json.loads(line) for line in (run / "metrics_history.jsonl").read_text().splitlines()]
    assert history == [first, second]


@pytest.mark.slow
def test_uses_the_runs_saved_config_with_single_key_overrides(run, fast, capsys):
    # The defaults are data.image_size=32, channels=3: only the saved config.yaml (16 px, grey
    # digits) lets this 16 px checkpoint evaluate without data overrides.
    assert main([f"ckpt_path={ckpt_of(run)}", *fast, "metrics.split=valid"]) == 0
    record = json.loads((run / "metrics.json").read_text())
    protocol = record["protocol"]
    assert protocol["split"] == "valid"
    assert protocol["dataset"] == "digits" and protocol["image_size"] == 16 and protocol["channels"] == 1
    assert protocol["num_reference"] == 100  # the 179 held-out digits, seeded subset of 100
    assert main([f"ckpt_path={ckpt_of(run)}", *fast]) == 0
    train_split = json.loads((run / "metrics.json").read_text())
    assert train_split["reference_key"] != record["reference_key"]


@pytest.mark.slow
def test_missing_config_yaml_is_refused_unless_the_data_is_named(run, fast, capsys):
    (run / "config.yaml").unlink()
    # the defaults' data would score the model against images it never saw: refused
    assert main([f"ckpt_path={ckpt_of(run)}", *fast, "data.image_size=16", "data.channels=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Config error:") and len(err.strip().splitlines()) == 1, err
    assert f"{run / 'config.yaml'} not found" in err and "data=" in err and "data.root=" in err
    assert not (run / "metrics.json").exists()
    # named, but not as the checkpoint was trained: both settings and the fix in one line
    assert main([f"ckpt_path={ckpt_of(run)}", *fast, "data=cifar10"]) == 2
    err = capsys.readouterr().err
    assert "data.image_size=32 but the checkpoint's model was trained with 16" in err, err
    assert "data.channels=3 but the checkpoint's model was trained with 1" in err
    assert "pass data.image_size=16 data.channels=1" in err and len(err.strip().splitlines()) == 1
    assert main([f"ckpt_path={ckpt_of(run)}", *fast, "data=digits", "data.image_size=16"]) == 0
    assert json.loads((run / "metrics.json").read_text())["protocol"]["dataset"] == "digits"


@pytest.mark.slow
def test_entry_point_runs_as_a_module(run, fast):
    result = evaluate_cli(f"ckpt_path={ckpt_of(run)}", *fast)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((run / "metrics.json").read_text())
    assert record["iteration"] == ITERATIONS and {"fid", "kid_mean", "kid_std", "rfid"} <= set(record["values"])
    assert f"protocol {record['protocol_key']}:" in result.stdout
    assert str(run / "metrics.json") in "".join(result.stdout.split())
    assert "Traceback" not in result.stderr


def test_help_prints_usage(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m vaegan.evaluate ckpt_path=") and "metrics.inception_weights" in out
    assert main(["-h"]) == 0


def test_run_dir_of():
    assert run_dir_of(Path("/r/checkpoints/last.ckpt")) == Path("/r")
    assert run_dir_of(Path("/elsewhere/model.ckpt")) == Path("/elsewhere")


# ------------------------------------------------------------------------------ errors
def truncated_copy(run: Path) -> Path:
    bad = run / "checkpoints" / "truncated.ckpt"
    bad.write_bytes(ckpt_of(run).read_bytes()[:100])
    return bad


def foreign_checkpoint(run: Path) -> Path:
    """A Lightning-style checkpoint of some other model: state_dict and hyper_parameters, not vaegan's."""
    path = run / "checkpoints" / "classifier.ckpt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}, "hyper_parameters": {"num_classes": 10}}, path)
    return path


def damaged_config(run: Path) -> Path:
    """The run with its config.yaml cut short, e.g. by a copy that was interrupted."""
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text[:len(text) // 3] + "\n  - [unclosed")
    return ckpt_of(run)


def tensor_file(run: Path) -> Path:
    path = run / "checkpoints" / "tensor.pt"
    torch.save(torch.zeros(3), path)
    return path


ERRORS = {
    # name: (argv before the fast protocol's overrides, given the run's copy; substrings of stderr)
    "missing_ckpt_path": (lambda run: [], ["Config error", "ckpt_path is required"]),
    "no_such_file": (lambda run: [f"ckpt_path={run}/checkpoints/nope.ckpt"],
                     ["Config error", "nope.ckpt", "no such checkpoint"]),
    "truncated": (lambda run: [f"ckpt_path={truncated_copy(run)}"],
                  ["Config error", "truncated.ckpt", "not a readable checkpoint"]),
    "image_size": (lambda run: [f"ckpt_path={ckpt_of(run)}", "data.image_size=32"],
                   ["Config error", "data.image_size=32", "trained with 16"]),
    "unknown_key": (lambda run: [f"ckpt_path={ckpt_of(run)}", "metrics.nonsense=1"],
                    ["Config error", "metrics.nonsense: no such config key"]),
    "unknown_top_level_key": (lambda run: [f"ckpt_path={ckpt_of(run)}", "colour=red"],
                              ["Config error", "colour: no such config key"]),
    "unknown_dataset": (lambda run: [f"ckpt_path={ckpt_of(run)}", "data=imagenet"],
                        ["Config error", "data/imagenet", "available: celeba, cifar10, digits"]),
    "mistyped_value": (lambda run: [f"ckpt_path={ckpt_of(run)}", "metrics.num_samples=many"],
                       ["Config error", "metrics.num_samples=many", "Integer"]),
    "appended_key": (lambda run: [f"ckpt_path={ckpt_of(run)}", "+colour=red"],
                     ["Config error", "+colour=red", "no key of the run's config"]),
    "damaged_config": (lambda run: [f"ckpt_path={damaged_config(run)}"],
                       ["Config error", "config.yaml: not a readable run config", "data="]),
    "foreign_checkpoint": (lambda run: [f"ckpt_path={foreign_checkpoint(run)}"],
                           ["Config error", "classifier.ckpt", "not a checkpoint of a vaegan model"]),
    "tensor_file": (lambda run: [f"ckpt_path={tensor_file(run)}"],
                    ["Config error", "tensor.pt", "not a vaegan training checkpoint"]),
    "image_size_and_channels": (lambda run: [f"ckpt_path={ckpt_of(run)}", "data.image_size=32", "data.channels=3"],
                                ["Config error", "data.image_size=32 but", "data.channels=3 but",
                                 "pass data.image_size=16 data.channels=1"]),
    "no_extractor_file": (lambda run: [f"ckpt_path={ckpt_of(run)}", "metrics.feature_extractor=/nonexistent.pt"],
                          ["Metrics error", "/nonexistent.pt"]),
    "experiment": (lambda run: [f"ckpt_path={ckpt_of(run)}", "+experiment=quickstart"],
                   ["Config error", "experiment", "config.yaml"]),
    "training_seed": (lambda run: [f"ckpt_path={ckpt_of(run)}", "seed=1"], ["Config error", "metrics.seed"]),
    "is_without_logits": (lambda run: [f"ckpt_path={ckpt_of(run)}", "metrics.names=[is]"],
                          ["Metrics error", "inception-v3-compat"]),
    "cuda": (lambda run: [f"ckpt_path={ckpt_of(run)}", "metrics.device=cuda"], ["Metrics error", "metrics.device"]),
    "bad_split": (lambda run: [f"ckpt_path={ckpt_of(run)}", "metrics.split=nope"], ["Config error", "metrics.split"]),
    "empty_split": (lambda run: [f"ckpt_path={ckpt_of(run)}", "metrics.split=test"],  # the digits have no test split
                    ["Metrics error", "metrics.split='test'", "train"]),
}


@pytest.mark.parametrize("case", list(ERRORS))
@pytest.mark.slow
def test_errors_exit_2_with_a_clear_message(case, run, fast, capsys):
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv, expected = ERRORS[case]
    head = argv(run)
    # the case's own overrides come last, so that they win over the fast protocol's
    assert main(head[:1] + fast + head[1:]) == 2
    captured = capsys.readouterr()
    err = captured.err
    for text in expected:
        assert text in err, (text, err)
    assert "Traceback" not in err + captured.out
    assert len(err.strip().splitlines()) == 1, err  # one line, not a dump
    assert not (run / "metrics.json").exists()


def test_an_unwritable_run_directory_is_refused_before_any_work(run, fast, capsys, monkeypatch):
    from vaegan.metrics import settings

    def no_extractor(*a, **k):
        raise AssertionError("the extractor was loaded before the run directory was checked")

    monkeypatch.setattr(settings, "extractor_from", no_extractor)
    with read_only(run):
        start = time.monotonic()
        assert main([f"ckpt_path={ckpt_of(run)}", *fast]) == 2
        seconds = time.monotonic() - start
    err = capsys.readouterr().err
    assert err.startswith("Config error:") and len(err.strip().splitlines()) == 1, err
    assert f"cannot write {run / 'metrics.json'}" in err and "not writable" in err and seconds < 30
    assert not (run / "metrics.json").exists()


@pytest.fixture(scope="module")
def began_run(tmp_path_factory, refcache) -> Path:
    """A 2-iteration BEGAN run: no encoder, so no rFID or latent use."""
    return trained(tmp_path_factory, "began", ["model=began", "iterations=2"])


def test_no_metrics_to_compute_is_refused(began_run, fast, capsys):
    assert main([f"ckpt_path={ckpt_of(began_run)}", *fast, "metrics.names=[]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Config error:") and len(err.strip().splitlines()) == 1, err
    assert "metrics.names=[]" in err and "nothing to compute" in err and "metrics.names=[fid,kid]" in err
    assert not (began_run / "metrics.json").exists()


# ------------------------------------------------------------------------------ offline Inception
@pytest.mark.slow
def test_inception_offline_fails_fast_and_says_where_to_put_the_weights(run, tmp_path, refcache):
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    from vaegan.utils.download import reachable

    if reachable(URL_INCEPTION_V3, 3) is None:
        pytest.skip("the Inception weights' host is reachable: this test needs an offline machine")
    torch_home = tmp_path / "torch_home"
    torch_home.mkdir()
    sentinel = '{"earlier": "result"}\n'
    (run / "metrics.json").write_text(sentinel)

    start = time.monotonic()
    result = evaluate_cli(f"ckpt_path={ckpt_of(run)}", f"metrics.cache_dir={refcache}", "metrics.download_timeout=3",
                          "metrics.num_samples=64", "metrics.num_reference=100", env={"TORCH_HOME": str(torch_home)},
                          timeout=120)
    seconds = time.monotonic() - start

    assert result.returncode == 2, result.stderr[-3000:]
    assert seconds < 30, seconds
    err = result.stderr
    assert "Metrics error" in err and "Traceback" not in err
    expected = torch_home / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    assert str(expected) in err  # where to put the file
    assert "metrics.inception_weights" in err
    assert not any(p.is_file() for p in torch_home.rglob("*"))  # nothing downloaded, no partial file
    assert (run / "metrics.json").read_text() == sentinel
    assert not (run / "metrics_history.jsonl").exists()


# ------------------------------------------------------------------------------ regressions
@pytest.mark.slow
def test_main_leaves_autograd_alone(run, fast, capsys):
    assert torch.is_grad_enabled()
    assert main([f"ckpt_path={ckpt_of(run)}", *fast]) == 0
    assert torch.is_grad_enabled()


@pytest.mark.slow
def test_protocol_and_path_are_printed_on_whole_lines(run, fast, capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # stdout is a pipe, as in a log file or a batch job
    assert main([f"ckpt_path={ckpt_of(run)}", *fast]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    record = json.loads((run / "metrics.json").read_text())
    broken = [key for key, value in record["protocol"].items() if f"{key}: {value}" not in lines]
    assert not broken, broken
    assert f"wrote {run / 'metrics.json'}" in lines


@pytest.mark.slow
def test_a_damaged_metrics_json_neither_crashes_nor_loses_results(run, fast, capsys):
    damaged = '{"values": {"fid": 1.0'  # e.g. a copy interrupted half-way
    (run / "metrics.json").write_text(damaged)
    assert main([f"ckpt_path={ckpt_of(run)}", *fast]) == 0
    record = json.loads((run / "metrics.json").read_text())
    assert record["iteration"] == ITERATIONS
    kept = [p for p in run.iterdir() if p.is_file() and p.name != "metrics.json" and damaged in p.read_text(errors="replace")]
    assert kept  # the earlier content survives somewhere in the run directory
