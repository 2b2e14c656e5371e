"""One source of truth for every default (the rule at the top of vaegan/config/schema.py):

(a) the group yaml files under conf/ never restate a schema default;
(b) the code that receives config values gives their parameters no literal defaults: each default
    is the schema's (``ControllerConfig.ki``, a constant of vaegan.config.schema), or absent;
(c) the composed default config is the schema's, except for the documented keys the default yaml
    files set.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from vaegan.config import register_configs, schema
from vaegan.config.schema import (
    CSVLoggerConfig, LoggerConfig, PerformanceConfig, TensorBoardLoggerConfig, TrainConfig, WandbLoggerConfig,
)

CONF = Path(__file__).resolve().parents[2] / "conf"

# ------------------------------------------------------------------------ (a) yaml restating defaults
# The group files that must not restate a schema default, with the config node each is merged into
# (its group, or its "# @package"). Not here: conf/controller/*.yaml (applied over a model variant,
# e.g. controller=pid restores the paper's kp = kd after model=began set them to 0), conf/experiment/
# and conf/hparams_search/ (an experiment pins the published setting over any variant chosen with it).
CHECKED_GROUPS = ("model", "data", "trainer", "logger", "callbacks", "metrics", "paths")


def checked_files() -> list[tuple[Path, str]]:
    files = [(CONF / "train.yaml", "")]
    for group in CHECKED_GROUPS:
        files += [(path, group) for path in sorted((CONF / group).glob("*.yaml"))]
    return files


def schema_defaults() -> dict[str, Any]:
    """Every schema default as a nested dict, with the optional loggers filled in with theirs."""
    defaults = OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=False)
    defaults["logger"] = dataclasses.asdict(LoggerConfig(csv=CSVLoggerConfig(), tensorboard=TensorBoardLoggerConfig(),
                                                         wandb=WandbLoggerConfig()))
    return defaults


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of every leaf (a list is one leaf; an empty mapping has none)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(leaves(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: node}


def same(a: Any, b: Any) -> bool:
    """Equal as config values: 20 == 20.0, but not True == 1."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def package_of(path: Path, group: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("# @package"):
            package = line.split()[-1]
            return "" if package == "_global_" else package
    return group


@pytest.mark.parametrize("path, group", checked_files(), ids=lambda v: str(v.relative_to(CONF)) if isinstance(v, Path) else None)
def test_group_yaml_restates_no_schema_default(path, group):
    content = yaml.safe_load(path.read_text()) or {}
    content = {key: value for key, value in content.items() if key not in ("defaults", "hydra")}
    package = package_of(path, group)
    defaults = leaves(schema_defaults())
    restated = []
    for key, value in leaves(content, package).items():
        assert key in defaults, f"{path.relative_to(CONF)}: {key} is not in the schema"
        if same(value, defaults[key]):
            restated.append(f"{key}: {value!r}")
    assert not restated, (f"{path.relative_to(CONF)} restates schema defaults (vaegan/config/schema.py): "
                          f"{', '.join(restated)}; delete them from the yaml")


