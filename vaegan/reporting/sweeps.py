"""Equilibrium diagnostics of a sweep: per-run and per-configuration tables, ranked, and a figure.

``python -m vaegan.report <multirun dir>`` calls ``write_equilibrium`` after Table 1. The runs that
logged e_t (``vaegan.reporting.equilibrium``) are grouped by configuration: their Hydra overrides
(``.hydra/overrides.yaml``) less ``seed=...`` and less those every such run shares. Configurations are
ranked ascending by mean FID when every one has an FID, else by mean final M. Writes
``equilibrium.csv`` (one row per run), ``equilibrium.md`` and ``equilibrium.png``; no torch.
"""

from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import OmegaConf

from vaegan.training import logged
from vaegan.reporting.equilibrium import Diagnostics, diagnose_curves, error_curve
from vaegan.utils.files import write_atomic
from vaegan.reporting.runs import Run, final_value, mean_std, value
from vaegan.reporting.tables import pm, write_csv

FIELDS = [f.name for f in fields(Diagnostics)]
SUMMARY = [*FIELDS, "final_M", "fid"]  # averaged over the runs of a configuration
RUN_COLUMNS = ["run", "configuration", "variant", "seed", *SUMMARY]
OBJECTIVES = {"fid": "FID", "final_M": "final M"}


@dataclass
class Entry:
    """A run with e logged: its configuration label and diagnostics."""

    run: Run
    configuration: str
    diagnostics: Diagnostics

    def values(self) -> dict[str, float | int | None]:
        """The diagnostics, final M and FID by SUMMARY name (NaN as None)."""
        d = {**asdict(self.diagnostics), "final_M": final_value(self.run, logged.M), "fid": fid_of(self.run)}
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in d.items()}


def overrides_of(run_dir: Path) -> list[str]:
    """The job's command-line overrides from ``.hydra/overrides.yaml``; empty when absent or unreadable."""
    try:
        items = OmegaConf.to_container(OmegaConf.load(Path(run_dir) / ".hydra" / "overrides.yaml"))
    except Exception:  # noqa: BLE001 - a missing or broken file only loses the label
        return []
    return [str(o) for o in items] if isinstance(items, list) else []


def _is_seed(override: str) -> bool:
    """Whether an override sets the seed (``seed=1``, ``+seed=1``, ``++seed=1``)."""
    return override.split("=", 1)[0].lstrip("+~") == "seed"


def common_overrides(runs: list[Run]) -> set[str]:
    """The overrides every run shares."""
    sets = [set(overrides_of(r.path)) for r in runs]
    return set.intersection(*sets) if sets else set()


def configuration(run: Run, common: set[str] | frozenset[str]) -> str:
    """The run's setting: its overrides less the seed and ``common``, sorted; else its variant."""
    return " ".join(sorted(o for o in overrides_of(run.path) if o not in common and not _is_seed(o))) or run.variant


def fid_of(run: Run) -> float | None:
    """FID from metrics.json, else the last logged ``metrics/fid``, else None."""
    return v if (v := value(run, "fid")) is not None else final_value(run, logged.FID)


def collect(runs: list[Run], **kwargs) -> list[Entry]:
    """An Entry per run with e logged (``kwargs`` go to ``diagnose``); runs that fail are warned about."""
    found = []
    for run in runs:
        try:
            if (d := diagnose_curves(run.curves, **kwargs)) is not None:
                found.append((run, d))
        except ValueError as err:
            print(f"warning: no equilibrium diagnostics for {run.rel}: {err}", file=sys.stderr)
    common = common_overrides([r for r, _ in found])
    return [Entry(r, configuration(r, common), d) for r, d in found]


