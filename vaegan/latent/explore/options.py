"""``python -m vaegan.explore``'s options: what each command takes, parsed and checked before
anything is loaded."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from typing import Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

COMMON = ("out", "device", "batch_size")
OPTIONS_OF = {
    "sample": ("n", "seed", "temperature", "nrow"),
    "reconstruct": ("n", "seed", "split", "indices"),
    "interpolate": ("pairs", "files", "steps", "mode", "split"),
    "attributes": ("split",),
    "edit": ("attrs", "weights", "source", "n", "indices", "seed", "split", "combine", "vectors", "measure",
             "measure_weight", "measure_n", "classifier_epochs", "classifier_dir"),
}
MODES = ("linear", "spherical")  # vaegan.latent.arithmetic.INTERPOLATIONS, named here so that a typo is caught before torch loads
NEEDS_ENCODER = ("interpolate", "attributes", "edit")
USAGE = f"""usage: python -m vaegan.explore {{{','.join(OPTIONS_OF)}}} ckpt_path=<run dir>/checkpoints/last.ckpt [options] [overrides]

  sample       a grid of n random samples at a seed (temperature scales z ~ N(0, T^2 I), no truncation)
  reconstruct  Fig. 4: generated images and real ones with the discriminator's and the VAE's reconstructions
  interpolate  Fig. 6: pairs=[[i,j],...] of the split, or files=[a.jpg,b.jpg,...]; steps, mode=linear|spherical
  attributes   Sec. 5.5: mean code with minus without, for every attribute (or class) of the split
  edit         Fig. 8: attrs=[Smiling,Eyeglasses] weights=[-2,-1,0,1,2] source=real|random; --measure

Other keys override the run's config.yaml (data.root=..., data.cache_dir=...). docs/latent.md."""


class ExploreError(ValueError):
    """Bad input to a command; the message names the problem and the fix."""


@dataclass
class Options:
    out: Optional[str] = None  # output folder; default <run dir>/explore
    device: str = "auto"
    batch_size: int = 256
    n: int = 8  # images (sample: 64 unless given)
    seed: int = 0
    temperature: float = 1.0
    nrow: int = 8
    split: Optional[str] = None  # default: the held-out split (valid, else test); attributes: train
    indices: Optional[list[int]] = None  # images of the split; default the first n
    pairs: Optional[list[list[int]]] = None
    files: Optional[list[str]] = None
    steps: int = 8
    mode: str = "linear"
    attrs: Optional[list[str]] = None
    weights: list[float] = field(default_factory=lambda: [-2.0, -1.0, 0.0, 1.0, 2.0])
    source: str = "real"
    combine: bool = False  # edit: also one grid with the sum of the attrs' vectors
    vectors: Optional[str] = None  # edit: an attributes .npz; default <out>/attributes_train.npz, made if missing
    measure: bool = False
    measure_weight: float = 1.0
    measure_n: int = 500  # at most this many held-out images per attribute
    classifier_epochs: int = 8
    classifier_dir: Optional[str] = None  # default <cache dir>/classifiers


# What each type of option accepts, as the error for a value of another type says it.
EXPECTED = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "Optional[str]": "a string (a path)", "Optional[list[int]]": "a list of image indices, e.g. [0,1,2]",
            "Optional[list[list[int]]]": "a list of index pairs, e.g. [[0,1],[2,3]]",
            "Optional[list[str]]": "a list of names, e.g. [a,b]", "list[float]": "a list of numbers, e.g. [-2,-1,0,1,2]"}
SEED_RANGE = 2**63  # torch.Generator.manual_seed and numpy's default_rng take 0 .. 2^63 - 1


