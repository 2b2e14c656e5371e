"""The divergence guard, NaNs injected into real runs, per-network gradient clipping."""

import copy
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from tests.conftest import CONF, TINY, iteration_rows
from tests.training.test_step import OneDevicePerOp
from vaegan.training import sync
from vaegan.training import train as train_module
from vaegan.config import ConfigError, register_configs, validate
from vaegan.models.controller import PIDUpdate
from vaegan.training.guard import DivergenceError, DivergenceGuard
from vaegan.models.module import VAEGANModule

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = [*TINY, "callbacks.images.every_n_iterations=1000"]


def nan(value: float = 1.0) -> torch.Tensor:
    return torch.tensor(value * float("nan"))


# ------------------------------------------------------------------------------ DivergenceGuard
def check(guard: DivergenceGuard, iteration: int, values: dict[str, torch.Tensor]) -> bool:
    """``record`` then ``poll``, as the training step does: whether iteration ``iteration`` steps."""
    stepped = guard.record(iteration, values)
    guard.poll()
    return bool(stepped)


def test_finite_values_pass_and_reset_the_run():
    guard = DivergenceGuard(max_bad_in_a_row=3)
    assert check(guard, 1, {"L_d": nan()}) is False
    assert check(guard, 2, {"L_d": torch.tensor(0.5), "gradient of the encoder": torch.tensor(2.0)}) is True
    assert (guard.skipped, guard.in_a_row, guard.first_bad) == (1, 0, None)


def test_non_finite_value_is_counted_with_its_iteration_and_names():
    guard = DivergenceGuard(max_bad_in_a_row=3)
    ok = check(guard, 7, {"L_e": torch.tensor(1.0), "L_d": nan(), "gradient of the generator": torch.tensor(math.inf)})
    assert ok is False
    assert (guard.skipped, guard.in_a_row) == (1, 1)
    assert guard.first_bad == (7, ["L_d", "gradient of the generator"])
    assert check(guard, 8, {"L_e": nan()}) is False
    assert (guard.skipped, guard.in_a_row) == (2, 2)
    assert guard.first_bad == (7, ["L_d", "gradient of the generator"])  # the start of the run, not the latest


def test_too_many_in_a_row_raise_naming_quantity_first_iteration_and_range():
    guard = DivergenceGuard(max_bad_in_a_row=3)
    assert check(guard, 4, {"L_d": nan(), "L_g": torch.tensor(1.0)}) is False
    assert check(guard, 5, {"L_d": nan(), "L_g": nan()}) is False
    with pytest.raises(DivergenceError) as err:
        check(guard, 6, {"L_d": nan()})
    message = str(err.value)
    assert message.startswith("L_d went non-finite at iteration 4")
    assert "iterations 4-6 were all skipped" in message and "max_bad_in_a_row=3" in message
    assert "after iteration 3" in message


def test_a_finite_check_in_between_resets_the_run_but_not_the_total():
    guard = DivergenceGuard(max_bad_in_a_row=2)
    assert check(guard, 1, {"L_d": nan()}) is False
    assert check(guard, 2, {"L_d": torch.tensor(0.1)}) is True
    assert check(guard, 3, {"L_d": nan()}) is False  # 2 bad checks, but not in a row: no error
    assert (guard.skipped, guard.in_a_row, guard.first_bad) == (2, 1, (3, ["L_d"]))
    with pytest.raises(DivergenceError, match="at iteration 3 and the 2 iterations 3-4"):
        check(guard, 4, {"L_d": nan()})


def test_checkpoint_state_round_trip():
    guard = DivergenceGuard(max_bad_in_a_row=5)
    check(guard, 1, {"L_d": nan()})
    check(guard, 2, {"L_d": torch.tensor(1.0)})
    check(guard, 3, {"L_s": nan(), "L_v": nan()})
    state = guard.checkpoint_state()
    assert state == {"skipped": 2, "in_a_row": 1, "first_bad": [3, ["L_s", "L_v"]]}
    restored = DivergenceGuard(max_bad_in_a_row=5)
    restored.load_checkpoint_state(copy.deepcopy(state))
    assert (restored.skipped, restored.in_a_row, restored.first_bad) == (2, 1, (3, ["L_s", "L_v"]))
    fresh = DivergenceGuard().checkpoint_state()
    restored.load_checkpoint_state(fresh)
    assert (restored.skipped, restored.in_a_row, restored.first_bad) == (0, 0, None)


