"""The optimised iteration against the plain-PyTorch baseline (experiments/baseline.py): the same
parameter updates, k and losses; each performance option runs; no read from the device between
logging iterations; every op of an iteration on the model's device."""

import lightning as L
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.data import DataLoader, TensorDataset

from experiments.baseline import NaiveVAEGAN
from tests.conftest import TINY
from vaegan.training import performance
from vaegan.config import ConfigError, validate
from vaegan.models.controller import PIDUpdate
from vaegan.models.module import VAEGANModule

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = dict(image_size=16, channels=1, width=4, latent_dim=8)
GAINS = dict(ki=0.05, kp=0.01, kd=0.01)  # large enough that k moves and feeds back within 3 iterations
ITERATIONS = 3


def trained(options: performance.Performance, precision: str = "32-true", log_every: int = 1, callbacks=(),
            iterations: int = ITERATIONS, shape: dict = SHAPE):
    """The framework's model of ``shape`` after ``iterations`` iterations through Lightning on a fixed
    batch, and the controller's k."""
    torch.manual_seed(0)
    module = VAEGANModule(**shape, lr=1e-3, seed=5)
    module.performance = options  # applied by on_fit_start
    controller = PIDUpdate(**GAINS)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=iterations * 3, logger=False, enable_checkpointing=False, precision=precision,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[controller, *callbacks],
        log_every_n_steps=log_every,
    )
    trainer.fit(module, DataLoader(TensorDataset(batch(shape["image_size"])), batch_size=8))
    return module, controller.controller.k.item()


