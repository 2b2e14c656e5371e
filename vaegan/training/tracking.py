"""Weights & Biases for a training run, set up so that it can never hang.

Mode resolution (``logger.wandb.mode``):

- ``auto`` (default) and ``online``: online only when an API key is configured (``WANDB_API_KEY``,
  ``WANDB_IDENTITY_TOKEN_FILE`` or a ``~/.netrc`` entry for the W&B host), so W&B never asks for
  one at a prompt. Without a key the run is logged offline, with a one-line warning. An online
  start that does not reach the server within ``init_timeout`` seconds falls back to offline, with
  a one-line warning.
- ``offline``: written under ``<run dir>/wandb/``; upload later with ``wandb sync <that dir>``.
- ``disabled``: nothing is written (the logger's calls become no-ops).

``auto`` also follows ``WANDB_MODE=offline|disabled`` when it is set.

The W&B run id is kept in ``<run dir>/wandb_run.json``; a run resumed with ``ckpt_path=`` reads it
from beside the checkpoint's run directory and continues the same W&B run. In a Hydra multirun each
job is its own W&B run (finished at the end of the job), grouped by the sweep directory.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from vaegan import compat
from vaegan.config import ConfigError

from vaegan.config.schema import WANDB_MODES
from vaegan.training import logged
from vaegan.training.credentials import has_credentials
from vaegan.utils.files import write_atomic

log = logging.getLogger(__name__)
RUN_FILE = "wandb_run.json"
MAX_CHART_POINTS = 1000  # per series of the equilibrium chart


def resolve_mode(requested: str) -> tuple[str, str | None]:
    """(mode to start in, warning or None) for ``logger.wandb.mode``; never a mode that prompts."""
    if requested not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode={requested!r}: use one of {', '.join(WANDB_MODES)}")
    if requested == "auto" and os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled"):
        requested = "disabled" if os.environ["WANDB_MODE"] == "disabled" else "offline"  # the user's W&B setting
    if requested in ("offline", "disabled"):
        return requested, None
    if has_credentials():
        return "online", None
    return "offline", ("no API key (set WANDB_API_KEY or run `wandb login`): logging offline; "
                       "upload later with `wandb sync <run dir>/wandb/offline-run-*`")


def previous_run_id(ckpt_path: str | None, out: Path) -> str | None:
    """The W&B id of the run being resumed: ``wandb_run.json`` of the checkpoint's run directory
    (``<run dir>/checkpoints/last.ckpt``), else of the output directory."""
    candidates = ([Path(ckpt_path).resolve().parent.parent] if ckpt_path else []) + [out]
    for run_dir in candidates:
        try:
            return str(json.loads((run_dir / RUN_FILE).read_text())["id"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    if ckpt_path:
        log.warning(f"W&B: no readable {RUN_FILE} beside {ckpt_path}; the resumed run starts a new W&B run")
    return None


def hydra_job() -> dict[str, Any]:
    """In a Hydra multirun: the sweep directory (the W&B group), ``<run_name>#<job number>`` (the
    name) and the job's overrides (added to the uploaded config as ``overrides``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or (hc := HydraConfig.get()).mode != RunMode.MULTIRUN:
        return {}
    return {"group": str(hc.sweep.dir), "name": str(hc.job.num),
            "job_type": "sweep", "overrides": list(hc.overrides.task)}


def init_kwargs(cfg: DictConfig, out: Path, run_id: str | None) -> dict[str, Any]:
    """Arguments of ``wandb.init``: project, entity, group, name, tags and notes from
    ``logger.wandb`` (group and name default to the sweep and the job), the full resolved config."""
    w = cfg.logger.wandb
    job = hydra_job()
    config = OmegaConf.to_container(cfg, resolve=True)
    if "overrides" in job:
        config["overrides"] = job["overrides"]
    name = f"{cfg.run_name}#{job['name']}" if "name" in job else out.name
    return dict(
        project=w.project, entity=w.entity, group=w.group or job.get("group"), name=w.name or name,
        job_type=job.get("job_type", "train"), tags=list(w.tags or []), notes=w.notes, dir=str(out),
        config=config, id=run_id, resume="allow" if run_id else None,
    )


