"""The LightningModule: gradient isolation of the three objectives, variants, public API."""

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vaegan.models.module import VAEGANModule, adam
from vaegan.training.performance import Performance

HP = dict(image_size=16, channels=1, width=4, latent_dim=8, alpha=0.3, beta=0.1, gamma=0.1, lr=1e-3, seed=3)


def one_iteration_through_lightning(module, x):
    """Runs one real iteration with Lightning; returns each optimizer's gradients at its step."""
    grads = {}

    class Capture(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            params = optimizer.param_groups[0]["params"]
            name = next(n for n, net in pl_module.networks.items() if next(net.parameters()) is params[0])
            grads[name] = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    trainer = L.Trainer(
        accelerator="cpu", max_steps=len(module.networks), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Capture()],
    )
    trainer.fit(module, DataLoader(TensorDataset(x), batch_size=len(x)))
    return grads


def reference_gradients(net, x, k):
    """Gradients of Eqs. 13-15 computed naively: one objective at a time, the discriminator's on
    explicitly detached generator outputs."""
    noise = net.draw_noise(len(x), iteration=0)
    E, G, D = net.encoder, net.generator, net.discriminator
    a, b, c = HP["alpha"], HP["beta"], HP["gamma"]
    mu, logvar = E(x)
    x_v = G(mu + noise["eps"] * (0.5 * logvar).exp())
    x_g = G(noise["z_g"])
    z_d, x_d = D(x)
    z_v, x_v_rec = D(x_v)
    _, x_g_rec = D(x_g)
    L_s, L_e = (z_d - z_v).abs().mean(), (x - x_v).abs().mean()
    if net.hparams.lsm_normalize:  # each image's error over its own code scale
        L_s = ((z_d - z_v).abs().mean(1) / z_d.detach().abs().mean(1)).mean()
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp())
    # L_n under the module's convention (elbo: KL per image over the pixel count D), times the warm-up weight
    L_n = kl.mean() if net.hparams.kl_reduction == "mean" else kl.sum(1).mean() / x[0].numel()
    L_n = min(1.0, 1 / net.hparams.kl_warmup) * L_n if net.hparams.kl_warmup else L_n
    L_gen = (x_g - x_g_rec).abs().mean() + a * (x_v - x_v_rec).abs().mean() + b * L_s + c * L_e
    L_enc = L_n + b * L_s + c * L_e
    xv, xg = x_v.detach(), x_g.detach()
    L_dis = (x - x_d).abs().mean() - k * ((xg - D(xg)[1]).abs().mean() + a * (xv - D(xv)[1]).abs().mean())
    params = {name: list(m.parameters()) for name, m in net.networks.items()}
    return {
        "encoder": torch.autograd.grad(L_enc, params["encoder"], retain_graph=True),
        "generator": torch.autograd.grad(L_gen, params["generator"], retain_graph=True),
        "discriminator": torch.autograd.grad(L_dis, params["discriminator"], retain_graph=True),
        "discriminator_if_leaking": torch.autograd.grad(L_dis + L_gen, params["discriminator"]),
    }


@pytest.mark.parametrize("convention", [{}, {"kl_reduction": "mean", "lsm_normalize": False}, {"kl_warmup": 4}],
                         ids=["default", "earlier", "warmup"])
@pytest.mark.parametrize("shared_backward,rtol,atol", [
    (False, 1e-5, 1e-7),  # one backward pass per objective
    # grad_D L_dis = grad_D L_d - k grad_D A formed from two passes: where the two nearly cancel,
    # the rounding of each shows (measured: 2e-5 relative on one of ~50k elements)
    (True, 1e-4, 1e-5),
], ids=["per_objective", "shared_backward"])
def test_each_optimizer_steps_only_on_its_own_objective(shared_backward, rtol, atol, convention):
    torch.manual_seed(0)
    module = VAEGANModule(**HP, **convention)
    module.performance = Performance(channels_last=False, shared_backward=shared_backward)
    module.k = 0.37  # k_{t-1} != 0, so L_dis's fake terms matter
    before = copy.deepcopy(module)
    x = torch.rand(6, 1, 16, 16) * 2 - 1
    grads = one_iteration_through_lightning(module, x)
    expected = reference_gradients(copy.deepcopy(before), x, k=0.37)

    # the reference would notice the classic bug: generator loss leaking into the discriminator
    leak = expected["discriminator_if_leaking"]
    assert any(not torch.allclose(g, r, atol=1e-5) for g, r in zip(leak, expected["discriminator"]))

    for name in ("encoder", "generator", "discriminator"):
        assert len(grads[name]) == len(expected[name])
        for got, want in zip(grads[name], expected[name]):
            torch.testing.assert_close(got, want, rtol=rtol, atol=atol)

    # and each network moved by one Adam step on exactly those gradients
    for name, net in before.networks.items():
        opt = torch.optim.Adam(net.parameters(), lr=HP["lr"], betas=(0.5, 0.999))
        for p, g in zip(net.parameters(), expected[name]):
            p.grad = g
        opt.step()
        for p_ref, p_got in zip(net.parameters(), module.networks[name].parameters()):
            torch.testing.assert_close(p_got, p_ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "variant,flags,networks,terms",
    [
        ("vaegan", dict(vae=True, discriminator=True, lsm=True), ["encoder", "generator", "discriminator"],
         {"L_e", "L_n", "L_d", "L_g", "L_v", "L_s"}),
        ("began", dict(vae=False, discriminator=True, lsm=False), ["generator", "discriminator"], {"L_d", "L_g"}),
        ("began_pid_lsm", dict(vae=False, discriminator=True, lsm=True), ["generator", "discriminator"],
         {"L_d", "L_g", "L_s"}),
        ("vae", dict(vae=True, discriminator=False, lsm=False), ["encoder", "generator"], {"L_e", "L_n"}),
    ],
)
def test_variants_share_one_code_path(variant, flags, networks, terms):
    module = VAEGANModule(**{**HP, **flags}, variant=variant)
    assert list(module.networks) == networks
    assert len(module.configure_optimizers()) == len(networks)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    got = module.compute_losses(x, module.draw_noise(4, 0))
    assert set(got) == terms
    assert set(module.objectives(got)) == set(networks)


