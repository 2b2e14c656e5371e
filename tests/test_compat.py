"""vaegan.compat against the installed Lightning, torch and wandb: each test names the upstream change
and what to fix when an upgrade breaks an entry; the floors of pyproject.toml and why they are what they are."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from packaging.requirements import Requirement
from packaging.version import Version

from vaegan import compat

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def cpu_trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, **kwargs)


# ------------------------------------------------------------------------------ SubprocessLauncher


class RecordingLauncher(compat.SubprocessLauncher):
    started = 0

    def start_children(self) -> None:
        self.started += 1


@pytest.mark.parametrize("name", ["_call_children_scripts", "_check_can_spawn_children", "launch"])
def test_lightnings_subprocess_launcher_has_what_subprocess_launcher_overrides_and_calls(name):
    assert callable(getattr(_SubprocessScriptLauncher, name, None)), (
        f"Lightning {L.__version__} removed _SubprocessScriptLauncher.{name}: vaegan.compat.SubprocessLauncher "
        "(the base of distributed.ConfigLauncher) must be updated")


def test_launch_starts_the_children_on_local_rank_0_and_keeps_the_attributes(monkeypatch):
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # launch sets torch's threads where it is unset
    env = LightningEnvironment()
    launcher = RecordingLauncher(env, 1, 1)
    assert (launcher.cluster_environment, launcher.num_processes, launcher.num_nodes, launcher.procs) == (env, 1, 1, []), (
        f"Lightning {L.__version__} changed _SubprocessScriptLauncher's attributes (cluster_environment, "
        "num_processes, num_nodes, procs): distributed.ConfigLauncher.start_children must be updated")
    assert launcher.launch(lambda x: x + 1, 41) == 42
    assert launcher.started == 1, (
        f"Lightning {L.__version__}: _SubprocessScriptLauncher.launch no longer calls _call_children_scripts, so "
        "vaegan.compat.SubprocessLauncher.start_children never runs and DDP ranks 1..N-1 never start")
    launcher.procs = [object()]  # a new list: launch's process observer watches the first one
    with pytest.raises(RuntimeError, match="once"):
        launcher._call_children_scripts()  # _check_can_spawn_children: the children are started once
    assert launcher.started == 1


def test_launch_starts_no_children_when_the_environment_starts_the_processes(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")  # torchrun, SLURM: LightningEnvironment creates_processes_externally
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    launcher = RecordingLauncher(LightningEnvironment(), 1, 1)
    launcher.launch(lambda: None)
    assert launcher.started == 0, (
        f"Lightning {L.__version__}: _SubprocessScriptLauncher.launch starts children under an external launcher")


# ------------------------------------------------------------------------------ LauncherDDPStrategy


def test_launcher_ddp_strategy_installs_the_launcher_of_make_launcher():
    assert "_configure_launcher" in vars(DDPStrategy), (
        f"Lightning {L.__version__} removed DDPStrategy._configure_launcher: vaegan.compat.LauncherDDPStrategy "
        "must install distributed.ConfigLauncher another way")

    class Strategy(compat.LauncherDDPStrategy):
        def make_launcher(self):
            self.made = RecordingLauncher(self.cluster_environment, self.num_processes, self.num_nodes)
            return self.made

    trainer = cpu_trainer(strategy=Strategy())
    assert trainer.strategy.launcher is trainer.strategy.made, (
        f"Lightning {L.__version__}: the Trainer no longer installs the launcher through "
        "Strategy._configure_launcher/_launcher: vaegan.compat.LauncherDDPStrategy must be updated")


# ------------------------------------------------------------------------------ disable_sigterm_broadcast


def test_the_epoch_loop_broadcasts_sigterm_from_the_method_disable_sigterm_broadcast_replaces():
    trainer = cpu_trainer()
    loop = trainer.fit_loop.epoch_loop
    assert inspect.ismethod(getattr(loop, "_broadcast_sigterm_tensor", None)), (
        f"Lightning {L.__version__} removed _TrainingEpochLoop._broadcast_sigterm_tensor (added in 2.5.2, #20825): "
        "vaegan.compat.disable_sigterm_broadcast must turn off the new SIGTERM sync, or ManualDDPStrategy ranks "
        "wait on a collective before every batch")
    assert "self._broadcast_sigterm_tensor()" in inspect.getsource(type(loop).advance), (
        f"Lightning {L.__version__}: _TrainingEpochLoop.advance no longer calls _broadcast_sigterm_tensor: "
        "vaegan.compat.disable_sigterm_broadcast must replace what it calls now")
    compat.disable_sigterm_broadcast(trainer)
    assert not inspect.ismethod(loop._broadcast_sigterm_tensor) and loop._broadcast_sigterm_tensor() is None


# ------------------------------------------------------------------------------ wandb_run


def test_wandb_run_is_the_loggers_run_and_none_before_one_starts(tmp_path):
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="vaegan-compat", save_dir=str(tmp_path), mode="disabled")
    assert "_experiment" in vars(logger) and compat.wandb_run(logger) is None, (
        f"Lightning {L.__version__} renamed WandbLogger._experiment: vaegan.compat.wandb_run must read the "
        "logger's run another way (tracking.finish would not finish runs)")
    run = object()
    assert compat.wandb_run(WandbLogger(experiment=run)) is run, (
        f"Lightning {L.__version__}: WandbLogger(experiment=run) no longer keeps the run in _experiment")
    started = logger.experiment
    try:
        assert compat.wandb_run(logger) is started, (
            f"Lightning {L.__version__}: WandbLogger.experiment no longer caches the run it starts in _experiment")
    finally:
        started.finish()


# ------------------------------------------------------------------------------ cpu_has_bf16


def test_cpu_has_bf16_asks_onednn():
    try:
        check = torch.ops.mkldnn._is_mkldnn_bf16_supported
    except (AttributeError, RuntimeError) as err:
        pytest.fail(f"torch {torch.__version__} removed torch.ops.mkldnn._is_mkldnn_bf16_supported ({err}): "
                    "vaegan.compat.cpu_has_bf16 must find bf16 support another way")
    assert isinstance(check(), bool) and compat.cpu_has_bf16() == check()
    if not torch.backends.mkldnn.is_available():
        assert not compat.cpu_has_bf16()


# ------------------------------------------------------------------------------ disable_donated_buffers


def test_disable_donated_buffers_turns_off_functorchs_option():
    config = torch._functorch.config
    assert isinstance(getattr(config, "donated_buffer", None), bool), (
        f"torch {torch.__version__} removed torch._functorch.config.donated_buffer: vaegan.compat."
        "disable_donated_buffers must be updated, or compiled networks fail on the iteration's second backward")
    before = config.donated_buffer
    try:
        compat.disable_donated_buffers()
        assert config.donated_buffer is False
    finally:
        config.donated_buffer = before


# ------------------------------------------------------------------------------ fused_adam_step


class Wrapped:
    """Lightning's LightningOptimizer as fused_adam_step sees it: ``optimizer`` and ``step``."""

    def __init__(self, optimizer, fail: bool = False):
        self.optimizer, self.fail, self.stepped_with = optimizer, fail, None

    def step(self):
        self.stepped_with = getattr(self.optimizer, "found_inf", None)
        if self.fail:
            raise RuntimeError("step failed")
        self.optimizer.step()