def parse(argv: list[str]) -> tuple[str, Options, list[str]]:
    """-> the command, its options, and the rest: overrides of the run's config."""
    if not argv or argv[0] not in OPTIONS_OF:
        close = difflib.get_close_matches(argv[0] if argv else "", list(OPTIONS_OF), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        given = f"{argv[0]!r} is not a command" if argv else "no command given"
        raise ExploreError(f"{given}{hint}; the first argument must be one of {', '.join(OPTIONS_OF)} "
                           "(python -m vaegan.explore --help)")
    command, args = argv[0], ["measure=true" if a == "--measure" else a for a in argv[1:]]
    names = {f.name for f in fields(Options)}
    parsed = [parse_one(arg) for arg in args]
    given, overrides = {}, []
    for arg, override in zip(args, parsed):
        key = override.key_or_group
        if key not in names:
            overrides.append(arg)
        elif key not in COMMON + OPTIONS_OF[command]:
            raise ExploreError(f"{key}= is not an option of {command}; its options: {', '.join(COMMON + OPTIONS_OF[command])}")
        else:
            given[key] = typed(key, override.value(), arg)
    if command == "sample" and "n" not in given:
        given["n"] = 64
    options = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Options), given))
    check(options)
    return command, options, overrides


def parse_one(arg: str):
    """One ``key=value`` as Hydra reads it, or ExploreError naming the argument it cannot read."""
    try:
        return OverridesParser.create().parse_overrides([arg])[0]
    except HydraException as err:
        raise ExploreError(f"{arg}: cannot read it as key=value ({str(err).splitlines()[0]}); "
                           "write key=value, lists quoted for the shell, e.g. 'pairs=[[0,1],[2,3]]'") from None


def typed(key: str, value, arg: str):
    """``value`` as the option's type, or ExploreError naming the argument and the type it takes."""
    kind = next(f.type for f in fields(Options) if f.name == key)
    try:
        return OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(Options), {key: value}))[key]
    except OmegaConfBaseException:
        raise ExploreError(f"{arg}: {key} takes {EXPECTED.get(kind, kind)}") from None


def check(o: Options) -> None:
    """Values whose type alone is not enough, checked before anything is loaded."""
    finite = lambda *values: all(math.isfinite(v) for v in values)  # noqa: E731
    rules = [(o.n >= 1, "n", "must be >= 1"), (o.nrow >= 1, "nrow", "must be >= 1"),
             (o.batch_size >= 1, "batch_size", "must be >= 1"), (o.steps >= 2, "steps", "needs at least 2 (the endpoints)"),
             (0 <= o.seed < SEED_RANGE, "seed", "must be in [0, 2^63)"),
             (o.temperature >= 0 and finite(o.temperature), "temperature", "must be a finite number >= 0"),
             (o.mode in MODES, "mode", "use linear or spherical"),
             (o.source in ("real", "random"), "source", "use real (encoded images of the split) or random (z ~ N(0, I))"),
             (len(o.weights) >= 1, "weights", "needs at least one weight, e.g. weights=[-2,-1,0,1,2]"),
             (finite(*o.weights), "weights", "must be finite numbers"),
             (finite(o.measure_weight), "measure_weight", "must be a finite number"),
             (o.indices is None or len(o.indices) >= 1, "indices", "needs at least one index, or leave it out (the first n)"),
             (o.attrs is None or len(o.attrs) >= 1, "attrs", "needs at least one attribute, e.g. attrs=[Smiling]"),
             (o.pairs is None or len(o.pairs) >= 1, "pairs", "needs at least one pair, e.g. pairs=[[0,1]]"),
             (o.pairs is None or all(len(p) == 2 for p in o.pairs), "pairs", "each pair is two indices, e.g. pairs=[[0,1],[2,3]]"),
             (o.pairs is None or o.files is None, "pairs", "give pairs= (images of the split) or files=, not both"),
             (o.files is None or len(o.files) >= 2, "files", "needs at least one pair of images"),
             (o.measure_n >= 1, "measure_n", "must be >= 1"), (o.classifier_epochs >= 1, "classifier_epochs", "must be >= 1")]
    for ok, key, rule in rules:
        if not ok:
            raise ExploreError(f"{key}={getattr(o, key)!r}: {rule}")
    if o.device != "auto":
        import torch

        try:
            torch.device(o.device)
        except RuntimeError:
            raise ExploreError(f"device={o.device!r}: use auto, cpu, cuda or cuda:N") from None