def test_guard_needs_at_least_one_bad_iteration():
    with pytest.raises(ValueError, match="max_bad_in_a_row=0"):
        DivergenceGuard(max_bad_in_a_row=0)


def test_the_guard_moves_with_the_model_and_restores_on_its_device():
    """Its counters are buffers of the model (left out of its state_dict): wherever the model goes,
    and a checkpoint restored there, they are there. The restored run of bad values covers every
    name recorded next, so the masks are not laid out again: they must be on the device already."""
    module = VAEGANModule(image_size=16, channels=1, width=4, latent_dim=8)
    assert not any(key.startswith("guard") for key in module.state_dict())
    module.to("meta")
    module.on_load_checkpoint({"divergence_guard": {"skipped": 2, "in_a_row": 1, "first_bad": [3, ["L_d"]]}})
    guard = module.guard
    assert {str(t.device) for t in (guard.counters, guard.first_mask, guard.trip_mask)} == {"meta"}
    with OneDevicePerOp():
        stepped = module.guard.record(4, {"L_d": torch.ones((), device="meta")})
    assert stepped.is_meta


# ------------------------------------------------------------------------------ NaNs in real runs
def inject_nan_in_L_d(monkeypatch, bad_iterations) -> None:
    """A test hook: L_d (graph kept) becomes NaN when the iterations already done are in ``bad_iterations``."""
    original = VAEGANModule.compute_losses

    def compute_losses(self, x, noise):
        terms = original(self, x, noise)
        if self.iteration in bad_iterations:
            terms["L_d"] = terms["L_d"] * float("nan")
        return terms

    monkeypatch.setattr(VAEGANModule, "compute_losses", compute_losses)


def add_callbacks(monkeypatch, *extra: L.Callback) -> None:
    """Makes ``train`` run these callbacks after its own."""
    build = train_module.build_callbacks
    monkeypatch.setattr(train_module, "build_callbacks", lambda *args, **kwargs: [*build(*args, **kwargs), *extra])


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a, b) -> None:
    """Nested containers of tensors (state dicts, optimizer states) equal element for element."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tensors(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y)
    else:
        assert a == b


class Snapshots(L.Callback):
    """Weights, each Adam's step counts and the controller's state before and after every iteration
    (keyed by the 1-based iteration)."""

    def __init__(self):
        self.before: dict[int, dict] = {}
        self.after: dict[int, dict] = {}

    @staticmethod
    def take(trainer, pl_module) -> dict:
        controller = next(c.controller for c in trainer.callbacks if isinstance(c, PIDUpdate))
        return {
            "weights": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            "adam_steps": [sorted({int(s["step"]) for s in opt.state.values()}) for opt in trainer.optimizers],
            "controller": copy.deepcopy(controller.state_dict()),
        }

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before[pl_module.iteration + 1] = self.take(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[pl_module.iteration] = self.take(trainer, pl_module)


def weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def compose(overrides: list[str], out: Path):
    """The config of ``overrides`` writing to ``out`` (``compose_cfg`` for module-scoped fixtures)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("train", overrides=[*overrides, f"paths.output_dir={out}"])


@pytest.fixture(scope="module")
def run_with_one_nan(tmp_path_factory):
    """6 iterations with L_d NaN at iteration 4 (3 done before it), at most 3 bad in a row."""
    out = tmp_path_factory.mktemp("one_nan")
    cfg = compose([*FAST, "iterations=6", "model.guard.max_bad_in_a_row=3", "model.controller.ki=0.02"], out)
    snapshots = Snapshots()
    with pytest.MonkeyPatch.context() as mp:
        inject_nan_in_L_d(mp, {3})
        add_callbacks(mp, snapshots)
        train_module.train(cfg)
    return out, snapshots


