"""Tests of the sinusoidal embedding and the time-embedded UNet (unet.py)."""

import math

import pytest
import torch

from unet import MyBlock, MyUNet, sinusoidal_embedding


def test_embedding_shape_and_position_zero():
    emb = sinusoidal_embedding(1000, 100)
    assert emb.shape == (1000, 100)
    assert torch.equal(emb[0, 0::2], torch.zeros(50))  # sin(0)
    assert torch.equal(emb[0, 1::2], torch.ones(50))  # cos(0)
    assert emb.abs().max() <= 1.0


def test_embedding_hand_computed_entries():
    emb = sinusoidal_embedding(1000, 100)
    # Eq. 10: PE[pos=3, 2i=4] = sin(3 / 10000^(4/100))
    assert emb[3, 4].item() == pytest.approx(math.sin(3 / 10000 ** (4 / 100)), abs=1e-6)
    # Eq. 11: PE[pos=7, 2i+1=11] = cos(7 / 10000^(10/100))
    assert emb[7, 11].item() == pytest.approx(math.cos(7 / 10000 ** (10 / 100)), abs=1e-6)
    # Odd d: the last column is a sine with no cosine partner.
    odd = sinusoidal_embedding(5, 7)
    assert odd[2, 6].item() == pytest.approx(math.sin(2 / 10000 ** (6 / 7)), abs=1e-6)


def test_embedding_dot_product_depends_only_on_offset():
    """Figure 9: <PE(p), PE(p+k)> = sum_i cos(k w_i), independent of p."""
    emb = sinusoidal_embedding(64, 100).double()
    gram = emb @ emb.T
    for k in range(0, 20):
        diagonal = torch.diagonal(gram, offset=k)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-4), k
    # and it does vary with the offset
    assert gram[0, 0] > gram[0, 1] > gram[0, 2]


def test_embedding_refuses_bad_sizes():
    with pytest.raises(ValueError, match="n >= 1 and d >= 1"):
        sinusoidal_embedding(0, 10)


@pytest.mark.parametrize("size", [28, 64])
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("t_shape", ["flat", "column"])
def test_unet_output_shape_equals_input_shape(size, batch, t_shape):
    net = MyUNet(n_steps=1000, image_size=size)
    x = torch.randn(batch, 1, size, size)
    t = torch.randint(0, 1000, (batch,))
    if t_shape == "column":
        t = t.reshape(batch, 1)
    with torch.no_grad():
        assert net(x, t).shape == x.shape


def test_unet_time_steps_must_match_batch():
    net = MyUNet(n_steps=10)
    with pytest.raises(ValueError, match="3 images but 2 time steps"):
        net(torch.zeros(3, 1, 28, 28), torch.tensor([1, 2]))


def test_unet_refuses_other_sizes_and_archs():
    with pytest.raises(ValueError, match=r"supports image sizes \(28, 64\), got 32"):
        MyUNet(image_size=32)
    with pytest.raises(ValueError, match="arch must be one of"):
        MyUNet(arch="resnet")
    with pytest.raises(ValueError, match="does not have in_c=3 channels"):
        MyBlock((1, 8, 8), 3, 4)


def test_unet_output_depends_on_time_step():
    torch.manual_seed(0)
    net = MyUNet(n_steps=1000, image_size=28)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        a = net(x, torch.tensor([0, 0]))
        b = net(x, torch.tensor([900, 900]))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("size", [28, 64])
def test_time_embedding_frozen_and_everything_else_trains(size):
    torch.manual_seed(0)
    net = MyUNet(n_steps=100, image_size=size)
    x = torch.randn(3, 1, size, size)
    t = torch.randint(0, 100, (3,))
    net(x, t).pow(2).mean().backward()
    assert not net.time_embed.weight.requires_grad
    assert net.time_embed.weight.grad is None
    assert torch.equal(net.time_embed.weight, sinusoidal_embedding(100, 100))
    for name, p in net.named_parameters():
        if name.startswith("time_embed"):
            continue
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_unet_stage_shapes_28():
    """Every skip connection lines up: 28 -> 14 -> 7 -> 3 -> 7 -> 14 -> 28."""
    net = MyUNet(image_size=28)
    with torch.no_grad():
        assert net.down3(torch.zeros(1, 40, 7, 7)).shape == (1, 40, 3, 3)
        assert net.up1(torch.zeros(1, 40, 3, 3)).shape == (1, 40, 7, 7)
        assert net.up2(torch.zeros(1, 20, 7, 7)).shape == (1, 20, 14, 14)
        assert net.down1(torch.zeros(1, 10, 28, 28)).shape == (1, 10, 14, 14)


def test_unet_stage_shapes_64():
    """Figure 11: 64 -> 32 -> 16 -> 8 -> 4 and back."""
    net = MyUNet(image_size=64)
    with torch.no_grad():
        assert net.down3(torch.zeros(1, 40, 16, 16)).shape == (1, 40, 4, 4)
        assert net.up1(torch.zeros(1, 40, 4, 4)).shape == (1, 40, 16, 16)
        assert net.up3(torch.zeros(1, 10, 32, 32)).shape == (1, 10, 64, 64)
    assert net.b_mid[0].ln.normalized_shape == (40, 4, 4)
    assert net.b_out[2].normalize is False and net.b_out[0].normalize is True


def _affine_gap(net: MyUNet, size: int) -> float:
    """max |eps(2x + 0.5, t) - eps(x, t)|, relative to max |eps(x, t)|."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, size, size)
    t = torch.tensor([0, 10, 500, 999])
    with torch.no_grad():
        out = net(x, t)
        return ((out - net(2.0 * x + 0.5, t)).abs().max() / out.abs().max()).item()


@pytest.mark.parametrize("size", [28, 64])
def test_paper_unet_is_blind_to_brightness_and_contrast(size):
    """The flaw of Figure 11: LayerNorm on the raw input makes eps(a x + b) == eps(x)."""
    torch.manual_seed(1)
    net = MyUNet(image_size=size, arch="paper")
    assert _affine_gap(net, size) < 1e-5


@pytest.mark.parametrize("size", [28, 64])
def test_fixed_unet_sees_brightness_and_contrast(size):
    torch.manual_seed(1)
    net = MyUNet(image_size=size, arch="fixed")
    assert net.b1[0].normalize is False
    assert _affine_gap(net, size) > 1e-3
