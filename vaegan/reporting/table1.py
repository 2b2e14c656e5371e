"""Table 1 from a multirun: IS/FID/KID per variant over seeds, with the k_t and M curves.

Each variant's ``metrics.json`` (from ``python -m vaegan.evaluate``) is averaged over seeds into
``table1.csv``, ``table1.md`` and ``curves.png``; no torch. ``python -m vaegan.report`` writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vaegan.training import logged
from vaegan.reporting.runs import Run, final_value, mean_std, value, variant_key
from vaegan.reporting.tables import cell, pm
from vaegan.utils.files import write_atomic

# Inception Scores of Table 1 of Khan et al. 2018 (CIFAR-10); began_pid and vae are not in it.
PAPER_TABLE1 = {"began": 5.62, "began_pid_lsm": 6.12, "vaegan": 6.80, "real images": 11.24}
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


def summarize(runs: list[Run]) -> list[dict]:
    """One row (keys: COLUMNS) per variant in table order, plus the real-images row."""
    rows = []
    for variant in sorted({r.variant for r in runs}, key=variant_key):
        group = [r for r in runs if r.variant == variant]
        row = dict.fromkeys(COLUMNS)
        row.update(variant=variant, runs=len(group), paper_is=PAPER_TABLE1.get(variant),
                   seeds=";".join("?" if r.seed is None else str(r.seed) for r in group))
        for prefix, (key, with_std) in STATS.items():
            mean, std = mean_std([v for r in group if (v := value(r, key)) is not None])
            row.update({f"{prefix}_mean": mean, **({f"{prefix}_std": std} if with_std else {})})
        row["final_M_mean"], row["final_M_std"] = mean_std([v for r in group if (v := final_value(r, logged.M)) is not None])
        rows.append(row)
    reference = [v for r in runs if (v := value(r, "is_mean", "reference_values")) is not None]
    if reference:
        is_mean, is_std = mean_std(reference)
        rows.append({**dict.fromkeys(COLUMNS), "variant": REAL, "runs": len(reference), "is_mean": is_mean,
                     "is_std": is_std, "paper_is": PAPER_TABLE1[REAL]})
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The GitHub Markdown table of the summary rows."""
    lines = ["| Variant | Runs | IS (ours) | IS (paper) | FID | KID | rFID | KL nats | active units | PSNR (mean image) "
             "| SSIM | final M |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        floor = "" if r["psnr_mean_image_mean"] is None else f" ({r['psnr_mean_image_mean']:.2f})"
        cells = [DISPLAY.get(r["variant"], r["variant"]), str(r["runs"]), pm(r["is_mean"], r["is_std"], 2),
                 pm(r["paper_is"], None, 2), pm(r["fid_mean"], r["fid_std"], 2), pm(r["kid_mean"], r["kid_std"], 4),
                 pm(r["rfid_mean"], r["rfid_std"], 2), pm(r["kl_nats_mean"], r["kl_nats_std"], 1),
                 pm(r["active_units_mean"], None, 1), pm(r["psnr_mean"], r["psnr_std"], 2) + floor,
                 pm(r["ssim_mean"], None, 3), pm(r["final_M_mean"], r["final_M_std"], 4)]
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
    values = ", ".join(f"{k}={cell(v)}" for k, v in (run.evaluation.get("values") or {}).items())
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
    for ax, (column, name) in zip(axes, [(logged.K, "k_t"), (logged.M, "M")]):
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

