"""The runs of a multirun directory: their configs, evaluations and logged curves (no torch)."""

from __future__ import annotations

import csv
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

VARIANT_ORDER = ["began", "began_pid", "began_pid_lsm", "vaegan"]


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


def value(run: Run, key: str, section: str = "values") -> float | None:
    """A number from the run's metrics.json ``section``; None when missing."""
    v = ((run.evaluation or {}).get(section) or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def final_value(run: Run, column: str) -> float | None:
    """The last non-empty value of a logged column; None when never logged."""
    values = (y := run.curves.get(column, np.empty(0)))[~np.isnan(y)]
    return float(values[-1]) if values.size else None

