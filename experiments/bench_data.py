"""Data throughput: the plain path (PIL decode + torchvision transforms in a DataLoader) against
the cached path (uint8 memory map, whole-batch reads, normalise and flip as tensors), and the
cache build rate, at 64x64 and 128x128, measured side by side in one run.

    python experiments/bench_data.py [--copies 10] [--seconds 3] [--repeats 3]

It builds a torchvision-style CelebA layout in a temporary directory from the 200 original
JPEGs in ../shared/data/celeba (``--copies`` renamed copies of each), so every path decodes
real CelebA files. Each measurement runs ``--repeats`` times, interleaved; the table shows medians.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from vaegan.data import CelebADataModule, to_model_input
from vaegan.data.cache import cpu_count, load_or_build
from vaegan.data.sources import CelebASource
from vaegan.data.transforms import center_crop_box, crop_and_resize

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "celeba"


def make_layout(root: Path, copies: int) -> int:
    """<root>/celeba/... with ``copies`` renamed copies of each shared JPEG and their annotation rows."""
    base = root / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    attr_lines = (SHARED / "list_attr_celeba_subset.txt").read_text().splitlines()
    attrs = {line.split()[0]: line.split()[1:] for line in attr_lines[2:]}
    parts = dict(line.split() for line in (SHARED / "list_eval_partition_subset.txt").read_text().splitlines())
    originals = sorted((SHARED / "img_align_celeba").glob("*.jpg"))
    rows, part_rows = [], []
    for n in range(copies * len(originals)):
        src = originals[n % len(originals)]
        name = f"{n + 1:06d}.jpg"
        shutil.copyfile(src, base / "img_align_celeba" / name)
        rows.append(f"{name} {' '.join(attrs[src.name])}")
        part_rows.append(f"{name} {parts[src.name]}")
    (base / "list_attr_celeba.txt").write_text("\r\n".join([str(len(rows)), attr_lines[1], *rows]) + "\r\n")
    (base / "list_eval_partition.txt").write_text("\r\n".join(part_rows) + "\r\n")
    return len(rows)


class PlainCelebA(Dataset):
    """What a user writes without a cache: open each JPEG, transform with torchvision."""

    def __init__(self, files: list[Path], size: int):
        self.files = files
        self.transform = T.Compose([T.CenterCrop(178), T.Resize(size), T.ToTensor(), T.Normalize(0.5, 0.5)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB"))


def images_per_second(loader: DataLoader, seconds: float, transform=None) -> float:
    """Iterate (re-starting epochs) for about ``seconds`` after one warm-up batch."""
    count, start, it = 0, None, iter(loader)
    while start is None or time.perf_counter() - start < seconds:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if transform is not None:
            batch = transform(batch)
        if start is None:  # warm-up: worker start-up is not throughput
            start = time.perf_counter()
            continue
        count += batch.shape[0]
    return count / (time.perf_counter() - start)


def draft_mode_check(files: list[Path], size: int) -> tuple[float, float, float, float]:
    """JPEG draft mode (DCT-domain downscaling) against the exact decode, one process:
    (exact img/s, draft img/s, mean and max absolute pixel difference)."""
    def exact(f: Path):
        with Image.open(f) as img:
            return crop_and_resize(img, size, 178)

    def draft(f: Path):
        with Image.open(f) as img:
            img.draft("RGB", (size, -(-size * img.size[1] // 178)))  # largest DCT scale keeping the crop >= size
            scale = img.size[0] / 178
            left, top, right, bottom = center_crop_box(178, 218, 178)
            img = img.convert("RGB").crop(tuple(round(v * scale) for v in (left, top, right, bottom)))
            return np.asarray(img.resize((size, size), Image.BILINEAR))

    rates, outputs = [], []
    for decode in (exact, draft):
        start = time.perf_counter()
        outputs.append(np.stack([decode(f) for f in files]).astype(np.int16))
        rates.append(len(files) / (time.perf_counter() - start))
    diff = np.abs(outputs[0] - outputs[1])
    return rates[0], rates[1], float(diff.mean()), float(diff.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=10, help="copies of each of the 200 JPEGs (default 10: 2,000 files)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time per loader measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="the paper's CelebA batch size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"needs the shared CelebA files at {SHARED}")
    cores = cpu_count()
    console = Console(width=130)
    results: dict[int, dict[str, list[float]]] = {s: {"plain": [], "cached": [], "cached_w1": [], "build": []} for s in args.sizes}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = make_layout(tmp, args.copies)
        files = sorted((tmp / "celeba" / "img_align_celeba").glob("*.jpg"))
        for repeat in range(args.repeats):
            for size in args.sizes:
                cache_dir = tmp / f"cache-{repeat}-{size}"
                start = time.perf_counter()
                load_or_build(CelebASource(tmp), size, 3, cache_dir, workers=cores)
                results[size]["build"].append(n / (time.perf_counter() - start))

                plain = DataLoader(PlainCelebA(files, size), args.batch_size, shuffle=True, drop_last=True,
                                   num_workers=cores, persistent_workers=True)
                results[size]["plain"].append(images_per_second(plain, args.seconds))
                del plain
                gc.collect()  # stops the persistent workers before the next measurement

                for workers, column in ((0, "cached"), (1, "cached_w1")):
                    dm = CelebADataModule(root=str(tmp), cache_dir=str(cache_dir), image_size=size, batch_size=args.batch_size,
                                          num_workers=workers, train_split="all", flip=True)
                    dm.setup()
                    gen = torch.Generator().manual_seed(0)
                    rate = images_per_second(dm.train_dataloader(), args.seconds, lambda b: to_model_input(b, True, gen))
                    results[size][column].append(rate)

    table = Table(title=f"CelebA loading, {n:,} JPEGs, batch {args.batch_size}, {cores} cores, medians of {args.repeats}")
    for column in ("size", "(a) plain img/s", "(b) cached img/s", "(b) ratio (b)/(a)", "cached, 1 worker img/s", "cache build img/s", "build/plain"):
        table.add_column(column, justify="right")
    for size, r in results.items():
        med = {k: statistics.median(v) for k, v in r.items()}
        table.add_row(f"{size}x{size}", f"{med['plain']:,.0f}", f"{med['cached']:,.0f}", f"x{med['cached'] / med['plain']:,.1f}",
                      f"{med['cached_w1']:,.0f}", f"{med['build']:,.0f}", f"x{med['build'] / med['plain']:.2f}")
    console.print(table)
    console.print("(a): PIL decode + CenterCrop(178) + Resize + ToTensor + Normalize, DataLoader with one worker per core.\n"
                  "(b): vaegan's cached path, DataLoader in the training process (num_workers=0), uint8 batches "
                  "normalised to [-1, 1] and randomly flipped as tensors (the on-device step, here on the CPU).")
    draft = Table(title="JPEG draft mode (decoding at a DCT scale): not used by the cache; speed and pixel error, one process")
    for column in ("size", "exact img/s", "draft img/s", "speed-up", "mean |diff|", "max |diff|"):
        draft.add_column(column, justify="right")
    for size in args.sizes:
        exact_rate, draft_rate, mean, worst = draft_mode_check(sorted((SHARED / "img_align_celeba").glob("*.jpg")), size)
        draft.add_row(f"{size}x{size}", f"{exact_rate:,.0f}", f"{draft_rate:,.0f}", f"x{draft_rate / exact_rate:.2f}", f"{mean:.2f}", f"{worst:.0f}")
    console.print(draft)


if __name__ == "__main__":
    main()