def configuration_rows(entries: list[Entry]) -> list[dict]:
    """Per configuration: runs, seeds, settled ("2/3"), and ``<name>_mean``/``<name>_std`` of SUMMARY
    over its runs (settling_iteration over the runs that settled; std None for one value)."""
    rows = []
    for label in dict.fromkeys(e.configuration for e in entries):
        group = [e.values() for e in entries if e.configuration == label]
        seeds = [e.run.seed for e in entries if e.configuration == label]
        settled = sum(v["settling_iteration"] is not None for v in group)
        row = {"configuration": label, "runs": len(group), "settled": f"{settled}/{len(group)}",
               "seeds": ";".join("?" if s is None else str(s) for s in seeds)}
        for name in SUMMARY:
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std([v[name] for v in group if v[name] is not None])
        rows.append(row)
    return rows


def rank(rows: list[dict]) -> tuple[str, list[dict]]:
    """(objective name, rows sorted ascending by it, each with ``rank``): FID when every configuration
    has one, else final M; configurations without the objective come last."""
    key = "fid" if all(r["fid_mean"] is not None for r in rows) else "final_M"
    ranked = sorted(rows, key=lambda r: (r[f"{key}_mean"] is None, r[f"{key}_mean"] or 0.0, r["configuration"]))
    return OBJECTIVES[key], [{**r, "rank": i} for i, r in enumerate(ranked, 1)]


def _fixed(scale: float, digits: int) -> Callable[[float | None, float | None], str]:
    """``mean ± std`` scaled and with fixed decimals."""
    return lambda m, s: pm(None if m is None else m * scale, None if s is None else s * scale, digits)


def _sig(m: float | None, s: float | None) -> str:
    """``mean ± std`` with 3 (2) significant digits: e is small."""
    return "—" if m is None else f"{m:.3g}" + ("" if s is None else f" ± {s:.2g}")


# (header, SUMMARY name, formatter) of the Markdown tables.
METRICS = [("Settling iteration", "settling_iteration", _fixed(1, 0)), ("Overshoot %", "overshoot", _fixed(100, 1)),
           ("Steady-state \\|e\\|", "steady_state_error", _sig), ("Bias", "bias", _sig),
           ("Oscillations / 1k it", "oscillation", _fixed(1, 2)), ("k at 0 %", "k_at_0", _fixed(100, 1)),
           ("k at 1 %", "k_at_1", _fixed(100, 1)), ("final M", "final_M", _fixed(1, 4)), ("FID", "fid", _fixed(1, 2))]


def _table(head: list[str], body: list[list[str]], left: int) -> str:
    """A GitHub Markdown table, the first ``left`` columns left-aligned, the others right."""
    rule = "|" + "|".join(["---"] * left + ["---:"] * (len(head) - left)) + "|"
    return "\n".join(["| " + " | ".join(head) + " |", rule, *("| " + " | ".join(cells) + " |" for cells in body)])


def _label(text: str) -> str:
    """A table cell that may hold ``|``."""
    return text.replace("|", "\\|")


def ranked_table(rows: list[dict]) -> str:
    """The Markdown table of the ranked configuration rows (mean ± std over runs)."""
    head = ["Rank", "Configuration", "Runs", "Settled", *(h for h, _, _ in METRICS)]
    body = [[str(r["rank"]), _label(r["configuration"]), str(r["runs"]), r["settled"],
             *(fmt(r[f"{n}_mean"], r[f"{n}_std"]) for _, n, fmt in METRICS)] for r in rows]
    return _table(head, body, 2)


def runs_table(entries: list[Entry]) -> str:
    """The Markdown table of the runs (settling iteration ``never`` when it never settled)."""
    head = ["Run", "Configuration", "Seed", *(h for h, _, _ in METRICS)]
    body = []
    for e in entries:
        v = e.values()
        cells = [fmt(v[n], None) if n != "settling_iteration" or v[n] is not None else "never" for _, n, fmt in METRICS]
        body.append([f"`{e.run.rel}`", _label(e.configuration), str(e.run.seed), *cells])
    return _table(head, body, 2)


