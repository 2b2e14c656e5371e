"""The generator's exponential moving average: when it averages, its arithmetic, and which weights
every output uses."""

from pathlib import Path

import lightning as L
import pytest
import torch

from tests.conftest import TINY
from vaegan.training import train as train_module
from vaegan.config import ConfigError, validate
from vaegan.models.module import VAEGANModule

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = [*TINY, "callbacks.images.every_n_iterations=1000"]
EMA = "generator_ema.module."


class RawGenerator(L.Callback):
    """The trained generator's weights after each iteration (1-based), after its optimizer stepped."""

    def __init__(self):
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[pl_module.iteration] = {k: v.detach().clone() for k, v in pl_module.generator.state_dict().items()}


def train_recording(monkeypatch, cfg) -> tuple[Path, RawGenerator]:
    """Trains ``cfg``; returns last.ckpt and the raw generator weights of every iteration."""
    recorder = RawGenerator()
    build = train_module.build_callbacks
    monkeypatch.setattr(train_module, "build_callbacks", lambda *args, **kwargs: [*build(*args, **kwargs), recorder])
    train_module.train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", recorder


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def codes(latent_dim: int) -> torch.Tensor:
    """The z that ``sample(4, generator=torch.Generator().manual_seed(0))`` draws."""
    return torch.randn(4, latent_dim, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def ema_run(compose_cfg, tmp_path, monkeypatch):
    cfg = compose_cfg([*FAST, "iterations=8", "model.ema.decay=0.9", "model.ema.start=2"], tmp_path)
    return train_recording(monkeypatch, cfg)


def test_ema_averages_the_iterations_after_start_by_hand(ema_run):
    path, raw = ema_run
    state = load(path)["state_dict"]
    assert int(state["generator_ema.n_averaged"]) == 6  # iterations 3..8: those > ema.start (1-based)
    assert sorted(raw.after) == list(range(1, 9))
    # by hand, in float64: the first averaged iteration copies the weights, then ema = 0.9 ema + 0.1 w
    for key in raw.after[8]:
        assert torch.equal(state[f"generator.{key}"], raw.after[8][key])  # the recorder saw the trained weights
        ema = raw.after[3][key].double()
        for t in range(4, 9):
            ema = 0.9 * ema + 0.1 * raw.after[t][key].double()
        assert torch.allclose(state[EMA + key].double(), ema, rtol=0, atol=1e-6), key
        assert not torch.allclose(state[EMA + key], state[f"generator.{key}"], rtol=0, atol=1e-6), key


def test_ema_checkpoint_outputs_use_the_averaged_weights(ema_run):
    path, _ = ema_run
    module, iteration = VAEGANModule.from_checkpoint(path)
    assert iteration == 8
    assert module.output_weights == "ema"
    assert module.output_generator is module.generator_ema.module
    z = codes(module.hparams.latent_dim)
    samples = module.sample(4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(samples, module.generator_ema.module(z))
        assert torch.equal(module.decode(z), samples)
        assert not torch.allclose(samples, module.generator(z), atol=1e-6)


@pytest.mark.parametrize("overrides,has_ema", [
    (["model.ema.decay=0", "iterations=2"], False),  # no EMA at all
    (["model.ema.decay=0.9", "model.ema.start=5", "iterations=3"], True),  # EMA not started yet
], ids=["off", "not-started"])
@pytest.mark.slow
def test_without_an_averaged_ema_outputs_use_the_trained_generator(compose_cfg, tmp_path, monkeypatch, overrides,
                                                                   has_ema):
    path, _ = train_recording(monkeypatch, compose_cfg([*FAST, *overrides], tmp_path))
    state = load(path)["state_dict"]
    assert any(key.startswith("generator_ema.") for key in state) == has_ema
    module, _ = VAEGANModule.from_checkpoint(path)
    assert module.output_weights == "raw"
    assert module.output_generator is module.generator
    z = codes(module.hparams.latent_dim)
    samples = module.sample(4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(samples, module.generator(z))
    if has_ema:
        assert int(state["generator_ema.n_averaged"]) == 0
        with torch.no_grad():  # the idle copy holds the initial weights, which the outputs must not use
            assert not torch.allclose(samples, module.generator_ema.module(z), atol=1e-6)
    else:
        assert module.generator_ema is None


@pytest.mark.parametrize("override", ["model.ema.decay=1.0", "model.ema.decay=-0.1"])
def test_ema_decay_outside_zero_one_fails_validation(compose_cfg, tmp_path, override):
    with pytest.raises(ConfigError, match=r"model\.ema\.decay"):
        validate(compose_cfg([*TINY, override], tmp_path))


def test_negative_ema_start_fails_validation(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"model\.ema\.start"):
        validate(compose_cfg([*TINY, "model.ema.start=-1"], tmp_path))
