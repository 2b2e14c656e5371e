"""Table 1 from a multirun: IS/FID/KID per variant over seeds, with the k_t and M curves.

``python -m vaegan.report <multirun dir> [--out DIR]`` averages each variant's ``metrics.json`` (from
``python -m vaegan.evaluate``) over seeds into ``table1.csv``, ``table1.md`` and ``curves.png``; no torch.
Runs that logged e_t also get their equilibrium diagnostics, per run and per configuration, ranked
(``vaegan.sweep_report``): ``equilibrium.csv``, ``equilibrium.md`` and ``equilibrium.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from vaegan.files import write_atomic

# Inception Scores of Table 1 of Khan et al. 2018 (CIFAR-10); began_pid and vae are not in it.
PAPER_TABLE1 = {"began": 5.62, "began_pid_lsm": 6.12, "vaegan": 6.80, "real images": 11.24}
VARIANT_ORDER = ["began", "began_pid", "began_pid_lsm", "vaegan"]
REAL = "real images"
DISPLAY = {"began": "BEGAN", "began_pid": "BEGAN*", "began_pid_lsm": "BEGAN* + LSM",
           "vaegan": "VAE + BEGAN* + LSM", "vae": "VAE", REAL: "Real images"}
DATASETS = {"cifar10": "CIFAR-10", "celeba": "CelebA"}
COLUMNS = ["variant", "runs", "seeds", "is_mean", "is_std", "fid_mean", "fid_std", "kid_mean", "kid_std",
           "precision_mean", "recall_mean", "rfid_mean", "rfid_std", "kl_nats_mean", "kl_nats_std", "active_units_mean",
           "psnr_mean", "psnr_std", "ssim_mean", "psnr_mean_image_mean", "final_M_mean", "final_M_std", "paper_is"]
# CSV column prefix -> (key of metrics.json "values", whether a std column follows the mean).
STATS = {"is": ("is_mean", True), "fid": ("fid", True), "kid": ("kid_mean", True),
         "precision": ("precision", False), "recall": ("recall", False),
         # the VAE's reconstructions and latent use (models with an encoder; vaegan.metrics.latent_use)
         "rfid": ("rfid", True), "kl_nats": ("kl_nats", True), "active_units": ("active_units", False),
         "psnr": ("psnr", True), "ssim": ("ssim", False), "psnr_mean_image": ("psnr_mean_image", False)}
NOTE = ("Mean ± standard deviation over seeds. The paper's numbers come from its Table 1 (IS only); "
        "ours were measured under the protocol below.")
DIFFERENT = "**Warning: runs were evaluated under different protocols; their numbers are not comparable.**"


@dataclass
class Run:
    """One training run: its directory, variant, seed, config, evaluation and logged curves."""

    path: Path
    variant: str
    seed: int | None
    config: dict
    evaluation: dict | None = None
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    rel: str = "."


def variant_key(variant: str) -> tuple[int, str]:
    """Sort key: the paper's variants in table order, then the others alphabetically."""
    return (VARIANT_ORDER.index(variant), "") if variant in VARIANT_ORDER else (len(VARIANT_ORDER), variant)


def _csv_files(run_dir: Path) -> list[Path]:
    """``metrics.1.csv``, ``metrics.2.csv``, ..., ``metrics.csv``: oldest part first."""
    parts = [(int(m.group(1)), p) for p in run_dir.glob("metrics.*.csv") if (m := re.fullmatch(r"metrics\.(\d+)\.csv", p.name))]
    return [p for _, p in sorted(parts)] + [p for p in [run_dir / "metrics.csv"] if p.is_file()]


def _number(cell: str | None) -> float:
    """A CSV cell as a float; NaN when empty or not a number."""
    try:
        return float(cell or "nan")
    except ValueError:
        return math.nan


