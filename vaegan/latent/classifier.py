"""A measured check that attribute editing works (``python -m vaegan.explore edit --measure``).

A small CNN is trained on the training split's labels (class labels of digits and CIFAR-10, one
output per class; CelebA's 40 attributes, one sigmoid each) and cached by the data it saw. It then
judges edits: for each attribute a and held-out image without a, does the classifier's probability
of a rise from F_vae-d(z) to F_vae-d(z + w v_a)? A random direction of the same norm is the chance
baseline, since any change of z moves the probability somewhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaegan.utils.files import write_atomic
from vaegan.data.transforms import to_model_input
from vaegan.latent.arithmetic import attribute_table, batches

VERSION = 3  # bump when the network or its training changes: cached classifiers are then retrained


class Classifier(nn.Module):
    """Four 3x3 conv blocks (two with stride 2), global average pooling, a linear layer. Inputs
    larger than 64 pixels are average-pooled to 64 first."""

    def __init__(self, channels: int, outputs: int, width: int = 32):
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(
            *block(channels, width, 1), *block(width, width, 2), *block(width, 2 * width, 1),
            *block(2 * width, 2 * width, 2), *block(2 * width, 4 * width, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(4 * width, outputs)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] > 64:
            x = F.adaptive_avg_pool2d(x, 64)
        return self.head(self.features(x))


@dataclass
class Judge:
    """A trained classifier and how it reads its outputs: ``multilabel`` (sigmoid per attribute)
    or one softmax over classes. ``accuracy`` is per output, on the held-out split: balanced
    accuracy per attribute, recall per class."""

    model: Classifier
    names: list[str]
    multilabel: bool
    accuracy: list[float]
    held_out: str

    @torch.no_grad()
    def probabilities(self, x: Tensor) -> Tensor:
        logits = self.model(x)
        return logits.sigmoid() if self.multilabel else logits.softmax(1)


def targets_of(arrays: dict, multilabel: bool, rows: np.ndarray) -> Tensor:
    if multilabel:
        return torch.from_numpy((np.asarray(arrays["attrs"])[rows] > 0).astype(np.float32))
    return torch.from_numpy(np.asarray(arrays["labels"])[rows].astype(np.int64))


def fit(images: np.ndarray, targets: Tensor, outputs: int, multilabel: bool, epochs: int, seed: int,
        device: torch.device, batch_size: int = 64, progress: Callable[[int], None] | None = None) -> Classifier:
    """Adam (lr 2e-3, cosine-decayed), cross-entropy or per-attribute BCE, ``epochs`` passes. The BCE
    weighs each attribute's positives by its negatives-to-positives ratio (within 1/20..20), so that rare
    attributes (Eyeglasses: 5% of CelebA) are not simply never predicted."""
    torch.manual_seed(seed)
    model = Classifier(images.shape[-1], outputs).to(device)
    steps = epochs * max(1, len(images) // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rng = np.random.default_rng(seed)
    if multilabel:
        positives = targets.sum(0)
        pos_weight = ((len(targets) - positives) / positives.clamp_min(1)).clamp(0.05, 20.0).to(device)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(images))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = np.sort(order[start:start + batch_size])
            x = to_model_input(torch.from_numpy(images[rows])).to(device)
            logits = model(x)
            y = targets[rows].to(device)
            loss = (F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight) if multilabel
                    else F.cross_entropy(logits, y))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            if progress is not None:
                progress(1)
    return model.eval()


@torch.no_grad()
def accuracy(model: Classifier, images: np.ndarray, targets: Tensor, multilabel: bool, device: torch.device) -> list[float]:
    logits = torch.cat([model(x.to(device)).cpu() for x in batches(images, 256)])
    if multilabel:  # balanced: the mean of the rates on images with and without (rare attributes stay honest)
        hit = (logits > 0).float() == targets
        pos, neg = targets.bool(), ~targets.bool()
        rate = lambda mask: (hit & mask).sum(0) / mask.sum(0).clamp_min(1)  # noqa: E731
        return torch.where(pos.any(0) & neg.any(0), (rate(pos) + rate(neg)) / 2, hit.float().mean(0)).tolist()
    hits = logits.argmax(1) == targets
    return [hits[targets == c].float().mean().item() if (targets == c).any() else float("nan")
            for c in range(logits.shape[1])]


def load_or_train(dm, cache_dir: Path, epochs: int = 8, seed: int = 0, device: torch.device | str = "cpu",
                  progress: Callable[[int], None] | None = None) -> Judge:
    """The judge for ``dm``'s labels: read from ``cache_dir`` if one was trained on the same images
    with the same settings, else trained on the training split and saved (temporary file, rename)."""
    from vaegan.metrics.fidelity import data_id

    dm.setup()
    arrays = dm.data.arrays
    names, table = attribute_table(dm)
    multilabel = table == "attrs"
    train, held_out = dm.splits["train"], dm.splits[dm.val_split]
    key = hashlib.sha256(json.dumps([VERSION, data_id(dm, train), data_id(dm, held_out), multilabel, epochs, seed,
                                     dm.image_size, dm.channels]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"classifier-{key}.pt"
    device = torch.device(device)
    if path.is_file():
        try:
            saved = torch.load(path, map_location=device, weights_only=True)
            model = Classifier(dm.channels, len(names)).to(device)
            model.load_state_dict(saved["state_dict"])
            return Judge(model.eval(), names, multilabel, saved["accuracy"], saved["held_out"])
        except Exception:  # noqa: BLE001 - a damaged cache is retrained, not trusted
            pass
    images = dm.data.images
    model = fit(np.asarray(images[train]), targets_of(arrays, multilabel, train), len(names), multilabel, epochs,
                seed, device, progress=progress)
    acc = accuracy(model, np.asarray(images[held_out]), targets_of(arrays, multilabel, held_out), multilabel, device)
    state = {"state_dict": model.state_dict(), "accuracy": acc, "held_out": dm.val_split, "names": names}
    write_atomic(path, lambda tmp: torch.save(state, tmp))
    return Judge(model, names, multilabel, acc, dm.val_split)


def fit_steps(dm, epochs: int) -> int:
    return epochs * max(1, len(dm.splits["train"]) // 64)


# ------------------------------------------------------------------------------ the measurement
@torch.no_grad()
def measure_edits(decode: Callable[[Tensor], Tensor], judge: Judge, codes: Tensor, present: Tensor,
                  vectors: Tensor, columns: list[int], weight: float, seed: int = 0,
                  batch_size: int = 256) -> list[dict]:
    """For each attribute column a: over the images without a (by their labels), the share whose
    judged probability of a rises when w * v_a is added to their code (``toward``), the same for a
    random direction of the same norm (``toward_random``), the share of those judged without a
    before that are judged with it after (``flipped``) and the mean change of the probability.
    For attribute tables (CelebA) also the removal: images with a, code minus w * v_a (``away``).
    """

    def probs(z: Tensor) -> Tensor:  # (N, outputs): the judge's probabilities of every attribute
        return torch.cat([judge.probabilities(decode(chunk)).cpu() for chunk in z.split(batch_size)])

    def judged(p: Tensor, a: int) -> Tensor:
        return p[:, a] >= 0.5 if judge.multilabel else p.argmax(1) == a

    gen = torch.Generator().manual_seed(seed)
    results = []
    for a in columns:
        v = vectors[a].to(codes)
        u = torch.randn(v.shape, generator=gen).to(codes)
        u = u * (v.norm() / u.norm())
        row = {"attribute": judge.names[a]}
        signs = [("toward", 1.0, ~present[:, a])] + ([("away", -1.0, present[:, a])] if judge.multilabel else [])
        for name, sign, rows in signs:
            z = codes[rows]
            row[f"n_{name}"] = len(z)
            if not len(z):
                continue
            plain, edited = probs(z), probs(z + sign * weight * v)
            p0, p1, pr = plain[:, a], edited[:, a], probs(z + sign * weight * u)[:, a]
            moved = (p1 - p0) * sign > 0
            row[name] = moved.float().mean().item()
            row[f"{name}_random"] = ((pr - p0) * sign > 0).float().mean().item()
            row[f"{name}_mean_dp"] = (p1 - p0).mean().item()
            if name == "toward":
                before, after = judged(plain, a), judged(edited, a)
                row["n_judged_without"] = int((~before).sum())
                row["flipped"] = after[~before].float().mean().item() if (~before).any() else float("nan")
        results.append(row)
    return results


COLUMNS = [("n_toward", "n"), ("toward", "toward"), ("toward_random", "random dir."), ("flipped", "flipped"),
           ("toward_mean_dp", "mean dp"), ("n_away", "n with"), ("away", "remove"), ("away_random", "random dir."),
           ("classifier_accuracy", "clf. acc.")]  # balanced per attribute, recall per class


def means(rows: list[dict]) -> dict[str, float]:
    """The success rates averaged over attributes (NaN-free: attributes without images are left out)."""
    keys = ("toward", "toward_random", "flipped", "away", "away_random")
    return {k: float(np.nanmean([r[k] for r in rows if k in r])) for k in keys if any(k in r for r in rows)}


def table(rows: list[dict], title: str):
    """``measure_edits``' rows as a rich table, with their mean as the last row."""
    from rich.table import Table

    keys = [(k, label) for k, label in COLUMNS if any(k in r for r in rows)]
    out = Table(title=title)
    out.add_column("attribute")
    for _, label in keys:
        out.add_column(label, justify="right")
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    for r in rows:
        out.add_row(r["attribute"], *(cell(r.get(k, "")) for k, _ in keys))
    mean = means(rows)
    out.add_row("[bold]mean", *(cell(mean[k]) if k in mean else "" for k, _ in keys))
    return out
