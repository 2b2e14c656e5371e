"""Tests of ``vaegan.reporting.runs``: finding a multirun's runs and reading their evaluations and curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vaegan.reporting.runs import (
    VARIANT_ORDER, Run, final_value, find_runs, mean_std, read_curves, read_evaluation, value, variant_key,
)


def job(folder: Path, variant: str = "began", seed: int | str | None = 0, metrics_csv: str | None = "step,train/M\n1,0.5\n",
        evaluation: dict | str | None = None) -> Path:
    folder.mkdir(parents=True)
    seed_line = "" if seed is None else f"seed: {seed}\n"
    (folder / "config.yaml").write_text(f"{seed_line}model:\n  name: {variant}\n")
    if metrics_csv is not None:
        (folder / "metrics.csv").write_text(metrics_csv)
    if evaluation is not None:
        (folder / "metrics.json").write_text(evaluation if isinstance(evaluation, str) else json.dumps(evaluation))
    return folder


def test_variant_key_puts_the_papers_variants_first_in_table_order():
    names = ["vae", "vaegan", "began_pid", "zzz", "began", "began_pid_lsm", "alpha"]
    assert sorted(names, key=variant_key) == [*VARIANT_ORDER, "alpha", "vae", "zzz"]


def test_read_curves_merges_rows_of_one_step_and_sorts_by_step(tmp_path):
    (tmp_path / "metrics.csv").write_text(
        "epoch,step,train/M,val/kl,note\n"
        "0,2,0.4,,\n"
        "0,1,0.5,,\n"
        "0,2,,7.5,text\n"   # a second row of step 2 (another logger call): combined
        ",,9.0,,\n")        # no step: ignored
    curves = read_curves(tmp_path)
    assert sorted(curves) == ["epoch", "step", "train/M", "val/kl"]  # a text column is no curve
    np.testing.assert_array_equal(curves["step"], [1.0, 2.0])
    np.testing.assert_array_equal(curves["train/M"], [0.5, 0.4])
    np.testing.assert_array_equal(curves["val/kl"], [np.nan, 7.5])


def test_read_curves_of_resumed_parts_takes_the_newest_value_of_a_step(tmp_path):
    (tmp_path / "metrics.1.csv").write_text("step,train/M\n1,1.0\n2,0.9\n3,0.8\n")
    (tmp_path / "metrics.10.csv").write_text("step,train/M\n3,0.7\n4,0.6\n")  # 10 after 2: numeric, not text order
    (tmp_path / "metrics.2.csv").write_text("step,train/M\n3,0.75\n")
    (tmp_path / "metrics.csv").write_text("step,train/M\n4,0.55\n5,0.5\n")
    (tmp_path / "metrics.old.csv").write_text("step,train/M\n5,99\n")  # not a part
    curves = read_curves(tmp_path)
    np.testing.assert_array_equal(curves["step"], [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(curves["train/M"], [1.0, 0.9, 0.7, 0.55, 0.5])


def test_read_curves_of_a_run_without_csv_is_an_empty_step_column(tmp_path):
    curves = read_curves(tmp_path)
    assert list(curves) == ["step"] and curves["step"].size == 0


def test_read_evaluation_warns_with_the_command_to_evaluate(tmp_path, capsys):
    assert read_evaluation(tmp_path / "metrics.json", "3") is None
    err = capsys.readouterr().err
    assert err == (f"warning: 3 has no metrics.json; evaluate it with: python -m vaegan.evaluate "
                   f"ckpt_path={tmp_path}/checkpoints/last.ckpt\n")


@pytest.mark.parametrize("text, why", [("{not json", "Expecting property name"), ("[1, 2]", "not a JSON object")])
def test_read_evaluation_of_a_corrupt_file_is_none_with_the_reason(tmp_path, capsys, text, why):
    (tmp_path / "metrics.json").write_text(text)
    assert read_evaluation(tmp_path / "metrics.json", "run") is None
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {tmp_path / 'metrics.json'} is not valid JSON (") and why in err
    assert "treating run as not evaluated" in err


def test_find_runs_sorts_by_variant_seed_and_path_and_skips_what_is_no_run(tmp_path, capsys):
    root = tmp_path / "multirun"
    job(root / "0", "vaegan", 1)
    job(root / "1", "began", 2, evaluation={"values": {"fid": 50.0}})
    job(root / "2", "began", 0)
    job(root / "3", "vae", None)  # no seed: sorts first among its variant
    job(root / "4", "vaegan", 0, metrics_csv=None, evaluation={"values": {}})  # evaluated only: still a run
    job(root / "5", "began", 0, metrics_csv=None)  # neither metrics.csv nor metrics.json
    job(root / "6" / ".hydra", "began", 0)  # Hydra's own copy of the config
    (root / "7").mkdir()
    (root / "7" / "config.yaml").write_text("model: [unclosed\n")
    (root / "7" / "metrics.csv").write_text("step\n")
    runs = find_runs(root)
    assert [(r.rel, r.variant, r.seed) for r in runs] == [
        ("2", "began", 0), ("1", "began", 2), ("4", "vaegan", 0), ("0", "vaegan", 1), ("3", "vae", None)]
    assert runs[1].evaluation == {"values": {"fid": 50.0}} and runs[0].evaluation is None
    assert runs[0].path == root / "2" and runs[0].config == {"seed": 0, "model": {"name": "began"}}
    np.testing.assert_array_equal(runs[0].curves["train/M"], [0.5])
    err = capsys.readouterr().err
    assert "warning: skipping 7: cannot read" in err and "warning: 2 has no metrics.json" in err


def test_find_runs_takes_the_root_itself_as_a_run(tmp_path):
    job(tmp_path / "single", "vaegan", 3)
    runs = find_runs(tmp_path / "single")
    assert [(r.rel, r.variant, r.seed) for r in runs] == [(".", "vaegan", 3)]


def test_a_config_without_model_name_or_integer_seed(tmp_path):
    root = tmp_path / "m"
    job(root / "0", "began", "'zero'")
    (root / "1").mkdir(parents=True)
    (root / "1" / "config.yaml").write_text("seed: 1\n")
    (root / "1" / "metrics.csv").write_text("step\n")
    assert {(r.rel, r.variant, r.seed) for r in find_runs(root)} == {("0", "began", None), ("1", "unknown", 1)}


def test_mean_std_uses_the_sample_standard_deviation():
    assert mean_std([]) == (None, None)
    assert mean_std([2.0]) == (2.0, None)
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))


def test_value_reads_numbers_only():
    run = Run(Path("."), "began", 0, {}, evaluation={"values": {"fid": 40, "is_mean": 5.5, "bad": "x", "flag": True},
                                                     "reference_values": {"is_mean": 11.0}})
    assert value(run, "fid") == 40.0 and isinstance(value(run, "fid"), float)
    assert value(run, "is_mean") == 5.5
    assert value(run, "bad") is None and value(run, "flag") is None and value(run, "missing") is None
    assert value(run, "is_mean", "reference_values") == 11.0
    assert value(Run(Path("."), "began", 0, {}), "fid") is None  # not evaluated


def test_final_value_is_the_last_logged_value():
    run = Run(Path("."), "began", 0, {}, curves={"train/M": np.array([0.9, 0.5, np.nan]), "empty": np.array([np.nan])})
    assert final_value(run, "train/M") == 0.5
    assert final_value(run, "empty") is None and final_value(run, "never") is None
