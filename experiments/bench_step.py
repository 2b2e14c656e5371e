"""One training iteration of the full model, measured: the plain-PyTorch baseline, the framework
through Lightning, the same math in a bare loop, and each performance option alone and combined.

    python experiments/bench_step.py                       # everything (about 15 minutes on 2 CPU cores)
    python experiments/bench_step.py --sizes 32 --repeats 3  # a quick look

Every runner starts from the same weights and takes its turn one iteration at a time (round
robin), so drifting clocks and thermal state hit all of them alike; the tables give medians.
The Lightning run trains in a thread that waits at each batch for its turn, so its time per
iteration covers everything Lightning does between two batches (data, callbacks, logging).
FLOPs and peak tensor memory come from one iteration on fake tensors (no compute), ceilings from
a large matmul and conv3x3 timed in the same run. On a GPU the same script reports the GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Callable
from unittest.mock import patch

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from rich.console import Console
from rich.table import Table
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import checkpoint, checkpoint_sequential
from torch.utils.flop_counter import FlopCounterMode

from baseline import NaiveVAEGAN  # experiments/baseline.py (this script runs from experiments/)
from vaegan.training import performance, train
from vaegan.config import register_configs
from vaegan.models.controller import PIDController
from vaegan.models.module import VAEGANModule
from vaegan.training.performance import bf16_is_fast

ROOT = Path(__file__).resolve().parents[1]
# The experiments' shapes: 32x32 (cifar10, table1), 64x64 (celeba64), 128x128 (celeba128).
SIZES = {16: dict(width=4, latent_dim=8, channels=1), 32: dict(width=64, latent_dim=64, channels=3),
         64: dict(width=64, latent_dim=64, channels=3), 128: dict(width=128, latent_dim=64, channels=3)}
WARMUP = 2  # untimed rounds before the timed ones (the first compiles, with torch.compile)
QUICKSTART = dict(image_size=32, width=16, latent_dim=16, channels=1)
console = Console(width=150)
status = Console(stderr=True)  # progress while measuring


# ---------------------------------------------------------------------------------- runners
class Naive:
    """experiments/baseline.py: re-runs the discriminator on detached inputs, reads every loss."""

    def __init__(self, shape: dict, batch: int, device: torch.device):
        torch.manual_seed(0)
        self.model = NaiveVAEGAN(**shape, controller=dict(ki=1e-3))
        for net in self.model.networks:
            net.to(device)
        self.model.optimizers = [torch.optim.Adam(net.parameters(), lr=5e-5, betas=(0.5, 0.999)) for net in self.model.networks]
        self.x = images(batch, shape, device)
        self.gen = torch.Generator(device).manual_seed(0)

    def step(self) -> None:
        noise = [torch.randn(len(self.x), self.model.generator.fc.in_features, generator=self.gen, device=self.x.device)
                 for _ in range(2)]
        self.model.step(self.x, *noise)


class Bare:
    """The framework's own training_step (same code), called in a loop without Lightning: the
    controller and divergence guard run on the device, nothing is logged."""

    def __init__(self, shape: dict, batch: int, device: torch.device, options: performance.Performance,
                 bf16: bool = False):
        torch.manual_seed(0)
        module = VAEGANModule(**shape)
        if device.type != "cpu":
            module.to(device)
        module.performance = options
        performance.apply(module)
        optimizers = module.configure_optimizers()
        module.optimizer_list = lambda: optimizers
        module.manual_backward = lambda loss, *args, **kwargs: loss.backward(*args, **kwargs)
        module.is_logging_iteration = lambda iteration=None: False
        self.module, self.controller = module, PIDController(ki=1e-3)
        self.x = images(batch, shape, device)
        self.autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step(self) -> None:
        with self.autocast():
            out = self.module.training_step(self.x, 0)
        self.module.k = self.controller.update(out["e"], out["stepped"])


class Framework:
    """``vaegan.training.train.train`` of a composed config, in a thread that waits for its turn at each batch."""

    def __init__(self, overrides: list[str]):
        register_configs()
        self.dir = tempfile.TemporaryDirectory()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=[*overrides, f"paths.output_dir={self.dir.name}", "iterations=100000"])
        self.turnstile = Turnstile()
        self.threads = torch.get_num_threads()  # OpenMP's thread count is per calling thread
        build = train.build_callbacks
        train.build_callbacks = lambda *args, **kwargs: [self.turnstile, *build(*args, **kwargs)]
        try:
            self.thread = threading.Thread(target=self.run, args=(cfg,), daemon=True)
            self.error: BaseException | None = None
            self.thread.start()
            self.turnstile.arrived.acquire()  # set up and waiting at the first batch
        finally:
            train.build_callbacks = build
        if self.error:
            raise self.error

    def run(self, cfg) -> None:
        torch.set_num_threads(self.threads)
        try:
            train.train(cfg)
        except BaseException as err:  # reported by step()
            self.error = err
            self.turnstile.arrived.release()

    def step(self) -> None:
        self.turnstile.go.release()
        self.turnstile.arrived.acquire()
        if self.error:
            raise self.error

    def elapsed(self) -> float:
        return self.turnstile.times[-1]

    def close(self) -> None:
        self.turnstile.stop = True
        self.turnstile.go.release()
        self.thread.join(timeout=60)
        self.dir.cleanup()


class Turnstile(L.Callback):
    """First callback of the run: holds each batch until the benchmark lets it go; the time from one
    release to the next arrival is one whole iteration of Lightning."""

    def __init__(self):
        self.go, self.arrived = threading.Semaphore(0), threading.Semaphore(0)
        self.times: list[float] = []
        self.released: float | None = None
        self.stop = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.released is not None:
            sync(pl_module.device)
            self.times.append(time.perf_counter() - self.released)
        self.arrived.release()
        self.go.acquire()
        if self.stop:
            raise KeyboardInterrupt  # Lightning stops the run gracefully
        self.released = time.perf_counter()


def images(batch: int, shape: dict, device: torch.device) -> torch.Tensor:
    size, channels = shape["image_size"], shape["channels"]
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(1)).to(device) * 2 - 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------- measuring
def race(runners: dict[str, object], repeats: int, warmup: int, device: torch.device) -> dict[str, dict]:
    """Round-robin iterations; per runner the median seconds, the warm-up seconds (compilation) and
    the peak device memory on GPUs."""
    results = {name: {"times": [], "warmup": 0.0, "peak_bytes": None} for name in runners}
    for round_ in range(warmup + repeats):
        status.log(f"round {round_ + 1}/{warmup + repeats} of {', '.join(runners)}")
        for name, runner in runners.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            runner.step()
            sync(device)
            seconds = runner.elapsed() if isinstance(runner, Framework) else time.perf_counter() - start
            if round_ < warmup:
                results[name]["warmup"] += seconds
            else:
                results[name]["times"].append(seconds)
            if device.type == "cuda":
                results[name]["peak_bytes"] = torch.cuda.max_memory_allocated(device)
    for result in results.values():
        result["median_s"] = statistics.median(result["times"])
    return results


class LiveBytes(TorchDispatchMode):
    """Peak bytes of live tensor storage while active (fake tensors free as real ones would)."""

    def __init__(self, tensors=()):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0
        for tensor in tensors:
            self.track(tensor)

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if id(storage) in self.live:
            return
        self.live[id(storage)] = storage.nbytes()
        self.now += storage.nbytes()
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self.release, id(storage))

    def release(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self.track(value)
        return out


def count(make: Callable[[], object]) -> tuple[float, int]:
    """(FLOPs of one iteration, peak tensor bytes over two iterations with Adam's states), counted on
    fake tensors. The baseline's host reads (``.item()``) have no value there and read as 1."""
    runner = make()  # real weights (small); everything computed from them is fake
    with FakeTensorMode(allow_non_fake_inputs=True), patch.object(torch.Tensor, "item", lambda self: 1.0):
        nets = runner.module.networks.values() if isinstance(runner, Bare) else runner.model.networks
        with LiveBytes([*(p for net in nets for p in net.parameters()), runner.x]) as live:
            runner.step()
            with FlopCounterMode(display=False) as flops:
                runner.step()
    return flops.get_total_flops(), live.peak


def checkpointed(runner: Bare, per_scale: bool) -> Bare:
    """Activation checkpointing of every network pass, per scale (all but the last, as
    ``checkpoint_sequential`` does) or whole. Bench only: it does not pay off (docs/performance.md)."""
    def wrap(features: torch.nn.Sequential) -> None:
        layers = list(features)
        scales = 1 + sum(isinstance(m, torch.nn.Upsample) or getattr(m, "stride", (1, 1)) == (2, 2) for m in layers)
        if per_scale:
            features.forward = lambda x: checkpoint_sequential(layers, scales, x, use_reentrant=False)
        else:
            run = torch.nn.Sequential.forward.__get__(features)
            features.forward = lambda x: checkpoint(run, x, use_reentrant=False)
    for net in runner.module.networks.values():
        for block in [m for m in net.modules() if isinstance(m, torch.nn.Sequential)]:
            wrap(block)
    return runner


def ceilings(device: torch.device, repeats: int = 5) -> dict[str, float]:
    """FLOP/s of a large matmul (4096^2 on GPUs, 2048^2 on CPUs) and a conv3x3 (batch 16, 128 -> 128
    channels, 64x64), fp32 and bf16, the conv in NCHW and channels_last. Where bf16 is emulated its
    problems are 8x smaller (they would take minutes)."""
    cases = {}
    for dtype, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        small = dtype == torch.bfloat16 and not bf16_is_fast(device)
        n = (4096 if device.type == "cuda" else 2048) // (2 if small else 1)
        a = torch.randn(n, n, device=device, dtype=dtype)
        cases[f"matmul {tag}"] = (lambda a=a: a @ a, 2 * n**3)
        batch = 2 if small else 16
        x, w = torch.randn(batch, 128, 64, 64, device=device, dtype=dtype), torch.randn(128, 128, 3, 3, device=device, dtype=dtype)
        for layout, fmt in (("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)):
            xx, ww = x.contiguous(memory_format=fmt), w.contiguous(memory_format=fmt)
            conv = lambda xx=xx, ww=ww: torch.nn.functional.conv2d(xx, ww, padding=1)  # noqa: E731
            cases[f"conv3x3 {tag} {layout}"] = (conv, 2 * batch * 128 * 128 * 9 * 64 * 64)
    out = {}
    with torch.no_grad():
        for name, (fn, flops) in cases.items():
            status.log(f"ceiling: {name}")
            times = []
            for _ in range(repeats + 1):
                sync(device)
                start = time.perf_counter()
                fn()
                sync(device)
                times.append(time.perf_counter() - start)
                if times[0] > 2:  # emulated: one timing is enough
                    break
            out[name] = flops / statistics.median(times[1:] or times)
    return out


# ---------------------------------------------------------------------------------- the runs
def option_runners(size: int, batch: int, device: torch.device, compile_: bool) -> dict[str, Callable[[], object]]:
    """The baseline, the optimised iteration (one forward per network, one backward per objective,
    nothing read from the device: bit-identical to the baseline), each option alone on top of it,
    the defaults (what the framework runs) and the best combination."""
    shape = dict(image_size=size, **SIZES[size])
    base = dict(channels_last=False, shared_backward=False)

    def bare(bf16: bool = False, **options) -> Callable[[], Bare]:
        return lambda: Bare(shape, batch, device, performance.Performance(**{**base, **options}), bf16=bf16)
    makers = {
        "naive baseline": lambda: Naive(shape, batch, device),
        "optimised": bare(),
        "+ shared backward": bare(shared_backward=True),
        "+ channels_last": bare(channels_last=True),
        "+ batched discriminator": bare(batched_discriminator=True),
        "+ bf16": bare(bf16=True),
        "+ torch.compile": bare(compile="default"),
        "defaults": lambda: Bare(shape, batch, device, performance.Performance()),
        "defaults + bf16": lambda: Bare(shape, batch, device, performance.Performance(), bf16=True),
    }
    if not bf16_is_fast(device):  # emulated bf16 takes minutes per iteration beyond 32x32
        del makers["+ bf16"]
        if size > 32:
            del makers["defaults + bf16"]
    if not compile_:
        del makers["+ torch.compile"]
    return makers


def framework_overrides(size: int, batch: int, device: torch.device) -> list[str]:
    s = SIZES[size]
    return ["+experiment=quickstart", "data=synthetic", f"data.image_size={size}", f"data.channels={s['channels']}",
            f"data.batch_size={batch}", f"model.width={s['width']}", f"model.latent_dim={s['latent_dim']}",
            f"trainer.accelerator={device.type}", "callbacks.progress_bar.enabled=false", "trainer.enable_model_summary=false"]


def bench_size(size: int, batch: int, repeats: int, device: torch.device, compile_: bool) -> dict:
    makers = option_runners(size, batch, device, compile_)
    counts = {name: count(make) for name, make in makers.items() if "compile" not in name}
    if compile_:
        counts["+ torch.compile"] = counts["optimised"]  # the same operations, fused
    counts["framework (Lightning)"] = counts["defaults"]
    runners = {name: make() for name, make in makers.items()}
    runners["framework (Lightning)"] = Framework(framework_overrides(size, batch, device))
    try:
        results = race(runners, repeats, warmup=WARMUP, device=device)
    finally:
        runners["framework (Lightning)"].close()
    for name, result in results.items():
        result["flops"], result["fake_peak_bytes"] = counts[name]
    return {"size": size, "batch": batch, "results": results}


def bench_overhead(repeats: int, device: torch.device) -> dict:
    """The framework against the bare loop where the framework's own cost shows: a tiny model, and
    the quickstart (its config as is: digits, logs every 10 iterations, progress bar on). The tiny
    model runs on one CPU thread: it is faster there, and two threads' OpenMP teams (the loop's and
    Lightning's) would take turns at the cores, adding +-10 ms of noise to 60 ms iterations."""
    rows = {}
    tiny = dict(image_size=16, **SIZES[16])
    quick = {"image_size": 32, **{k: v for k, v in QUICKSTART.items() if k != "image_size"}}
    for label, shape, overrides in (
        ("tiny 16x16, width 4", tiny, ["+experiment=quickstart", "data.image_size=16", "model.width=4", "model.latent_dim=8",
                                       f"trainer.accelerator={device.type}", "callbacks.progress_bar.enabled=false",
                                       "trainer.enable_model_summary=false"]),
        ("quickstart 32x32, width 16", quick, ["+experiment=quickstart", f"trainer.accelerator={device.type}",
                                               "trainer.enable_model_summary=false"]),
    ):
        threads = torch.get_num_threads()
        if label.startswith("tiny") and device.type == "cpu":
            torch.set_num_threads(1)
        runners = {"bare": Bare(shape, 16, device, performance.Performance()), "framework": Framework(overrides)}
        try:
            rows[label] = race(runners, repeats, warmup=5, device=device)
        finally:
            runners["framework"].close()
            torch.set_num_threads(threads)
    return rows


# ---------------------------------------------------------------------------------- report
def report(device, peaks, overhead, sizes) -> None:
    console.print(f"[bold]device[/]: {device_name(device)}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    table = Table(title="Ceilings (same run)")
    table.add_column("kernel")
    table.add_column("GFLOP/s", justify="right")
    for name, value in peaks.items():
        table.add_row(name, f"{value / 1e9:.0f}")
    console.print(table)

    table = Table(title="Framework overhead per iteration (median)")
    for column in ("model", "bare loop ms", "framework ms", "overhead ms", "overhead %"):
        table.add_column(column, justify="right")
    for label, res in overhead.items():
        bare, fw = res["bare"]["median_s"] * 1e3, res["framework"]["median_s"] * 1e3
        table.add_row(label, f"{bare:.2f}", f"{fw:.2f}", f"{fw - bare:+.2f}", f"{100 * (fw - bare) / bare:+.1f}")
    console.print(table)

    conv_fp32 = peaks["conv3x3 fp32 channels_last"]
    for entry in sizes:
        table = Table(title=f"{entry['size']}x{entry['size']}, batch {entry['batch']}, width {SIZES[entry['size']]['width']}")
        for column in ("runner", "ms / iteration", "images/s", "x naive", "GFLOP / iteration", "GFLOP/s",
                       "% conv ceiling", "peak memory GiB", "compile s"):
            table.add_column(column, justify="right")
        results = entry["results"]
        naive = results["naive baseline"]["median_s"]
        for name, r in results.items():
            seconds = r["median_s"]
            ceiling = peaks["conv3x3 bf16 channels_last"] if "bf16" in name else conv_fp32
            peak = r["peak_bytes"] or r["fake_peak_bytes"]
            table.add_row(name, f"{seconds * 1e3:.0f}", f"{entry['batch'] / seconds:.1f}", f"{naive / seconds:.2f}",
                          f"{r['flops'] / 1e9:.0f}", f"{r['flops'] / seconds / 1e9:.0f}",
                          f"{100 * r['flops'] / seconds / ceiling:.0f}", f"{peak / 2**30:.2f}",
                          f"{r['warmup'] - WARMUP * seconds:.0f}" if "compile" in name else "")
        console.print(table)
    if len(sizes) > 1:
        base = sizes[0]
        for entry in sizes[1:]:
            a, b = base["results"]["defaults"], entry["results"]["defaults"]
            flops = (b["flops"] / entry["batch"]) / (a["flops"] / base["batch"])
            time_ = (b["median_s"] / entry["batch"]) / (a["median_s"] / base["batch"])
            console.print(f"{base['size']} -> {entry['size']}: FLOPs per image x{flops:.1f}, time per image x{time_:.1f}")


def memory_table(device: torch.device) -> list[dict]:
    """Peak tensor memory and FLOPs of one iteration at 128x128 (batch 16 and 64), counted on fake
    tensors: fp32, bf16, and fp32 with activation checkpointing per scale and per network pass."""
    rows = []
    shape = dict(image_size=128, **SIZES[128])
    for batch in (16, 64):
        for label, bf16, ckpt in (("fp32", False, None), ("bf16", True, None), ("fp32, checkpoint each scale", False, True),
                                  ("fp32, checkpoint each pass", False, False)):
            def make(bf16=bf16, ckpt=ckpt):
                runner = Bare(shape, batch, device, performance.Performance(), bf16=bf16)
                return runner if ckpt is None else checkpointed(runner, per_scale=ckpt)
            flops, peak = count(make)
            rows.append({"batch": batch, "run": label, "peak_bytes": peak, "flops": flops})
    table = Table(title="128x128, width 128: peak tensor memory of one iteration (fake tensors)")
    for column in ("batch", "run", "peak GiB", "vs fp32", "GFLOP", "vs fp32"):
        table.add_column(column, justify="right")
    for row in rows:
        ref = next(r for r in rows if r["batch"] == row["batch"] and r["run"] == "fp32")
        table.add_row(str(row["batch"]), row["run"], f"{row['peak_bytes'] / 2**30:.1f}",
                      f"{row['peak_bytes'] / ref['peak_bytes']:.2f}", f"{row['flops'] / 1e9:.0f}",
                      f"{row['flops'] / ref['flops']:.2f}")
    console.print(table)
    return rows


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batch-128", type=int, default=None, help="batch at 128x128 (default: 4 on CPUs, else --batch)")
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per runner (medians)")
    parser.add_argument("--overhead-repeats", type=int, default=60)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (its compilation takes minutes on CPUs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, help="also write every number here")
    args = parser.parse_args()
    device = torch.device(args.device)
    peaks = ceilings(device)
    overhead = bench_overhead(args.overhead_repeats, device)
    sizes = []
    for size in args.sizes:
        batch = (args.batch_128 or (4 if device.type == "cpu" else args.batch)) if size == 128 else args.batch
        repeats = max(3, args.repeats // 2) if size == 128 else args.repeats
        sizes.append(bench_size(size, batch, repeats, device, compile_=not args.no_compile and size < 128))
    report(device, peaks, overhead, sizes)
    memory = memory_table(device)
    if args.json:
        args.json.write_text(json.dumps({"device": device_name(device), "ceilings": peaks, "overhead": overhead,
                                         "sizes": sizes, "memory_128": memory}, indent=1, default=str))


if __name__ == "__main__":
    main()