# ----------------------------------------------------------------- (b) literal defaults in the code
def _targets() -> list[tuple[str, Callable, dict[str, str], set[str]]]:
    """(name, callable, {parameter: "SchemaClass.field" or "CONSTANT"}, parameters that are not config
    values): every parameter with a default must be in one of the two, a mapped one must default to
    exactly that schema reference, an unmapped one to None or be listed as not a config value."""
    from vaegan.data import datamodules as dm
    from vaegan.metrics import extractors, fidelity
    from vaegan.metrics.callback import EvaluationCallback, LatentUseMonitor
    from vaegan.models.controller import PIDController, PIDUpdate
    from vaegan.training import callbacks as cb
    from vaegan.training.guard import DivergenceGuard
    from vaegan.training.lr_decay import LearningRateDecay
    from vaegan.training.tracking import ControllerChart

    def fields(cls: str, *names: str, **renamed: str) -> dict[str, str]:
        return {**{name: f"{cls}.{name}" for name in names}, **{param: f"{cls}.{name}" for param, name in renamed.items()}}

    data = fields("DataConfig", "batch_size", "image_size", "channels", "num_workers", "val_fraction", "flip",
                  "train_split", "split_seed", "worker_timeout")
    metrics = fields("MetricsConfig", "split", "num_samples", "num_reference", "names", "seed", "batch_size",
                     "isc_splits", "kid_subsets", "kid_subset_size", "prc_neighborhood")
    return [
        ("PIDController", PIDController.__init__, fields("ControllerConfig", "ki", "kp", "kd", "smoothing", "k_init"),
         {"k_min", "k_max"}),  # the clamp of Eq. 12, not a setting
        ("PIDUpdate", PIDUpdate.__init__, {}, set()),
        ("DivergenceGuard", DivergenceGuard.__init__, fields("GuardConfig", "max_bad_in_a_row"), set()),
        ("LearningRateDecay", LearningRateDecay.__init__,
         fields("LRDecayConfig", "mode", "factor", "every_n_iterations", "min_lr"), set()),
        ("IterationCheckpoint", cb.IterationCheckpoint.__init__,
         fields("CheckpointConfig", "every_n_iterations", "keep_every_n_iterations"), set()),
        ("PreemptionCheckpoint", cb.PreemptionCheckpoint.__init__, {"signals": "ON_SIGNALS"}, set()),
        ("ImageLogger", cb.ImageLogger.__init__,
         {**fields("ImagesConfig", "every_n_iterations", "num_samples", "num_reconstructions", "num_interpolations",
                   "interpolation_steps"), "seed": "TrainConfig.seed"}, set()),
        ("TrainingStats", cb.TrainingStats.__init__, {}, set()),
        ("IterationProgressBar", cb.IterationProgressBar.__init__, fields("ProgressBarConfig", "refresh_every"), set()),
        ("ControllerChart", ControllerChart.__init__, {}, set()),
        ("EvaluationCallback", EvaluationCallback.__init__, fields("EvaluationConfig", "keep_best"), set()),
        ("LatentUseMonitor", LatentUseMonitor.__init__,
         fields("LatentUseConfig", "num_images", "warn_after", "min_kl_nats", "min_psnr_gain_db", "stop_if_collapsed"),
         set()),
        # device: a torch device (resolve_device of metrics.device); weights, train_precision: the module's
        ("evaluate_generator", fidelity.evaluate_generator, metrics, {"device", "weights", "train_precision"}),
        ("inception_score", fidelity.inception_score, fields("MetricsConfig", "seed", splits="isc_splits"), set()),
        ("kernel_inception_distance", fidelity.kernel_inception_distance,
         fields("MetricsConfig", "seed", subsets="kid_subsets", subset_size="kid_subset_size"), set()),
        ("precision_recall", fidelity.precision_recall, fields("MetricsConfig", neighborhood="prc_neighborhood"), set()),
        ("inception_weights", extractors.inception_weights, fields("MetricsConfig", timeout="download_timeout"), set()),
        ("load_extractor", extractors.load_extractor,
         fields("MetricsConfig", "feature_extractor", "input_mode", inception_weights_path="inception_weights",
                timeout="download_timeout"), {"device"}),
        ("ArrayDataModule", dm.ArrayDataModule.__init__, {**data, "seed": "TrainConfig.seed"}, set()),
        ("CachedDataModule", dm.CachedDataModule.__init__,
         fields("DataConfig", "root", "cache_dir", "cache_workers", "on_bad_image"), set()),
        ("CelebADataModule", dm.CelebADataModule.__init__, fields("DataConfig", "crop", "verify_checksums"), set()),
        ("CIFAR10DataModule", dm.CIFAR10DataModule.__init__, fields("DataConfig", "download", "verify_checksums"), set()),
        ("FolderDataModule", dm.FolderDataModule.__init__, fields("DataConfig", "crop"), set()),
        ("SyntheticDataModule", dm.SyntheticDataModule.__init__, fields("DataConfig", "length"), set()),
    ]


TARGETS = _targets()


