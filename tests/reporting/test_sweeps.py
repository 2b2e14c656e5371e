"""Tests of ``vaegan.reporting.sweeps``' own logic on hand-made runs and diagnostics: configuration
labels, per-configuration means, the ranking and the Markdown cells. The whole report on a fake
multirun is in test_equilibrium.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from vaegan.reporting.equilibrium import Diagnostics
from vaegan.reporting.runs import Run
from vaegan.reporting.sweeps import (
    Entry, common_overrides, configuration, configuration_rows, definitions, rank, ranked_table, runs_table,
)


def diagnostics(settling: int | None = 100, overshoot: float = 0.1, **changes) -> Diagnostics:
    base = dict(iterations=200, band=0.1, initial_error=1.0, settling_iteration=settling, overshoot=overshoot,
                steady_state_error=0.01, bias=-0.002, oscillation=2.5, k_at_0=0.25, k_at_1=0.0)
    return Diagnostics(**{**base, **changes})


def run_in(folder: Path, overrides: list[str], seed: int | None = 0, final_m: float = 0.5, fid: float | None = None) -> Run:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    curves = {"step": np.array([1.0, 2.0]), "train/M": np.array([1.0, final_m])}
    evaluation = None if fid is None else {"values": {"fid": fid}}
    return Run(folder, "began_pid", seed, {}, evaluation=evaluation, curves=curves, rel=folder.name)


def test_every_spelling_of_the_seed_is_left_out_of_the_label(tmp_path):
    for i, seed in enumerate(["seed=3", "+seed=3", "++seed=3", "~seed"]):
        run = run_in(tmp_path / str(i), [seed, "model.controller.kp=0.1"])
        assert configuration(run, set()) == "model.controller.kp=0.1", seed
    run = run_in(tmp_path / "x", ["seeds_extra=1", "data.seed_split=2"])  # only the key seed is the seed
    assert configuration(run, set()) == "data.seed_split=2 seeds_extra=1"


def test_common_overrides_are_those_every_run_shares(tmp_path):
    a = run_in(tmp_path / "a", ["+experiment=x", "controller=pid", "seed=0"])
    b = run_in(tmp_path / "b", ["+experiment=x", "controller=began", "seed=0"])
    assert common_overrides([a, b]) == {"+experiment=x", "seed=0"}
    assert common_overrides([]) == set()


def test_entry_values_turn_nan_into_none(tmp_path):
    run = run_in(tmp_path / "a", [], final_m=0.25, fid=40.0)
    values = Entry(run, "c", diagnostics(overshoot=math.nan)).values()
    assert values["overshoot"] is None and values["final_M"] == 0.25 and values["fid"] == 40.0
    assert list(values)[-2:] == ["final_M", "fid"]


def test_configuration_rows_average_over_seeds_and_count_the_settled(tmp_path):
    entries = [Entry(run_in(tmp_path / "0", [], seed=0, final_m=0.2), "pid", diagnostics(settling=100)),
               Entry(run_in(tmp_path / "1", [], seed=None, final_m=0.4), "pid", diagnostics(settling=None)),
               Entry(run_in(tmp_path / "2", [], seed=1, final_m=0.9), "began", diagnostics(settling=300))]
    pid, began = configuration_rows(entries)  # in order of first appearance
    assert (pid["configuration"], pid["runs"], pid["settled"], pid["seeds"]) == ("pid", 2, "1/2", "0;?")
    assert pid["final_M_mean"] == pytest.approx(0.3) and pid["final_M_std"] == pytest.approx(math.sqrt(0.02))
    assert (pid["settling_iteration_mean"], pid["settling_iteration_std"]) == (100.0, None)  # the runs that settled
    assert (pid["fid_mean"], pid["fid_std"]) == (None, None)
    assert (began["runs"], began["settled"], began["final_M_mean"], began["final_M_std"]) == (1, "1/1", 0.9, None)


def rows(*items):
    return [{"configuration": c, "fid_mean": f, "final_M_mean": m} for c, f, m in items]


def test_rank_by_fid_only_when_every_configuration_has_one():
    objective, ranked = rank(rows(("a", 40.0, 0.1), ("b", 30.0, 0.9), ("c", 35.0, 0.5)))
    assert objective == "FID" and [(r["configuration"], r["rank"]) for r in ranked] == [("b", 1), ("c", 2), ("a", 3)]
    objective, ranked = rank(rows(("a", 40.0, 0.3), ("b", None, 0.2), ("c", 35.0, None), ("d", 20.0, 0.2)))
    assert objective == "final M"
    assert [r["configuration"] for r in ranked] == ["b", "d", "a", "c"]  # ties by name; without M last


def test_the_markdown_tables_format_and_escape_their_cells(tmp_path):
    entry = Entry(run_in(tmp_path / "7", [], seed=2, final_m=0.123456), "a|b", diagnostics(settling=None))
    [row] = configuration_rows([entry])
    _, [ranked] = rank([row])
    table = ranked_table([ranked]).splitlines()
    assert table[1] == "|---|---|" + "---:|" * 11
    assert table[2].startswith("| 1 | a\\|b | 1 | 0/1 | — | 10.0 | 0.01 | -0.002 | 2.50 | 25.0 | 0.0 | 0.1235 | — |")
    runs = runs_table([entry]).splitlines()
    assert runs[2] == "| `7` | a\\|b | 2 | never | 10.0 | 0.01 | -0.002 | 2.50 | 25.0 | 0.0 | 0.1235 | — |"


def test_definitions_name_the_settings():
    text = definitions(window=25, band=0.05, tail=0.2)
    assert "moving average over 25 iteration(s)" in text and "Settling band: ±0.05 (absolute)" in text
    assert "over the last 20% of the iterations" in text
    assert "Settling band: ±10 % of |e0| of each run" in definitions(window=1, band=None, tail=0.5)
