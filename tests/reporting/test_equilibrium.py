"""Tests of ``vaegan.reporting.equilibrium`` (diagnostics against hand-computed values) and of the equilibrium
outputs of ``python -m vaegan.report`` (``vaegan.reporting.sweeps``)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from vaegan.reporting.equilibrium import EPSILON, diagnose, diagnose_curves, smooth
from vaegan.report import main
from vaegan.reporting.runs import Run
from vaegan.reporting.sweeps import configuration, fid_of, overrides_of


def run_of(steps: np.ndarray, e: np.ndarray, k: np.ndarray | None = None, **kwargs):
    """``diagnose`` with k = 0.5 everywhere unless given."""
    return diagnose(steps, e, np.full(len(e), 0.5) if k is None else k, **kwargs)


# --- diagnose: hand-computed cases ---------------------------------------------------------------


def test_first_order_decay() -> None:
    e0, tau, n = 2.0, 100.0, 1000
    t = np.arange(n)
    d = run_of(t, e0 * np.exp(-t / tau), window=1, band_fraction=0.1)
    expected = math.ceil(tau * math.log(10))  # 231: exp(-t/tau) <= 0.1 from there on
    assert math.exp(-(expected - 1) / tau) > 0.1 >= math.exp(-expected / tau)
    assert d.settling_iteration == expected == 231
    assert d.initial_error == e0 and d.band == pytest.approx(0.2) and d.iterations == n
    assert d.overshoot == 0.0 and d.oscillation == 0.0
    # tail: steps >= 999 - 0.2 * 999 = 799.2, i.e. t = 800..999; a geometric series
    r = math.exp(-1 / tau)
    tail_mean = e0 * math.exp(-800 / tau) * (1 - r ** 200) / (1 - r) / 200
    assert d.bias == pytest.approx(tail_mean, rel=1e-9)
    assert d.steady_state_error == pytest.approx(tail_mean, rel=1e-9)  # positive: |e| = e


def test_damped_oscillation() -> None:
    tau, w, n = 200.0, 2 * math.pi / 100, 3000
    t = np.arange(n)
    e = np.exp(-t / tau) * np.cos(w * t)
    d = run_of(t, e, window=1, band_fraction=0.1)
    first_negative = int(np.flatnonzero(e < 0)[0])
    trough = float(np.max(-e[first_negative:]))  # brute force: the deepest excursion below 0
    assert 25 < int(np.argmax(-e)) < 75  # ... which is the first negative peak (half a period in)
    assert d.overshoot == pytest.approx(trough, rel=1e-12)
    assert d.overshoot == pytest.approx(math.exp(-math.pi / (w * tau)), rel=0.01)
    last_outside = int(np.flatnonzero(np.abs(e) > 0.1)[-1])
    assert d.settling_iteration == last_outside + 1
    assert tau * math.log(10) - 50 < d.settling_iteration <= math.ceil(tau * math.log(10))  # the envelope
    # cos crosses 0 at t = 25 + 50 j, j = 0..59 (2975 <= 2999): 60 sign changes in 3000 iterations
    assert d.oscillation == pytest.approx(60 / n * 1000)


def test_never_settles() -> None:
    t = np.arange(100)
    e = np.where(t == 0, 1.0, 0.5)  # 1, then 0.5 forever: band 0.1, never inside
    d = run_of(t, e, window=1)
    assert d.settling_iteration is None
    assert d.steady_state_error == 0.5 and d.bias == 0.5
    assert d.overshoot == 0.0 and d.oscillation == 0.0


def test_square_wave_oscillation() -> None:
    period, n = 100, 10_000
    t = np.arange(n)
    e = np.where(t % period < period // 2, 1.0, -1.0)
    d = run_of(t, e, window=1)
    changes = 2 * n // period - 1  # a change every half period, none at t = 0: 199
    assert d.oscillation == pytest.approx(changes / n * 1000)  # 19.9
    assert abs(d.oscillation - 2 * 1000 / period) <= 1000 / n  # within one change of 2 * 1000 / P
    assert d.overshoot == 1.0 and d.settling_iteration is None


def test_exact_zeros_do_not_count_as_sign_changes() -> None:
    e = np.array([1.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0, -1.0])  # signs + + - -: one change
    d = run_of(np.arange(8), e, window=1)
    assert d.oscillation == pytest.approx(1 / 8 * 1000)


def test_k_pinned_fractions() -> None:
    rng = np.random.default_rng(0)
    k = np.concatenate([np.zeros(290), np.full(10, 5e-7), np.ones(95), np.full(5, 1 - 5e-7),
                        np.linspace(1e-5, 1 - 1e-5, 600), np.full(50, np.nan)])  # NaN: not logged
    rng.shuffle(k)
    d = run_of(np.arange(k.size), np.ones(k.size), k=k)
    assert d.k_at_0 == pytest.approx(0.3) and d.k_at_1 == pytest.approx(0.1)
    assert math.isnan(run_of(np.arange(3), np.ones(3), k=np.full(3, np.nan)).k_at_0)


def test_sparse_logging_settles_at_first_logged_step_after_continuous_time() -> None:
    tau = 100.0
    steps = np.arange(0, 1000, 10)
    d = run_of(steps, 2.0 * np.exp(-steps / tau), window=1)
    continuous = tau * math.log(10)  # 230.26
    assert d.settling_iteration == math.ceil(continuous / 10) * 10 == 240
    assert d.iterations == 991


def test_smooth_window_in_iterations() -> None:
    steps = np.arange(0, 200, 10.0)
    e = np.arange(20.0) ** 2
    s = smooth(steps, e, 50)
    assert s[0] == e[0] and s[2] == pytest.approx(np.mean(e[:3]))  # expanding at first
    assert s[10] == pytest.approx(np.mean(e[6:11]))  # step 100: steps 60..100 lie in (50, 100]
    assert np.array_equal(smooth(steps, e, 1), e)  # window=1: no smoothing, exactly
    assert np.array_equal(smooth(steps, e, 10), e)  # one sample per 10 iterations


def test_initial_error_and_zero_error() -> None:
    t, e = np.arange(10), np.arange(10.0)
    assert run_of(t, e, window=4).initial_error == pytest.approx(1.5)  # step 3: mean of e[0..3]
    assert run_of(t, e, window=20).initial_error == pytest.approx(4.5)  # shorter than the window: mean of all
    d = run_of(t, np.zeros(10), window=1)
    assert d.band == EPSILON > 0 and d.settling_iteration == 0 and d.overshoot == 0.0
    assert run_of(t, e, window=1, band=3.0).band == 3.0  # absolute band: e = 9 at the end, never settles
    assert run_of(t, 9 - e, window=1, band=3.0).settling_iteration == 6  # 9 - t <= 3 from t = 6


def test_smoothing_reduces_steady_state_error_of_noise() -> None:
    e = np.random.default_rng(1).normal(0.0, 1.0, 5000)
    t = np.arange(e.size)
    raw = run_of(t, e, window=1)
    smoothed = run_of(t, e, window=50)
    tail = t >= 4999 - 0.2 * 4999
    assert raw.steady_state_error == pytest.approx(np.mean(np.abs(e[tail])))
    assert smoothed.steady_state_error < 0.25 * raw.steady_state_error  # ~ 1/sqrt(50) of it
    assert smoothed.bias == raw.bias == pytest.approx(np.mean(e[tail]))  # bias is over raw e


@pytest.mark.parametrize("kwargs, name", [
    ({"steps": [0, 2, 1]}, "steps"), ({"steps": [0, 1, 1]}, "steps"), ({"e": [1.0, 2.0]}, "e has 2"),
    ({"k": [0.5]}, "k has 1"), ({"window": 0}, "window"), ({"tail": 0}, "tail"), ({"tail": 1.5}, "tail"),
    ({"band": -1.0}, "band"), ({"steps": [], "e": [], "k": []}, "e is empty"),
    ({"e": [np.nan] * 3}, "e is empty")])
def test_invalid_input(kwargs: dict, name: str) -> None:
    args = {"steps": [0, 1, 2], "e": [1.0, 0.5, 0.2], "k": [0.1, 0.2, 0.3], **kwargs}
    with pytest.raises(ValueError, match=name):
        diagnose(args.pop("steps"), args.pop("e"), args.pop("k"), **args)


def test_diagnose_curves() -> None:
    steps = np.arange(10.0)
    assert diagnose_curves({"step": steps, "train/k": np.zeros(10)}) is None
    assert diagnose_curves({"step": steps, "train/e": np.full(10, np.nan)}) is None
    e = np.where(steps % 2 == 0, 10 - steps, np.nan)  # e every other row: 10, 8, ..., 2
    k = np.where(steps < 3, 0.0, 0.5)  # k every row
    d = diagnose_curves({"step": steps, "train/e": e, "train/k": k}, window=1)
    assert d.iterations == 9 and d.initial_error == 10.0 and d.settling_iteration is None
    assert d.k_at_0 == pytest.approx(0.3)
    assert diagnose_curves({"step": steps, "train/e": e}, window=1).settling_iteration is None


# --- configuration labels and FID ----------------------------------------------------------------


def test_configuration_labels(tmp_path: Path) -> None:
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text(
        "- model.controller.kp=0.001\n- seed=1\n- +experiment=x\n- model.controller.kd=0.0\n")
    run = Run(tmp_path / "0", "began_pid", 1, {})
    assert overrides_of(run.path) == ["model.controller.kp=0.001", "seed=1", "+experiment=x", "model.controller.kd=0.0"]
    assert configuration(run, {"+experiment=x"}) == "model.controller.kd=0.0 model.controller.kp=0.001"
    assert configuration(run, set(overrides_of(run.path))) == "began_pid"  # nothing left: the variant
    assert overrides_of(tmp_path / "missing") == [] and configuration(Run(tmp_path, "vaegan", 0, {}), set()) == "vaegan"
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("[unclosed")
    assert overrides_of(run.path) == []


def test_fid_from_metrics_json_else_curves(tmp_path: Path) -> None:
    curves = {"step": np.arange(5.0), "metrics/fid": np.array([np.nan, 40.0, np.nan, 35.0, np.nan])}
    assert fid_of(Run(tmp_path, "began", 0, {}, curves=curves)) == 35.0
    assert fid_of(Run(tmp_path, "began", 0, {}, evaluation={"values": {"fid": 20.0}}, curves=curves)) == 20.0
    assert fid_of(Run(tmp_path, "began", 0, {}, curves={"step": np.arange(5.0)})) is None


# --- python -m vaegan.report on a fake multirun ------------------------------------------------


def make_job(root: Path, job: int, controller: str, seed: int, *, fid: float | None = None) -> None:
    """A job of a 200-iteration sweep: BEGAN's controller never settles (e = 1, then 0.5) and ends at
    M = 0.6 + 0.05 seed; the PID's e decays as exp(-t/10) and M ends at 0.2 + 0.05 seed."""
    d = root / str(job)
    (d / ".hydra").mkdir(parents=True)
    (d / "config.yaml").write_text(f"model:\n  name: began_pid\nseed: {seed}\ndata:\n  name: npz\n")
    (d / ".hydra" / "overrides.yaml").write_text(f"- controller={controller}\n- seed={seed}\n- +experiment=x\n")
    t = np.arange(200)
    if controller == "began":
        e, m = np.where(t < 10, 1.0, 0.5), np.linspace(1.0, 0.6 + 0.05 * seed, t.size)
    else:
        e, m = np.exp(-t / 10), np.linspace(1.0, 0.2 + 0.05 * seed, t.size)
    k = np.clip(0.01 * t - 0.5, 0.0, 1.0)  # 0 for t <= 50, 1 from t = 150
    rows = ["step,train/e,train/k,train/M", *(f"{i},{e[i]:.17g},{k[i]:.17g},{m[i]:.17g}" for i in t)]
    (d / "metrics.csv").write_text("\n".join(rows) + "\n")
    if fid is not None:
        (d / "metrics.json").write_text(json.dumps({"iteration": 200, "values": {"fid": fid}, "protocol": {}}))


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def ranked_rows(md: str) -> list[list[str]]:
    """The cells of the ranked table's body rows (before ``## Runs``)."""
    table = md.split("## Runs")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ") and line[2].isdigit()]


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    for job, (controller, seed) in enumerate([("began", 0), ("began", 1), ("pid", 0), ("pid", 1)]):
        make_job(root, job, controller, seed)
    return root


