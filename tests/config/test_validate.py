"""Config composition: every experiment composes and validates; bad keys fail naming the key."""

import time

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from tests.conftest import run_cli
from vaegan.config import ConfigError, validate


@pytest.mark.parametrize("experiment", ["quickstart", "cifar10", "celeba64", "celeba128"])
def test_every_experiment_composes_and_validates(compose_cfg, experiment, tmp_path):
    cfg = compose_cfg([f"+experiment={experiment}"], tmp_path)
    validate(cfg)
    assert cfg.run_name == experiment


def test_paper_hyperparameters_in_full_experiments(compose_cfg, tmp_path):
    cfg = compose_cfg(["+experiment=celeba64"], tmp_path)
    m = cfg.model
    assert (m.alpha, m.beta, m.gamma, m.eta) == (0.3, 0.1, 0.1, 0.5)
    assert (m.controller.ki, m.controller.kp, m.controller.kd) == (1e-3, 1e-5, 1e-5)
    assert m.optimizer.lr == 5e-5 and list(m.optimizer.betas) == [0.5, 0.999]
    assert cfg.iterations == 300_000 and cfg.data.image_size == 64 and cfg.model.width == 64


@pytest.mark.parametrize(
    "variant,vae,disc,lsm,kp",
    [("vaegan", True, True, True, 1e-5), ("began", False, True, False, 0.0), ("began_pid", False, True, False, 1e-5),
     ("began_pid_lsm", False, True, True, 1e-5), ("vae", True, False, False, 1e-5)],
)
def test_model_variants(compose_cfg, tmp_path, variant, vae, disc, lsm, kp):
    m = compose_cfg(["+experiment=quickstart", f"model={variant}"], tmp_path).model
    assert (m.name, m.vae, m.discriminator, m.lsm, m.controller.kp) == (variant, vae, disc, lsm, kp)
    assert m.width == 16  # the experiment's overrides still apply on top of the variant


def test_required_overrides_exist(compose_cfg, tmp_path):
    overrides = [
        "iterations=7", "seed=3", "data.batch_size=8", "data.image_size=64", "model.width=12", "model.latent_dim=5",
        "model.controller.ki=0.1", "model.controller.kp=0.2", "model.controller.kd=0.3",
        "trainer.log_every_n_steps=1", "ckpt_path=/some/last.ckpt",
    ]
    cfg = compose_cfg(["+experiment=quickstart", *overrides], tmp_path)
    assert (cfg.iterations, cfg.seed, cfg.data.batch_size, cfg.data.image_size) == (7, 3, 8, 64)
    assert (cfg.model.width, cfg.model.latent_dim, cfg.trainer.log_every_n_steps) == (12, 5, 1)
    assert (cfg.model.controller.ki, cfg.model.controller.kp, cfg.model.controller.kd) == (0.1, 0.2, 0.3)
    assert cfg.ckpt_path == "/some/last.ckpt"


def test_misspelled_key_names_the_key(compose_cfg, tmp_path):
    with pytest.raises(ConfigCompositionException, match=r"model\.widht") as err:
        compose_cfg(["+experiment=quickstart", "model.widht=8"], tmp_path)
    assert "Key 'widht' not in 'ModelConfig'" in str(err.value.__cause__)


def test_wrong_type_names_the_key(compose_cfg, tmp_path):
    with pytest.raises(ConfigCompositionException, match=r"model\.controller\.ki=fast") as err:
        compose_cfg(["+experiment=quickstart", "model.controller.ki=fast"], tmp_path)
    cause = err.value.__cause__
    assert isinstance(cause, ValidationError) and cause.full_key == "model.controller.ki"


@pytest.mark.parametrize("controller,kp,kd,smoothing", [("began", 0.0, 0.0, 1), ("pid", 1e-5, 1e-5, 1),
                                                       ("pid_strong", 0.1, 0.1, 8)])
def test_controller_group_sets_p_and_d_and_keeps_the_experiments_ki(compose_cfg, tmp_path, controller, kp, kd, smoothing):
    cfg = compose_cfg(["+experiment=quickstart", "model=began_pid", f"controller={controller}"], tmp_path)
    c = cfg.model.controller
    assert (c.kp, c.kd, c.smoothing) == (kp, kd, smoothing)
    assert c.ki == 5e-3  # quickstart's integral gain, whichever controller
    assert cfg.model.name == "began_pid"