def test_one_nan_iteration_is_skipped_and_training_finishes(run_with_one_nan):
    out, _ = run_with_one_nan
    ckpt = load(out / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6 * 3  # every iteration ran, the skipped one included
    assert ckpt["divergence_guard"] == {"skipped": 1, "in_a_row": 0, "first_bad": None}
    rows = iteration_rows(out)
    assert [r["step"] for r in rows] == list(range(6))
    assert [r["train/skipped_iterations"] for r in rows] == [0, 0, 0, 1, 1, 1]  # iteration 4 is row 3
    assert [math.isnan(r["train/L_d"]) for r in rows] == [False, False, False, True, False, False]


def test_the_skipped_iteration_changes_no_weights_optimizer_state_or_k(run_with_one_nan):
    _, snap = run_with_one_nan
    before, after = snap.before[4], snap.after[4]
    assert weights_equal(before["weights"], after["weights"])
    assert before["adam_steps"] == after["adam_steps"] == [[3], [3], [3]]
    assert before["controller"] == after["controller"]
    # ... whereas the iterations around it change all three
    for t in (3, 5):
        assert not weights_equal(snap.before[t]["weights"], snap.after[t]["weights"])
        assert snap.before[t]["controller"] != snap.after[t]["controller"]
    assert snap.after[5]["adam_steps"] == [[4], [4], [4]]
    assert snap.after[5]["controller"]["k"] != snap.before[4]["controller"]["k"]  # k moves on, so "k stayed" means something


CASE_B = ["iterations=20", "model.guard.max_bad_in_a_row=3", "callbacks.checkpoint.every_n_iterations=2"]
NAN_FROM_ITERATION_5 = set(range(4, 100))


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory):
    """20 iterations asked, L_d NaN from iteration 5 on, 3 bad in a row allowed: stops at iteration 7.
    Also a clean run of 4 iterations to compare with."""
    out, clean = tmp_path_factory.mktemp("diverged"), tmp_path_factory.mktemp("clean")
    cfg, clean_cfg = compose([*FAST, *CASE_B], out), compose([*FAST, *CASE_B, "iterations=4"], clean)
    with pytest.MonkeyPatch.context() as mp:
        inject_nan_in_L_d(mp, NAN_FROM_ITERATION_5)
        with pytest.raises(DivergenceError) as err:
            train_module.train(cfg)
    train_module.train(clean_cfg)
    return out, clean, err.value


def test_divergence_stops_training_naming_the_quantity_and_iteration(diverged_run):
    _, _, error = diverged_run
    message = str(error)
    assert message.startswith("L_d")  # the NaN loss; the discriminator's gradient follows it
    assert "non-finite at iteration 5 and the 3 iterations 5-7 were all skipped" in message
    assert "weights are those after iteration 4" in message


def test_last_checkpoint_after_divergence_holds_the_last_good_weights(diverged_run):
    out, clean, _ = diverged_run
    ckpt, reference = load(out / "checkpoints" / "last.ckpt"), load(clean / "checkpoints" / "last.ckpt")
    assert reference["global_step"] == 4 * 3
    assert_same_tensors(ckpt["state_dict"], reference["state_dict"])
    assert_same_tensors(ckpt["optimizer_states"], reference["optimizer_states"])  # Adam moments and steps too


def test_last_checkpoint_after_divergence_is_the_one_written_before_it(diverged_run):
    """The message says last.ckpt is "the last one written before" the NaNs: that of iteration 4."""
    out, _, _ = diverged_run
    ckpt = load(out / "checkpoints" / "last.ckpt")
    assert (ckpt["global_step"], ckpt["divergence_guard"]["skipped"]) == (4 * 3, 0)


@pytest.mark.slow
def test_cli_exits_with_training_diverged(compose_cfg, tmp_path, monkeypatch):
    from vaegan.run import execute

    inject_nan_in_L_d(monkeypatch, set(range(100)))
    cfg = compose_cfg([*FAST, "iterations=5", "model.guard.max_bad_in_a_row=2"], tmp_path)
    with pytest.raises(SystemExit) as exit_:
        execute(cfg)
    code = exit_.value.code
    assert isinstance(code, str) and code.startswith("Training diverged: L_d")
    assert "iteration 1 and the 2 iterations 1-2" in code
    assert code.endswith("The weights are those after iteration 0; no checkpoint was written before it: start again "
                         "with a lower learning rate or gradient clipping (model.optimizer.clip)")


@pytest.mark.slow
def test_cli_after_a_checkpoint_names_it(compose_cfg, tmp_path, monkeypatch):
    from vaegan.run import execute

    inject_nan_in_L_d(monkeypatch, set(range(3, 100)))
    cfg = compose_cfg([*FAST, "iterations=8", "model.guard.max_bad_in_a_row=2", "callbacks.checkpoint.every_n_iterations=2"],
                      tmp_path)
    with pytest.raises(SystemExit) as exit_:
        execute(cfg)
    assert str(exit_.value.code).endswith(
        f"{tmp_path / 'checkpoints' / 'last.ckpt'} is the last checkpoint written before it: resume from it with a "
        "lower learning rate or gradient clipping (model.optimizer.clip)")