def test_report_ranks_by_final_m(sweep: Path, capsys) -> None:
    assert main([str(sweep)]) == 0
    rows = read_rows(sweep / "equilibrium.csv")
    assert {r["run"]: r["configuration"] for r in rows} == {"0": "controller=began", "1": "controller=began",
                                                            "2": "controller=pid", "3": "controller=pid"}
    assert [r["run"] for r in rows] == ["2", "3", "0", "1"]  # ranked, then by seed
    by_run = {r["run"]: r for r in rows}
    assert float(by_run["3"]["final_M"]) == pytest.approx(0.25) and by_run["0"]["fid"] == ""
    assert by_run["0"]["settling_iteration"] == "" and by_run["2"]["settling_iteration"] != ""
    assert float(by_run["0"]["steady_state_error"]) == pytest.approx(0.5)  # the tail is all 0.5
    assert float(by_run["0"]["k_at_0"]) == pytest.approx(51 / 200) and float(by_run["0"]["k_at_1"]) == pytest.approx(0.25)
    md = (sweep / "equilibrium.md").read_text()
    assert md.startswith("# Equilibrium diagnostics\n") and "Ranked by final M (lower is better)" in md
    assert "moving average over 50 iteration(s)" in md and "last 20% of the iterations" in md
    ranked = ranked_rows(md)
    assert [r[:4] for r in ranked] == [["1", "controller=pid", "2", "2/2"], ["2", "controller=began", "2", "0/2"]]
    assert ranked[0][-2] == "0.2250 ± 0.0354" and ranked[1][-2] == "0.6250 ± 0.0354"  # final M: mean ± std
    assert "+experiment=x" not in md
    out = capsys.readouterr().out
    assert out.index("| Variant |") < out.index("| 1 | controller=pid | 2 | 2/2 |")
    for name in ("equilibrium.csv", "equilibrium.md", "equilibrium.png", "table1.csv"):
        assert f"wrote {sweep / name}" in out
    png = sweep / "equilibrium.png"
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 5_000
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10  # not one colour