def batch(size: int = SHAPE["image_size"]) -> torch.Tensor:
    return torch.rand(8, 1, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


def baseline(fused: bool | None, iterations: int = ITERATIONS):
    """The plain-PyTorch iteration from the same weights and noise."""
    torch.manual_seed(0)
    reference = VAEGANModule(**SHAPE, lr=1e-3, seed=5)  # the same initial weights, and its noise draws
    naive = NaiveVAEGAN(**SHAPE, lr=1e-3, controller=GAINS, fused=fused)
    for net, same in zip(naive.networks, reference.networks.values()):
        net.load_state_dict(same.state_dict())
    x = batch()
    for iteration in range(iterations):
        noise = reference.draw_noise(len(x), iteration)
        naive.step(x, noise["eps"], noise["z_g"])
    return naive


def weights(networks) -> list[torch.Tensor]:
    return [p.detach().clone() for net in networks for p in net.parameters()]


@pytest.fixture(scope="module")
def naive_fused():
    return baseline(fused=True)


def test_optimised_iteration_updates_exactly_as_the_baseline(naive_fused):
    """One discriminator forward per input instead of a second one on detached copies, all on the
    device, one backward pass per objective: in fp32 with the same Adam kernel, every weight and k
    equal bit for bit."""
    module, k = trained(performance.Performance(channels_last=False, shared_backward=False))
    for ours, theirs in zip(weights(module.networks.values()), weights(naive_fused.networks)):
        assert torch.equal(ours, theirs)
    assert k == naive_fused.controller.k.item()
    assert k > 0  # the controller moved, so L_dis's k term took part


def test_default_adam_of_the_baseline_differs_by_rounding_only(naive_fused):
    """The baseline's default Adam (a loop over tensors on CPUs) and the fused kernel round
    differently in the last bit: 3 steps stay within 1e-6."""
    naive = baseline(fused=None)
    for ours, theirs in zip(weights(naive_fused.networks), weights(naive.networks)):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


class CaptureGradients(L.Callback):
    """Each network's gradient at its first optimizer step, flattened."""

    def __init__(self):
        self.gradients: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if len(self.gradients) < 3:
            self.gradients.append(torch.cat([p.grad.flatten() for p in optimizer.param_groups[0]["params"]]))


@pytest.mark.parametrize("options,precision,tolerance", [
    # -k applied to grad_D A after the pass instead of inside it: reassociated, rounding only
    (performance.Performance(channels_last=False, shared_backward=True), "32-true", 1e-6),
    (performance.Performance(channels_last=True, shared_backward=False), "32-true", 1e-5),  # other conv kernels
    (performance.Performance(channels_last=False, shared_backward=False, batched_discriminator=True), "32-true", 1e-5),
    (performance.Performance(), "32-true", 1e-5),  # the defaults
    (performance.Performance(batched_discriminator=True), "bf16-mixed", 3e-2),
], ids=["shared_backward", "channels_last", "batched_discriminator", "defaults", "bf16_defaults_batched"])
def test_each_option_gives_the_baseline_gradients_up_to_rounding(options, precision, tolerance):
    """The first iteration's gradient of each network, relative to the baseline's, differs by at
    most ``tolerance`` in norm (later updates are not compared: Adam turns a rounding difference
    in a near-zero gradient into a full step)."""
    capture = CaptureGradients()
    trained(options, precision, callbacks=[capture], iterations=1)
    naive = baseline(fused=True, iterations=1)
    for ours, net in zip(capture.gradients, naive.networks):
        theirs = torch.cat([p.grad.flatten() for p in net.parameters()])
        assert ((ours - theirs).norm() / theirs.norm()).item() < tolerance


# The smallest model the networks allow (8x8, one scale): compiling with inductor on a CPU is the cost of
# this test (all of it in the first iteration: five graphs, the generator and discriminator each traced
# twice, for inputs with and without gradient, and their backward passes), and 8x8 has a quarter fewer
# C++ kernels to build than 16x16. The same three networks, options and iterations: torch.compile's
# wrapper in the state dicts, the donated buffers of the second backward, and k, are all still exercised.
COMPILED_SHAPE = dict(SHAPE, image_size=8)


@pytest.mark.slow
def test_compiled_networks_train_and_keep_their_checkpoint_keys():
    module, k = trained(performance.Performance(compile="default"), shape=COMPILED_SHAPE)
    assert all(name.startswith(("encoder.", "generator.", "discriminator.")) and "_orig_mod" not in name
               for name in module.state_dict())
    assert 0 < k < 1


class DeviceReads(TorchDispatchMode):
    """Counts reads of tensor values by the host: ``.item()``, ``bool()`` and ``float()`` dispatch
    ``aten._local_scalar_dense``; ``.tolist()`` and ``.numpy()`` of CPU tensors dispatch nothing, so
    they are counted by wrapping them while the mode is on."""

    def __init__(self):
        super().__init__()
        self.count = 0
        self.originals = {name: getattr(torch.Tensor, name) for name in ("tolist", "numpy")}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, self.counting(original))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)
        return super().__exit__(*exc)

    def counting(self, original):
        def read(tensor, *args, **kwargs):
            self.count += 1
            return original(tensor, *args, **kwargs)
        return read


class CountReads(L.Callback):
    """The host's reads of device values during each iteration: training step and every callback."""

    def __init__(self):
        self.reads: dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.mode = DeviceReads()
        self.mode.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.mode.__exit__(None, None, None)
        self.reads[pl_module.iteration] = self.mode.count


def test_no_value_is_read_from_the_device_between_logging_iterations():
    count = CountReads()  # after PIDUpdate: its start hook has run, its end hook is counted
    trained(performance.Performance(), log_every=2, callbacks=[count])
    assert count.reads[1] == 0 and count.reads[3] == 0
    assert count.reads[2] > 0  # a logging iteration reads the losses, and the check can see reads


