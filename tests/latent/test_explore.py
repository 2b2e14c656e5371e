"""``python -m vaegan.explore``: every command's files (pictures checked cell by cell against the
networks called directly, attribute vectors against numpy), the records beside them, and clean
failures (exit status 2, a one-line reason, no files) for every bad input.

A tiny model (16x16, width 4, 5 iterations) is trained once per session on the shared CelebA
faces (``celeba_run``; test_panels.py reuses it), with a BEGAN variant (no encoder) beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import CONF, ROOT, require_shared
from vaegan.data.transforms import to_model_input
from vaegan.latent.explore import main
from vaegan.models.module import VAEGANModule

ITERATIONS = 5
S, D = 16, 8  # image size and latent size of the tiny runs
CELL = S + 2
RECORD_KEYS = {"command", "options", "overrides", "checkpoint", "checkpoint_sha256", "iteration", "variant", "outputs",
               "created"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread


def celeba_run(tmp_path_factory, variant: str = "vaegan") -> Path:
    """The run directory of a tiny model trained on the shared CelebA npz, trained at most once a
    session (kept in pytest's session base temp, so every test module shares it)."""
    npz = require_shared("celeba", "celeba_64.npz")
    base = tmp_path_factory.getbasetemp()
    out = base / f"explore-celeba-{variant}"
    if not (out / "checkpoints" / "last.ckpt").is_file():
        from hydra import compose, initialize_config_dir

        from vaegan.config import register_configs
        from vaegan.training.train import train

        torch.set_grad_enabled(True)
        register_configs()
        overrides = ["+experiment=celeba_cpu", f"data.root={npz}", f"data.cache_dir={base / 'explore-data-cache'}",
                     "data.image_size=16", "model.width=4", f"model.latent_dim={D}", f"iterations={ITERATIONS}",
                     "callbacks.progress_bar.enabled=false", "trainer.enable_model_summary=false", "logger=none",
                     f"paths.output_dir={out}"]
        if variant == "began":
            overrides.append("model=began")
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=overrides)
        train(cfg)
        assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "config.yaml").is_file()
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return celeba_run(tmp_path_factory, "vaegan")


@pytest.fixture(scope="module")
def began_run(tmp_path_factory) -> Path:
    out = celeba_run(tmp_path_factory, "began")
    from omegaconf import OmegaConf

    assert OmegaConf.load(out / "config.yaml").model.vae is False
    return out


@pytest.fixture(scope="module")
def ckpt(run) -> Path:
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def model(ckpt):
    module, iteration = VAEGANModule.from_checkpoint(ckpt, "cpu")
    return module.eval()


@pytest.fixture(scope="module")
def dm(run):
    from omegaconf import OmegaConf

    from vaegan.training.train import build_datamodule_from

    data = build_datamodule_from(OmegaConf.load(run / "config.yaml"))
    data.setup()
    return data


@pytest.fixture(scope="module")
def attributes_file(ckpt, tmp_path_factory) -> Path:
    """``explore attributes`` of the train split, run once for the module."""
    out = tmp_path_factory.mktemp("attributes")
    assert main(["attributes", f"ckpt_path={ckpt}", f"out={out}"]) == 0
    return out / "attributes_train.npz"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB")).astype(np.int16)  # (H, W, 3)


def shown(x: torch.Tensor) -> np.ndarray:
    """The 8-bit pixels a grid shows of a model-range image (C, h, w): (H, W, 3)."""
    v = np.clip((x.detach().numpy().astype(np.float64) + 1) / 2, 0, 1) * 255
    return np.round(v).transpose(1, 2, 0)


def cell(picture: np.ndarray, r: int, c: int, x0: int = 0, y0: int = 0) -> np.ndarray:
    y, x = y0 + 2 + r * CELL, x0 + 2 + c * CELL
    return picture[y:y + S, x:x + S]


def assert_pixels(actual: np.ndarray, expected: np.ndarray) -> None:
    assert np.abs(actual.astype(np.int16) - np.asarray(expected).astype(np.int16)).max() <= 1


def grid_px(rows: int, cols: int) -> tuple[int, int]:
    """(height, width) of a make_grid of rows x cols images of S pixels, padding 2."""
    return rows * CELL + 2, cols * CELL + 2


def find_grid(picture: np.ndarray, cells: list[list[np.ndarray]]) -> tuple[int, int]:
    """The offset (x0, y0) at which a grid of these 8-bit cells appears in the picture."""
    h, w = grid_px(len(cells), len(cells[0]))
    found = []
    for y0 in range(picture.shape[0] - h + 1):
        for x0 in range(picture.shape[1] - w + 1):
            if all(np.abs(cell(picture, r, c, x0, y0) - cells[r][c]).max() <= 1
                   for r in range(len(cells)) for c in range(len(cells[0]))):
                found.append((x0, y0))
    assert found, "the expected grid does not appear in the picture"
    return found[0]


def real(dm, split: str, indices: list[int]) -> tuple[np.ndarray, torch.Tensor]:
    u8 = np.asarray(dm.data.images[dm.splits[split][indices]])
    return u8, to_model_input(torch.from_numpy(u8))


