"""Sweeps (conf/hparams_search/): a PID-gain grid with the joblib launcher and a resumable Optuna
study, each ranked by ``python -m vaegan.report``; the objective a run returns."""

import csv
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY, run_cli
from vaegan import report
from vaegan.config import ConfigError
from vaegan.run import objective_of

optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
from hydra_plugins.vaegan_sweeper.resumable_optuna import resume_study  # noqa: E402

SHORT = [*TINY, "iterations=12", "logger=csv", "callbacks.images.every_n_iterations=100"]


def sweep(*overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = run_cli(*overrides, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def final_M(job: Path) -> float:
    rows = [r for r in csv.DictReader((job / "metrics.csv").open()) if r.get("train/M")]
    return float(rows[-1]["train/M"])


def ranked_configurations(markdown: str) -> list[str]:
    """The configuration column of the ranked table of equilibrium.md, in rank order."""
    ranked = markdown.split("## Runs")[0].splitlines()
    rows = [line for line in ranked if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert [int(row.split("|")[1]) for row in rows] == list(range(1, len(rows) + 1))
    return [row.split("|")[2].strip().strip("`") for row in rows]


def test_the_objective_is_final_M_or_FID_or_a_named_metric(compose_cfg):
    cfg = compose_cfg(["+experiment=quickstart"])
    assert objective_of(cfg, {"train/M": 0.3, "metrics/fid": 40.0}) == 0.3
    cfg.callbacks.evaluation.every_n_iterations = 100
    assert objective_of(cfg, {"train/M": 0.3, "metrics/fid": 40.0}) == 40.0
    cfg.objective = "train/L_d"
    assert objective_of(cfg, {"train/L_d": 0.1}) == 0.1
    with pytest.raises(ConfigError, match="'train/L_x' was never logged; logged: train/L_d"):
        cfg.objective = "train/L_x"
        objective_of(cfg, {"train/L_d": 0.1})
    vae = compose_cfg(["+experiment=quickstart", "model=vae"])
    assert objective_of(vae, {"train/L_e": 0.2}) is None  # no discriminator, no M: nothing to rank by


def test_resume_study_counts_finished_trials_and_fails_stale_ones(tmp_path):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=storage)
    for value in (1.0, 2.0):
        trial = study.ask()
        study.tell(trial, value)
    stale = study.ask()  # a sweep killed while this trial ran
    assert resume_study(storage, "s", 5) == (3, 3)  # 2 of 5 done; job folders continue at 3
    states = [t.state for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states[stale.number] == optuna.trial.TrialState.FAIL
    assert resume_study(storage, "s", 2) == (0, 3)
    assert resume_study(storage, "new", 4) == (4, 0)


@pytest.mark.slow
def test_a_two_job_grid_sweep_with_joblib_is_ranked_by_the_report(tmp_path):
    sweep_dir = tmp_path / "grid"
    sweep(*SHORT, "hparams_search=pid_grid", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
          "model.controller.ki=1e-2", "model.controller.kd=0", "model.controller.kp=0,0.1", f"hydra.sweep.dir={sweep_dir}")
    jobs = sorted(p for p in sweep_dir.iterdir() if p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    kp = [yaml.safe_load((j / "config.yaml").read_text())["model"]["controller"]["kp"] for j in jobs]
    assert kp == [0.0, 0.1]
    assert report.main([str(sweep_dir)]) == 0
    ranked = ranked_configurations((sweep_dir / "equilibrium.md").read_text())
    labels = {job: f"model.controller.kp={value}" for job, value in zip(jobs, ["0", "0.1"])}
    assert ranked == [labels[j] for j in sorted(jobs, key=final_M)]
    assert "final M" in (sweep_dir / "equilibrium.md").read_text()
    assert (sweep_dir / "equilibrium.png").stat().st_size > 5000


@pytest.mark.slow
def test_a_two_trial_optuna_sweep_resumes_and_is_ranked_by_the_report(tmp_path):
    sweep_dir, db = tmp_path / "optuna", tmp_path / "db" / "study.db"  # the db's folder does not exist yet
    args = [*SHORT, "hparams_search=optuna", f"hydra.sweeper.storage=sqlite:///{db}", f"hydra.sweep.dir={sweep_dir}"]
    sweep(*args, "hydra.sweeper.n_trials=2")
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit()) == ["0", "1"]
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    values = {job: final_M(sweep_dir / job) for job in ("0", "1")}
    assert results["best_value"] == pytest.approx(min(values.values()), rel=1e-5)  # the runs returned final M

    first = (sweep_dir / "0" / "config.yaml").read_text()
    sweep(*args, "hydra.sweeper.n_trials=3")  # run again: one more trial, job 2; jobs 0 and 1 untouched
    assert sorted(p.name for p in sweep_dir.iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    assert (sweep_dir / "0" / "config.yaml").read_text() == first
    study = optuna.load_study(study_name="quickstart", storage=f"sqlite:///{db}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3

    assert report.main([str(sweep_dir)]) == 0
    ranked = ranked_configurations((sweep_dir / "equilibrium.md").read_text())
    assert len(ranked) == 3
    best = min(("0", "1", "2"), key=lambda job: final_M(sweep_dir / job))
    ki = yaml.safe_load((sweep_dir / best / "config.yaml").read_text())["model"]["controller"]["ki"]
    assert f"model.controller.ki={ki}" in ranked[0]


def test_the_slurm_launcher_config_composes_for_a_cluster_sweep():
    result = run_cli("+experiment=quickstart", "hparams_search=pid_grid", "hydra/launcher=slurm",
                     "hydra.launcher.partition=gpu", "--cfg", "hydra", timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    launcher = yaml.safe_load(result.stdout)["hydra"]["launcher"]
    assert launcher["_target_"] == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher["partition"] == "gpu"
    assert launcher["gpus_per_node"] == launcher["tasks_per_node"] == "${trainer.devices}"  # one task per GPU
    assert launcher["max_num_timeout"] > 0  # requeued on time-out
    assert launcher["submitit_folder"].endswith("/.submitit/%j")


@pytest.mark.parametrize("overrides, expected", [
    ([], (1, 1, 1)),
    (["trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"], (2, 8, 8)),
])
def test_slurm_tasks_and_gpus_follow_the_trainer(overrides, expected):
    """SLURM starts one task per GPU on every node: (nodes, tasks_per_node, gpus_per_node)."""
    from hydra import compose, initialize_config_dir

    from tests.conftest import CONF
    from vaegan.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["+experiment=quickstart", "hydra/launcher=slurm", *overrides],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == expected
