"""``vaegan.latent.panels``: grid geometry and the content of every panel, cell by cell, against the
networks called directly. Most tests use small randomly initialised models (no training); the
Fig. 6 and Fig. 8 checks on real CelebA faces use the tiny trained checkpoint of test_explore.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vaegan.latent import panels
from vaegan.data.transforms import to_model_input
from vaegan.models.module import VAEGANModule

S, D = 16, 8  # image size, latent size
CELL = S + panels.PAD


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one intra-op thread


def make_module(vae: bool = True, discriminator: bool = True, channels: int = 3, seed: int = 0) -> VAEGANModule:
    torch.manual_seed(seed)
    variant = "vaegan" if vae and discriminator else ("began" if discriminator else "vae")
    return VAEGANModule(image_size=S, channels=channels, width=4, latent_dim=D, vae=vae, discriminator=discriminator,
                        variant=variant)


@pytest.fixture(scope="module")
def vaegan():
    return make_module()


@pytest.fixture(scope="module")
def began():
    return make_module(vae=False)


@pytest.fixture(scope="module")
def vae():
    return make_module(discriminator=False)


def real_like(n: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    u8 = np.random.default_rng(seed).integers(0, 256, size=(n, S, S, channels), dtype=np.uint8)
    return to_model_input(torch.from_numpy(u8))


def zs(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, D))).float()


def shown(x: torch.Tensor) -> np.ndarray:
    """What a grid shows of a model-range image (C, h, w): (x + 1) / 2 clipped to [0, 1], as RGB."""
    x = x.detach().numpy()
    if x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    return np.clip((x.astype(np.float64) + 1) / 2, 0, 1)


def cell(picture: torch.Tensor, r: int, c: int, size: int = S) -> np.ndarray:
    y, x = panels.PAD + r * (size + panels.PAD), panels.PAD + c * (size + panels.PAD)
    return picture[:, y:y + size, x:x + size].numpy()


def grid_size(rows: int, cols: int, size: int = S) -> tuple[int, int, int]:
    return 3, rows * (size + 2) + 2, cols * (size + 2) + 2


def offsets_of(big: torch.Tensor, small: torch.Tensor, atol: float) -> list[tuple[int, int]]:
    _, h, w = small.shape
    return [(dx, dy) for dy in range(big.shape[1] - h + 1) for dx in range(big.shape[2] - w + 1)
            if (big[:, dy:dy + h, dx:dx + w] - small).abs().max() <= atol]


# ------------------------------------------------------------------------------ evaluating
class ModeProbe(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)


@pytest.mark.parametrize("start_training", [True, False])
def test_evaluating_sets_eval_and_no_grad_then_restores(start_training):
    m = ModeProbe().train(start_training)
    with panels.evaluating(m):
        assert not m.training and not m.lin.training
        assert not torch.is_grad_enabled()
        assert not m.lin(torch.ones(1, 2)).requires_grad
    assert m.training is start_training and m.lin.training is start_training
    assert torch.is_grad_enabled()


def test_evaluating_restores_the_mode_after_an_error():
    m = ModeProbe().train()
    with pytest.raises(KeyError):
        with panels.evaluating(m):
            raise KeyError("x")
    assert m.training and torch.is_grad_enabled()


# ------------------------------------------------------------------------------ grid / annotate
def test_grid_geometry_content_and_padding():
    x = real_like(6).view(2, 3, 3, S, S)
    x[0, 0] = 3.0  # out of range values are clipped
    pic = panels.grid(x)
    assert tuple(pic.shape) == grid_size(2, 3)
    for r in range(2):
        for c in range(3):
            np.testing.assert_allclose(cell(pic, r, c), shown(x[r, c]), atol=1e-6)
    # padding is white: the first rows/columns and the seams between cells
    assert torch.all(pic[:, :2] == 1) and torch.all(pic[:, :, :2] == 1)
    assert torch.all(pic[:, :, 2 + S:2 + S + 2] == 1) and torch.all(pic[:, 2 + S:2 + S + 2] == 1)
    # a list of rows is the same picture
    assert torch.equal(panels.grid([x[0], x[1]]), pic)


def test_grid_of_grayscale_is_rgb():
    x = real_like(4, channels=1).view(2, 2, 1, S, S)
    pic = panels.grid(x)
    assert tuple(pic.shape) == grid_size(2, 2)
    assert torch.equal(pic[0], pic[1]) and torch.equal(pic[1], pic[2])
    np.testing.assert_allclose(cell(pic, 1, 0), shown(x[1, 0]), atol=1e-6)


@pytest.mark.parametrize("labels", [dict(title="A title with gjpqy"), dict(columns=["-2", "0", "+2"]),
                                    dict(rows=["generated", "real"]),
                                    dict(title="Smiling: z + w v", columns=["real", "-1", "+1"], rows=["a", "b"])])
def test_annotate_adds_margins_and_keeps_the_picture(labels):
    pic = panels.grid(real_like(6).view(2, 3, 3, S, S))
    pic = pic.mul(255).round() / 255  # as on the canvas (8-bit)
    out = panels.annotate(pic, **labels)
    assert out.shape[0] == 3 and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    h, w = pic.shape[1:]
    assert out.shape[1] >= h and out.shape[2] >= w and out.shape[1] * out.shape[2] > h * w
    if "rows" in labels:
        assert out.shape[2] > w
    if "title" in labels or "columns" in labels:
        assert out.shape[1] > h
    found = offsets_of(out, pic, atol=1e-6)
    assert found, "the picture does not appear unchanged in the annotated one"
    dx, dy = found[0]
    # the margins hold the labels: some dark pixels outside the picture
    margin = torch.ones_like(out, dtype=torch.bool)
    margin[:, dy:dy + h, dx:dx + w] = False
    assert (out[margin] < 0.5).any()
    # and white elsewhere than text: the corner under the labels is background
    assert torch.all(out[:, -1, -1] == 1) or (dy + h == out.shape[1] and dx + w == out.shape[2])


def test_annotate_without_labels_is_the_picture():
    pic = panels.grid(real_like(4).view(2, 2, 3, S, S)).mul(255).round() / 255
    out = panels.annotate(pic)
    assert out.shape == pic.shape
    np.testing.assert_allclose(out.numpy(), pic.numpy(), atol=1e-6)


# ------------------------------------------------------------------------------ samples / reconstructions
def test_samples_decode_each_code_and_fill_the_last_row_with_white(vaegan):
    z = zs(10)
    vaegan.train()
    pic = panels.samples(vaegan, z, nrow=4)
    assert vaegan.training  # mode restored
    assert tuple(pic.shape) == grid_size(3, 4)
    with torch.no_grad():
        x = vaegan.generator(z)
    for i in range(10):
        np.testing.assert_allclose(cell(pic, i // 4, i % 4), shown(x[i]), atol=1e-5)
    assert np.all(cell(pic, 2, 2) == 1) and np.all(cell(pic, 2, 3) == 1)


@pytest.mark.parametrize("kind", ["vaegan", "began"])
def test_reconstructions_pair_each_image_with_its_reconstruction(kind, vaegan, began):
    module = {"vaegan": vaegan, "began": began}[kind]
    x = real_like(6, seed=2)
    pic = panels.reconstructions(module, x, nrow=4)
    assert tuple(pic.shape) == grid_size(3, 4)  # 12 cells: 6 pairs, 2 pairs a row
    with torch.no_grad():
        rec = module.generator(module.encoder(x)[0]) if kind == "vaegan" else module.discriminator(x)[1]
    for i in range(6):
        k = 2 * i
        np.testing.assert_allclose(cell(pic, k // 4, k % 4), shown(x[i]), atol=1e-5)
        np.testing.assert_allclose(cell(pic, (k + 1) // 4, (k + 1) % 4), shown(rec[i]), atol=1e-5)


# ------------------------------------------------------------------------------ Fig. 4
@pytest.mark.parametrize("kind, keys", [
    ("vaegan", ["generated", "D(generated)", "real", "D(real)", "VAE(real)"]),
    ("began", ["generated", "D(generated)", "real", "D(real)"]),
    ("vae", ["generated", "real", "VAE(real)"]),
])
def test_discriminator_rows_hold_the_networks_outputs(kind, keys, vaegan, began, vae):
    module = {"vaegan": vaegan, "began": began, "vae": vae}[kind]
    x, z = real_like(3, seed=4), zs(3, seed=4)
    rows = panels.discriminator_rows(module, x, z)
    assert list(rows) == keys
    with torch.no_grad():
        xg = module.generator(z)
        expected = {"generated": xg, "real": x}
        if module.discriminator is not None:
            expected["D(generated)"] = module.discriminator(xg)[1]
            expected["D(real)"] = module.discriminator(x)[1]
        if module.encoder is not None:
            expected["VAE(real)"] = module.generator(module.encoder(x)[0])
    for k in keys:
        assert rows[k].shape == (3, 3, S, S)
        np.testing.assert_allclose(rows[k].numpy(), expected[k].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind, nrows", [("vaegan", 5), ("began", 4)])
def test_discriminator_panel_is_the_labelled_grid_of_the_rows(kind, nrows, vaegan, began):
    module = {"vaegan": vaegan, "began": began}[kind]
    x, z = real_like(4, seed=5), zs(4, seed=5)
    pic = panels.discriminator_panel(module, x, z)
    _, gh, gw = grid_size(nrows, 4)
    assert pic.shape[1] == gh and pic.shape[2] > gw  # row labels on the left only
    body = pic[:, :, -gw:]
    expected = panels.grid(list(panels.discriminator_rows(module, x, z).values()))
    np.testing.assert_allclose(body.numpy(), expected.numpy(), atol=0.5 / 255 + 1e-6)


# ------------------------------------------------------------------------------ Fig. 6
@pytest.mark.parametrize("mode", ["linear", "spherical"])
def test_interpolation_codes_start_and_end_at_the_posterior_means(vaegan, mode):
    xa, xb = real_like(3, seed=6), real_like(3, seed=7)
    codes = panels.interpolation_codes(vaegan, xa, xb, 5, mode)
    assert codes.shape == (3, 5, D)
    with torch.no_grad():
        ma, mb = vaegan.encoder(xa)[0], vaegan.encoder(xb)[0]
    np.testing.assert_allclose(codes[:, 0].numpy(), ma.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(codes[:, -1].numpy(), mb.numpy(), rtol=1e-5, atol=1e-5)
    if mode == "linear":
        np.testing.assert_allclose(codes[:, 2].numpy(), (ma.numpy() + mb.numpy()) / 2, rtol=1e-5, atol=1e-5)
    # codes given directly are used as they are
    za, zb = zs(2, 1), zs(2, 2)
    direct = panels.interpolation_codes(vaegan, None, None, 4, mode, za=za, zb=zb)
    np.testing.assert_allclose(direct[:, 0].numpy(), za.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(direct[:, -1].numpy(), zb.numpy(), rtol=1e-5, atol=1e-5)


def test_interpolation_panel_between_real_images_has_them_at_both_ends(vaegan):
    xa, xb, steps = real_like(2, seed=8), real_like(2, seed=9), 5
    pic = panels.interpolation_panel(vaegan, steps, "linear", xa=xa, xb=xb)
    assert tuple(pic.shape) == grid_size(2, steps + 2)
    with torch.no_grad():
        ma, mb = vaegan.encoder(xa)[0], vaegan.encoder(xb)[0]
        mid = vaegan.generator((ma + mb) / 2)
        da, db = vaegan.generator(ma), vaegan.generator(mb)
    for r in range(2):
        np.testing.assert_allclose(cell(pic, r, 0), shown(xa[r]), atol=1e-5)
        np.testing.assert_allclose(cell(pic, r, steps + 1), shown(xb[r]), atol=1e-5)
        np.testing.assert_allclose(cell(pic, r, 1), shown(da[r]), atol=1e-5)
        np.testing.assert_allclose(cell(pic, r, steps), shown(db[r]), atol=1e-5)
        np.testing.assert_allclose(cell(pic, r, 3), shown(mid[r]), atol=1e-5)  # t = 0.5 of 5 steps


def test_interpolation_panel_between_codes_has_steps_columns(began):
    za, zb = zs(3, 3), zs(3, 4)
    pic = panels.interpolation_panel(began, 4, "spherical", za=za, zb=zb)
    assert tuple(pic.shape) == grid_size(3, 4)
    with torch.no_grad():
        first, last = began.generator(za), began.generator(zb)
    np.testing.assert_allclose(cell(pic, 2, 0), shown(first[2]), atol=1e-5)
    np.testing.assert_allclose(cell(pic, 2, 3), shown(last[2]), atol=1e-5)


def test_interpolation_panel_rejects_a_bad_mode(vaegan):
    with pytest.raises(ValueError, match="mode"):
        panels.interpolation_panel(vaegan, 4, "cubic", xa=real_like(1), xb=real_like(1, 1))


# ------------------------------------------------------------------------------ Fig. 8
def test_edit_images_decode_z_plus_w_v(vaegan):
    z, v = zs(3, 10), zs(1, 11)[0]
    weights = [-2.0, 0.0, 1.5]
    out = panels.edit_images(vaegan, z, v, weights)
    assert out.shape == (3, 3, 3, S, S)
    with torch.no_grad():
        for j, w in enumerate(weights):
            np.testing.assert_allclose(out[:, j].numpy(), vaegan.generator(z + w * v).numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out[:, 1].numpy(), vaegan.decode(z).numpy(), rtol=1e-5, atol=1e-6)


def test_edit_images_put_the_real_images_first(vaegan):
    x = real_like(2, seed=12)
    z, v = zs(2, 12), zs(1, 13)[0]
    out = panels.edit_images(vaegan, z, v, [0.0, 1.0], x=x)
    assert out.shape == (2, 3, 3, S, S)
    np.testing.assert_array_equal(out[:, 0].numpy(), x.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(out[:, 1].numpy(), vaegan.generator(z).numpy(), rtol=1e-5, atol=1e-6)


def test_edit_panel_is_the_titled_grid_of_the_edits(vaegan):
    x, z, v = real_like(2, seed=14), zs(2, 14), zs(1, 15)[0]
    weights = [-1.0, 0.0, 1.0]
    pic = panels.edit_panel(vaegan, z, v, weights, "Smiling: z + w v", x)
    body = panels.grid(panels.edit_images(vaegan, z, v, weights, x)).mul(255).round() / 255
    _, gh, gw = grid_size(2, 4)
    assert body.shape[1:] == (gh, gw)
    assert pic.shape[1] > gh and pic.shape[2] >= gw
    assert offsets_of(pic, body, atol=1e-6)


def test_weight_labels():
    assert panels.weight_labels([-2.0, -0.5, 0.0, 1.0, 2.5]) == ["-2", "-0.5", "0", "+1", "+2.5"]


# ------------------------------------------------------------------------------ training_panels
@pytest.mark.parametrize("kind, keys", [
    ("vaegan", {"samples", "reconstructions", "discriminator", "interpolations"}),
    ("began", {"samples", "reconstructions", "discriminator", "interpolations"}),
    ("vae", {"samples", "reconstructions", "interpolations"}),
])
def test_training_panels(kind, keys, vaegan, began, vae):
    module = {"vaegan": vaegan, "began": began, "vae": vae}[kind]
    z, x = zs(16, 20), real_like(10, seed=20)
    out = panels.training_panels(module, z, x, pairs=3, steps=4)
    assert set(out) == keys
    assert tuple(out["samples"].shape) == grid_size(2, 8)
    assert tuple(out["reconstructions"].shape) == grid_size(3, 8)  # 20 cells, 8 a row
    cols = 4 + 2 if module.encoder is not None else 4  # real images at the ends, with an encoder
    assert tuple(out["interpolations"].shape) == grid_size(3, cols)
    if "discriminator" in out:
        nrows = 5 if module.encoder is not None else 4
        assert out["discriminator"].shape[1] == grid_size(nrows, 8)[1]
    if module.encoder is None:  # interpolations between consecutive codes z0-z1, z2-z3, ...
        with torch.no_grad():
            np.testing.assert_allclose(cell(out["interpolations"], 1, 0), shown(module.generator(z[2:3])[0]), atol=1e-5)
            np.testing.assert_allclose(cell(out["interpolations"], 1, 3), shown(module.generator(z[3:4])[0]), atol=1e-5)
    else:  # between consecutive real images x0-x1, x2-x3, ...
        np.testing.assert_allclose(cell(out["interpolations"], 1, 0), shown(x[2]), atol=1e-5)
        np.testing.assert_allclose(cell(out["interpolations"], 1, 5), shown(x[3]), atol=1e-5)
    no_pairs = panels.training_panels(module, z, x, pairs=0, steps=4)
    assert "interpolations" not in no_pairs


def test_training_panels_limit_pairs_to_the_images_available(vaegan):
    out = panels.training_panels(vaegan, zs(4), real_like(5), pairs=10, steps=3)
    assert tuple(out["interpolations"].shape) == grid_size(2, 5)  # 5 images: 2 pairs


# ------------------------------------------------------------------------------ real faces, trained model
@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    from omegaconf import OmegaConf

    from tests.latent.test_explore import celeba_run
    from vaegan.training.train import build_datamodule_from

    run = celeba_run(tmp_path_factory, "vaegan")
    module, _ = VAEGANModule.from_checkpoint(run / "checkpoints" / "last.ckpt", "cpu")
    dm = build_datamodule_from(OmegaConf.load(run / "config.yaml"))
    dm.setup()
    return module, dm


@pytest.mark.parametrize("mode", ["linear", "spherical"])
def test_real_faces_interpolation_endpoints_decode_the_encoded_endpoints(celeba, mode):
    module, dm = celeba
    rows = dm.splits["valid"][:6]
    x = to_model_input(torch.from_numpy(np.asarray(dm.data.images[rows])))
    xa, xb, steps = x[0::2], x[1::2], 6
    module.eval()
    with torch.no_grad():
        mu_a, mu_b = module.encode(xa)[0], module.encode(xb)[0]
        dec_a, dec_b = module.decode(mu_a), module.decode(mu_b)
    codes = panels.interpolation_codes(module, xa, xb, steps, mode)
    np.testing.assert_allclose(codes[:, 0].numpy(), mu_a.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(codes[:, -1].numpy(), mu_b.numpy(), rtol=1e-5, atol=1e-5)
    pic = panels.interpolation_panel(module, steps, mode, xa=xa, xb=xb)
    assert tuple(pic.shape) == grid_size(3, steps + 2)
    for r in range(3):
        # the real faces at the ends, exactly their pixels
        np.testing.assert_allclose(cell(pic, r, 0), np.asarray(dm.data.images[rows[2 * r]]).transpose(2, 0, 1) / 255,
                                   atol=1e-5)
        np.testing.assert_allclose(cell(pic, r, 1), shown(dec_a[r]), atol=1e-5)
        np.testing.assert_allclose(cell(pic, r, steps), shown(dec_b[r]), atol=1e-5)


def test_real_faces_edit_with_weight_zero_is_the_plain_decoding(celeba):
    module, dm = celeba
    x = to_model_input(torch.from_numpy(np.asarray(dm.data.images[dm.splits["valid"][:4]])))
    with torch.no_grad():
        z = module.encode(x)[0]
        plain = module.decode(z)
    v = torch.from_numpy(np.random.default_rng(0).normal(size=z.shape[1])).float()
    out = panels.edit_images(module, z, v, [-2.0, 0.0, 2.0], x=x)
    np.testing.assert_allclose(out[:, 2].numpy(), plain.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(out[:, 1].numpy(), plain.numpy(), atol=1e-4)  # w != 0 changes the image
