"""The W&B workspace for reading VAE-GAN runs and PID sweeps, as code (wandb-workspaces).

``workspace`` builds it: one section per question a reader asks of a run (is it in equilibrium,
is it converging, which loss moves, does the VAE use its code, how good are the samples, what do
they look like, is the machine busy), then the sweep's parallel coordinates. Every key comes from
``vaegan.training.logged``. ``describe`` reads a saved spec back as sections of panels and their
keys, for the dry run, the README's figure and the tests.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from omegaconf import OmegaConf

from vaegan.training import logged

GAINS = ("model.controller.ki", "model.controller.kp", "model.controller.kd")  # lambda_1..3 of Eq. 12
OBJECTIVES = (logged.M, logged.FID)  # what sweeps minimise (cfg.objective: FID with evaluation on, else M)
SMOOTHING = 0.9  # of M, as BEGAN plots it
LINESERIES = "wandb/lineseries/v0"  # the Vega spec of wandb.plot.line_series (the equilibrium chart)


def line(title: str, *keys: str, smoothing: float | None = None, range_y: tuple | None = None) -> wr.LinePlot:
    """A line plot of ``keys`` against the iteration."""
    extra: dict[str, Any] = {"range_y": range_y} if range_y else {}
    if smoothing:
        extra.update(smoothing_factor=smoothing, smoothing_type="exponential", smoothing_show_original=True)
    return wr.LinePlot(title=title, x=logged.STEP, y=list(keys), **extra)


def equilibrium() -> list:
    """Eqs. 11-12: e_t should settle at 0 while k_t stays inside (0, 1); which PID term moves k."""
    chart = wr.CustomChart.from_table(f"{logged.EQUILIBRIUM_CHART}_table",
                                      chart_fields={"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"},
                                      chart_strings={"title": "e_t, k_t and the target e = 0", "xname": "iteration"})
    chart.chart_name = LINESERIES
    return [line("e_t (Eq. 11), target 0", logged.E), chart, line("k_t (Eq. 12)", logged.K, range_y=(0, 1)),
            line("P, I, D terms (Eq. 12)", *logged.PID_TERMS)]


def convergence() -> list:
    return [line("M, smoothed (Sec. 3.4)", logged.M, smoothing=SMOOTHING)]


def losses() -> list:
    return [line(key.removeprefix("train/"), key) for key in logged.LOSSES]


def latent_use() -> list:
    """Step 8's figures on fixed held-out images: a collapsed posterior has about 0 nats and
    reconstructions no better than the mean image."""
    kl, units, psnr, ssim, floor = (logged.val(name) for name in logged.LATENT_USE)
    return [line("KL per image (nats)", kl), line("active units", units),
            line("PSNR (dB) vs the mean image", psnr, floor), line("reconstruction SSIM", ssim)]


def sample_quality() -> list:
    return [line("FID", logged.FID), line("KID", logged.KID), line("Inception score", logged.IS)]


def pictures() -> list:
    """The image panels with W&B's step slider: the same z and the same real images every time."""
    return [wr.MediaBrowser(title=name, media_keys=[logged.image(name)], mode="gallery", gallery_axis="step")
            for name in logged.PANELS]


def system() -> list:
    return [line("images/s", logged.IMAGES_PER_S), line("iterations/s", logged.ITERATIONS_PER_S),
            line("gradient norms", *(logged.grad_norm(n) for n in logged.NETWORKS)),
            line("skipped iterations", logged.SKIPPED)]


def sweep(varied: Iterable[str]) -> list:
    """Parallel coordinates over what the sweep varied (the PID gains by default) against the
    objectives (the best value each run logged)."""
    keys = list(dict.fromkeys([*varied, *GAINS]))
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(key)) for key in keys]
    columns += [wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric(logged.best(key))) for key in OBJECTIVES]
    return [wr.ParallelCoordinatesPlot(title="what the sweep varied vs the objective", columns=columns)]


def sections(varied: Iterable[str] = ()) -> list[ws.Section]:
    parts = {"Equilibrium": equilibrium(), "Convergence": convergence(), "Losses": losses(), "Latent use": latent_use(),
             "Sample quality": sample_quality(), "Pictures": pictures(), "System": system(), "Sweep": sweep(varied)}
    axis = ws.SectionPanelSettings(x_axis=logged.STEP)
    return [ws.Section(name=name, panels=panels, is_open=True, panel_settings=axis) for name, panels in parts.items()]