# ------------------------------------------------------------------------------ gradient clipping
@pytest.fixture
def float64():
    """Double precision, so that a parameter's change under SGD(lr=1) is its gradient to ~1e-12."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def module_with_gradients(clip: dict) -> tuple[VAEGANModule, dict[str, torch.Tensor]]:
    """A module outside any Trainer, its networks' gradients of one iteration taken and measured,
    with plain SGD(lr=1) optimizers, whose step subtracts the gradient as it stands."""
    torch.manual_seed(0)
    module = VAEGANModule(image_size=16, channels=1, width=4, latent_dim=8, clip=clip)
    optimizers = [torch.optim.SGD(net.parameters(), lr=1.0) for net in module.networks.values()]
    module.optimizer_list = lambda: optimizers
    module.manual_backward = lambda loss, *args, **kwargs: loss.backward(*args, **kwargs)
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    terms = module.compute_losses(x, module.draw_noise(len(x), 0))
    module.compute_gradients(terms)
    _, norms = sync.synchronize(terms, module.networks)
    return module, norms


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def test_each_network_is_clipped_to_its_own_cap(float64):
    cap = 1e-3
    module, norms = module_with_gradients({"encoder": None, "generator": cap, "discriminator": None})
    grads = {name: flat(p.grad for p in net.parameters()) for name, net in module.networks.items()}
    weights = {name: flat(net.parameters()) for name, net in module.networks.items()}
    for name in module.networks:
        assert norms[name].item() == pytest.approx(grads[name].norm().item(), rel=1e-12)
    assert norms["generator"] > 10 * cap  # so the cap really binds
    module.step_networks(norms)
    updates = {name: weights[name] - flat(net.parameters()) for name, net in module.networks.items()}
    assert updates["generator"].norm().item() == pytest.approx(cap, rel=1e-4)
    assert torch.allclose(updates["generator"], grads["generator"] * cap / norms["generator"], rtol=1e-4, atol=1e-15)
    for name in ("encoder", "discriminator"):  # not capped: the full gradient
        assert updates[name].norm().item() == pytest.approx(norms[name].item(), rel=1e-9)
        assert torch.allclose(updates[name], grads[name], rtol=1e-9, atol=1e-15)


def test_a_skipped_iteration_steps_no_network(float64):
    module, norms = module_with_gradients({"generator": 1e-3})
    adams = module.configure_optimizers()  # fused: the skip is decided on the device (found_inf)
    module.optimizer_list = lambda: adams
    weights = {name: flat(net.parameters()) for name, net in module.networks.items()}
    module.step_networks(norms, stepped=torch.tensor(False))
    for (name, net), opt in zip(module.networks.items(), adams):
        assert opt.defaults["fused"]
        assert torch.equal(flat(net.parameters()), weights[name]), name
        assert all(float(state["step"]) == 0 and not state["exp_avg"].any() for state in opt.state.values()), name
    module.step_networks(norms, stepped=torch.tensor(True))
    for name, net in module.networks.items():
        assert not torch.equal(flat(net.parameters()), weights[name]), name


# ------------------------------------------------------------------------------ config
@pytest.mark.parametrize("override,key", [
    ("model.optimizer.clip.generator=-1", "model.optimizer.clip.generator"),
    ("model.optimizer.clip.encoder=0", "model.optimizer.clip.encoder"),
    ("model.guard.max_bad_in_a_row=0", "model.guard.max_bad_in_a_row"),
])
def test_bad_guard_and_clip_settings_fail_validation(compose_cfg, tmp_path, override, key):
    cfg = compose_cfg([*TINY, override], tmp_path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_after_the_limit_nothing_steps_until_a_poll_stops_training():
    """Between logging iterations the guard is not read: once max_bad_in_a_row is reached, later
    iterations do not step even if finite, so the weights stay those before the bad run."""
    guard = DivergenceGuard(max_bad_in_a_row=2)
    assert bool(guard.record(1, {"L_d": torch.tensor(0.5)}))
    assert not bool(guard.record(2, {"L_d": nan()}))
    assert not bool(guard.record(3, {"L_d": nan()}))  # the limit
    assert not bool(guard.record(4, {"L_d": torch.tensor(0.5)}))  # finite, but the run has tripped
    with pytest.raises(DivergenceError, match="non-finite at iteration 2 and the 2 iterations 2-3 were all skipped"):
        guard.poll()