def adam_state(adam: torch.optim.Adam, p: torch.Tensor) -> list[torch.Tensor]:
    state = adam.state[p]
    return [t.detach().clone() for t in (p, state["step"], state["exp_avg"], state["exp_avg_sq"])]


def test_fused_adam_step_skips_on_the_device_where_found_inf_is_one():
    p = torch.nn.Parameter(torch.ones(4))
    adam = torch.optim.Adam([p], lr=0.1, fused=True)
    assert adam._step_supports_amp_scaling, (
        f"torch {torch.__version__}: fused Adam no longer takes GradScaler's found_inf attribute: "
        "vaegan.compat.fused_adam_step must skip steps another way")
    from lightning.pytorch.core.optimizer import LightningOptimizer

    assert LightningOptimizer(adam).optimizer is adam, "Lightning's LightningOptimizer no longer exposes .optimizer"

    p.grad = torch.full_like(p, 0.5)
    compat.fused_adam_step(adam, torch.tensor(0.0))
    first = adam_state(adam, p)
    assert first[1] == 1 and not torch.equal(first[0], torch.ones(4)) and first[2].abs().sum() > 0
    assert "found_inf" not in vars(adam)

    wrapper = Wrapped(adam)
    p.grad = torch.full_like(p, 2.0)
    compat.fused_adam_step(wrapper, torch.tensor(1.0))
    assert wrapper.stepped_with is not None, "fused_adam_step must set found_inf on the wrapped torch optimizer"
    for before, after, name in zip(first, adam_state(adam, p), ["weights", "step count", "exp_avg", "exp_avg_sq"]):
        assert torch.equal(before, after), (
            f"torch {torch.__version__}: fused Adam with found_inf=1 changed the {name}: vaegan.compat.fused_adam_step "
            "must skip steps another way")
    assert "found_inf" not in vars(adam)

    compat.fused_adam_step(wrapper, torch.tensor(0.0))
    second = adam_state(adam, p)
    assert second[1] == 2 and not torch.equal(second[0], first[0]) and not torch.equal(second[2], first[2])
    assert "found_inf" not in vars(adam)