def read_curves(run_dir: Path) -> dict[str, np.ndarray]:
    """The merged ``metrics*.csv`` of a run as column -> float array (NaN = empty), sorted by
    ``step``; rows of one step are combined, and a step present in several files takes the newest."""
    by_step: dict[int, dict[str, float]] = {}
    for path in _csv_files(run_dir):
        rows: dict[int, dict[str, float]] = {}
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                if not math.isnan(step := _number(row.get("step"))):
                    cells = {k: v for k, c in row.items() if k and k != "step" and not math.isnan(v := _number(c))}
                    rows.setdefault(int(step), {}).update(cells)
        by_step.update(rows)
    steps = sorted(by_step)
    names = sorted({name for cells in by_step.values() for name in cells})
    return {"step": np.asarray(steps, dtype=float),
            **{n: np.asarray([by_step[s].get(n, math.nan) for s in steps], dtype=float) for n in names}}


def read_evaluation(path: Path, rel: str) -> dict | None:
    """``metrics.json`` as a dict; None (with a warning) when absent or corrupt."""
    hint = f"evaluate it with: python -m vaegan.evaluate ckpt_path={path.parent}/checkpoints/last.ckpt"
    if not path.is_file():
        print(f"warning: {rel} has no metrics.json; {hint}", file=sys.stderr)
        return None
    try:
        if isinstance(data := json.loads(path.read_text()), dict):
            return data
        raise ValueError("not a JSON object")
    except (ValueError, OSError) as e:
        print(f"warning: {path} is not valid JSON ({e}); treating {rel} as not evaluated; {hint}", file=sys.stderr)
        return None


def find_runs(root: Path) -> list[Run]:
    """Every directory under ``root`` (itself included, ``.hydra`` excluded) holding ``config.yaml``
    and ``metrics.csv`` or ``metrics.json``, sorted by variant, seed and path."""
    runs = []
    for cfg_path in sorted(root.rglob("config.yaml")):
        d = cfg_path.parent
        if ".hydra" in d.relative_to(root).parts or not ((d / "metrics.csv").is_file() or (d / "metrics.json").is_file()):
            continue
        rel = d.relative_to(root).as_posix()
        try:
            config = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False)
        except Exception as e:  # noqa: BLE001 - any unreadable config only skips that run
            print(f"warning: skipping {rel}: cannot read {cfg_path} ({e})", file=sys.stderr)
            continue
        config = config if isinstance(config, dict) else {}
        variant = str((config.get("model") or {}).get("name", "unknown"))
        runs.append(Run(d, variant, seed if isinstance(seed := config.get("seed"), int) else None, config, rel=rel))
    runs.sort(key=lambda r: (variant_key(r.variant), r.seed if r.seed is not None else -1, r.rel))
    for run in runs:
        run.evaluation = read_evaluation(run.path / "metrics.json", run.rel)
        run.curves = read_curves(run.path)
    return runs


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; None with fewer than two values)."""
    std = float(np.std(values, ddof=1)) if len(values) >= 2 else None
    return (float(np.mean(values)) if values else None), std


def _value(run: Run, key: str, section: str = "values") -> float | None:
    """A number from the run's metrics.json ``section``; None when missing."""
    v = ((run.evaluation or {}).get(section) or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def final_value(run: Run, column: str) -> float | None:
    """The last non-empty value of a logged column; None when never logged."""
    values = (y := run.curves.get(column, np.empty(0)))[~np.isnan(y)]
    return float(values[-1]) if values.size else None


def summarize(runs: list[Run]) -> list[dict]:
    """One row (keys: COLUMNS) per variant in table order, plus the real-images row."""
    rows = []
    for variant in sorted({r.variant for r in runs}, key=variant_key):
        group = [r for r in runs if r.variant == variant]
        row = dict.fromkeys(COLUMNS)
        row.update(variant=variant, runs=len(group), paper_is=PAPER_TABLE1.get(variant),
                   seeds=";".join("?" if r.seed is None else str(r.seed) for r in group))
        for prefix, (key, with_std) in STATS.items():
            mean, std = mean_std([v for r in group if (v := _value(r, key)) is not None])
            row.update({f"{prefix}_mean": mean, **({f"{prefix}_std": std} if with_std else {})})
        row["final_M_mean"], row["final_M_std"] = mean_std([v for r in group if (v := final_value(r, "train/M")) is not None])
        rows.append(row)
    reference = [v for r in runs if (v := _value(r, "is_mean", "reference_values")) is not None]
    if reference:
        is_mean, is_std = mean_std(reference)
        rows.append({**dict.fromkeys(COLUMNS), "variant": REAL, "runs": len(reference), "is_mean": is_mean,
                     "is_std": is_std, "paper_is": PAPER_TABLE1[REAL]})
    return rows


def _cell(v) -> str:
    """CSV cell: floats with 6 significant digits, None empty."""
    return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)


