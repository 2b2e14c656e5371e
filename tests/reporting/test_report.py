"""Tests of ``python -m vaegan.report``: Table 1 over a fake Hydra multirun."""

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from vaegan.report import main
from vaegan.reporting.runs import find_runs, read_curves
from vaegan.reporting.table1 import PAPER_TABLE1

ROOT = Path(__file__).resolve().parents[2]
HEADER = "epoch,step,train/L_d,train/L_e,train/L_g,train/L_n,train/L_s,train/L_v,train/M,train/e,train/k,train/k_D,train/k_I,train/k_P"
VAE_HEADER = "epoch,step,train/L_e,train/L_g,train/L_n,train/L_s,train/L_v"
PROTOCOL = {"extractor": "inception-v3-compat", "extractor_sha256": "6726825d", "split": "train", "num_samples": 50000}


def metrics_row(step: int, m: str = "", k: str = "", extra: str = "1.0") -> str:
    """One CSVLogger row of HEADER: M and k as given (maybe empty), losses ``extra``."""
    return f"0,{step},{extra},{extra},{extra},{extra},{extra},{extra},{m},,{k},,,"


def make_run(job: Path, variant: str, seed: int, *, csv_rows: list[str] | None = None, header: str = HEADER,
             values: dict | None = None, reference: dict | None = None, protocol_key: str = "key-a",
             evaluated: bool = True, data: str = "cifar10") -> Path:
    """A Hydra job directory with config.yaml, metrics.csv and (if ``evaluated``) metrics.json."""
    job.mkdir(parents=True)
    (job / ".hydra").mkdir()
    (job / ".hydra" / "config.yaml").write_text(f"model:\n  name: {variant}\nseed: {seed}\n")  # not a run
    (job / "config.yaml").write_text(f"seed: {seed}\nmodel:\n  name: {variant}\ndata:\n  name: {data}\n")
    if csv_rows is not None:
        (job / "metrics.csv").write_text("\n".join([header, *csv_rows]) + "\n")
    if evaluated:
        doc = {"checkpoint": "checkpoints/last.ckpt", "iteration": 2000, "variant": variant, "seed": seed,
               "values": values or {}, "protocol": PROTOCOL, "protocol_key": protocol_key, "seconds": 1.0,
               "created": "2026-11-29T11:00:00+00:00"}
        if reference is not None:
            doc["reference_values"] = reference
        (job / "metrics.json").write_text(json.dumps(doc))
    return job