def test_fused_adam_step_removes_found_inf_when_the_step_raises():
    adam = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], fused=True)
    with pytest.raises(RuntimeError, match="step failed"):
        compat.fused_adam_step(Wrapped(adam, fail=True), torch.tensor(1.0))
    assert "found_inf" not in vars(adam)


# ------------------------------------------------------------------------------ attached_trainer


def test_attached_trainer_is_none_without_a_trainer():
    module = L.LightningModule()
    assert compat.attached_trainer(module) is None, (
        f"Lightning {L.__version__} renamed LightningModule._trainer: vaegan.compat.attached_trainer must be updated")
    with pytest.raises(RuntimeError, match="not attached"):
        module.trainer  # noqa: B018 - why attached_trainer exists
    trainer = cpu_trainer()
    module.trainer = trainer
    assert compat.attached_trainer(module) is trainer


# ------------------------------------------------------------------------------ floors


def requirement(name: str) -> Requirement:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    return next(r for r in map(Requirement, deps) if r.name == name)


def floor(req: Requirement) -> Version:
    return next(Version(s.version) for s in req.specifier if s.operator == ">=")


@pytest.mark.parametrize("name, installed", [("torch", torch.__version__), ("lightning", L.__version__)])
def test_installed_versions_satisfy_the_floors(name, installed):
    req = requirement(name)
    assert req.specifier.contains(Version(installed).public, prereleases=True), f"{name} {installed} is not {req}"


def test_the_torch_floor_has_clip_grads_with_norm_and_get_total_norm():
    assert floor(requirement("torch")) >= Version("2.6"), (
        "torch.nn.utils.clip_grads_with_norm_ and get_total_norm (models.module) are new in torch 2.6 (#139662)")
    from torch.nn.utils import clip_grads_with_norm_, get_total_norm

    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    norm = get_total_norm([p.grad])
    assert norm == 5.0
    clip_grads_with_norm_([p], 10.0, norm)
    assert torch.equal(p.grad, torch.tensor([3.0, 4.0])), "clip_grads_with_norm_ scaled up a gradient below max_norm"
    clip_grads_with_norm_([p], 1.0, norm)
    assert torch.allclose(p.grad.norm(), torch.tensor(1.0))