def test_began_lsm_uses_the_feature_matching_form():
    module = VAEGANModule(**{**HP, "vae": False, "lsm": True})
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    noise = module.draw_noise(4, 0)
    z_d, _ = module.discriminator(x)
    z_g, _ = module.discriminator(module.generator(noise["z_g"]))
    expected = (z_d.mean(0) - z_g.mean(0)).abs().mean()
    torch.testing.assert_close(module.compute_losses(x, noise)["L_s"], expected)


def test_vae_objectives_are_the_elbo_terms():
    module = VAEGANModule(**{**HP, "discriminator": False, "lsm": False, "gamma": 1.0})
    terms = {"L_e": torch.tensor(0.25), "L_n": torch.tensor(0.5)}
    objectives = module.objectives(terms)
    assert objectives["encoder"].item() == pytest.approx(0.75)
    assert objectives["generator"].item() == pytest.approx(0.25)


def test_noise_depends_on_seed_and_iteration_only():
    a, b = VAEGANModule(**HP), VAEGANModule(**HP)
    torch.testing.assert_close(a.draw_noise(4, 7)["z_g"], b.draw_noise(4, 7)["z_g"])
    assert not torch.equal(a.draw_noise(4, 7)["z_g"], a.draw_noise(4, 8)["z_g"])
    assert not torch.equal(a.draw_noise(4, 7)["eps"], a.draw_noise(4, 7)["z_g"])


def test_public_api_shapes_and_missing_networks():
    module = VAEGANModule(**HP)
    x = torch.rand(3, 1, 16, 16)
    mu, logvar = module.encode(x)
    assert mu.shape == logvar.shape == (3, 8)
    assert module.decode(mu).shape == x.shape
    z, x_rec = module.discriminate(x)
    assert z.shape == (3, 8) and x_rec.shape == x.shape
    assert module.sample(5).shape == (5, 1, 16, 16)
    began = VAEGANModule(**{**HP, "vae": False, "lsm": False}, variant="began")
    with pytest.raises(RuntimeError, match="'began' model has no encoder"):
        began.encode(x)
    with pytest.raises(RuntimeError, match="no discriminator"):
        VAEGANModule(**{**HP, "discriminator": False}).discriminate(x)
    with pytest.raises(ValueError, match="needs a VAE encoder, a discriminator"):
        VAEGANModule(**{**HP, "vae": False, "discriminator": False})


def test_kl_reduction_is_configurable():
    x = torch.rand(4, 1, 16, 16)
    m_mean = VAEGANModule(**HP, kl_reduction="mean")
    m_sum = VAEGANModule(**HP, kl_reduction="sum_latent")
    m_elbo = VAEGANModule(**HP)
    assert m_elbo.hparams.kl_reduction == "elbo"  # the default
    m_sum.load_state_dict(m_mean.state_dict())
    m_elbo.load_state_dict(m_mean.state_dict())
    noise = m_mean.draw_noise(4, 0)
    L_mean = m_mean.compute_losses(x, noise)["L_n"]
    L_sum = m_sum.compute_losses(x, noise)["L_n"]
    L_elbo = m_elbo.compute_losses(x, noise)["L_n"]
    torch.testing.assert_close(L_sum, L_mean * HP["latent_dim"])
    torch.testing.assert_close(L_elbo, L_sum / (1 * 16 * 16))  # D = C*H*W pixel values


