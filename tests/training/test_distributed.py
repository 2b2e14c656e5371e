"""DDP on two CPU processes (gloo): ranks agree at every iteration, match one process with the
same global batch, are launched from the run's config, and do not repeat a multirun per rank."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT, TINY, free_port, iteration_rows, run_cli
from vaegan.data.datamodules import IterationBatchSampler
from vaegan.training.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

ITERATIONS = 6
SHORT = [*TINY, f"iterations={ITERATIONS}"]
PER_RANK = ["data.batch_size=8", "trainer=ddp_cpu", "trainer.devices=2"]  # 2 x 8 = the global batch of 16


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """One process, batch 16: the weights and k that two ranks of 8 should reproduce."""
    from hydra import compose, initialize_config_dir
    from vaegan.config import register_configs

    out = tmp_path_factory.mktemp("one_process")
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=SHORT + [f"paths.output_dir={out}"])
    train(cfg)
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)


def assert_close_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), rtol=0, atol=atol), name


@pytest.mark.slow
def test_ranks_agree_at_every_iteration_and_match_one_process(tmp_path, one_process):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "ddp_training.py"), str(tmp_path), *SHORT, *PER_RANK]
    done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    assert [h["iteration"] for h in r0["history"]] == list(range(1, ITERATIONS + 1))
    assert r0["history"] == r1["history"]  # k, the error window and the P/I/D terms, every iteration
    assert len({h["k"] for h in r0["history"]}) == ITERATIONS  # k moved at every iteration
    for name in r0["state_dict"]:
        assert torch.equal(r0["state_dict"][name], r1["state_dict"][name]), name
    for o0, o1 in zip(r0["optimizers"], r1["optimizers"]):
        for p0, p1 in zip(o0["state"].values(), o1["state"].values()):
            assert all(torch.equal(p0[key], p1[key]) for key in p0)
    # Two ranks of 8 are one process of 16: same batches, same noise, the mean of the means.
    assert_close_weights(r0["state_dict"], one_process["state_dict"], atol=1e-6)
    assert r0["history"][-1]["k"] == pytest.approx(one_process["callbacks"]["EquilibriumCallback"]["k"], abs=1e-7)


@pytest.mark.slow
def test_trainer_ddp_cpu_launches_its_ranks_from_the_run_config(tmp_path, one_process):
    done = run_cli(*SHORT, *PER_RANK, f"hydra.run.dir={tmp_path}", timeout=300, env=env())
    assert done.returncode == 0, done.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 * ITERATIONS
    assert_close_weights(ckpt["state_dict"], one_process["state_dict"], atol=1e-6)
    # Written once, by rank 0: one row per iteration, one latent-use row at the end (the images'
    # interval), one grid per panel and iteration.
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert len(iteration_rows(tmp_path)) == ITERATIONS
    assert sum(1 for r in rows if r.get("val/kl_nats")) == 1 and len(rows) == ITERATIONS + 1
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [f"iter_{ITERATIONS:07d}.png"]


@pytest.mark.slow
def test_multirun_of_ddp_jobs_runs_each_job_once(tmp_path):
    done = run_cli("-m", *SHORT, "iterations=2", *PER_RANK, "seed=0,1", f"hydra.sweep.dir={tmp_path}",
                   timeout=400, env=env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["0", "1"]
    for job, seed in (("0", 0), ("1", 1)):
        ckpt = torch.load(tmp_path / job / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 6 and ckpt["hyper_parameters"]["seed"] == seed
        assert len(iteration_rows(tmp_path / job)) == 2  # 2 iterations, logged once
    assert done.stdout.count("Launching 2 jobs locally") + done.stderr.count("Launching 2 jobs locally") == 1


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_iteration_batches_shard_the_global_batch_and_resume_mid_epoch(world_size):
    length, batch = 50, 4
    ranks = [IterationBatchSampler(length, batch, seed=7, rank=r, world_size=world_size) for r in range(world_size)]
    one = IterationBatchSampler(length, batch * world_size, seed=7)
    per_epoch = length // (batch * world_size)
    assert len(ranks[0]) == len(one) == per_epoch
    for iteration in (0, 1, per_epoch - 1, per_epoch, 5 * per_epoch + 2):
        shards = [s.batch(iteration) for s in ranks]
        assert sum(shards, []) == one.batch(iteration)  # rank r holds the r-th slice of the global batch
    epoch = sum((one.batch(i) for i in range(per_epoch)), [])
    assert len(set(epoch)) == len(epoch)  # no image twice in an epoch
    assert one.batch(0) != one.batch(per_epoch)  # each epoch has its own order
    resumed = IterationBatchSampler(length, batch * world_size, seed=7, iteration=lambda: per_epoch + 2)
    assert list(resumed) == [one.batch(i) for i in range(per_epoch + 2, 2 * per_epoch)]


def test_a_global_batch_larger_than_the_data_is_refused():
    from vaegan.data import DataError

    with pytest.raises(DataError, match=r"no global batch of 64 \(data.batch_size=32 x 2 processes\)"):
        IterationBatchSampler(50, 32, world_size=2)


@pytest.mark.slow
def test_slurm_tasks_become_the_ranks_without_a_relaunch(tmp_path, one_process):
    """As srun starts them: one task per device, ranks from SLURM's variables; Lightning's SLURM
    environment takes over (its own requeue off), and no task starts further processes."""
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "vaegan", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
             "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "MASTER_PORT": str(free_port())}
    tasks = [subprocess.Popen([sys.executable, "-m", "vaegan.run", *SHORT, *PER_RANK, f"hydra.run.dir={tmp_path}"],
                              cwd=ROOT, env={**env(), **slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    logs = [task.communicate(timeout=300)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert not any("auto-requeueing enabled" in log for log in logs)  # submitit requeues, not Lightning
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert_close_weights(ckpt["state_dict"], one_process["state_dict"], atol=1e-6)


@pytest.mark.slow
def test_sigterm_stops_every_rank_at_one_iteration_and_the_run_resumes_exactly(tmp_path):
    from tests.training.test_resume import assert_identical, finish, start, training_state, wait_for

    run = [*TINY, *PER_RANK, "iterations=100000", "callbacks.checkpoint.every_n_iterations=5"]
    proc = start(*run, f"hydra.run.dir={tmp_path / 'stopped'}")
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    wait_for(last, proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)  # to rank 0 only; rank 1 learns of it through the all-reduce
    code, err = finish(proc, timeout=60)
    assert code == 128 + signal.SIGTERM, err[-3000:]
    assert err.count("Interrupted: stopped by SIGTERM") == 1  # one message, from rank 0
    stopped = torch.load(last, weights_only=True)["global_step"] // 3
    end = f"iterations={stopped + 3}"
    code, err = finish(start(*run, end, f"hydra.run.dir={tmp_path / 'stopped'}"))
    assert code == 0, err[-3000:]
    code, err = finish(start(*run, end, f"hydra.run.dir={tmp_path / 'straight'}"))
    assert code == 0, err[-3000:]
    assert_identical(training_state(last), training_state(tmp_path / "straight" / "checkpoints" / "last.ckpt"))