def check_record(path: Path, command: str, ckpt: Path, outputs: list[str], variant: str = "vaegan") -> dict:
    record = json.loads(path.read_text())
    assert RECORD_KEYS <= set(record)
    assert record["command"] == command
    assert record["checkpoint"] == str(ckpt)
    assert record["checkpoint_sha256"] == sha256(ckpt)
    assert record["iteration"] == ITERATIONS
    assert record["variant"] == variant
    assert record["outputs"] == outputs
    assert datetime.fromisoformat(record["created"]).tzinfo is not None
    assert isinstance(record["options"], dict) and isinstance(record["overrides"], list)
    return record


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


# ------------------------------------------------------------------------------ sample
def test_sample_writes_a_grid_and_its_record(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sample", f"ckpt_path={ckpt}", "n=16", "nrow=4", "seed=3", f"out={out}"]) == 0
    assert files_in(out) == {"sample_seed3_t1.png", "sample_seed3_t1.json"}
    assert png(out / "sample_seed3_t1.png").shape == (4 * CELL + 2, 4 * CELL + 2, 3)  # 74 x 74
    record = check_record(out / "sample_seed3_t1.json", "sample", ckpt, ["sample_seed3_t1.png"])
    assert record["options"]["n"] == 16 and record["options"]["seed"] == 3 and record["options"]["nrow"] == 4
    assert "steps" not in record["options"]  # only the command's own options
    assert "sample_seed3_t1.png" in capsys.readouterr().out


@pytest.mark.slow
def test_sample_at_temperature_zero_decodes_the_origin(ckpt, model, tmp_path):
    out = tmp_path / "out"
    assert main(["sample", f"ckpt_path={ckpt}", "n=5", "nrow=3", "temperature=0", f"out={out}"]) == 0
    pic = png(out / "sample_seed0_t0.png")
    assert pic.shape[:2] == grid_px(2, 3)
    with torch.no_grad():
        origin = shown(model.decode(torch.zeros(1, D))[0])
    for i in range(5):
        assert_pixels(cell(pic, i // 3, i % 3), origin)
    assert np.all(cell(pic, 1, 2) == 255)  # the blank that fills the last row


@pytest.mark.slow
def test_sample_draws_z_from_the_seed(ckpt, model, tmp_path):
    for seed in (1, 2):
        assert main(["sample", f"ckpt_path={ckpt}", "n=4", "nrow=4", f"seed={seed}", "temperature=0.5",
                     f"out={tmp_path / str(seed)}"]) == 0
    assert main(["sample", f"ckpt_path={ckpt}", "n=4", "nrow=4", "seed=1", "temperature=0.5",
                 f"out={tmp_path / 'again'}"]) == 0
    a, b, again = (png(tmp_path / d / "sample_seed1_t0.5.png") if d != "2" else png(tmp_path / d / "sample_seed2_t0.5.png")
                   for d in ("1", "2", "again"))
    np.testing.assert_array_equal(a, again)
    assert not np.array_equal(a, b)
    # z ~ N(0, T^2 I) from a torch generator seeded with `seed`
    z = torch.randn(4, D, generator=torch.Generator().manual_seed(1)) * 0.5
    with torch.no_grad():
        x = model.decode(z)
    for i in range(4):
        assert_pixels(cell(a, 0, i), shown(x[i]))


@pytest.mark.slow
def test_sample_defaults_to_64_images_in_the_run_dir(run, tmp_path):
    copy = Path(shutil.copytree(run, tmp_path / "run"))
    assert main(["sample", f"ckpt_path={copy / 'checkpoints' / 'last.ckpt'}", "temperature=0.5"]) == 0
    assert files_in(copy / "explore") == {"sample_seed0_t0.5.png", "sample_seed0_t0.5.json"}
    assert png(copy / "explore" / "sample_seed0_t0.5.png").shape[:2] == grid_px(8, 8)  # 146 x 146
    record = json.loads((copy / "explore" / "sample_seed0_t0.5.json").read_text())
    assert record["options"]["n"] == 64 and record["options"]["temperature"] == 0.5


# ------------------------------------------------------------------------------ reconstruct
def test_reconstruct_shows_fig4_rows_of_the_held_out_images(ckpt, model, dm, tmp_path):
    out = tmp_path / "out"
    assert main(["reconstruct", f"ckpt_path={ckpt}", "n=5", f"out={out}"]) == 0
    assert files_in(out) == {"reconstruct_valid.png", "reconstruct_valid.json"}
    pic = png(out / "reconstruct_valid.png")
    h, w = grid_px(5, 5)  # generated, D(generated), real, D(real), VAE(real)
    assert pic.shape[0] == h and pic.shape[1] > w  # row labels at the left
    u8, x = real(dm, "valid", list(range(5)))
    with torch.no_grad():
        vae = model.decode(model.encode(x)[0])
        d_real = model.discriminate(x)[1]
    x0 = pic.shape[1] - w
    for c in range(5):
        assert_pixels(cell(pic, 2, c, x0), u8[c])
        assert_pixels(cell(pic, 3, c, x0), shown(d_real[c]))
        assert_pixels(cell(pic, 4, c, x0), shown(vae[c]))
    record = check_record(out / "reconstruct_valid.json", "reconstruct", ckpt, ["reconstruct_valid.png"])
    assert record["split"] == "valid" and record["indices"] == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_reconstruct_chosen_indices_of_another_split(ckpt, dm, tmp_path):
    out = tmp_path / "out"
    assert main(["reconstruct", f"ckpt_path={ckpt}", "split=test", "indices=[7,3]", f"out={out}"]) == 0
    pic = png(out / "reconstruct_test.png")
    assert pic.shape[0] == grid_px(5, 2)[0]
    u8, _ = real(dm, "test", [7, 3])
    x0 = pic.shape[1] - grid_px(5, 2)[1]
    assert_pixels(cell(pic, 2, 0, x0), u8[0])
    assert_pixels(cell(pic, 2, 1, x0), u8[1])
    assert json.loads((out / "reconstruct_test.json").read_text())["indices"] == [7, 3]


# ------------------------------------------------------------------------------ BEGAN (no encoder)
@pytest.mark.slow
def test_began_samples_and_reconstructs_without_a_vae_row(began_run, tmp_path):
    ckpt = began_run / "checkpoints" / "last.ckpt"
    out = tmp_path / "out"
    assert main(["sample", f"ckpt_path={ckpt}", "n=4", "nrow=2", f"out={out}"]) == 0
    assert main(["reconstruct", f"ckpt_path={ckpt}", "n=3", f"out={out}"]) == 0
    assert png(out / "sample_seed0_t1.png").shape[:2] == grid_px(2, 2)
    pic = png(out / "reconstruct_valid.png")
    assert pic.shape[0] == grid_px(4, 3)[0]  # generated, D(generated), real, D(real): no VAE(real)
    check_record(out / "reconstruct_valid.json", "reconstruct", ckpt, ["reconstruct_valid.png"], variant="began")


@pytest.mark.parametrize("command", [["interpolate"], ["attributes"], ["edit", "attrs=[Smiling]"]])
@pytest.mark.slow
def test_began_cannot_encode(began_run, tmp_path, capsys, command):
    out = tmp_path / "out"
    rc = main([command[0], f"ckpt_path={began_run / 'checkpoints' / 'last.ckpt'}", f"out={out}", *command[1:]])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("Explore error:") and "no encoder" in err and "Traceback" not in err
    assert files_in(out) == set()


# ------------------------------------------------------------------------------ interpolate
def test_interpolate_pairs_of_the_split(ckpt, model, dm, tmp_path):
    out, steps = tmp_path / "out", 4
    assert main(["interpolate", f"ckpt_path={ckpt}", "pairs=[[0,1],[5,2]]", f"steps={steps}", f"out={out}"]) == 0
    assert files_in(out) == {"interpolate_linear.png", "interpolate_linear.json"}
    pic = png(out / "interpolate_linear.png")
    assert pic.shape[:2] == grid_px(2, steps + 2)  # the real images at both ends
    for r, (i, j) in enumerate([(0, 1), (5, 2)]):
        u8, x = real(dm, "valid", [i, j])
        with torch.no_grad():
            mu = model.encode(x)[0]
            ends = model.decode(mu)
            mid = model.decode(mu[:1] + (mu[1:] - mu[:1]) / 3)  # t = 1/3
        assert_pixels(cell(pic, r, 0), u8[0])
        assert_pixels(cell(pic, r, steps + 1), u8[1])
        assert_pixels(cell(pic, r, 1), shown(ends[0]))  # decode(mu_a)
        assert_pixels(cell(pic, r, steps), shown(ends[1]))  # decode(mu_b)
        assert_pixels(cell(pic, r, 2), shown(mid[0]))
    record = check_record(out / "interpolate_linear.json", "interpolate", ckpt, ["interpolate_linear.png"])
    assert record["pairs"] == [[0, 1], [5, 2]] and record["split"] == "valid"
    assert record["options"]["steps"] == steps and record["options"]["mode"] == "linear"


@pytest.mark.slow
def test_interpolate_default_pairs_spherical(ckpt, tmp_path):
    out = tmp_path / "out"
    assert main(["interpolate", f"ckpt_path={ckpt}", "mode=spherical", f"out={out}"]) == 0
    assert png(out / "interpolate_spherical.png").shape[:2] == grid_px(4, 8 + 2)
    assert json.loads((out / "interpolate_spherical.json").read_text())["pairs"] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_interpolate_between_image_files(ckpt, model, tmp_path):
    jpgs = sorted(require_shared("celeba", "img_align_celeba").glob("*.jpg"))[:2]
    out = tmp_path / "out"
    assert main(["interpolate", f"ckpt_path={ckpt}", f"files=[{jpgs[0]},{jpgs[1]}]", "steps=3", f"out={out}"]) == 0
    pic = png(out / "interpolate_linear.png")
    assert pic.shape[:2] == grid_px(1, 3 + 2)
    ends = []
    for path in jpgs:  # CenterCrop(shorter side) then a bilinear Resize, with PIL directly
        with Image.open(path) as img:
            w, h = img.size
            c = min(w, h)
            left, top = int(round((w - c) / 2)), int(round((h - c) / 2))
            ends.append(np.asarray(img.convert("RGB").crop((left, top, left + c, top + c)).resize((S, S), Image.BILINEAR)))
    assert_pixels(cell(pic, 0, 0), ends[0])
    assert_pixels(cell(pic, 0, 4), ends[1])
    with torch.no_grad():
        mu = model.encode(to_model_input(torch.from_numpy(np.stack(ends))))[0]
        dec = model.decode(mu)
    assert_pixels(cell(pic, 0, 1), shown(dec[0]))
    assert_pixels(cell(pic, 0, 3), shown(dec[1]))
    record = json.loads((out / "interpolate_linear.json").read_text())
    assert record["files"] == [str(p.resolve()) for p in jpgs]


# ------------------------------------------------------------------------------ attributes
def test_attribute_vectors_are_mean_with_minus_mean_without(attributes_file, ckpt, model, dm):
    saved = np.load(attributes_file, allow_pickle=False)
    assert set(saved.files) >= {"vectors", "names", "n_with", "n_without", "checkpoint_sha256", "iteration", "split"}
    rows = dm.splits["train"]
    assert len(rows) == 3120
    attrs = np.asarray(dm.data.arrays["attrs"])[rows]
    # the codes, independently: the posterior means of the whole train split in one batch
    x = to_model_input(torch.from_numpy(np.asarray(dm.data.images[rows])))
    with torch.no_grad():
        codes = model.encode(x)[0].numpy().astype(np.float64)
    with_ = attrs == 1
    expected = np.stack([codes[with_[:, a]].mean(0) - codes[~with_[:, a]].mean(0) for a in range(attrs.shape[1])])
    vectors = saved["vectors"]
    assert vectors.shape == (40, D)
    np.testing.assert_allclose(vectors, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_array_equal(saved["n_with"], (attrs == 1).sum(0))
    np.testing.assert_array_equal(saved["n_without"], (attrs == -1).sum(0))
    assert [str(n) for n in saved["names"]] == dm.attr_names and "Smiling" in dm.attr_names
    assert str(saved["checkpoint_sha256"]) == sha256(ckpt)
    assert int(saved["iteration"]) == ITERATIONS and str(saved["split"]) == "train"
    record = check_record(attributes_file.with_suffix(".json"), "attributes", ckpt, ["attributes_train.npz"])
    assert record["images"] == 3120 and record["split"] == "train"


# ------------------------------------------------------------------------------ edit
def edit_cells(model, vector: np.ndarray, weights: list[float], u8: np.ndarray | None, z: torch.Tensor):
    v = torch.from_numpy(vector).float()
    with torch.no_grad():
        decoded = [model.decode(z + w * v) for w in weights]
    return [([u8[i].astype(np.int16)] if u8 is not None else []) + [shown(d[i]) for d in decoded] for i in range(len(z))]


def test_edit_real_images_along_attribute_vectors(attributes_file, ckpt, model, dm, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(attributes_file, out / "attributes_train.npz")
    before = (out / "attributes_train.npz").stat().st_mtime_ns
    weights = [-1.0, 0.0, 1.5]
    assert main(["edit", f"ckpt_path={ckpt}", "attrs=[Smiling,Eyeglasses]", "weights=[-1,0,1.5]", "n=3", "combine=true",
                 f"out={out}"]) == 0
    names = ["Smiling", "Eyeglasses", "Smiling+Eyeglasses"]
    assert files_in(out) == {"attributes_train.npz"} | {f"edit_{n}_real.{e}" for n in names for e in ("png", "json")}
    assert (out / "attributes_train.npz").stat().st_mtime_ns == before  # reused, not recomputed
    saved = np.load(out / "attributes_train.npz")
    col = {str(n): i for i, n in enumerate(saved["names"])}
    vectors = {"Smiling": saved["vectors"][col["Smiling"]], "Eyeglasses": saved["vectors"][col["Eyeglasses"]]}
    vectors["Smiling+Eyeglasses"] = vectors["Smiling"] + vectors["Eyeglasses"]
    u8, x = real(dm, "valid", [0, 1, 2])
    with torch.no_grad():
        z = model.encode(x)[0]
        plain = model.decode(z)
    for name in names:
        pic = png(out / f"edit_{name}_real.png")
        h, w = grid_px(3, 1 + len(weights))
        assert pic.shape[0] > h and pic.shape[1] >= w  # a title and the weights above the grid
        x0, y0 = find_grid(pic, edit_cells(model, vectors[name], weights, u8, z))
        for r in range(3):  # the w = 0 column is the plain decoding of the posterior mean
            assert_pixels(cell(pic, r, 2, x0, y0), shown(plain[r]))
        record = check_record(out / f"edit_{name}_real.json", "edit", ckpt, [f"edit_{name}_real.png"])
        assert record["attribute"] == name and record["indices"] == [0, 1, 2] and record["split"] == "valid"
        assert record["options"]["weights"] == weights


@pytest.mark.slow
def test_edit_random_codes(attributes_file, ckpt, model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(attributes_file, out / "attributes_train.npz")
    assert main(["edit", f"ckpt_path={ckpt}", "attrs=[Male]", "source=random", "n=2", "seed=4", "weights=[0,2]",
                 f"out={out}"]) == 0
    pic = png(out / "edit_Male_random.png")
    saved = np.load(out / "attributes_train.npz")
    v = saved["vectors"][[str(n) for n in saved["names"]].index("Male")]
    z = torch.randn(2, D, generator=torch.Generator().manual_seed(4))  # z ~ N(0, I) at the seed
    find_grid(pic, edit_cells(model, v, [0.0, 2.0], None, z))  # no real column
    record = check_record(out / "edit_Male_random.json", "edit", ckpt, ["edit_Male_random.png"])
    assert record["seed"] == 4


@pytest.mark.slow
def test_edit_recomputes_attributes_of_another_checkpoint(attributes_file, ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    saved = dict(np.load(attributes_file))
    stale = {**saved, "checkpoint_sha256": np.array("0" * 64), "vectors": np.zeros_like(saved["vectors"])}
    np.savez(out / "attributes_train.npz", **stale)
    assert main(["edit", f"ckpt_path={ckpt}", "attrs=[Smiling]", "n=1", f"out={out}"]) == 0
    fresh = np.load(out / "attributes_train.npz")
    assert str(fresh["checkpoint_sha256"]) == sha256(ckpt)
    np.testing.assert_allclose(fresh["vectors"], saved["vectors"], rtol=1e-6, atol=1e-7)
    assert (out / "edit_Smiling_real.png").is_file()


def test_edit_makes_the_attributes_file_when_missing(ckpt, tmp_path):
    out = tmp_path / "out"
    assert main(["edit", f"ckpt_path={ckpt}", "attrs=[Bald]", "n=1", "weights=[0,1]", f"out={out}"]) == 0
    assert {"attributes_train.npz", "attributes_train.json", "edit_Bald_real.png", "edit_Bald_real.json"} == files_in(out)


# ------------------------------------------------------------------------------ edit --measure
@pytest.mark.slow
def test_measured_edit_writes_rates_and_caches_the_classifier(attributes_file, ckpt, dm, tmp_path, monkeypatch):
    from vaegan.latent import classifier

    out, clf = tmp_path / "out", tmp_path / "classifiers"
    out.mkdir()
    shutil.copy(attributes_file, out / "attributes_train.npz")
    assert main(["edit", f"ckpt_path={ckpt}", "--measure", "attrs=[Smiling,Eyeglasses]", "n=2", "classifier_epochs=1",
                 "measure_n=50", f"classifier_dir={clf}", f"out={out}"]) == 0
    assert {"edit_measure.json", "edit_measure_args.json", "edit_Smiling_real.png"} <= files_in(out)
    cached = list(clf.glob("classifier-*.pt"))
    assert len(cached) == 1 and files_in(clf) == {cached[0].name}  # no temporary file left
    mtime = cached[0].stat().st_mtime_ns

    result = json.loads((out / "edit_measure.json").read_text())
    assert set(result) == {"weight", "split", "mean", "attributes"}
    assert result["weight"] == 1.0 and result["split"] == "valid"
    rows = result["attributes"]
    assert [r["attribute"] for r in rows] == ["Smiling", "Eyeglasses"]
    for r in rows:
        assert {"n_toward", "toward", "toward_random", "toward_mean_dp", "n_judged_without", "flipped", "n_away", "away",
                "away_random", "away_mean_dp", "classifier_accuracy"} <= set(r)
        assert r["n_toward"] + r["n_away"] == 50
        for k in ("toward", "toward_random", "away", "away_random", "classifier_accuracy"):
            assert 0.0 <= r[k] <= 1.0, (k, r[k])
        assert r["flipped"] is None or np.isnan(r["flipped"]) or 0.0 <= r["flipped"] <= 1.0
        assert -1.0 <= r["toward_mean_dp"] <= 1.0 and -1.0 <= r["away_mean_dp"] <= 1.0
        assert 0 <= r["n_judged_without"] <= r["n_toward"]
    for k in ("toward", "toward_random", "away", "away_random"):
        assert result["mean"][k] == pytest.approx(np.mean([r[k] for r in rows]))
    args = check_record(out / "edit_measure_args.json", "edit", ckpt, ["edit_measure.json"])
    assert args["images"] == 50 and args["options"]["measure"] is True

    # a second run loads the cached classifier: training it again would fail here
    def no_training(*a, **k):
        raise AssertionError("the cached classifier was retrained")

    monkeypatch.setattr(classifier, "fit", no_training)
    out2 = tmp_path / "out2"
    out2.mkdir()
    shutil.copy(attributes_file, out2 / "attributes_train.npz")
    assert main(["edit", f"ckpt_path={ckpt}", "measure=true", "classifier_epochs=1", "measure_n=50",
                 f"classifier_dir={clf}", f"out={out2}"]) == 0
    assert cached[0].stat().st_mtime_ns == mtime and list(clf.glob("classifier-*.pt")) == cached
    rows2 = json.loads((out2 / "edit_measure.json").read_text())["attributes"]
    assert [r["attribute"] for r in rows2] == dm.attr_names  # without attrs: every attribute is measured
    assert not any(name.endswith(".png") for name in files_in(out2))  # and no pictures are drawn
    # the same classifier, codes and images: the same numbers (the random direction is drawn per column)
    again = rows2[dm.attr_names.index("Smiling")]
    for k in ("n_toward", "toward", "toward_mean_dp", "n_judged_without", "flipped", "n_away", "away", "away_mean_dp",
              "classifier_accuracy"):
        assert json.dumps(again[k]) == json.dumps(rows[0][k]), k  # (NaN-safe comparison)


# ------------------------------------------------------------------------------ bad input
BAD = {
    "unknown attribute": (["edit", "attrs=[Smilng]"], "Explore error:", ["unknown attribute", "Smiling",
                                                                       "Eyeglasses", "Wearing_Necktie", "did you mean"]),
    "index out of range": (["reconstruct", "indices=[0,480]"], "Explore error:", ["the valid split has 480 images"]),
    "pair index out of range": (["interpolate", "pairs=[[0,1],[2,480]]"], "Explore error:",
                                ["the valid split has 480 images"]),
    "test index out of range": (["edit", "attrs=[Smiling]", "split=test", "indices=[420]"], "Explore error:",
                                ["the test split has 420 images"]),
    "option of another command": (["sample", "steps=3"], "Explore error:", ["steps", "not an option of sample"]),
    "unknown config key": (["sample", "data.no_such_key=1"], "Config error:", ["no_such_key"]),
    "odd number of files": (["interpolate", "files=[a.png,b.png,c.png]"], "Explore error:", ["3 images", "pairs"]),
    "bad mode": (["interpolate", "mode=cubic"], "Explore error:", ["cubic", "linear", "spherical"]),
    "bad split": (["reconstruct", "split=holdout"], "Explore error:", ["holdout", "train", "valid", "test"]),
    "three in a pair": (["interpolate", "pairs=[[0,1,2]]"], "Explore error:", ["two indices"]),
    "bad source": (["edit", "attrs=[Smiling]", "source=webcam"], "Explore error:", ["webcam", "real", "random"]),
    "edit without attrs": (["edit"], "Explore error:", ["attrs="]),
    "missing vectors file": (["edit", "attrs=[Smiling]", "vectors=/no/such/attributes.npz"], "Explore error:",
                             ["no such file"]),
    "bad option type": (["sample", "n=many"], "Explore error:", ["n"]),
    "one step": (["interpolate", "steps=1"], "Explore error:", ["steps=1", "at least 2"]),
    # every bad value names its key, what it takes, and (indices) the valid range
    "n not a number": (["sample", "n=abc"], "Explore error:", ["n=abc", "n takes an integer"]),
    "temperature not a number": (["sample", "temperature=hot"], "Explore error:", ["temperature=hot", "a number"]),
    "weights not numbers": (["edit", "attrs=[Smiling]", "weights=[a,1]"], "Explore error:", ["weights=[a,1]", "numbers"]),
    "pairs not indices": (["interpolate", "pairs=[[a,1]]"], "Explore error:", ["pairs=[[a,1]]", "index pairs"]),
    "combine not a bool": (["edit", "attrs=[Smiling]", "combine=maybe"], "Explore error:", ["combine=maybe", "true or false"]),
    "indices not a list": (["reconstruct", "indices=5"], "Explore error:", ["indices=5", "a list of image indices"]),
    "negative pair index": (["interpolate", "pairs=[[-1,2]]"], "Explore error:",
                            ["pairs=[[-1,2]]", "index -1 is out of range", "indices 0..479"]),
    "negative index": (["reconstruct", "indices=[0,-2]"], "Explore error:",
                       ["indices=[0,-2]", "index -2 is out of range", "indices 0..479"]),
    "negative edit index": (["edit", "attrs=[Smiling]", "indices=[-1]"], "Explore error:", ["indices=[-1]", "0..479"]),
    "negative seed": (["sample", "seed=-1"], "Explore error:", ["seed=-1", "[0, 2^63)"]),
    "negative temperature": (["sample", "temperature=-0.5"], "Explore error:", ["temperature=-0.5", ">= 0"]),
    "infinite temperature": (["sample", "temperature=inf"], "Explore error:", ["temperature=inf", "finite"]),
    "nan weight": (["edit", "attrs=[Smiling]", "weights=[0,nan]"], "Explore error:", ["weights=", "finite"]),
    "pairs and files": (["interpolate", "pairs=[[0,1]]", "files=[a.png,b.png]"], "Explore error:", ["not both"]),
    # a command that would draw nothing says so
    "no attributes": (["edit", "attrs=[]"], "Explore error:", ["attrs=[]", "at least one attribute"]),
    "no attributes to measure": (["edit", "attrs=[]", "--measure"], "Explore error:", ["attrs=[]"]),
    "no indices": (["reconstruct", "indices=[]"], "Explore error:", ["indices=[]", "at least one index"]),
    # other mistakes of the same kinds
    "unknown key": (["sample", "colour=red"], "Config error:", ["colour", "no such config key", "option of sample"]),
    "appended unknown key": (["sample", "+colour=red"], "Config error:", ["+colour=red", "no key of the run's config"]),
    "unreadable list": (["interpolate", "pairs=[[0,1]"], "Explore error:", ["pairs=[[0,1]", "cannot read", "quoted"]),
    "unknown attribute without vectors": (["edit", "attrs=[Smilng]", "vectors=/no/such.npz"], "Explore error:",
                                          ["unknown attribute", "did you mean Smiling"]),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.slow
def test_bad_input_fails_cleanly(case, attributes_file, ckpt, tmp_path, capsys):
    argv, kind, needles = BAD[case]
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(attributes_file, out / "attributes_train.npz")  # edit's vectors, so that only the error is tested
    rc = main([argv[0], f"ckpt_path={ckpt}", *argv[1:], f"out={out}"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(kind), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert files_in(out) == {"attributes_train.npz"}  # nothing written, no temporary files


@pytest.mark.parametrize("argv", [["sample", "n=0"], ["sample", "nrow=0"], ["sample", "n=-3"], ["reconstruct", "n=0"],
                                  ["sample", "device=tpu"], ["edit", "attrs=[Smiling]", "weights=[]"],
                                  ["interpolate", "pairs=[]"], ["interpolate", "steps=1"]],
                         ids=lambda a: " ".join(a))
def test_empty_or_negative_counts_fail_cleanly(argv, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main([argv[0], f"ckpt_path={ckpt}", *argv[1:], f"out={out}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("Explore error:")
    assert files_in(out) == set()


def test_unreadable_image_file_fails_cleanly(ckpt, tmp_path, capsys):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    good = sorted(require_shared("celeba", "img_align_celeba").glob("*.jpg"))[0]
    out = tmp_path / "out"
    rc = main(["interpolate", f"ckpt_path={ckpt}", f"files=[{good},{bad}]", f"out={out}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("Explore error:") and "cannot read" in err and str(bad) in err
    assert files_in(out) == set()


def test_vectors_of_another_checkpoint_are_refused(attributes_file, ckpt, tmp_path, capsys):
    other = tmp_path / "other.npz"
    np.savez(other, **{**dict(np.load(attributes_file)), "checkpoint_sha256": np.array("f" * 64)})
    out = tmp_path / "out"
    rc = main(["edit", f"ckpt_path={ckpt}", "attrs=[Smiling]", f"vectors={other}", f"out={out}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("Explore error:") and "another checkpoint" in err
    assert files_in(out) == set()


def test_usage_errors(tmp_path, capsys):
    assert main(["paint", "ckpt_path=x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Explore error:") and "sample" in err and "edit" in err
    assert "'paint' is not a command" in err and len(err.strip().splitlines()) == 1, err
    assert main(["sampel", "ckpt_path=x"]) == 2 and "did you mean sample?" in capsys.readouterr().err
    assert main(["sample", f"out={tmp_path}"]) == 2
    assert capsys.readouterr().err.startswith("Config error:")
    assert main(["sample", f"ckpt_path={tmp_path / 'missing.ckpt'}"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--help"]) == 0 and "usage: python -m vaegan.explore" in capsys.readouterr().out
    assert files_in(tmp_path) == set()


def test_interpolation_modes_are_those_of_latent():
    from vaegan.latent.explore.options import MODES
    from vaegan.latent.arithmetic import INTERPOLATIONS

    assert set(MODES) == set(INTERPOLATIONS)


def fails_in_one_line(rc: int, capsys, kind: str = "Explore error:") -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(kind) and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("where", ["file", "below a file"])
def test_out_must_be_a_folder(where, ckpt, tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me\n")
    out = existing if where == "file" else existing / "explore"
    err = fails_in_one_line(main(["sample", f"ckpt_path={ckpt}", "n=4", f"out={out}"]), capsys)
    assert f"out={out}" in err and "is a file, not a folder" in err and "out= names a folder" in err
    assert existing.read_text() == "keep me\n" and files_in(tmp_path) == {"notes.txt"}


def test_unwritable_out_is_refused_before_any_work(ckpt, capsys):
    target = Path("/sys/vaegan-explore-test")  # sysfs: not even root may create files there
    try:
        tempfile.NamedTemporaryFile(dir="/sys").close()
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    err = fails_in_one_line(main(["sample", f"ckpt_path={ckpt}", "n=4", f"out={target}"]), capsys)
    assert f"out={target}" in err and "/sys is not writable" in err
    assert not target.exists()


TOO_MANY = {  # argv, the key the message names
    "sample n": (["sample", "n=100000000"], "n"),
    "sample nrow": (["sample", "n=1", "nrow=100000000"], "nrow"),
    "interpolate steps": (["interpolate", "steps=100000000"], "steps"),
    "edit random n": (["edit", "attrs=[Smiling]", "source=random", "n=100000000"], "n"),
}


@pytest.mark.parametrize("case", list(TOO_MANY))
@pytest.mark.slow
def test_a_picture_too_big_for_memory_is_refused_at_once(case, attributes_file, ckpt, tmp_path, capsys):
    argv, key = TOO_MANY[case]
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(attributes_file, out / "attributes_train.npz")
    start = time.monotonic()
    err = fails_in_one_line(main([argv[0], f"ckpt_path={ckpt}", *argv[1:], f"out={out}"]), capsys)
    assert time.monotonic() - start < 30  # nothing was drawn: the size is estimated first
    assert f"{key}=100000000:" in err and "GB in memory" in err and f"the largest {key} here is" in err, err
    largest = int(err.split(f"the largest {key} here is ")[1].split()[0])
    assert 1000 < largest < 100000000
    assert files_in(out) == {"attributes_train.npz"}


BATCHED = {  # argv with batch_size=2; the model's methods each must only ever see batches of at most 2
    "sample": ["sample", "n=5", "nrow=5"],
    "reconstruct": ["reconstruct", "n=5"],
    "interpolate": ["interpolate", "pairs=[[0,1],[2,3],[4,5]]", "steps=3"],
    "edit": ["edit", "attrs=[Smiling]", "n=3", "weights=[-1,0,1]"],
}


@pytest.mark.parametrize("command", list(BATCHED))
@pytest.mark.slow
def test_commands_decode_and_encode_in_batches(command, attributes_file, ckpt, tmp_path, monkeypatch):
    sizes: dict[str, list[int]] = {}

    def recording(name):
        method = getattr(VAEGANModule, name)

        def record(self, x):
            sizes.setdefault(name, []).append(len(x))
            return method(self, x)
        return record

    for name in ("decode", "encode", "discriminate"):
        monkeypatch.setattr(VAEGANModule, name, recording(name))
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(attributes_file, out / "attributes_train.npz")
    argv = BATCHED[command]
    assert main([argv[0], f"ckpt_path={ckpt}", *argv[1:], "batch_size=2", f"out={out}"]) == 0
    assert sizes.get("decode") and max(max(s) for s in sizes.values()) <= 2, sizes
    assert sum(sizes["decode"]) >= 5  # every image was decoded, two at a time


def test_classifier_dir_must_be_a_folder_before_any_picture(attributes_file, ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(attributes_file, out / "attributes_train.npz")
    rc = main(["edit", f"ckpt_path={ckpt}", "attrs=[Smiling]", "--measure", f"classifier_dir={attributes_file}", f"out={out}"])
    err = fails_in_one_line(rc, capsys)
    assert f"classifier_dir={attributes_file}" in err and "is a file, not a folder" in err
    assert files_in(out) == {"attributes_train.npz"}  # no edit picture drawn first


def test_a_failed_write_leaves_nothing_behind(ckpt, tmp_path, capsys, monkeypatch):
    import errno

    from vaegan.latent.explore import commands

    def disk_full(picture, path, format):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(commands, "save_image", disk_full)
    out = tmp_path / "out"
    err = fails_in_one_line(main(["sample", f"ckpt_path={ckpt}", "n=4", f"out={out}"]), capsys)
    assert "No space left on device" in err and str(out) in err
    assert files_in(out) == set()  # neither the half-written temporary file nor a record


@pytest.mark.slow
def test_checkpoint_of_another_kind_fails_cleanly(tmp_path, capsys):
    other = tmp_path / "checkpoints" / "other.ckpt"
    other.parent.mkdir()
    torch.save({"state_dict": {}, "hyper_parameters": {"num_classes": 10, "backbone": "resnet18"}}, other)
    err = fails_in_one_line(main(["sample", f"ckpt_path={other}", "data=digits"]), capsys, "Config error:")
    assert "not a checkpoint of a vaegan model" in err and str(other) in err
    torch.save(torch.zeros(3), other)
    err = fails_in_one_line(main(["sample", f"ckpt_path={other}", "data=digits"]), capsys, "Config error:")
    assert "not a vaegan training checkpoint" in err
    assert files_in(tmp_path) == {"checkpoints"}


def test_a_checkpoint_without_its_config_needs_the_data_named(run, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(run / "checkpoints", copy / "checkpoints")
    ckpt = copy / "checkpoints" / "last.ckpt"
    err = fails_in_one_line(main(["sample", f"ckpt_path={ckpt}", "n=4"]), capsys, "Config error:")
    assert f"{copy / 'config.yaml'} not found" in err and "data=" in err and "data.root=" in err
    err = fails_in_one_line(main(["sample", f"ckpt_path={ckpt}", "n=4", "data=digits"]), capsys, "Config error:")
    assert "data.image_size=32 but the checkpoint's model was trained with 16" in err and "data.channels=1" in err
    assert "pass data.image_size=16 data.channels=3" in err
    assert files_in(copy) == {"checkpoints"}
    npz = require_shared("celeba", "celeba_64.npz")
    assert main(["sample", f"ckpt_path={ckpt}", "n=4", "data=npz", f"data.root={npz}", "data.image_size=16"]) == 0
    assert files_in(copy / "explore") == {"sample_seed0_t1.png", "sample_seed0_t1.json"}


# ------------------------------------------------------------------------------ the entry point
@pytest.mark.slow
def test_module_entry_point(ckpt, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "vaegan.explore", "sample", f"ckpt_path={ckpt}", "n=4", "nrow=2",
                           f"out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert png(out / "sample_seed0_t1.png").shape[:2] == grid_px(2, 2)
    check_record(out / "sample_seed0_t1.json", "sample", ckpt, ["sample_seed0_t1.png"])
