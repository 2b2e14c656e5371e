"""Network shapes and the BEGAN-style architecture of SPEC.md."""

import pytest
import torch
from torch import nn

from vaegan.models.networks import Decoder, Discriminator, Encoder, VAEEncoder, num_scales


@pytest.mark.parametrize("size,scales", [(8, 1), (16, 2), (32, 3), (64, 4), (128, 5)])
def test_scales_follow_resolution(size, scales):
    assert num_scales(size) == scales


@pytest.mark.parametrize("size", [0, 4, 48, 100])
def test_unsupported_size_says_what_to_set(size):
    with pytest.raises(ValueError, match="data.image_size"):
        num_scales(size)


@pytest.mark.parametrize("size,channels", [(16, 1), (32, 3), (64, 3)])
def test_shapes_round_trip(size, channels):
    x = torch.rand(2, channels, size, size) * 2 - 1
    mu, logvar = VAEEncoder(size, channels, width=4, latent_dim=6)(x)
    assert mu.shape == logvar.shape == (2, 6)
    assert Decoder(size, channels, width=4, latent_dim=6)(mu).shape == x.shape
    z, x_rec = Discriminator(size, channels, width=4, latent_dim=6)(x)
    assert z.shape == (2, 6) and x_rec.shape == x.shape


def test_encoder_widths_grow_linearly_and_subsample_to_8x8():
    enc = Encoder(image_size=32, channels=3, width=5, out_dim=7)
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [5, 5, 5, 10, 10, 10, 15, 15, 15]
    assert [c.stride[0] for c in convs] == [1, 1, 1, 2, 1, 1, 2, 1, 1]
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert enc.fc.in_features == 15 * 8 * 8


def test_no_batchnorm_dropout_or_transposed_convolutions():
    banned = (nn.BatchNorm2d, nn.Dropout, nn.ConvTranspose2d)
    for net in (VAEEncoder(64, 3, 4, 8), Decoder(64, 3, 4, 8), Discriminator(64, 3, 4, 8)):
        assert not any(isinstance(m, banned) for m in net.modules())
        assert any(isinstance(m, nn.ELU) for m in net.modules())


def test_decoder_upsamples_by_nearest_neighbour():
    dec = Decoder(image_size=64, channels=3, width=4, latent_dim=8)
    ups = [m for m in dec.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 3 and all(u.mode == "nearest" and u.scale_factor == 2 for u in ups)