def test_logvar_init_starts_every_image_at_that_sigma():
    x = torch.rand(5, 1, 16, 16) * 2 - 1
    _, logvar = VAEGANModule(**HP, logvar_init=-6.0).encode(x)
    assert torch.equal(logvar, torch.full_like(logvar, -6.0))
    _, logvar = VAEGANModule(**HP).encode(x)  # PyTorch's init: sigma near 1, varying
    assert logvar.abs().max() < 1 and logvar.std() > 0


def test_old_checkpoints_keep_their_convention(tmp_path):
    """A checkpoint written before the elbo default names kl_reduction=mean in its hyper-parameters."""
    module = VAEGANModule(**HP, kl_reduction="mean")
    path = tmp_path / "old.ckpt"
    hparams = {k: v for k, v in module.hparams.items()
               if k not in ("free_nats", "kl_warmup", "logvar_init", "lsm_normalize", "lr_decay")}
    torch.save({"hyper_parameters": hparams, "state_dict": module.state_dict(), "global_step": 0}, path)
    loaded, _ = VAEGANModule.from_checkpoint(path)
    assert loaded.hparams.kl_reduction == "mean" and loaded.hparams.kl_warmup == 0
    assert loaded.hparams.lsm_normalize is False  # Eq. 9 as printed, as before the option existed
    assert loaded.lr_decay.mode is None


def test_adam_is_fused_only_where_the_device_has_the_kernel():
    """Where it has none (here: meta) Adam falls back to its loop, and steps."""
    on_cpu = adam([torch.nn.Parameter(torch.zeros(3))], lr=1e-3)
    on_meta = adam([torch.nn.Parameter(torch.zeros(3, device="meta"))], lr=1e-3)
    assert on_cpu.defaults["fused"] and not on_meta.defaults["fused"]
    for param in on_meta.param_groups[0]["params"]:
        param.grad = torch.ones_like(param)
    on_meta.step()


# ------------------------------------------------------------------ one source of truth for the model
def test_the_model_takes_every_default_from_the_schema():
    """VAEGANModule() is ModelConfig's model: each flat hyper-parameter is a schema leaf (or the data
    shape and seed, from DataConfig and TrainConfig), with the schema's value."""
    from omegaconf import OmegaConf

    from vaegan.config.schema import DataConfig, ModelConfig, TrainConfig
    from vaegan.models.module import flat_hyper_parameters

    schema = OmegaConf.to_container(OmegaConf.structured(ModelConfig))
    hp = dict(VAEGANModule().hparams)
    assert hp.pop("image_size") == DataConfig.image_size and hp.pop("channels") == DataConfig.channels
    assert hp.pop("seed") == TrainConfig.seed
    assert hp == flat_hyper_parameters(None)
    assert hp["variant"] == schema["name"] and hp["lr"] == schema["optimizer"]["lr"]
    assert hp["ema_decay"] == schema["ema"]["decay"] and hp["clip"] == schema["optimizer"]["clip"]
    leaves = {k for k, v in schema.items() if not isinstance(v, dict)} - {"name"}
    groups = {f"{g}.{k}" for g in ("optimizer", "ema", "guard") for k in schema[g]}
    assert len(hp) == 1 + len(leaves) + len(groups)  # variant, then every leaf but the controller's


def test_a_new_model_key_reaches_the_module_without_another_edit(monkeypatch):
    """Adding a hyper-parameter: one edit in the schema (here a subclass of it) and one where it is used."""
    from dataclasses import dataclass, field

    from vaegan.config.schema import ModelConfig, OptimizerConfig
    from vaegan.models import module as module_file

    @dataclass
    class NewOptimizerConfig(OptimizerConfig):
        new_option: str = "x"

    @dataclass
    class NewModelConfig(ModelConfig):
        new_weight: float = 0.25
        optimizer: NewOptimizerConfig = field(default_factory=NewOptimizerConfig)

    monkeypatch.setattr(module_file, "ModelConfig", NewModelConfig)
    module = VAEGANModule(HP_MODEL, image_size=16, channels=1)
    assert module.hparams.new_weight == 0.25 and module.hparams.new_option == "x"
    assert module.hparams.width == HP_MODEL["width"] and module.hparams.lr == HP_MODEL["optimizer"]["lr"]
    assert VAEGANModule({"new_weight": 0.5}).hparams.new_weight == 0.5


def test_the_typed_config_and_the_flat_form_build_the_same_model():
    typed = VAEGANModule(HP_MODEL, image_size=16, channels=1, seed=3)
    flat = VAEGANModule(**HP)
    assert dict(typed.hparams) == dict(flat.hparams)
    with pytest.raises(TypeError, match="unknown hyper-parameters \\['widht'\\]"):
        VAEGANModule(widht=4)


HP_MODEL = {"width": 4, "latent_dim": 8, "alpha": 0.3, "beta": 0.1, "gamma": 0.1, "optimizer": {"lr": 1e-3}}
