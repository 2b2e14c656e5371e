"""Table 1 in one command: train every variant for several seeds, evaluate each, write the report.

    python experiments/table1.py                     # the paper's setting (GPU): +experiment=table1
    python experiments/table1.py --scale cpu         # under an hour on 2 CPU cores: +experiment=table1_cpu
    python experiments/table1.py --seeds 0,1,2 -- data.root=/data trainer.devices=1
    python experiments/table1.py --evaluate-only multirun/table1/<time>   # re-evaluate and report

Three stages, each printed before it runs (``--dry-run`` prints them only):
1. ``python -m vaegan.run -m +experiment=... model=began,began_pid,began_pid_lsm,vaegan seed=...``
   (a Hydra multirun, one job directory per variant and seed);
2. ``python -m vaegan.evaluate ckpt_path=<job>/checkpoints/last.ckpt`` for every job, with the
   protocol of the experiment's ``metrics`` settings (jobs that already have a metrics.json under
   the same checkpoint are skipped unless ``--force``);
3. ``python -m vaegan.report <multirun dir>``: table1.md, table1.csv and curves.png.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("began", "began_pid", "began_pid_lsm", "vaegan")
EXPERIMENTS = {"paper": "table1", "cpu": "table1_cpu"}


def run(command: list[str], dry_run: bool) -> int:
    """Prints ``command``, runs it (unless ``dry_run``) and returns its exit status."""
    print("$ " + shlex.join(command), flush=True)
    return 0 if dry_run else subprocess.run(command, cwd=ROOT).returncode


def jobs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent.parent for p in sweep_dir.glob("*/checkpoints/last.ckpt"))


def evaluated(job: Path) -> bool:
    try:
        return json.loads((job / "metrics.json").read_text())["checkpoint"] == "checkpoints/last.ckpt"
    except (OSError, ValueError, KeyError):
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=EXPERIMENTS, default="paper")
    parser.add_argument("--seeds", default="0,1", help="comma-separated training seeds (default 0,1)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--sweep-dir", type=Path, help="default multirun/<experiment>/<time>")
    parser.add_argument("--evaluate-only", type=Path, metavar="SWEEP_DIR", help="skip training: evaluate and report")
    parser.add_argument("--force", action="store_true", help="re-evaluate jobs that have a metrics.json")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    parser.add_argument("overrides", nargs="*", help="config overrides for training (after --)")
    args = parser.parse_args(argv)

    experiment = EXPERIMENTS[args.scale]
    python = sys.executable
    sweep = args.evaluate_only or args.sweep_dir or Path("multirun") / experiment / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    sweep = sweep if sweep.is_absolute() else ROOT / sweep
    if args.evaluate_only is None:
        status = run([python, "-m", "vaegan.run", "-m", f"+experiment={experiment}", f"model={args.variants}",
                      f"seed={args.seeds}", f"hydra.sweep.dir={sweep}", *args.overrides], args.dry_run)
        if status:
            sys.exit(f"error: training exited with status {status}; once fixed, finish the jobs that ran with: "
                     f"python experiments/table1.py --evaluate-only {sweep}")
    elif not sweep.is_dir():
        sys.exit(f"error: {sweep} is not a directory (give the multirun directory of an earlier run)")
    failed = []
    for job in jobs(sweep) if not args.dry_run else [sweep / "<job>"]:
        if args.force or args.dry_run or not evaluated(job):
            if run([python, "-m", "vaegan.evaluate", f"ckpt_path={job / 'checkpoints' / 'last.ckpt'}"], args.dry_run):
                failed.append(job.name)
    status = run([python, "-m", "vaegan.report", str(sweep)], args.dry_run)
    if failed:
        print(f"error: evaluating jobs {', '.join(failed)} failed (see above); the report lists them as not evaluated",
              file=sys.stderr)
    return 1 if failed or status else 0


if __name__ == "__main__":
    sys.exit(main())
