"""python -m vaegan.dashboard: the dry run's JSON, one line (never a prompt) without a key or a
network, what save() is handed, and (slow) every panel's key against a real run's metrics.csv and
offline W&B run. save() cannot reach W&B from here: the tests check the object it would send."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("wandb_workspaces")

import wandb_workspaces.workspaces as ws  # noqa: E402

from tests.conftest import ROOT, TINY, run_cli  # noqa: E402
from vaegan import compat  # noqa: E402
from vaegan import dashboard as cli  # noqa: E402
from vaegan.reporting import dashboard  # noqa: E402

SECTIONS = ["Equilibrium", "Convergence", "Losses", "Latent use", "Sample quality", "Pictures", "System", "Sweep"]


def keyless_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    return {**env, "HOME": str(home), **extra}


def command(*args: str, env: dict[str, str], timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vaegan.dashboard", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return done, time.perf_counter() - start


def test_the_dry_run_prints_the_workspace_as_json_and_saves_nothing(capsys, monkeypatch):
    monkeypatch.setattr(ws.Workspace, "save", lambda self: pytest.fail("--dry-run saved"))
    assert cli.main(["team/vaegan", "--dry-run", "--name", "pid sweeps"]) == 0
    out, err = capsys.readouterr()
    spec = json.loads(out)
    assert (spec["entity"], spec["project"], spec["displayName"]) == ("team", "vaegan", "pid sweeps")
    assert [s["name"] for s in dashboard.describe(spec)] == SECTIONS
    panels = sum(len(s["panels"]) for s in dashboard.describe(spec))
    assert err.strip() == f"{len(SECTIONS)} sections, {panels} panels; nothing saved (--dry-run)"


def test_the_sweep_option_filters_to_its_group_and_adds_what_a_local_multirun_varied(capsys, tmp_path):
    sweep = tmp_path / "multirun" / "pid"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task: ['model.gamma=0.1,0.5', 'iterations=9']\n")
    assert cli.main(["team/vaegan", "--dry-run", "--sweep", f"{sweep}/", "--vary", "model.eta"]) == 0
    spec = json.loads(capsys.readouterr().out)
    assert dashboard.run_filter(spec) == str(sweep)
    (section,) = [s for s in dashboard.describe(spec) if s["name"] == "Sweep"]
    assert section["panels"][0]["keys"][:3] == ["config:model.eta", "config:model.gamma", "config:model.controller.ki"]
    assert cli.main(["team/vaegan", "--dry-run"]) == 0
    assert dashboard.run_filter(json.loads(capsys.readouterr().out)) is None


def test_without_a_key_it_stops_at_once_with_the_one_line(tmp_path):
    done, seconds = command("team/vaegan", env=keyless_env(tmp_path))
    assert done.returncode == 1 and seconds < 10, (done.returncode, seconds)
    assert done.stderr.strip() == cli.NO_KEY and done.stdout == ""


def test_with_a_key_but_no_server_it_stops_within_seconds(tmp_path):
    env = keyless_env(tmp_path, WANDB_API_KEY="0" * 40, WANDB_BASE_URL="http://127.0.0.1:9")
    done, seconds = command("team/vaegan", env=env)
    assert done.returncode == 1 and seconds < 10, (done.returncode, seconds)
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("W&B: cannot reach http://127.0.0.1:9 (") and line.endswith("add --dry-run to print the workspace")


def test_a_target_without_a_project_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["vaegan", "--dry-run"])
    assert exit_info.value.code == 2
    assert "ENTITY/PROJECT: got 'vaegan'; give the W&B entity and project" in capsys.readouterr().err


def uploads(monkeypatch) -> list:
    """Stops Workspace.save() at its one call to the server (upsert_view2), recording the view it
    would upload; the rest of save() runs as it is."""
    from wandb_workspaces.workspaces import interface, internal

    sent: list = []

    def upsert(view):
        sent.append(view)
        return {"upsertView": {"view": {"name": view.name, "id": view.id or "VmlldzoxMjM="}, "inserted": not view.id}}

    monkeypatch.setattr(internal, "upsert_view2", upsert)
    monkeypatch.setattr(interface, "get_app_url", lambda api: "https://wandb.ai")
    monkeypatch.setattr("wandb.Api", lambda *a, **k: object())
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setattr("vaegan.utils.download.reachable", lambda url, timeout: None)
    return sent


def test_saving_twice_updates_one_view_under_its_stable_name(monkeypatch, capsys):
    """The view's name comes from entity, project and name; the id of a view saved before is
    reused, so save() updates it instead of adding a new one."""
    sent = uploads(monkeypatch)
    existing: dict[str, str] = {}
    monkeypatch.setattr(compat, "saved_view_id", lambda entity, project, view: existing.get(view))
    assert cli.main(["team/vaegan", "--sweep", "multirun/pid"]) == 0
    existing[sent[0].name] = "VmlldzoxMjM="  # the server now holds it
    assert cli.main(["team/vaegan", "--sweep", "multirun/pid"]) == 0
    first, second = sent
    assert first.name == second.name == dashboard.view_name("team", "vaegan", cli.NAME)
    assert (first.id, second.id) == ("", "VmlldzoxMjM=")
    assert first.display_name == cli.NAME and (first.entity, first.project) == ("team", "vaegan")
    spec = json.loads(second.spec.model_dump_json(by_alias=True, exclude_none=True))  # what upsert_view2 uploads
    assert [s["name"] for s in spec["section"]["panelBankConfig"]["sections"]] == SECTIONS
    url = f"https://wandb.ai/team/vaegan?nw={first.name.removeprefix('nw-').removesuffix('-v')}"
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"saved the workspace 'vaegan': {url}"


def test_an_error_from_wandb_while_saving_is_one_line(monkeypatch, capsys):
    uploads(monkeypatch)
    monkeypatch.setattr(compat, "saved_view_id", lambda *a: None)

    def refuse(view):
        raise PermissionError("permission denied\nmore detail")

    monkeypatch.setattr("wandb_workspaces.workspaces.internal.upsert_view2", refuse)
    assert cli.main(["team/vaegan"]) == 1
    assert capsys.readouterr().err.strip() == ("W&B: could not save the workspace to team/vaegan "
                                               "(PermissionError: permission denied)")


# ------------------------------------------------------------------------------ against a real run
def run_keys(run_dir: Path) -> set[str]:
    """What a run logged, in panel_keys' terms: history keys (metrics.csv's columns and the W&B run's
    logged keys), summary paths, config keys and W&B tables."""
    from tests.wandb_log import config_of, history, offline_runs, summary_keys

    (wandb_run,) = offline_runs(run_dir)
    logged = {key for row in history(wandb_run) for key in row}
    logged |= {key.removesuffix("/_type") for key in logged if key.endswith("/_type")}  # an image: images/samples/_type
    columns = set((run_dir / "metrics.csv").read_text().splitlines()[0].split(","))

    def flat(config: dict, prefix: str = "") -> set[str]:
        out = set()
        for key, value in config.items():
            out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
        return out

    tables = {key.removesuffix("/_type") for key in summary_keys(wandb_run) if key.endswith("_table/_type")}
    return ({f"history:{k}" for k in logged | columns} | {f"summary:{k}" for k in summary_keys(wandb_run)}
            | {f"config:{k}" for k in flat(config_of(wandb_run))} | {f"table:{t}" for t in tables})


def missing_keys(spec: dict, keys: set[str]) -> list[str]:
    return [f"{s['name']} / {p['title']}: {key}" for s in dashboard.describe(spec) for p in s["panels"]
            for key in p["keys"] if key not in keys]


@pytest.fixture(scope="module")
def evaluated_wandb_run(tmp_path_factory, random_inception_file) -> Path:
    """4 iterations of the full model logged to CSV and offline W&B, with images, latent use and an
    evaluation (FID, KID and IS through a randomly initialised inception-v3-compat) at iteration 4."""
    tmp = tmp_path_factory.mktemp("dashboard")
    overrides = [*TINY, "iterations=4", "callbacks.images.every_n_iterations=2",
                 "callbacks.evaluation.every_n_iterations=4", f"metrics.inception_weights={random_inception_file}",
                 "metrics.num_reference=8", "callbacks.evaluation.num_samples=8", "metrics.kid_subset_size=4",
                 "metrics.kid_subsets=2", "metrics.isc_splits=2", "metrics.batch_size=8", f"metrics.cache_dir={tmp / 'cache'}",
                 "logger=[csv,wandb]", f"hydra.run.dir={tmp / 'run'}"]
    done = run_cli(*overrides, env=keyless_env(tmp / "home", OMP_NUM_THREADS="2"))
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "run"


@pytest.mark.slow
def test_every_panel_reads_a_key_that_a_real_run_logs(evaluated_wandb_run):
    keys = run_keys(evaluated_wandb_run)
    spec = compat.workspace_spec(dashboard.workspace("team", "vaegan", "vaegan", varied=["model.gamma"]))
    assert missing_keys(spec, keys) == []
    assert {"history:metrics/is_mean", "history:val/kl_nats", "history:images/samples"} <= keys  # all were logged
    # a metric renamed in the code but not in the dashboard (or the reverse) fails the check
    renamed = json.loads(json.dumps(spec).replace('"train/images_per_s"', '"train/img_per_s"'))
    assert missing_keys(renamed, keys) == ["System / images/s: history:train/img_per_s"]