def start_run(cfg: DictConfig, out: Path) -> Any:
    """``wandb.init`` in the resolved mode, falling back to offline when online fails to start;
    records the run id in ``<out>/wandb_run.json``. Returns the W&B run."""
    try:
        import wandb
    except ImportError:
        raise ConfigError("logger=wandb needs the wandb package: pip install 'vaegan[wandb]' (or logger=default)") from None
    w = cfg.logger.wandb
    mode, warning = resolve_mode(w.mode)
    if warning:
        log.warning(f"W&B: {warning}")
    kwargs = init_kwargs(cfg, out, previous_run_id(cfg.ckpt_path, out))
    settings = wandb.Settings(init_timeout=float(w.init_timeout))
    try:
        run = wandb.init(mode=mode, settings=settings, **kwargs)
    except Exception as err:  # noqa: BLE001 - timeouts, refused connections, server errors: all fall back
        if mode != "online":
            raise
        log.warning(f"W&B: could not start online within {w.init_timeout:g} s ({type(err).__name__}: "
                    f"{str(err).splitlines()[0][:160] if str(err) else 'no message'}); logging offline instead")
        run = wandb.init(mode="offline", settings=settings, **kwargs)
    if mode != "disabled":
        record = {"id": run.id, "project": w.project, "entity": w.entity, "group": kwargs["group"],
                  "mode": "offline" if run.offline else "online"}
        write_atomic(out / RUN_FILE, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
    define_summaries(run)
    return run


def define_summaries(run: Any) -> None:
    """Iteration as every chart's x-axis, and the summaries a run table should show (logged.SUMMARIES)."""
    run.define_metric(logged.STEP)  # = the iteration (Lightning's batches), see docs/training.md
    run.define_metric("*", step_metric=logged.STEP, step_sync=True)
    for key, summary in logged.SUMMARIES.items():
        run.define_metric(key, step_metric=logged.STEP, summary=summary)


def log_equilibrium_chart(run: Any, history: list[tuple[int, float, float]]) -> None:
    """One custom chart of e_t, k_t and the target e = 0 against the iteration (W&B's line_series)."""
    import wandb

    if not history:
        return
    stride = -(-len(history) // MAX_CHART_POINTS)  # W&B tables hold 10,000 rows: 3 series of at most 1,000
    history = history[::-1][::stride][::-1]  # every stride-th point, ending at the last iteration
    steps = [h[0] for h in history]
    chart = wandb.plot.line_series(xs=steps, ys=[[h[1] for h in history], [h[2] for h in history], [0.0] * len(steps)],
                                   keys=["e_t", "k_t", "target (e = 0)"], title="Equilibrium: e_t and k_t", xname="iteration")
    run.log({logged.EQUILIBRIUM_CHART: chart})


def wandb_logger(cfg: DictConfig, out: Path):
    """Lightning's WandbLogger around a run started by ``start_run`` (on global rank 0 only; other
    ranks get a logger that never starts a run, as Lightning logs from rank 0)."""
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return WandbLogger(project=cfg.logger.wandb.project, save_dir=str(out))
    return WandbLogger(experiment=start_run(cfg, out), log_model=False)


def finish(loggers: list, failed: bool) -> None:
    """Finishes the W&B run of every WandbLogger, so the next job of a multirun starts its own."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and (run := compat.wandb_run(logger)) is not None:
            run.finish(exit_code=1 if failed else 0)



class ControllerChart(L.Callback):
    """Collects the controller's (iteration, e_t, k_t) at every logged iteration; when training ends, draws them on one
    W&B chart with the target e = 0 (``log_equilibrium_chart``)."""

    def __init__(self, every_n_iterations: int):
        self.every = every_n_iterations
        self.history: list[tuple[int, float, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        metrics = trainer.callback_metrics
        if pl_module.iteration % self.every == 0 and logged.E in metrics and logged.K in metrics:
            self.history.append((pl_module.iteration, float(metrics[logged.E]), float(metrics[logged.K])))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                log_equilibrium_chart(logger.experiment, self.history)