@pytest.mark.slow
def test_report_ranks_by_fid_when_every_configuration_has_one(tmp_path: Path) -> None:
    root = tmp_path / "multirun"
    for job, (controller, seed, fid) in enumerate([("began", 0, 30.0), ("began", 1, 32.0), ("pid", 0, 50.0),
                                                   ("pid", 1, 52.0)]):
        make_job(root, job, controller, seed, fid=fid)
    assert main([str(root), "--window", "1", "--tail", "0.5"]) == 0
    md = (root / "equilibrium.md").read_text()
    assert "Ranked by FID (lower is better)" in md and "last 50% of the iterations" in md
    ranked = ranked_rows(md)
    assert [r[1] for r in ranked] == ["controller=began", "controller=pid"]  # although its final M is higher
    assert ranked[0][-1] == "31.00 ± 1.41"
    rows = read_rows(root / "equilibrium.csv")
    assert sorted(float(r["fid"]) for r in rows) == [30.0, 32.0, 50.0, 52.0]
    pid = next(r for r in rows if r["run"] == "2")
    assert int(pid["settling_iteration"]) == 24  # window 1: exp(-t/10) <= 0.1 from t = ceil(10 ln 10) = 24
    (root / "0" / "metrics.json").unlink()  # began s0 keeps no FID; began still has s1's: still by FID
    assert main([str(root)]) == 0 and "Ranked by FID" in (root / "equilibrium.md").read_text()