def source_defaults(func: Callable) -> dict[str, ast.expr]:
    """{parameter: default expression} as written in the source."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    node = next(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    positional = node.args.posonlyargs + node.args.args
    out = dict(zip([a.arg for a in positional[len(positional) - len(node.args.defaults):]], node.args.defaults))
    out.update({a.arg: d for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None})
    return out


def schema_value(reference: str) -> Any:
    """The schema's default for ``ClassName.field`` (an instance's, so default_factory fields work) or a constant."""
    if "." not in reference:
        return getattr(schema, reference)
    cls, name = reference.split(".")
    return getattr(getattr(schema, cls)(), name)


@pytest.mark.parametrize("name, func, mapping, not_config", TARGETS, ids=[t[0] for t in TARGETS])
def test_defaults_in_code_are_the_schemas(name, func, mapping, not_config):
    written = source_defaults(func)
    signature = inspect.signature(func).parameters
    problems = []
    for param, reference in mapping.items():
        if param not in signature:
            problems.append(f"{param}: no such parameter (expected one defaulting to {reference})")
            continue
        if param not in written:
            continue  # no default: the caller passes it
        if ast.unparse(written[param]) != reference:
            problems.append(f"{param}={ast.unparse(written[param])}: write {param}={reference}")
        default = signature[param].default
        expected = schema_value(reference)
        if not (same(default, expected) or (isinstance(expected, list) and list(default) == expected)):
            problems.append(f"{param}: {default!r} is not the schema's {expected!r}")
    for param, expr in written.items():
        if param in mapping or param in not_config:
            continue
        if not (isinstance(expr, ast.Constant) and expr.value is None):
            problems.append(f"{param}={ast.unparse(expr)}: a literal default; use the schema's "
                            "(vaegan/config/schema.py) and add it to this test's table")
    assert not problems, f"{name}: " + "; ".join(problems)


def test_performance_options_are_the_schemas():
    """``Performance`` is ``PerformanceConfig`` with its methods: no fields or defaults of its own."""
    from vaegan.training.performance import Performance

    assert issubclass(Performance, PerformanceConfig)
    assert "__annotations__" not in vars(Performance) or not vars(Performance)["__annotations__"]
    assert [f.name for f in dataclasses.fields(Performance)] == [f.name for f in dataclasses.fields(PerformanceConfig)]
    assert dataclasses.asdict(Performance()) == dataclasses.asdict(PerformanceConfig())


# ------------------------------------------------------- (c) the composed default config is the schema's
# What the default yaml files set on top of the schema (train.yaml's defaults list), and why:
SET_BY_DEFAULT_YAML = {
    "data.batch_size": "conf/data/digits.yaml: 32 for the default data set (the schema's 16 is the paper's)",
    "data.channels": "conf/data/digits.yaml: 1, grey digits (the schema's 3: colour images)",
    "logger.csv": "conf/logger/default.yaml turns on the csv logger (schema: null = off)",
    "logger.tensorboard": "conf/logger/default.yaml turns on the tensorboard logger (schema: null = off)",
    "paths.output_dir": "conf/paths/default.yaml: Hydra's run directory (schema: ???, required)",
}


def test_composed_default_config_is_the_schemas_but_for_the_documented_keys():
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        composed = OmegaConf.to_container(compose("train"), resolve=False)
    structured = OmegaConf.to_container(OmegaConf.structured(TrainConfig), resolve=False)
    composed_leaves, schema_leaves = leaves(composed), leaves(structured)

    def documented(key: str) -> str | None:
        return next((k for k in SET_BY_DEFAULT_YAML if key == k or key.startswith(k + ".")), None)

    differing = {key for key in set(composed_leaves) | set(schema_leaves)
                 if not same(composed_leaves.get(key, "<absent>"), schema_leaves.get(key, "<absent>"))}
    undocumented = sorted(key for key in differing if documented(key) is None)
    assert not undocumented, ("the default yaml files set keys to values other than the schema's: "
                              + ", ".join(f"{k}: schema {schema_leaves.get(k, '<absent>')!r}, composed "
                                          f"{composed_leaves.get(k, '<absent>')!r}" for k in undocumented)
                              + "; move the value into vaegan/config/schema.py or document it in SET_BY_DEFAULT_YAML")
    assert {documented(key) for key in differing} == set(SET_BY_DEFAULT_YAML), "SET_BY_DEFAULT_YAML lists keys that no longer differ"
