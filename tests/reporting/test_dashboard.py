"""The W&B workspace (vaegan.reporting.dashboard), read back from the spec that save() would upload:
its sections, their keys (every one from vaegan.training.logged), the sweep's filter and grouping,
the parallel coordinates, the stable view name and the keys a local multirun varied. save() itself
cannot reach W&B from here: these tests check the object it would send."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

pytest.importorskip("wandb_workspaces")

from vaegan import compat  # noqa: E402
from vaegan.reporting import dashboard  # noqa: E402
from vaegan.training import logged  # noqa: E402

SECTIONS = ["Equilibrium", "Convergence", "Losses", "Latent use", "Sample quality", "Pictures", "System", "Sweep"]


def spec_of(**kwargs) -> dict:
    return compat.workspace_spec(dashboard.workspace("team", "vaegan", "vaegan", **kwargs))


def keys_of(described: list[dict], section: str) -> list[str]:
    (found,) = [s for s in described if s["name"] == section]
    return [key for panel in found["panels"] for key in panel["keys"]]


def test_the_workspace_answers_each_question_in_its_own_section():
    described = dashboard.describe(spec_of())
    assert [s["name"] for s in described] == SECTIONS
    assert all(s["panels"] for s in described)
    history = lambda keys: [f"history:{k}" for k in keys]  # noqa: E731
    assert keys_of(described, "Equilibrium") == [*history([logged.E]), "table:equilibrium_table",
                                                 *history([logged.K, *logged.PID_TERMS])]
    assert keys_of(described, "Convergence") == history([logged.M])
    assert keys_of(described, "Losses") == history(logged.LOSSES) and len(logged.LOSSES) == 6
    assert keys_of(described, "Latent use") == history(["val/kl_nats", "val/active_units", "val/psnr",
                                                        "val/psnr_mean_image", "val/ssim"])
    assert keys_of(described, "Sample quality") == history(["metrics/fid", "metrics/kid_mean", "metrics/is_mean"])
    assert keys_of(described, "Pictures") == history([f"images/{n}" for n in
                                                      ("samples", "reconstructions", "discriminator", "interpolations")])
    assert keys_of(described, "System") == history(["train/images_per_s", "train/iterations_per_s",
                                                    "train/grad_norm_encoder", "train/grad_norm_generator",
                                                    "train/grad_norm_discriminator", "train/skipped_iterations"])


def test_every_chart_runs_against_the_iteration_and_m_is_smoothed():
    spec = spec_of()
    sections = spec["spec"]["section"]["panelBankConfig"]["sections"]
    assert spec["spec"]["section"]["settings"]["xAxis"] == logged.STEP
    assert all(s["localPanelSettings"]["xAxis"] == logged.STEP for s in sections)
    lines = [p for s in sections for p in s["panels"] if p["viewType"] == "Run History Line Plot"]
    assert lines and all(p["config"]["xAxis"] == logged.STEP for p in lines)
    (m,) = [p for p in lines if p["config"]["metrics"] == [logged.M]]
    assert m["config"]["smoothingWeight"] == dashboard.SMOOTHING and m["config"]["smoothingType"] == "exponential"
    (k,) = [p for p in lines if p["config"]["metrics"] == [logged.K]]
    assert (k["config"]["yAxisMin"], k["config"]["yAxisMax"]) == (0, 1)


def test_the_pictures_are_media_panels_with_the_step_slider():
    panels = [p for s in spec_of()["spec"]["section"]["panelBankConfig"]["sections"] if s["name"] == "Pictures"
              for p in s["panels"]]
    assert {p["viewType"] for p in panels} == {"Media Browser"}
    assert all(p["config"]["mode"] == "gallery" and p["config"]["gallerySettings"]["axis"] == "step" for p in panels)


def test_the_equilibrium_chart_is_the_controller_charts_line_series():
    (chart,) = [p for s in spec_of()["spec"]["section"]["panelBankConfig"]["sections"] for p in s["panels"]
                if p["viewType"] == "Vega2"]
    assert chart["config"]["panelDefId"] == dashboard.LINESERIES
    assert chart["config"]["fieldSettings"] == {"step": "step", "lineKey": "lineKey", "lineVal": "lineVal"}


def test_runs_are_grouped_by_sweep_and_the_sweep_filter_appears_when_asked():
    everything = spec_of()
    assert dashboard.run_grouping(everything) == ["run.group"] and dashboard.run_filter(everything) is None
    one = spec_of(group="multirun/pid_vs_p_cpu/2026-12-02_10-00-00")
    assert dashboard.run_filter(one) == "multirun/pid_vs_p_cpu/2026-12-02_10-00-00"
    assert dashboard.run_grouping(one) == []  # one sweep: each job its own line


def test_the_parallel_coordinates_hold_the_gains_what_was_varied_and_the_objectives():
    keys = keys_of(dashboard.describe(spec_of(varied=["model.gamma", "model.controller.ki"])), "Sweep")
    assert keys == ["config:model.gamma", "config:model.controller.ki", "config:model.controller.kp",
                    "config:model.controller.kd", "summary:train/M.min", "summary:metrics/fid.min"]
    columns = spec_of(varied=["model.gamma"])["spec"]["section"]["runSets"][0]["runFeed"]["columnOrder"]
    assert columns[:3] == ["run:displayName", "config:model.gamma", "config:model.controller.ki"]


def test_the_view_name_is_the_same_for_the_same_project_and_name():
    name = dashboard.view_name("team", "vaegan", "vaegan")
    assert name == dashboard.view_name("team", "vaegan", "vaegan")
    assert name.startswith("nw-") and name.endswith("-v") and len(name) == len("nw-") + 11 + len("-v")
    assert len({name, dashboard.view_name("team", "vaegan", "other"), dashboard.view_name("team", "p2", "vaegan"),
                dashboard.view_name("me", "vaegan", "vaegan")}) == 4


def test_swept_keys_are_the_overrides_with_several_values_and_the_sweepers_params(tmp_path):
    OmegaConf.save({"hydra": {"overrides": {"task": ["+experiment=pid_vs_p_cpu", "controller=began,pid",
                                                     "model.controller.ki=1e-4,1e-3", "iterations=100",
                                                     "model.gamma=range(0.1,0.5,0.2)", "hydra.launcher.n_jobs=2"]},
                              "sweeper": {"params": {"model.controller.kd": "0,1e-5", "model.controller.kp": "1e-5",
                                                     "model.eta": "interval(0.3, 0.9)"}}}},
                   tmp_path / "multirun.yaml")
    assert dashboard.swept_keys(tmp_path) == ["model.controller.ki", "model.gamma", "model.controller.kd", "model.eta"]