# ------------------------------------------------------------------------------ one device
class OneDevicePerOp(TorchDispatchMode):
    """Fails the first op whose tensors, inputs and outputs, lie on more than one device: a tensor
    left on the CPU beside the model's (k, the guard's counters), or moved to the model's device
    during the step. Meta tensors hold no values: reading one gives 1."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].is_meta:
            return 1
        out = func(*args, **kwargs)
        devices = {str(t.device) for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)}
        assert len(devices) <= 1, f"{func} mixes tensors on {' and '.join(sorted(devices))}"
        return out


def on_meta(options: performance.Performance) -> tuple[VAEGANModule, PIDUpdate]:
    """The full model (with EMA and the plateau decay) on the meta device, as at fit start, and its
    controller's callback. Nothing has a value there, so on a CPU-only machine any tensor created
    without the model's device stands out as a second device. No trainer: optimizers, backward
    and logging are wired as in experiments/bench_step.py's bare loop."""
    module = VAEGANModule(**SHAPE, ema_decay=0.9, lr_decay=dict(mode="plateau", every_n_iterations=1)).to("meta")
    module.performance = options
    performance.apply(module)
    optimizers, schedulers = module.configure_optimizers()
    module.optimizer_list, module.lr_schedulers = (lambda: optimizers), (lambda: schedulers)
    module.manual_backward = lambda loss, **kwargs: loss.backward(**kwargs)
    module.is_logging_iteration = lambda iteration=None: False
    # torch.Generator has no meta device; draw_noise itself draws on the model's device
    module.draw_noise = lambda n, iteration: {name: torch.randn(n, SHAPE["latent_dim"], device="meta")
                                              for name in ("eps", "z_g")}
    callback = PIDUpdate(**GAINS)
    callback.on_fit_start(None, module)
    return module, callback


@pytest.mark.parametrize("options", [
    performance.Performance(channels_last=False),  # shared backward: k scales the gradient (_foreach_mul_)
    performance.Performance(channels_last=False, shared_backward=False),  # k inside L_dis
    performance.Performance(batched_discriminator=True),
], ids=["shared_backward", "one_pass_per_objective", "batched_discriminator"])
def test_every_op_of_an_iteration_stays_on_the_models_device(options):
    """The first iteration (where state placed lazily would move) and the next, callback hooks
    included: the controller's k, the guard's counters, the EMA and the decay's sum never meet or
    become a tensor of another device."""
    module, callback = on_meta(options)
    x = torch.zeros(8, SHAPE["channels"], SHAPE["image_size"], SHAPE["image_size"], device="meta")
    with OneDevicePerOp():
        for _ in range(2):
            callback.on_train_batch_start(None, module, x, 0)
            outputs = module.training_step(x, 0)
            callback.on_train_batch_end(None, module, outputs, x, 0)
    guard = module.guard
    state = [callback.controller.k, callback.controller.window, guard.counters, guard.first_mask, guard.trip_mask]
    assert {str(t.device) for t in state} == {"meta"}


# ------------------------------------------------------------------------------ options and config
@pytest.mark.parametrize("setting,device,width,expected", [
    (None, "cuda", 64, True), (None, "cpu", 16, True), (None, "cpu", 64, False),
    (True, "cpu", 64, True), (False, "cuda", 16, False),
])
def test_channels_last_auto_follows_the_measurements(setting, device, width, expected):
    assert performance.Performance(channels_last=setting).use_channels_last(torch.device(device), width) is expected


def test_bf16_on_a_device_without_bf16_arithmetic_warns(monkeypatch, caplog):
    monkeypatch.setattr(performance, "bf16_is_fast", lambda device: False)
    performance.warn_if_bf16_is_emulated("32-true", torch.device("cpu"))
    assert not caplog.records
    performance.warn_if_bf16_is_emulated("bf16-mixed", torch.device("cpu"))
    assert "emulated" in caplog.text and "32-true" in caplog.text


def test_unknown_compile_mode_fails_validation(compose_cfg, tmp_path):
    validate(compose_cfg([*TINY, "performance.compile=reduce-overhead"], tmp_path))
    with pytest.raises(ConfigError, match=r"performance\.compile='fast'.*reduce-overhead"):
        validate(compose_cfg([*TINY, "performance.compile=fast"], tmp_path))
