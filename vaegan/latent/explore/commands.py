"""The commands of ``python -m vaegan.explore``: one ``Explorer`` method each, on one checkpoint."""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torchvision.utils import save_image

from vaegan.config import ConfigError, validate
from vaegan.data.cache import default_cache_dir
from vaegan.data.transforms import crop_and_resize, to_model_input
from vaegan.evaluate import compose_config, load_checkpoint, run_dir_of
from vaegan.latent import arithmetic, classifier, panels
from vaegan.latent.explore.options import COMMON, NEEDS_ENCODER, OPTIONS_OF, ExploreError, Options
from vaegan.metrics.settings import resolve_device
from vaegan.training.train import build_datamodule_from
from vaegan.utils.files import unwritable, write_atomic, write_npz
from vaegan.utils.hashing import sha256_file


MAX_PICTURE_BYTES = 256 * 2**20  # a grid is drawn in float32 RGB, then copied a few times on its way to PNG


class InBatches:
    """The model, with ``decode``, ``encode`` and ``discriminate`` run ``batch_size`` rows at a time:
    the panels call them on every image of a picture at once."""

    def __init__(self, module, batch_size: int):
        self._module, self._batch_size = module, batch_size

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    def _each(self, method, x: torch.Tensor):
        parts = [method(chunk) for chunk in x.split(self._batch_size)]
        return torch.cat(parts) if isinstance(parts[0], torch.Tensor) else tuple(map(torch.cat, zip(*parts)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._each(self._module.decode, z)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._each(self._module.encode, x)

    def discriminate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._each(self._module.discriminate, x)


class Explorer:
    """One checkpoint, its run's config, the data (loaded on first use) and the output folder."""

    def __init__(self, command: str, options: Options, overrides: list[str], console: Console):
        try:
            self.cfg, self.ckpt = compose_config(overrides)
        except ConfigError as err:
            if "no such config key" not in str(err):
                raise
            raise ConfigError(f"{err}; nor is it an option of {command}: {', '.join(COMMON + OPTIONS_OF[command])}") from None
        validate(self.cfg)

        self.command, self.options, self.overrides, self.console = command, options, overrides, console
        self.out = Path(options.out).expanduser() if options.out else run_dir_of(self.ckpt) / "explore"
        why = unwritable(self.out)
        if why:
            key = f"out={options.out}" if options.out else f"the output folder {self.out}"
            raise ExploreError(f"{key}: {why}; out= names a folder to write into (made if missing)")
        self.device = resolve_device(options.device)
        self.module, self.iteration = load_checkpoint(self.cfg, self.ckpt, self.device)
        self.module.eval()
        self.model = InBatches(self.module, options.batch_size)
        self._dm = None
        self._sha256: str | None = None
        if command in NEEDS_ENCODER and self.module.encoder is None:
            raise ExploreError(
                f"the {self.module.hparams.variant!r} checkpoint {self.ckpt} has no encoder (model.vae=false), and "
                f"{command} needs one to map images to latent codes. Use a checkpoint of model=vaegan or model=vae; "
                "with this one, sample and reconstruct work."
            )

    # ------------------------------------------------------------------ helpers
    @property
    def dm(self):
        if self._dm is None:

            self._dm = build_datamodule_from(self.cfg)
            self._dm.prepare_data()
            self._dm.setup()
        return self._dm

    @property
    def sha256(self) -> str:
        if self._sha256 is None:

            self._sha256 = sha256_file(self.ckpt)
        return self._sha256

    def split(self, default_held_out: bool = True) -> str:
        split = self.options.split or (self.dm.val_split if default_held_out else "train")
        if split not in self.dm.splits:
            raise ExploreError(f"split={split!r} does not exist; use one of {sorted(self.dm.splits)}")
        if not len(self.dm.splits[split]):
            raise ExploreError(f"split={split!r} holds no images; choose another split= ({sorted(self.dm.splits)})")
        return split

    def images(self, split: str, indices: list[int], key: str = "indices") -> torch.Tensor:
        """Model input of images ``indices`` of ``split``; an index outside it names the key and the split's size."""
        rows = self.dm.splits[split]
        bad = [i for i in indices if not 0 <= i < len(rows)]
        if bad:
            given = getattr(self.options, key)
            named = f"{key}={json.dumps(given, separators=(',', ':'))}" if given is not None else f"the default {key}"
            raise ExploreError(f"{named}: index {bad[0]} is out of range: the {split} split has {len(rows)} images "
                               f"(indices 0..{len(rows) - 1})")
        return to_model_input(torch.from_numpy(np.asarray(self.dm.data.images[rows[indices]])))

    def chosen_images(self, split: str, cells_each: int) -> tuple[list[int], torch.Tensor]:
        """The ``indices`` (default: the first ``n``) of the split, each shown in ``cells_each`` cells of a picture."""
        o = self.options
        indices = list(o.indices) if o.indices else list(range(min(o.n, len(self.dm.splits[split]))))
        self.check_picture("indices" if o.indices else "n", len(indices), cells_each)
        return indices, self.images(split, indices)

    def check_picture(self, key: str, value: int, cells_each: int, cells_more: int = 0) -> None:
        """Refuses ``key=value`` when its picture (value * cells_each + cells_more images) would not fit in memory."""
        size = self.module.hparams.image_size
        cell = 3 * (size + panels.PAD) ** 2 * 4  # float32 RGB with the grid's padding
        largest = (MAX_PICTURE_BYTES // cell - cells_more) // cells_each
        if value > largest:
            need = (value * cells_each + cells_more) * cell
            shown = value if key != "indices" else f"[...] ({value} images)"
            raise ExploreError(f"{key}={shown}: the picture would hold {value * cells_each + cells_more} images of "
                               f"{size}x{size} pixels, about {need / 1e9:.1f} GB in memory; the largest {key} here "
                               f"is {max(largest, 0)} (pictures are kept under {MAX_PICTURE_BYTES // 2**20} MB); "
                               "make several smaller pictures")

    def write_png(self, picture: torch.Tensor, name: str) -> Path:
        return write_atomic(self.out / name, lambda tmp: save_image(picture, tmp, format="png"))

    def record(self, stem: str, outputs: list[Path], **extra: Any) -> Path:
        """``<stem>.json`` beside the outputs: the command, its arguments and the checkpoint."""
        given = {k: v for k, v in asdict(self.options).items() if k in COMMON + OPTIONS_OF[self.command]}
        record = dict(command=self.command, options=given, overrides=self.overrides, checkpoint=str(self.ckpt),
                      checkpoint_sha256=self.sha256, iteration=self.iteration, variant=self.module.hparams.variant,
                      outputs=[p.name for p in outputs], created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      **extra)
        path = write_atomic(self.out / f"{stem}.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n"))
        for p in outputs + [path]:
            self.console.print(f"wrote {p}")
        return path

    def draw_z(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.options.seed)
        return torch.randn(n, self.module.hparams.latent_dim, generator=gen) * temperature

    # ------------------------------------------------------------------ commands
    def sample(self) -> None:
        o = self.options
        if o.nrow > o.n:  # one row, filled with blanks
            self.check_picture("nrow", o.nrow, 1)
        self.check_picture("n", o.n, 1, (-o.n) % o.nrow)
        picture = panels.samples(self.model, self.draw_z(o.n, o.temperature), nrow=o.nrow)
        stem = f"sample_seed{o.seed}_t{o.temperature:g}"
        self.record(stem, [self.write_png(picture, f"{stem}.png")])

    def reconstruct(self) -> None:
        split = self.split()
        indices, x = self.chosen_images(split, cells_each=5)  # Fig. 4's five rows at most
        picture = panels.discriminator_panel(self.model, x, self.draw_z(len(x)))
        stem = f"reconstruct_{split}"
        self.record(stem, [self.write_png(picture, f"{stem}.png")], split=split, indices=indices)

    def interpolate(self) -> None:
        o = self.options
        pairs = [list(p) for p in (o.pairs or [[0, 1], [2, 3], [4, 5], [6, 7]])]
        rows = len(o.files) // 2 if o.files else len(pairs)
        self.check_picture("steps", o.steps, rows, 2 * rows)  # each row: the two real images and the steps between
        if o.files:
            xa, xb, ends = self.files_as_pairs(o.files)
        else:
            split = self.split()
            xa, xb = (self.images(split, [p[i] for p in pairs], "pairs") for i in (0, 1))
            ends = dict(split=split, pairs=pairs)
        try:
            picture = panels.interpolation_panel(self.model, o.steps, o.mode, xa=xa, xb=xb)
        except ValueError as err:
            raise ExploreError(str(err)) from None
        stem = f"interpolate_{o.mode}"
        self.record(stem, [self.write_png(picture, f"{stem}.png")], **ends)

    def files_as_pairs(self, files: list[str]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        from PIL import Image, UnidentifiedImageError


        if len(files) % 2:
            raise ExploreError(f"files= lists {len(files)} images; it takes pairs: files=[a1.jpg,b1.jpg,a2.jpg,b2.jpg]")
        hp = self.module.hparams
        arrays = []
        for name in files:
            try:
                with Image.open(Path(name).expanduser()) as img:
                    arrays.append(crop_and_resize(img, hp.image_size, self.cfg.data.crop, hp.channels))
            except (OSError, UnidentifiedImageError) as err:
                raise ExploreError(f"files: cannot read {name} as an image ({err}); give paths of JPEG or PNG files") from None
        x = to_model_input(torch.from_numpy(np.stack(arrays)))
        return x[0::2], x[1::2], dict(files=[str(Path(f).expanduser().resolve()) for f in files])

    def attributes(self) -> Path:
        split = self.split(default_held_out=False)
        names, codes, present = self.encode_split(split)
        vectors, n_with, n_without = arithmetic.attribute_vectors(codes, present)
        arrays = dict(vectors=vectors.numpy(), names=np.array(names), n_with=n_with.numpy(), n_without=n_without.numpy(),
                      checkpoint_sha256=np.array(self.sha256), iteration=np.array(self.iteration), split=np.array(split))
        path = write_npz(self.out / f"attributes_{split}.npz", arrays)
        self.record(path.stem, [path], split=split, images=len(codes))
        return path

    def encode_split(self, split: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """The split's attribute (or class) names, posterior means and bool table (N, A)."""
        try:
            names, key = arithmetic.attribute_table(self.dm)
        except ValueError as err:
            raise ExploreError(f"data={self.cfg.data.name}: {err}") from None
        rows = self.dm.splits[split]
        target = np.asarray(self.dm.data.arrays[key])[rows]
        with self.console.status(f"encoding the {len(rows)} images of the {split} split"):  # a batch at a time from disk
            codes = arithmetic.encode_images(self.module.encoder, self.dm.data.images, self.options.batch_size, self.device,
                                         rows=rows)
        return names, codes, arithmetic.presence(target, len(names))

    def load_vectors(self) -> tuple[list[str], torch.Tensor, np.lib.npyio.NpzFile]:
        o = self.options
        path = Path(o.vectors).expanduser() if o.vectors else self.out / "attributes_train.npz"
        if not path.is_file():
            if o.vectors:
                raise ExploreError(f"vectors={o.vectors}: no such file; make it with `explore attributes ckpt_path=...`")
            path = self.attributes()
        try:
            saved = dict(np.load(path, allow_pickle=False))
        except Exception as err:  # noqa: BLE001
            raise ExploreError(f"{path}: not an attributes file ({err}); remake it with `explore attributes`") from None
        if str(saved.get("checkpoint_sha256")) != self.sha256:
            if o.vectors:
                raise ExploreError(f"{path} was computed from another checkpoint (sha256 {str(saved.get('checkpoint_sha256'))[:12]}, "
                                   f"this one {self.sha256[:12]}); codes of different models do not mix. Run explore attributes")
            path = self.attributes()
            saved = dict(np.load(path, allow_pickle=False))
        return [str(n) for n in saved["names"]], torch.from_numpy(saved["vectors"]), saved

    def edit(self) -> None:
        o = self.options
        attrs = [str(a) for a in (o.attrs or [])]
        known = self.attribute_names()  # checked before any attribute vectors are computed
        if not attrs and not o.measure:
            raise ExploreError(f"edit needs attrs=[...]: one or more of {', '.join(known)}")
        for name in attrs:
            check_attribute(name, known)
        if o.measure:
            self.classifier_cache()  # checked before any picture is drawn
        x, z, where = self.codes_to_edit() if attrs else (None, None, {})
        names, vectors, saved = self.load_vectors()
        columns = [self.attribute_column(a, names, saved) for a in attrs]
        edits = [(a, vectors[c]) for a, c in zip(attrs, columns)]
        if o.combine and len(attrs) > 1:
            edits.append(("+".join(attrs), vectors[columns].sum(0)))
        for name, vector in edits:
            title = f"{name}: z + w v"
            stem = f"edit_{name}_{o.source}"
            picture = panels.edit_panel(self.model, z, vector, o.weights, title, x)
            self.record(stem, [self.write_png(picture, f"{stem}.png")], attribute=name, **where)
        if o.measure:
            self.measure(names, vectors, columns if attrs else list(range(len(names))))

    def codes_to_edit(self) -> tuple[torch.Tensor | None, torch.Tensor, dict]:
        """The images (source=real: ``n`` of the split, else None), their codes, and where they came from."""
        o = self.options
        if o.source == "random":
            self.check_picture("n", o.n, len(o.weights))
            return None, self.draw_z(o.n), dict(seed=o.seed)
        split = self.split()
        indices, x = self.chosen_images(split, cells_each=len(o.weights) + 1)  # the real image, then each weight
        return x, arithmetic.encode_images(self.module.encoder, x, o.batch_size, self.device), dict(split=split, indices=indices)

    def attribute_names(self) -> list[str]:
        try:
            return arithmetic.attribute_table(self.dm)[0]
        except ValueError as err:
            raise ExploreError(f"data={self.cfg.data.name}: {err}") from None

    def attribute_column(self, name: str, names: list[str], saved: dict) -> int:
        check_attribute(name, names)
        column = names.index(name)
        if min(saved["n_with"][column], saved["n_without"][column]) == 0:
            raise ExploreError(f"attribute {name!r} has no vector: {saved['n_with'][column]} images of the split have it, "
                               f"{saved['n_without'][column]} lack it; one of the two means is empty")
        return column

    def classifier_cache(self) -> Path:
        """Where ``--measure`` keeps its trained classifiers: ``classifier_dir``, else under the data's cache."""

        o = self.options
        cache = Path(o.classifier_dir).expanduser() if o.classifier_dir else Path(self.cfg.data.cache_dir or default_cache_dir()) / "classifiers"
        why = unwritable(cache)
        if why:
            key = f"classifier_dir={o.classifier_dir}" if o.classifier_dir else f"the classifier cache {cache}"
            raise ExploreError(f"{key}: {why}; classifier_dir= names a folder to keep trained classifiers in")
        return cache

    def measure(self, names: list[str], vectors: torch.Tensor, columns: list[int]) -> None:
        """``--measure``: the share of held-out edits that move a trained classifier's judgement
        towards the attribute, beside a random direction of the same norm (``vaegan.latent.classifier``)."""
        from rich.progress import Progress

        o = self.options
        cache = self.classifier_cache()
        with Progress(console=self.console, transient=True) as progress:
            task = progress.add_task("classifier (trained once, then cached)", total=classifier.fit_steps(self.dm, o.classifier_epochs))
            judge = classifier.load_or_train(self.dm, cache, o.classifier_epochs, o.seed, self.device,
                                             lambda k: progress.advance(task, k))
        split = judge.held_out
        _, codes, present = self.encode_split(split)
        keep = torch.from_numpy(np.random.default_rng(o.seed).permutation(len(codes))[:o.measure_n]).sort().values
        with self.console.status(f"judging edits of {len(keep)} {split} images"), panels.evaluating(self.module):
            rows = classifier.measure_edits(self.module.decode, judge, codes[keep].to(self.device), present[keep],
                                            vectors.to(self.device), columns, o.measure_weight, o.seed, o.batch_size)
        for row, c in zip(rows, columns):
            row["classifier_accuracy"] = judge.accuracy[c]
        w = f"{o.measure_weight:g}"
        self.console.print(classifier.table(rows, f"edit success on the {split} split: add z + {w} v, remove z - {w} v"))
        means = classifier.means(rows)
        rows = [{k: None if isinstance(v, float) and np.isnan(v) else v for k, v in r.items()} for r in rows]  # strict JSON
        text = json.dumps({"weight": o.measure_weight, "split": split, "mean": means, "attributes": rows}, indent=2) + "\n"
        path = write_atomic(self.out / "edit_measure.json", lambda tmp: tmp.write_text(text))
        self.record("edit_measure_args", [path], split=split, images=len(keep), mean=means)


def check_attribute(name: str, names: list[str]) -> None:
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ExploreError(f"unknown attribute {name!r}{hint}; the valid names are: {', '.join(names)}")