def workspace(entity: str, project: str, name: str, group: str | None = None,
              varied: Iterable[str] = ()) -> ws.Workspace:
    """The workspace: runs grouped by sweep (W&B's run group, the sweep directory); with ``group``,
    only that sweep's runs, each its own line."""
    varied = list(dict.fromkeys([*varied, *GAINS]))
    columns = ["run:displayName", *(f"config:{key}" for key in varied), *(f"summary:{logged.best(key)}" for key in OBJECTIVES)]
    runs = (ws.RunsetSettings(filters=ws.And(ws.Metric("Group") == group), pinned_columns=columns) if group else
            ws.RunsetSettings(groupby=[ws.Metric("Group")], pinned_columns=columns))
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections(varied), runset_settings=runs,
                        settings=ws.WorkspaceSettings(x_axis=logged.STEP, max_runs=50))


def view_name(entity: str, project: str, name: str) -> str:
    """The saved view's internal name, the same for the same entity, project and name: saving
    again updates that view."""
    digest = hashlib.sha256(f"{entity}/{project}/{name}".encode()).hexdigest()[:11]
    return f"nw-{digest}-v"


def swept_keys(sweep_dir: Path) -> list[str]:
    """The config keys a local Hydra multirun varied (its ``multirun.yaml``): command-line overrides
    with several values and the sweeper's ``params``; config-group choices (``controller=a,b``) are
    not config values and are left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.load(sweep_dir / "multirun.yaml")
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    candidates = [*OmegaConf.select(cfg, "hydra.overrides.task", default=[]), *(f"{k}={v}" for k, v in params.items())]
    parser, keys = OverridesParser.create(), []
    for override in parser.parse_overrides([str(c) for c in candidates]):
        key = override.key_or_group
        if override.is_sweep_override() and "." in key and not key.startswith("hydra."):
            keys.append(key.lstrip("+~"))
    return list(dict.fromkeys(keys))


# --------------------------------------------------------------------------- reading a spec back
def panel_keys(panel: dict) -> list[str]:
    """What a panel of a saved spec reads, each as ``history:KEY``, ``summary:PATH``,
    ``config:KEY`` or ``table:KEY``."""
    config = panel.get("config", {})
    kind = panel.get("viewType")
    if kind == "Run History Line Plot":
        return [f"history:{key}" for key in config.get("metrics", [])]
    if kind == "Media Browser":
        return [f"history:{key}" for key in config.get("mediaKeys", [])]
    if kind == "Parallel Coordinates Plot":
        out = []
        for column in config.get("columns", []):
            section, _, path = column["accessor"].partition(":")
            if section == "config":  # W&B nests config values: model.value.controller.ki
                head, _, rest = path.partition(".value")
                path = head + rest
            out.append(f"{section}:{path}")
        return out
    if kind == "Vega2":
        fields = config["userQuery"]["queryFields"][0]["fields"]
        return [f"table:{arg['value']}" for f in fields if f["name"] == "summaryTable" for arg in f["args"]]
    return []


def panel_title(panel: dict) -> str:
    config = panel.get("config", {})
    return config.get("chartTitle") or config.get("stringSettings", {}).get("title") or panel.get("viewType", "")


def describe(spec: dict) -> list[dict]:
    """The sections of a saved spec (``compat.workspace_spec``): name and panels, each with its
    type, title and keys (``panel_keys``)."""
    sections_ = spec["spec"]["section"]["panelBankConfig"]["sections"]
    return [{"name": s["name"], "panels": [{"type": p["viewType"], "title": panel_title(p), "keys": panel_keys(p)}
                                           for p in s["panels"]]} for s in sections_]


def run_filter(spec: dict) -> str | None:
    """The run group (sweep) a spec's run set is filtered to, or None."""
    filters = spec["spec"]["section"]["runSets"][0].get("filters", {}).get("filters", [])
    return next((f["value"] for f in filters if f.get("key") == {"section": "run", "name": "group"}), None)


def run_grouping(spec: dict) -> list[str]:
    """What a spec's run set is grouped by (``run.group``: by sweep)."""
    return [f"{g['section']}.{g['name']}" for g in spec["spec"]["section"]["runSets"][0].get("grouping", [])]
