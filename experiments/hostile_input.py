"""Hostile input, measured: each fault of the "Hostile input" table of docs/fault-tolerance.md run as a user would, with
its exit status, its time and the last line it prints.

    python experiments/hostile_input.py                 # every fault, one table (about 3 minutes on 2 cores)
    python experiments/hostile_input.py --only config   # the faults whose name contains "config"
    python experiments/hostile_input.py --repeat 5      # each config error 5 times: the median time

Everything it makes lives in a temporary folder, removed at the end. Faults that need the shared
data (../shared/data, named "shared: ...") are left out without it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PY = sys.executable
RUN = [PY, "-m", "vaegan.run", "+experiment=quickstart", "callbacks.progress_bar.enabled=false"]
TINY = ["data.image_size=16", "model.width=4", "model.latent_dim=8", "trainer.enable_model_summary=false"]


class Work:
    """The temporary folder, and the things faults need, made once on first use."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def checkpoint(self) -> Path:
        run = self.path("trained")
        last = run / "checkpoints" / "last.ckpt"
        if not last.exists():
            subprocess.run([*RUN, *TINY, "iterations=4", f"hydra.run.dir={run}"], cwd=ROOT, check=True,
                           capture_output=True, env=env())
        return last


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(argv: list[str], cwd: Path = ROOT, timeout: float = 300) -> tuple[int, float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env())
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return done.returncode, time.perf_counter() - start, lines[-1] if lines else "(nothing on stderr)"


def interrupt(argv: list[str], ready: Path, signals: int) -> tuple[int, float, str]:
    """Starts ``argv``, waits for ``ready`` to exist, sends SIGINT ``signals`` times (20 ms apart)."""
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env())
    while not ready.exists() and proc.poll() is None:
        time.sleep(0.05)
    start = time.perf_counter()
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.02)
    _, err = proc.communicate(timeout=120)
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return proc.returncode, time.perf_counter() - start, lines[-1]