def test_logger_combinations_compose(compose_cfg, tmp_path):
    cfg = compose_cfg(["+experiment=quickstart", "logger=[csv,tensorboard,wandb]"], tmp_path)
    assert cfg.logger.csv is not None and cfg.logger.tensorboard is not None
    assert cfg.logger.wandb.mode == "auto" and list(cfg.logger.wandb.tags) == ["vaegan", "digits"]
    assert compose_cfg(["+experiment=quickstart"], tmp_path).logger.wandb is None  # off by default
    with pytest.raises(ConfigError, match=r"logger\.wandb\.mode='cloud'"):
        validate(compose_cfg(["+experiment=quickstart", "logger=wandb", "logger.wandb.mode=cloud"], tmp_path))


@pytest.mark.parametrize(
    "override,key",
    [("data.image_size=48", "data.image_size"), ("model.controller.kp=-1", "model.controller.kp"),
     ("iterations=0", "iterations"), ("data.channels=2", "data.channels"), ("model.kl_reduction=max", "model.kl_reduction"),
     ("model.free_nats=-1", "model.free_nats"), ("model.kl_warmup=-5", "model.kl_warmup"),
     ("model.optimizer.lr_decay.mode=cosine", "model.optimizer.lr_decay.mode"),
     ("model.optimizer.lr_decay.factor=2", "model.optimizer.lr_decay.factor"),
     ("callbacks.latent_use.num_images=1", "callbacks.latent_use.num_images")],
)
def test_semantic_errors_name_the_key(compose_cfg, tmp_path, override, key):
    cfg = compose_cfg(["+experiment=quickstart", override], tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_free_bits_need_a_per_image_kl_and_plateau_needs_m(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.free_nats=5\.0: .*use elbo or sum_latent"):
        validate(compose_cfg(["+experiment=quickstart", "model.kl_reduction=mean", "model.free_nats=5"], tmp_path))
    with pytest.raises(ConfigError, match="plateau follows M"):
        validate(compose_cfg(["+experiment=quickstart", "model=vae", "model.optimizer.lr_decay.mode=plateau"], tmp_path))


@pytest.mark.slow
def test_cli_rejects_bad_keys_before_training(tmp_path):
    start = time.monotonic()
    typo = run_cli("+experiment=quickstart", "model.widht=8", f"hydra.run.dir={tmp_path}/a")
    wrong_type = run_cli("+experiment=quickstart", "data.batch_size=many", f"hydra.run.dir={tmp_path}/b")
    bad_value = run_cli("+experiment=quickstart", "data.image_size=48", f"hydra.run.dir={tmp_path}/c")
    assert typo.returncode != 0 and "widht" in typo.stderr
    assert wrong_type.returncode != 0 and "data.batch_size" in wrong_type.stderr
    assert bad_value.returncode != 0 and "Config error: data.image_size=48" in bad_value.stderr
    assert not (tmp_path / "c" / "checkpoints").exists()
    assert time.monotonic() - start < 60


@pytest.mark.parametrize("override,message", [
    ("data.image_size=2048", r"data\.image_size=2048: is above the largest supported size, 512: one batch .* ~\d+ GiB"),
    ("model.optimizer.betas=[0.5,1.0]", r"model\.optimizer\.betas=\[0\.5, 1\.0\]: needs two values in \[0, 1\)"),
    ("seed=-1", r"seed=-1: must lie in \[0, 2\^32\)"),
    ("seed=4294967296", r"seed=4294967296: must lie"),
    ("trainer.devices=3", r"trainer\.devices=3: more than one device .* trainer=ddp_cpu trainer\.devices=3"),
    ("trainer.num_nodes=2", r"trainer\.devices=1: more than one device \(or trainer\.num_nodes > 1\)"),
    ("trainer.devices=0", r"trainer\.devices=0: use a number of devices"),
    ("trainer.devices=many", r"trainer\.devices='many': use a number of devices"),
    ("trainer.accelerator=tpu", r"trainer\.accelerator='tpu': use one of auto, cpu, gpu, cuda, mps"),
    ("+model.widht=8", r"model\.widht: no key 'widht' in model; did you mean model\.width\?"),
    ("+callbacks.images.evry=5", r"callbacks\.images\.evry: no key 'evry' in callbacks\.images"),
])
def test_values_a_library_would_reject_later_fail_at_once(compose_cfg, tmp_path, override, message):
    cfg = compose_cfg(["+experiment=quickstart", override], tmp_path)
    with pytest.raises(ConfigError, match=message) as err:
        validate(cfg)
    assert "\n" not in str(err.value)


def test_devices_that_ddp_runs_are_accepted(compose_cfg, tmp_path):
    for overrides in (["trainer=ddp_cpu", "trainer.devices=3"], ["trainer=ddp", "trainer.devices=[0,1]"],
                      ["trainer=ddp", "trainer.devices=auto"], ["trainer.devices=auto"]):
        validate(compose_cfg(["+experiment=quickstart", *overrides], tmp_path))