def write_table_csv(header: list[str], rows: list[list], path: Path) -> Path:
    """A CSV file of ``header`` and ``rows`` (cells through ``_cell``), written atomically."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header] + [[_cell(v) for v in row] for row in rows])
    return write_atomic(path, lambda tmp: tmp.write_text(buf.getvalue()))


def write_csv(rows: list[dict], path: Path) -> Path:
    """``table1.csv``: one row per variant, columns COLUMNS."""
    return write_table_csv(COLUMNS, [[row[c] for c in COLUMNS] for row in rows], path)


def _pm(mean: float | None, std: float | None, digits: int) -> str:
    """``mean ± std``, just the mean without a std, ``—`` without a mean."""
    return "—" if mean is None else f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


def markdown_table(rows: list[dict]) -> str:
    """The GitHub Markdown table of the summary rows."""
    lines = ["| Variant | Runs | IS (ours) | IS (paper) | FID | KID | rFID | KL nats | active units | PSNR (mean image) "
             "| SSIM | final M |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        floor = "" if r["psnr_mean_image_mean"] is None else f" ({r['psnr_mean_image_mean']:.2f})"
        cells = [DISPLAY.get(r["variant"], r["variant"]), str(r["runs"]), _pm(r["is_mean"], r["is_std"], 2),
                 _pm(r["paper_is"], None, 2), _pm(r["fid_mean"], r["fid_std"], 2), _pm(r["kid_mean"], r["kid_std"], 4),
                 _pm(r["rfid_mean"], r["rfid_std"], 2), _pm(r["kl_nats_mean"], r["kl_nats_std"], 1),
                 _pm(r["active_units_mean"], None, 1), _pm(r["psnr_mean"], r["psnr_std"], 2) + floor,
                 _pm(r["ssim_mean"], None, 3), _pm(r["final_M_mean"], r["final_M_std"], 4)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def protocol_lines(runs: list[Run]) -> list[str]:
    """The ``## Protocol`` section: the shared protocol, or a warning and each distinct protocol."""
    groups: dict[str, list[Run]] = {}
    for run in (r for r in runs if r.evaluation is not None):  # without a protocol_key, the protocol itself is the key
        key = run.evaluation.get("protocol_key") or json.dumps(run.evaluation.get("protocol") or {}, sort_keys=True)
        groups.setdefault(str(key), []).append(run)
    lines = ["## Protocol", "", *([] if groups else ["No run has been evaluated yet.", ""]), *([DIFFERENT, ""] if len(groups) > 1 else [])]
    for key, group in groups.items():
        if len(groups) > 1:
            lines += [f"### Protocol `{key}`", "", "Runs: " + ", ".join(f"`{r.rel}`" for r in group), ""]
        protocol = group[0].evaluation.get("protocol") or {}
        lines += [f"- {k}: {v}" for k, v in protocol.items()] + ([f"- protocol_key: {key}"] if len(groups) == 1 else []) + [""]
    return lines