def two_runs(w: Work) -> tuple[int, float, str]:
    run_dir = w.path("shared_dir")
    first = subprocess.Popen([*RUN, *TINY, "iterations=100000", f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (run_dir / "config.yaml").exists():
            time.sleep(0.1)
        return run([*RUN, *TINY, "iterations=10", f"hydra.run.dir={run_dir}"])
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait()


def corrupt_last(w: Work) -> tuple[int, float, str]:
    run_dir = w.path("corrupt_run")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(w.checkpoint().read_bytes()[:5000])
    return run([*RUN, *TINY, "iterations=10", f"hydra.run.dir={run_dir}"])


def empty_checkpoint(w: Work) -> tuple[int, float, str]:
    empty = w.path("empty.ckpt")
    empty.touch()
    return run([*RUN, *TINY, f"ckpt_path={empty}", f"hydra.run.dir={w.path('empty_run')}"])


def explore(w: Work, *args: str) -> tuple[int, float, str]:
    return run([PY, "-m", "vaegan.explore", *args[:1], f"ckpt_path={w.checkpoint()}", *args[1:]])


def without_config(w: Work) -> tuple[int, float, str]:
    run_dir = w.path("no_config")
    if not run_dir.exists():
        shutil.copytree(w.checkpoint().parent.parent, run_dir)
        (run_dir / "config.yaml").unlink()
    return run([PY, "-m", "vaegan.evaluate", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"])


def text_npz(w: Work) -> tuple[int, float, str]:
    path = w.path("text.npz")
    path.write_text("x,y\n1,2\n")
    return run([*RUN, "data=npz", f"data.root={path}", f"hydra.run.dir={w.path('npz_run')}"])


def sixteen_bit(w: Work) -> tuple[int, float, str]:
    """200 CelebA faces as 16-bit grey PNGs (x257): the cached pixels must be the 8-bit originals."""
    import numpy as np
    from PIL import Image

    faces, folder = np.load(SHARED / "celeba" / "celeba_64.npz")["x"][:200], w.path("png16")
    folder.mkdir(exist_ok=True)
    grey = np.asarray([np.asarray(Image.fromarray(face).convert("L")) for face in faces])
    for i, face in enumerate(grey):
        Image.fromarray(face.astype(np.uint16) * 257).save(folder / f"{i:03d}.png")
    status, seconds, line = run([*RUN, "data=folder", f"data.root={folder}", "data.image_size=64", "data.channels=1",
                                 f"data.cache_dir={w.path('cache16')}", "iterations=2", f"hydra.run.dir={w.path('r16')}"])
    cached = np.load(next(w.path("cache16").glob("folder-*/images.npy")))[..., 0]
    order = sorted(range(len(grey)), key=lambda i: f"{i:03d}.png")
    diff = int(np.abs(cached.astype(int) - grey[order].astype(int)).max())
    return status, seconds, f"trained; cached pixels differ from the 8-bit originals by at most {diff}"


def read_only_cache(w: Work) -> tuple[int, float, str]:
    """A complete cache made read-only (chmod; for root a read-only bind mount) is used as it is."""
    folder, cache = SHARED / "celeba" / "img_align_celeba", w.path("ro_cache")
    common = [*RUN, "data=folder", f"data.root={folder}", "data.image_size=16", f"data.cache_dir={cache}", "iterations=2"]
    subprocess.run([*common, f"hydra.run.dir={w.path('ro_build')}"], cwd=ROOT, env=env(), capture_output=True, check=True)
    if os.geteuid() == 0:
        subprocess.run(["mount", "--bind", str(cache), str(cache)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(cache)], check=True)
    else:
        subprocess.run(["chmod", "-R", "a-w", str(cache)], check=True)
    try:
        status, seconds, _ = run([*common, f"hydra.run.dir={w.path('ro_use')}"])
        return status, seconds, "trained from the read-only cache"
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(cache)], check=True)
        else:
            subprocess.run(["chmod", "-R", "u+w", str(cache)], check=True)


def a_file(w: Work) -> Path:
    path = w.path("a_file")
    path.write_text("not a folder")
    return path


# name -> how to provoke it. Config errors come first: --repeat times them.
FAULTS: dict[str, Callable[[Work], tuple[int, float, str]]] = {
    "config: README data.root=~/data": lambda w: run([*RUN, "data=celeba", "data.root=~/data"]),
    "config: unquoted path with spaces": lambda w: run([*RUN, "data=folder", "data.root=/my", "faces"]),
    "config: model.widht=8": lambda w: run([*RUN, "model.widht=8"]),
    "config: +model.widht=8": lambda w: run([*RUN, "+model.widht=8"]),
    "config: data.batch_size=many": lambda w: run([*RUN, "data.batch_size=many"]),
    "config: model.width=-1": lambda w: run([*RUN, "model.width=-1", f"hydra.run.dir={w.path('width')}"]),
    "config: data.image_size=2048": lambda w: run([*RUN, "data.image_size=2048", f"hydra.run.dir={w.path('big')}"]),
    "config: trainer.devices=3 without trainer=ddp_cpu": lambda w: run([*RUN, "trainer.devices=3",
                                                                        f"hydra.run.dir={w.path('dev')}"]),
    "config: Adam betas [0.5, 1.5]": lambda w: run([*RUN, "model.optimizer.betas=[0.5,1.5]",
                                                    f"hydra.run.dir={w.path('betas')}"]),
    "config: seed=-1": lambda w: run([*RUN, "seed=-1", f"hydra.run.dir={w.path('seed')}"]),
    "config: hydra.run.dir is a file": lambda w: run([*RUN, f"hydra.run.dir={a_file(w)}"]),
    "config: hydra.run.dir below a file": lambda w: run([*RUN, f"hydra.run.dir={a_file(w)}/run"]),
    "trainer=gpu on a CPU-only machine": lambda w: run([*RUN, "trainer=gpu", f"hydra.run.dir={w.path('gpu')}"]),
    "two runs in one run directory": two_runs,
    "corrupt last.ckpt in the run directory": corrupt_last,
    "resume with iterations <= the checkpoint's": lambda w: run([*RUN, *TINY, "iterations=4",
                                                                 f"ckpt_path={w.checkpoint()}", f"hydra.run.dir={w.path('again')}"]),
    "an empty file as ckpt_path": lambda w: empty_checkpoint(w),
    "evaluate a checkpoint without its config.yaml": without_config,
    "explore out=<an existing file>": lambda w: explore(w, "sample", f"out={a_file(w)}"),
    "explore sample n=abc": lambda w: explore(w, "sample", "n=abc"),
    "explore sample n=100000000": lambda w: explore(w, "sample", "n=100000000"),
    "explore interpolate pairs=[[-1,2]]": lambda w: explore(w, "interpolate", "pairs=[[-1,2]]"),
    "an npz that is a text file": text_npz,
    "shared: 16-bit PNGs": sixteen_bit,
    "shared: a complete cache on a read-only filesystem": read_only_cache,
    "Ctrl-C during training": lambda w: interrupt([*RUN, *TINY, "iterations=100000", f"hydra.run.dir={w.path('c1')}",
                                                   "callbacks.checkpoint.every_n_iterations=20"],
                                                  w.path("c1") / "checkpoints" / "last.ckpt", 1),
    "Ctrl-C twice": lambda w: interrupt([*RUN, "data.image_size=64", "model.width=48", "iterations=100000",
                                         f"hydra.run.dir={w.path('c2')}", "callbacks.checkpoint.every_n_iterations=2"],
                                        w.path("c2") / "checkpoints" / "last.ckpt", 2),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="faults whose name contains this")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each config error (the median time is shown)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vaegan-hostile-") as tmp:
        work = Work(Path(tmp))
        rows = []
        for name, provoke in FAULTS.items():
            if args.only not in name or name.startswith("shared") and not SHARED.is_dir():
                continue
            times, status, line = [], None, ""
            for _ in range(args.repeat if name.startswith("config") else 1):
                for leftover in ("width", "big", "dev", "betas", "seed"):  # the same directory each time
                    shutil.rmtree(work.path(leftover), ignore_errors=True)
                status, seconds, line = provoke(work)
                times.append(seconds)
            rows.append((name, status, statistics.median(times), line))
            print(f"{name:48s} {status:>4} {statistics.median(times):6.2f} s  {line}", flush=True)
    print("\n| fault | exit | seconds | what the user sees |\n| --- | ---: | ---: | --- |")
    for name, status, seconds, line in rows:
        print(f"| {name} | {status} | {seconds:.2f} | `{line}` |")


if __name__ == "__main__":
    main()