def test_the_lightning_floor_has_fits_weights_only():
    assert floor(requirement("lightning")) >= Version("2.6"), (
        "Trainer.fit(weights_only=) (training.train) is new in Lightning 2.6.0 (#21072)")
    assert "weights_only" in inspect.signature(L.Trainer.fit).parameters


# ------------------------------------------------------------------------------ wandb-workspaces
def test_workspace_spec_is_the_view_that_save_uploads(monkeypatch):
    """If this fails, wandb-workspaces changed ``Base._spec`` or what ``Workspace.save()`` sends
    (``internal.upsert_view2(self._to_model())``): make compat.workspace_spec return what it sends."""
    ws = pytest.importorskip("wandb_workspaces.workspaces")
    from wandb_workspaces.workspaces import interface, internal

    sent = []
    monkeypatch.setattr(internal, "upsert_view2", lambda view: sent.append(view) or
                        {"upsertView": {"view": {"name": view.name, "id": "x"}}})
    monkeypatch.setattr(interface, "get_app_url", lambda api: "https://wandb.ai")
    monkeypatch.setattr("wandb.Api", lambda *a, **k: object())
    workspace = ws.Workspace(entity="e", project="p", name="n", sections=[ws.Section(name="s", is_open=True)])
    spec = compat.workspace_spec(workspace)
    workspace.save()
    (view,) = sent
    assert (spec["entity"], spec["project"], spec["displayName"]) == (view.entity, view.project, view.display_name)
    import json

    uploaded = json.loads(view.spec.model_dump_json(by_alias=True, exclude_none=True))
    assert spec["spec"]["section"]["panelBankConfig"]["sections"] == uploaded["section"]["panelBankConfig"]["sections"]


def test_name_view_makes_save_write_that_name_and_id(monkeypatch):
    """If this fails, wandb-workspaces renamed ``Workspace._internal_name``/``_internal_id`` or no
    longer sends them as the view's name and id: follow ``Workspace.from_url``, which sets them."""
    ws = pytest.importorskip("wandb_workspaces.workspaces")
    from wandb_workspaces.workspaces import internal

    workspace = ws.Workspace(entity="e", project="p", name="n")
    assert {"_internal_name", "_internal_id"} <= set(vars(workspace))
    compat.name_view(workspace, "nw-abcdefghijk-v", "VmlldzoxMjM=")
    view = workspace._to_model()
    assert isinstance(view, internal.View) and (view.name, view.id) == ("nw-abcdefghijk-v", "VmlldzoxMjM=")
    compat.name_view(workspace, "nw-abcdefghijk-v", None)
    assert workspace._to_model().id == ""


def test_saved_view_id_asks_view_from_name_and_is_none_for_a_missing_view(monkeypatch):
    """If this fails, wandb-workspaces changed ``internal.View.from_name(entity, project, name)`` or
    the ValueError it raises for a view that does not exist."""
    pytest.importorskip("wandb_workspaces")
    from wandb_workspaces.workspaces import internal

    assert list(inspect.signature(internal.View.from_name).parameters) == ["entity", "project", "view_name"]
    calls = []

    def from_name(entity, project, view_name):
        calls.append((entity, project, view_name))
        if view_name == "nw-missing-v":
            raise ValueError("Workspace `nw-missing-v` not found in project `p`")
        return type("View", (), {"id": "VmlldzoxMjM="})()

    monkeypatch.setattr(internal.View, "from_name", staticmethod(from_name))
    assert compat.saved_view_id("e", "p", "nw-there-v") == "VmlldzoxMjM="
    assert compat.saved_view_id("e", "p", "nw-missing-v") is None
    assert calls == [("e", "p", "nw-there-v"), ("e", "p", "nw-missing-v")]
    source = inspect.getsource(internal.get_view_dict)
    assert "raise ValueError" in source and "not found" in source
