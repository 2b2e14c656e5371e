"""``python -m vaegan.explore``'s options: what each command takes, parsed and checked before
anything is loaded."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from typing import Optional

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vaegan.latent import INTERPOLATIONS

COMMON = ("out", "device", "batch_size")
OPTIONS_OF = {
    "sample": ("n", "seed", "temperature", "nrow"),
    "reconstruct": ("n", "seed", "split", "indices"),
    "interpolate": ("pairs", "files", "steps", "mode", "split"),
    "attributes": ("split",),
    "edit": ("attrs", "weights", "source", "n", "indices", "seed", "split", "combine", "vectors", "measure",
             "measure_weight", "measure_n", "classifier_epochs", "classifier_dir"),
}
NEEDS_ENCODER = ("interpolate", "attributes", "edit")
USAGE = f"""usage: python -m vaegan.explore {{{','.join(OPTIONS_OF)}}} ckpt_path=<run dir>/checkpoints/last.ckpt [options] [overrides]

  sample       a grid of n random samples at a seed (temperature scales z ~ N(0, T^2 I), no truncation)
  reconstruct  Fig. 4: generated images and real ones with the discriminator's and the VAE's reconstructions
  interpolate  Fig. 6: pairs=[[i,j],...] of the split, or files=[a.jpg,b.jpg,...]; steps, mode=linear|spherical
  attributes   Sec. 5.5: mean code with minus without, for every attribute (or class) of the split
  edit         Fig. 8: attrs=[Smiling,Eyeglasses] weights=[-2,-1,0,1,2] source=real|random; --measure

Other keys override the run's config.yaml (data.root=..., data.cache_dir=...). README, Latent space."""


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


def parse(argv: list[str]) -> tuple[str, Options, list[str]]:
    """-> the command, its options, and the rest: overrides of the run's config."""
    if not argv or argv[0] not in OPTIONS_OF:
        close = difflib.get_close_matches(argv[0] if argv else "", list(OPTIONS_OF), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ExploreError(f"the first argument must be a command: {', '.join(OPTIONS_OF)}{hint}\n\n{USAGE}")
    command, args = argv[0], ["measure=true" if a == "--measure" else a for a in argv[1:]]
    names = {f.name for f in fields(Options)}
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException as err:
        raise ExploreError(str(err).splitlines()[0]) from None
    given, overrides = {}, []
    for arg, override in zip(args, parsed):
        key = override.key_or_group
        if key not in names:
            overrides.append(arg)
        elif key not in COMMON + OPTIONS_OF[command]:
            raise ExploreError(f"{key}= is not an option of {command}; its options: {', '.join(COMMON + OPTIONS_OF[command])}")
        else:
            given[key] = override.value()
    if command == "sample" and "n" not in given:
        given["n"] = 64
    try:
        options = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Options), given))
    except OmegaConfBaseException as err:
        raise ExploreError(str(err).splitlines()[0]) from None
    check(options)
    return command, options, overrides


def check(o: Options) -> None:
    """Values whose type alone is not enough, checked before anything is loaded."""
    rules = [(o.n >= 1, "n", "must be >= 1"), (o.nrow >= 1, "nrow", "must be >= 1"),
             (o.batch_size >= 1, "batch_size", "must be >= 1"), (o.steps >= 2, "steps", "needs at least 2 (the endpoints)"),
             (o.temperature >= 0, "temperature", "must be >= 0"), (o.mode in INTERPOLATIONS, "mode", "use linear or spherical"),
             (o.source in ("real", "random"), "source", "use real (encoded images of the split) or random (z ~ N(0, I))"),
             (len(o.weights) >= 1, "weights", "needs at least one weight, e.g. weights=[-2,-1,0,1,2]"),
             (o.pairs is None or len(o.pairs) >= 1, "pairs", "needs at least one pair, e.g. pairs=[[0,1]]"),
             (o.files is None or len(o.files) >= 2, "files", "needs at least one pair of images"),
             (o.measure_n >= 1, "measure_n", "must be >= 1"), (o.classifier_epochs >= 1, "classifier_epochs", "must be >= 1")]
    for ok, key, rule in rules:
        if not ok:
            raise ExploreError(f"{key}={getattr(o, key)!r}: {rule}")
    if o.device != "auto":
        try:
            torch.device(o.device)
        except RuntimeError:
            raise ExploreError(f"device={o.device!r}: use auto, cpu, cuda or cuda:N") from None