def definitions(window: int, band: float | None, tail: float) -> str:
    """The paragraph of definitions, with the settings used."""
    width = f"±{band:g} (absolute)" if band is not None else "±10 % of |e0| of each run"
    return (f"e_t is smoothed by a trailing moving average over {window} iteration(s); e0 is the smoothed error once "
            f"that window is full. Settling band: {width}. Settling iteration: the first logged iteration from which "
            "|e_smooth| stays inside the band (mean over the runs that settled; Settled counts them). Overshoot: the "
            "largest excursion of e_smooth past 0, against the sign of e0, as % of |e0|. Steady-state |e| and bias: "
            f"mean |e_smooth| and mean raw e over the last {tail:.0%} of the iterations. Oscillations: sign changes "
            "of e_smooth per 1,000 iterations. k at 0 / 1: % of the logged k_t at the clamp bounds. "
            "Definitions in `vaegan/reporting/equilibrium.py`.")


def write_markdown(entries: list[Entry], ranked: list[dict], objective: str, path: Path, *, window: int,
                   band: float | None, tail: float) -> Path:
    """``equilibrium.md``: title, definitions, ranked configurations, then the runs."""
    lines = ["# Equilibrium diagnostics", "", definitions(window, band, tail),
             "", f"Ranked by {objective} (lower is better); mean ± sample standard deviation over seeds.", "",
             ranked_table(ranked), "", "## Runs", "", runs_table(entries)]
    text = "\n".join(lines) + "\n"
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def plot_equilibrium(entries: list[Entry], window: int, path: Path) -> Path:
    """``equilibrium.png``: e_smooth (target 0, shaded ±median band) over k_t, one colour per configuration."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(e.configuration for e in entries))
    colours = {label: plt.get_cmap("tab10" if len(labels) <= 10 else "tab20")(i % 20) for i, label in enumerate(labels)}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    band = float(np.median([e.diagnostics.band for e in entries]))
    top.axhspan(-band, band, color="0.85", zorder=0)
    top.axhline(0.0, color="black", ls="--", lw=1)
    seen: set[str] = set()
    for e in entries:
        label = "_nolegend_" if e.configuration in seen else e.configuration
        seen.add(e.configuration)
        steps, e_smooth = error_curve(e.run.curves, window)
        top.plot(steps, e_smooth, color=colours[e.configuration], lw=0.8, label=label)
        k = e.run.curves.get(logged.K, np.empty(0))
        if (ok := ~np.isnan(k)).any():
            bottom.plot(e.run.curves["step"][ok], k[ok], color=colours[e.configuration], lw=0.8)
    top.set(ylabel="e_t (smoothed)", title=f"e_t, moving average over {window} iteration(s); dashed: target 0, "
                                           f"shaded: ±band {band:.3g} (median over runs)")
    bottom.set(xlabel="iteration", ylabel="k_t", title="k_t")
    top.legend(fontsize="small")
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def write_equilibrium(runs: list[Run], out: Path, *, window: int = 50, band: float | None = None,
                      tail: float = 0.2) -> tuple[list[Path], str] | None:
    """Writes equilibrium.csv/.md/.png into ``out``; returns (paths, the ranked table with its objective),
    or None when no run logged e."""
    if not (entries := collect(runs, window=window, band=band, tail=tail)):
        return None
    objective, ranked = rank(configuration_rows(entries))
    order = {r["configuration"]: r["rank"] for r in ranked}
    entries.sort(key=lambda e: (order[e.configuration], e.run.seed if e.run.seed is not None else -1, e.run.rel))
    per_run = [[e.run.rel, e.configuration, e.run.variant, e.run.seed, *e.values().values()] for e in entries]
    paths = [write_csv(RUN_COLUMNS, per_run, out / "equilibrium.csv"),
             write_markdown(entries, ranked, objective, out / "equilibrium.md", window=window, band=band, tail=tail),
             plot_equilibrium(entries, window, out / "equilibrium.png")]
    return paths, f"Equilibrium diagnostics, ranked by {objective} (lower is better):\n\n{ranked_table(ranked)}"