def run_line(run: Run) -> str:
    """One ``## Runs`` bullet."""
    head = f"- `{run.rel}`: {run.variant}, seed {run.seed}"
    if run.evaluation is None:
        return f"{head}, not evaluated"
    values = ", ".join(f"{k}={_cell(v)}" for k, v in (run.evaluation.get("values") or {}).items())
    return f"{head}, iteration {run.evaluation.get('iteration')}: {values}"


def dataset_name(runs: list[Run]) -> str | None:
    """The runs' ``data.name`` (display form), joined with ", " when they differ."""
    names = dict.fromkeys(str(n) for r in runs if (n := (r.config.get("data") or {}).get("name")) is not None)
    return ", ".join(DATASETS.get(n, n) for n in names) or None


def write_markdown(runs: list[Run], rows: list[dict], path: Path) -> Path:
    """``table1.md``: title, table, note, protocol and runs."""
    title = f"# Table 1: Inception Score{f' on {name}' if (name := dataset_name(runs)) else ''} (and FID, KID)"
    lines = [title, "", markdown_table(rows), "", NOTE, "", *protocol_lines(runs), "## Runs", "", *map(run_line, runs)]
    text = "\n".join(lines) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def plot_curves(runs: list[Run], path: Path) -> Path:
    """``curves.png``: k_t and M against iteration, one line per run, one colour per variant."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {v: plt.get_cmap("tab10")(i % 10) for i, v in enumerate(sorted({r.variant for r in runs}, key=variant_key))}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    plotted = False
    for ax, (column, name) in zip(axes, [("train/k", "k_t"), ("train/M", "M")]):
        for run in runs:
            y = run.curves.get(column, np.empty(0))
            if (ok := ~np.isnan(y)).any():
                ax.plot(run.curves["step"][ok], y[ok], color=colours[run.variant], label=f"{run.variant} s{run.seed}",
                        lw=1, marker="." if ok.sum() == 1 else None)
                plotted = True
        ax.set(xlabel="iteration", ylabel=name, title=name)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if not plotted:
        fig.text(0.5, 0.5, "no k/M logged", ha="center", va="center", fontsize=14)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m vaegan.report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="Hydra multirun directory (job subdirectories 0/, 1/, ...)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <dir>)")
    parser.add_argument("--window", type=int, default=50, help="equilibrium: moving average of e_t over this many "
                        "iterations (default 50; 1 = none)")
    parser.add_argument("--band", type=float, default=None, help="equilibrium: absolute settling band on e_t "
                        "(default: 10%% of each run's |e0|)")
    parser.add_argument("--tail", type=float, default=0.2, help="equilibrium: fraction of the iterations that is "
                        "the steady state (default 0.2)")
    root = (args := parser.parse_args(argv)).dir
    if args.window < 1 or not 0 < args.tail <= 1 or (args.band is not None and not args.band >= 0):
        parser.error("--window must be >= 1, --tail in (0, 1] and --band >= 0")
    if not root.is_dir():
        print(f"error: {root} does not exist or is not a directory (expected a Hydra multirun directory)", file=sys.stderr)
        return 2
    if not (runs := find_runs(root)):
        print(f"error: no runs found under {root} (expected Hydra job directories holding config.yaml and "
              "metrics.csv or metrics.json)", file=sys.stderr)
        return 2
    (out := args.out or root).mkdir(parents=True, exist_ok=True)
    rows = summarize(runs)
    paths = [write_csv(rows, out / "table1.csv"), write_markdown(runs, rows, out / "table1.md"),
             plot_curves(runs, out / "curves.png")]
    from vaegan.sweep_report import write_equilibrium  # here: it imports this module

    equilibrium = write_equilibrium(runs, out, window=args.window, band=args.band, tail=args.tail)
    print(markdown_table(rows))
    if equilibrium is not None:
        paths += equilibrium[0]
        print("\n" + equilibrium[1])
    print("\n".join(f"wrote {p}" for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