def read_table(path: Path) -> tuple[list[str], dict[str, dict[str, str]]]:
    """table1.csv as (header, variant -> row)."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    return reader.fieldnames, {r["variant"]: r for r in rows}


def close(cell: str, expected: float) -> bool:
    return cell != "" and float(cell) == pytest.approx(expected, rel=1e-5)


@pytest.fixture
def multirun(tmp_path: Path) -> Path:
    """Seven runs: began x2, began_pid x1, began_pid_lsm x1, vaegan x2, vae x1 (job numbers shuffled)."""
    root = tmp_path / "multirun"
    ref = {"is_mean": 11.2, "is_std": 0.1}
    make_run(root / "0", "vaegan", 1, csv_rows=[metrics_row(1, "0.5", "0.01"), metrics_row(2, "0.4", "0.02")],
             values={"is_mean": 6.1, "is_std": 0.1, "fid": 41.2, "kid_mean": 0.031, "kid_std": 0.002,
                     "precision": 0.6, "recall": 0.4, "rfid": 100.0, "kl_nats": 90.0, "active_units": 64,
                     "psnr": 20.0, "ssim": 0.5, "psnr_mean_image": 12.0}, reference=ref)
    make_run(root / "1", "vaegan", 0, csv_rows=[metrics_row(1, "0.6", "0.0"), metrics_row(2, "0.3", "0.01"), metrics_row(3)],
             values={"is_mean": 6.5, "is_std": 0.2, "fid": 39.0, "kid_mean": 0.027, "kid_std": 0.003,
                     "precision": 0.7, "recall": 0.5, "rfid": 120.0, "kl_nats": 110.0, "active_units": 60,
                     "psnr": 21.0, "ssim": 0.6, "psnr_mean_image": 12.0}, reference=ref)
    make_run(root / "2", "began", 0, csv_rows=[metrics_row(1, "0.9", "0.0"), metrics_row(2, "0.8", "0.001")],
             values={"is_mean": 5.0, "fid": 60.0, "kid_mean": 0.05}, reference={"is_mean": 11.4})
    make_run(root / "3", "began", 1, csv_rows=[metrics_row(1, "0.7", "0.0")], values={"is_mean": 5.4, "fid": 58.0, "kid_mean": 0.04})
    make_run(root / "4", "began_pid", 0, csv_rows=[metrics_row(1, "0.2", "0.0")], values={"is_mean": 5.8})
    make_run(root / "5", "began_pid_lsm", 2, csv_rows=[metrics_row(1, "0.25", "0.0")], values={"is_mean": 6.0, "fid": 45.0})
    make_run(root / "6", "vae", 0, csv_rows=["0,1,1.0,1.0,1.0,1.0,1.0"], header=VAE_HEADER, values={"fid": 80.0})
    return root


def test_csv_rows_in_order_with_hand_computed_stats(multirun: Path, capsys) -> None:
    assert main([str(multirun)]) == 0
    header, rows = read_table(multirun / "table1.csv")
    assert header == ["variant", "runs", "seeds", "is_mean", "is_std", "fid_mean", "fid_std", "kid_mean", "kid_std",
                      "precision_mean", "recall_mean", "rfid_mean", "rfid_std", "kl_nats_mean", "kl_nats_std",
                      "active_units_mean", "psnr_mean", "psnr_std", "ssim_mean", "psnr_mean_image_mean", "final_M_mean",
                      "final_M_std", "paper_is"]
    assert list(rows) == ["began", "began_pid", "began_pid_lsm", "vaegan", "vae", "real images"]
    vg = rows["vaegan"]
    assert vg["runs"] == "2" and vg["seeds"] == "0;1"  # sorted by seed, not by job number
    assert close(vg["is_mean"], statistics.mean([6.1, 6.5])) and close(vg["is_std"], statistics.stdev([6.1, 6.5]))
    assert close(vg["fid_mean"], statistics.mean([41.2, 39.0])) and close(vg["fid_std"], statistics.stdev([41.2, 39.0]))
    assert close(vg["kid_mean"], statistics.mean([0.031, 0.027])) and close(vg["kid_std"], statistics.stdev([0.031, 0.027]))
    assert close(vg["precision_mean"], 0.65) and close(vg["recall_mean"], 0.45)
    assert close(vg["rfid_mean"], 110.0) and close(vg["rfid_std"], statistics.stdev([100.0, 120.0]))
    assert close(vg["kl_nats_mean"], 100.0) and close(vg["active_units_mean"], 62.0)
    assert close(vg["psnr_mean"], 20.5) and close(vg["ssim_mean"], 0.55) and close(vg["psnr_mean_image_mean"], 12.0)
    assert rows["began"]["kl_nats_mean"] == ""  # no encoder
    md = (multirun / "table1.md").read_text()
    assert "| 110.00 ± 14.14 | 100.0 ± 14.1 | 62.0 | 20.50 ± 0.71 (12.00) | 0.550 |" in md  # rFID, KL, AU, PSNR, SSIM
    # final M: run 1 logs 0.3 then an empty M cell at step 3; run 0 ends on 0.4
    assert close(vg["final_M_mean"], statistics.mean([0.4, 0.3])) and close(vg["final_M_std"], statistics.stdev([0.4, 0.3]))
    began = rows["began"]
    assert close(began["is_mean"], 5.2) and close(began["is_std"], statistics.stdev([5.0, 5.4]))
    assert close(began["final_M_mean"], 0.75) and began["precision_mean"] == ""
    single = rows["began_pid"]
    assert single["runs"] == "1" and close(single["is_mean"], 5.8) and single["is_std"] == "" and single["fid_mean"] == ""
    assert rows["vae"]["final_M_mean"] == "" and close(rows["vae"]["fid_mean"], 80.0) and rows["vae"]["is_mean"] == ""
    assert close(rows["began"]["paper_is"], 5.62) and close(rows["began_pid_lsm"]["paper_is"], 6.12)
    assert close(rows["vaegan"]["paper_is"], 6.80) and close(rows["real images"]["paper_is"], 11.24)
    assert rows["began_pid"]["paper_is"] == "" and rows["vae"]["paper_is"] == ""
    assert PAPER_TABLE1 == {"began": 5.62, "began_pid_lsm": 6.12, "vaegan": 6.80, "real images": 11.24}
    out = capsys.readouterr().out
    assert "| VAE + BEGAN* + LSM | 2 | 6.30 ± 0.28 | 6.80 |" in out
    for name in ("table1.csv", "table1.md", "curves.png"):
        assert f"wrote {multirun / name}" in out


def test_real_images_row_from_reference_values(multirun: Path) -> None:
    assert main([str(multirun)]) == 0
    _, rows = read_table(multirun / "table1.csv")
    real = rows["real images"]
    refs = [11.4, 11.2, 11.2]  # began s0, vaegan s0, vaegan s1
    assert real["runs"] == "3" and real["seeds"] == ""
    assert close(real["is_mean"], statistics.mean(refs)) and close(real["is_std"], statistics.stdev(refs))
    assert real["fid_mean"] == real["final_M_mean"] == real["kid_mean"] == ""
    md = (multirun / "table1.md").read_text()
    assert "| Real images | 3 | 11.27 ± 0.12 | 11.24 | — | — | — | — | — | — | — | — |" in md


def test_no_real_images_row_without_reference(tmp_path: Path) -> None:
    make_run(tmp_path / "0", "began", 0, csv_rows=[metrics_row(1, "0.5")], values={"is_mean": 5.0})
    assert main([str(tmp_path), "--out", str(tmp_path / "report")]) == 0
    _, rows = read_table(tmp_path / "report" / "table1.csv")
    assert list(rows) == ["began"]
    assert not (tmp_path / "table1.csv").exists()  # --out is honoured


def test_final_m_merges_resumed_parts(tmp_path: Path) -> None:
    job = make_run(tmp_path / "0", "began_pid", 0, values={"is_mean": 5.0})
    # older part: steps 1..3, M last logged at step 3 = 0.9 (to be overridden by the newer part)
    (job / "metrics.1.csv").write_text("\n".join([HEADER, metrics_row(1, "0.5", "0.1"), metrics_row(2, "0.6", "0.2"),
                                                  metrics_row(3, "0.9", "0.3")]) + "\n")
    # newer part: resumes at step 3 (duplicate, M=0.35), then step 4 with M, step 5 without
    (job / "metrics.csv").write_text("\n".join([HEADER, metrics_row(3, "0.35", "0.25"), metrics_row(4, "0.33", "0.2"),
                                                metrics_row(5)]) + "\n")
    curves = read_curves(job)
    assert curves["step"].tolist() == [1, 2, 3, 4, 5]
    assert curves["train/M"][:4].tolist() == [0.5, 0.6, 0.35, 0.33]
    assert main([str(tmp_path)]) == 0
    _, rows = read_table(tmp_path / "table1.csv")
    assert close(rows["began_pid"]["final_M_mean"], 0.33)
    # without step 4 the duplicated step 3 decides: newest file's 0.35, not 0.9
    (job / "metrics.csv").write_text("\n".join([HEADER, metrics_row(3, "0.35", "0.25")]) + "\n")
    assert main([str(tmp_path)]) == 0
    _, rows = read_table(tmp_path / "table1.csv")
    assert close(rows["began_pid"]["final_M_mean"], 0.35)


def test_run_without_metrics_json(tmp_path: Path, capsys) -> None:
    make_run(tmp_path / "0", "vaegan", 0, csv_rows=[metrics_row(1, "0.4")], values={"is_mean": 6.0, "fid": 40.0})
    make_run(tmp_path / "1", "vaegan", 1, csv_rows=[metrics_row(1, "0.2")], evaluated=False)
    assert main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.count("warning:") == 1
    assert (f"warning: 1 has no metrics.json; evaluate it with: python -m vaegan.evaluate "
            f"ckpt_path={tmp_path / '1'}/checkpoints/last.ckpt") in err
    _, rows = read_table(tmp_path / "table1.csv")
    assert rows["vaegan"]["runs"] == "2" and rows["vaegan"]["seeds"] == "0;1"
    assert close(rows["vaegan"]["is_mean"], 6.0) and rows["vaegan"]["is_std"] == ""  # only the evaluated run counts
    assert close(rows["vaegan"]["final_M_mean"], 0.3)  # both runs count for M
    md = (tmp_path / "table1.md").read_text()
    assert "- `1`: vaegan, seed 1, not evaluated" in md
    assert "- `0`: vaegan, seed 0, iteration 2000: is_mean=6, fid=40" in md


def test_unevaluated_only_run_has_empty_metric_cells(tmp_path: Path, capsys) -> None:
    make_run(tmp_path / "0", "began", 3, csv_rows=[metrics_row(1, "0.4")], evaluated=False)
    assert main([str(tmp_path)]) == 0
    _, rows = read_table(tmp_path / "table1.csv")
    assert list(rows) == ["began"]
    for column in ("is_mean", "is_std", "fid_mean", "fid_std", "kid_mean", "kid_std", "precision_mean", "recall_mean"):
        assert rows["began"][column] == ""
    assert close(rows["began"]["final_M_mean"], 0.4) and rows["began"]["seeds"] == "3"
    assert "has no metrics.json" in capsys.readouterr().err


def test_protocol_section_same_and_different_keys(tmp_path: Path) -> None:
    same = tmp_path / "same"
    make_run(same / "0", "began", 0, csv_rows=[], values={"is_mean": 5.0}, data="npz")
    make_run(same / "1", "began", 1, csv_rows=[], values={"is_mean": 5.2}, data="npz")
    assert main([str(same)]) == 0
    md = (same / "table1.md").read_text()
    assert md.startswith("# Table 1: Inception Score on npz (and FID, KID)")
    assert "## Protocol" in md and "- extractor: inception-v3-compat" in md and "- num_samples: 50000" in md
    assert "different protocols" not in md
    assert "Mean ± standard deviation over seeds. The paper's numbers come from its Table 1 (IS only); " \
           "ours were measured under the protocol below." in md

    diff = tmp_path / "diff"
    make_run(diff / "0", "began", 0, csv_rows=[], values={"is_mean": 5.0}, protocol_key="key-a")
    make_run(diff / "1", "began", 1, csv_rows=[], values={"is_mean": 5.2}, protocol_key="key-b")
    assert main([str(diff)]) == 0
    md = (diff / "table1.md").read_text()
    assert "**Warning: runs were evaluated under different protocols; their numbers are not comparable.**" in md
    assert "key-a" in md and "key-b" in md and "`0`" in md and "`1`" in md
    assert md.startswith("# Table 1: Inception Score on CIFAR-10 (and FID, KID)")


def test_curves_png(multirun: Path) -> None:
    assert main([str(multirun)]) == 0
    png = (multirun / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert not [p for p in multirun.iterdir() if p.name.endswith(".tmp")]  # atomic writes leave no temporaries


def test_curves_png_without_k_or_m(tmp_path: Path) -> None:
    make_run(tmp_path / "0", "vae", 0, csv_rows=["0,1,1.0,1.0,1.0,1.0,1.0"], header=VAE_HEADER, values={"fid": 80.0})
    assert main([str(tmp_path)]) == 0
    png = (tmp_path / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5_000


def test_find_runs_ignores_hydra_and_incomplete_dirs(multirun: Path) -> None:
    (multirun / "7").mkdir()
    (multirun / "7" / "config.yaml").write_text("model:\n  name: began\nseed: 9\n")  # no metrics: not a run
    runs = find_runs(multirun)
    assert [(r.variant, r.seed) for r in runs] == [("began", 0), ("began", 1), ("began_pid", 0), ("began_pid_lsm", 2),
                                                   ("vaegan", 0), ("vaegan", 1), ("vae", 0)]
    assert all(".hydra" not in r.path.parts for r in runs)


@pytest.mark.parametrize("kind", ["empty", "missing"])
def test_no_runs_exits_2(tmp_path: Path, capsys, kind: str) -> None:
    target = tmp_path / ("nothing" if kind == "missing" else "")
    assert main([str(target)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if kind == "empty":
        assert f"error: no runs found under {target} (expected Hydra job directories holding config.yaml " \
               "and metrics.csv or metrics.json)" in err
    else:
        assert err.startswith(f"error: {target} does not exist")


def test_module_entry_point(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "vaegan.report", str(tmp_path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"error: no runs found under {tmp_path}" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_metrics_json(tmp_path: Path, capsys) -> None:
    job = make_run(tmp_path / "0", "began", 0, csv_rows=[metrics_row(1, "0.5")], values={"is_mean": 5.0})
    make_run(tmp_path / "1", "began", 1, csv_rows=[metrics_row(1, "0.7")], values={"is_mean": 5.4})
    (job / "metrics.json").write_text('{"values": {"is_mean": 5.0')  # truncated
    assert main([str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and str(job / "metrics.json") in err and "Traceback" not in err
    _, rows = read_table(tmp_path / "table1.csv")
    assert rows["began"]["runs"] == "2" and close(rows["began"]["is_mean"], 5.4) and rows["began"]["is_std"] == ""
    assert "- `0`: began, seed 0, not evaluated" in (tmp_path / "table1.md").read_text()


def test_import_does_not_pull_torch() -> None:
    code = "import sys, vaegan.report; assert 'torch' not in sys.modules and 'matplotlib' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0