def test_report_without_e_writes_no_equilibrium(tmp_path: Path, capsys) -> None:
    d = tmp_path / "0"
    d.mkdir()
    (d / "config.yaml").write_text("model:\n  name: vae\nseed: 0\n")
    (d / "metrics.csv").write_text("step,train/L_v\n0,1.0\n1,0.9\n")
    assert main([str(tmp_path)]) == 0
    assert not (tmp_path / "equilibrium.csv").exists() and "equilibrium" not in capsys.readouterr().out


@pytest.mark.slow
def test_report_leaves_out_runs_without_e(sweep: Path) -> None:
    d = sweep / "4"
    (d / ".hydra").mkdir(parents=True)
    (d / "config.yaml").write_text("model:\n  name: vae\nseed: 0\n")
    (d / ".hydra" / "overrides.yaml").write_text("- model=vae\n- seed=0\n")  # would empty the common overrides
    (d / "metrics.csv").write_text("step,train/L_v\n0,1.0\n1,0.9\n")
    assert main([str(sweep)]) == 0
    rows = read_rows(sweep / "equilibrium.csv")
    assert sorted(r["configuration"] for r in rows) == ["controller=began"] * 2 + ["controller=pid"] * 2


@pytest.mark.parametrize("args", [["--window", "0"], ["--tail", "0"], ["--band", "-1"]])
def test_report_rejects_bad_options(sweep: Path, args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(sweep), *args])
    assert exc.value.code == 2
