"""``python -m vaegan.report <multirun dir> [--out DIR]``: Table 1 and the equilibrium diagnostics of a multirun.

Table 1 (``vaegan.reporting.table1``): each variant's ``metrics.json`` averaged over seeds into
``table1.csv``, ``table1.md`` and ``curves.png``. Runs that logged e_t also get their equilibrium
diagnostics, per run and per configuration, ranked (``vaegan.reporting.sweeps``): ``equilibrium.csv``,
``equilibrium.md`` and ``equilibrium.png``. No torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vaegan.reporting import table1
from vaegan.reporting.runs import find_runs
from vaegan.reporting.sweeps import write_equilibrium
from vaegan.reporting.tables import write_csv


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
    rows = table1.summarize(runs)
    table = [[row[c] for c in table1.COLUMNS] for row in rows]
    paths = [write_csv(table1.COLUMNS, table, out / "table1.csv"), table1.write_markdown(runs, rows, out / "table1.md"),
             table1.plot_curves(runs, out / "curves.png")]
    equilibrium = write_equilibrium(runs, out, window=args.window, band=args.band, tail=args.tail)
    print(table1.markdown_table(rows))
    if equilibrium is not None:
        paths += equilibrium[0]
        print("\n" + equilibrium[1])
    print("\n".join(f"wrote {p}" for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
