"""The time-embedded UNet of the paper (section 4.4-4.5, Figures 10 and 11).

The network eps_theta(x_t, t) predicts the noise that was added to x_0 (Eq. 8-9).
Time steps enter through a frozen sinusoidal embedding (Eq. 10-11) followed by a
small MLP per stage (`_make_te`) whose output is added channel-wise to the
feature map before that stage.

Two image sizes are supported, the paper's two datasets:

* 64x64 (Persian digits), as in Figure 11: 64 -> 32 -> 16 -> 8 -> 4 and back.
* 28x28 (MNIST): 28 -> 14 -> 7 -> 3 -> 7 -> 14 -> 28. 7 is odd, so the bottom
  level uses a 2x2 convolution (7 -> 6) next to the stride-2 one (6 -> 3), and
  the matching transposed pair on the way up, so every skip connection lines up.

Two architectures are selectable with ``arch``:

* ``"paper"``: exactly Figure 11. Its first ``MyBlock`` applies LayerNorm over
  the whole (C, H, W) of the raw input, after only a per-image constant (the
  first time embedding) was added. That removes each image's mean and scale, so
  the network's output is invariant to ``x -> a*x + b`` (a > 0): it cannot see
  the brightness or contrast of x_t.
* ``"fixed"``: the smallest change that removes this invariance: the first
  block does not normalise its raw input (``normalize=False``). Every later
  LayerNorm acts on features that are non-linear functions of x, which keep
  the absolute intensities.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SUPPORTED_IMAGE_SIZES = (28, 64)
ARCHITECTURES = ("paper", "fixed")


def sinusoidal_embedding(n: int, d: int) -> torch.Tensor:
    """Sinusoidal positional encoding of positions 0..n-1 in d dimensions.

    Implements Eq. 10 and Eq. 11 exactly: for i = 0 .. ceil(d/2)-1,
    ``PE[pos, 2i] = sin(pos / 10000^(2i/d))`` and
    ``PE[pos, 2i+1] = cos(pos / 10000^(2i/d))``.

    Departs from both listings of Figure 10: the first uses the frequency of
    column j (``1/10000^(2j/d)``) for column j, so the sine and cosine of a pair
    get different frequencies; the second has no cosine at all. Neither matches
    Eq. 10-11, where columns 2i and 2i+1 share the frequency of pair i.

    Returns a float32 tensor of shape (n, d) with values in [-1, 1].
    """
    if n < 1 or d < 1:
        raise ValueError(f"sinusoidal_embedding needs n >= 1 and d >= 1, got n={n}, d={d}")
    pos = torch.arange(n, dtype=torch.float64).unsqueeze(1)  # (n, 1)
    two_i = torch.arange(0, d, 2, dtype=torch.float64)  # 2i for each pair
    freq = torch.exp(-math.log(10000.0) * two_i / d)  # 1 / 10000^(2i/d)
    angles = pos * freq  # (n, ceil(d/2))
    emb = torch.zeros(n, d, dtype=torch.float64)
    emb[:, 0::2] = torch.sin(angles)  # Eq. 10
    emb[:, 1::2] = torch.cos(angles[:, : d // 2])  # Eq. 11
    return emb.float()


class MyBlock(nn.Module):
    """LayerNorm over ``shape`` -> conv -> activation -> conv -> activation.

    ``shape`` is the (C, H, W) of the input. Departs from Figure 11, where
    MyBlock is nested inside MyUNet, takes only ``shape`` and passes
    ``activation``/``normalize`` to ``nn.Conv2d`` (invalid arguments): here it
    is a top-level module with the signature the UNet's calls use.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        in_c: int,
        out_c: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        activation: nn.Module | None = None,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if shape[0] != in_c:
            raise ValueError(f"MyBlock shape {tuple(shape)} does not have in_c={in_c} channels")
        # Figure 11 builds the LayerNorm even when normalize=False; its parameters
        # would then never get a gradient (and break DistributedDataParallel).
        self.ln = nn.LayerNorm(shape) if normalize else nn.Identity()
        self.conv1 = nn.Conv2d(in_c, out_c, kernel_size, stride, padding)
        self.conv2 = nn.Conv2d(out_c, out_c, kernel_size, stride, padding)
        self.activation = nn.SiLU() if activation is None else activation
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.activation(self.conv1(self.ln(x)))
        return self.activation(self.conv2(out))


def _stage(size: int, channels: list[int], last_normalize: bool = True, first_normalize: bool = True) -> nn.Sequential:
    """Three MyBlocks at spatial ``size`` going through ``channels`` (4 numbers)."""
    blocks = []
    for k in range(3):
        normalize = (k > 0 or first_normalize) and (k < 2 or last_normalize)
        blocks.append(MyBlock((channels[k], size, size), channels[k], channels[k + 1], normalize=normalize))
    return nn.Sequential(*blocks)


class MyUNet(nn.Module):
    """The paper's UNet eps_theta(x, t) (Figure 11) for 28x28 or 64x64 images.

    Args:
        n_steps: number of diffusion steps T (rows of the time embedding table).
        time_emb_dim: width of the sinusoidal embedding (Eq. 10-11).
        image_size: 28 (MNIST) or 64 (Persian digits).
        in_channels: image channels (1 for both datasets).
        arch: "paper" (Figure 11 as published) or "fixed" (no LayerNorm on the
            raw input; see the module docstring).

    ``forward(x, t)`` takes x of shape (N, C, S, S) and integer time steps t of
    shape (N,) or (N, 1) with values in 0..n_steps-1 (0-based, see
    ``DiffusionModel``) and returns a tensor shaped like x.

    Fixes to Figure 11, each also marked where it happens: ``b1``'s first block
    had a syntax error (``MyBlock(1, 64, 64), 1, 10)``); ``forward`` calls
    ``self.t1`` / ``self.te1`` while ``__init__`` defines ``t1`` (members are
    ``te1``..``te5`` here); ``up2`` maps 80 channels though ``b4`` outputs 20;
    ``b5`` and ``b_out`` have blocks whose input channels do not match the
    previous output (20 -> 16 then a block expecting 10).
    """

    def __init__(
        self,
        n_steps: int = 1000,
        time_emb_dim: int = 100,
        image_size: int = 28,
        in_channels: int = 1,
        arch: str = "paper",
    ) -> None:
        super().__init__()
        if image_size not in SUPPORTED_IMAGE_SIZES:
            raise ValueError(f"MyUNet supports image sizes {SUPPORTED_IMAGE_SIZES}, got {image_size}")
        if arch not in ARCHITECTURES:
            raise ValueError(f"MyUNet arch must be one of {ARCHITECTURES}, got {arch!r}")
        if n_steps < 1 or time_emb_dim < 1 or in_channels < 1:
            raise ValueError("MyUNet needs n_steps, time_emb_dim and in_channels >= 1")
        self.config = dict(
            n_steps=n_steps, time_emb_dim=time_emb_dim, image_size=image_size, in_channels=in_channels, arch=arch
        )
        s1, s2, s3 = image_size, image_size // 2, image_size // 4
        c = in_channels

        # Sinusoidal embedding: a frozen lookup table (Eq. 10-11).
        self.time_embed = nn.Embedding(n_steps, time_emb_dim)
        self.time_embed.weight.data = sinusoidal_embedding(n_steps, time_emb_dim)
        self.time_embed.requires_grad_(False)

        # First half. (Figure 11 names this MLP t1 but calls te1: fixed.)
        self.te1 = self._make_te(time_emb_dim, c)
        self.b1 = _stage(s1, [c, 10, 10, 10], first_normalize=(arch == "paper"))
        self.down1 = nn.Conv2d(10, 10, 4, 2, 1)  # S -> S/2
        self.te2 = self._make_te(time_emb_dim, 10)
        self.b2 = _stage(s2, [10, 20, 20, 20])
        self.down2 = nn.Conv2d(20, 20, 4, 2, 1)  # S/2 -> S/4
        self.te3 = self._make_te(time_emb_dim, 20)
        self.b3 = _stage(s3, [20, 40, 40, 40])
        if image_size == 64:  # 16 -> 8 -> 4 (Figure 11)
            self.down3 = nn.Sequential(nn.Conv2d(40, 40, 4, 2, 1), nn.SiLU(), nn.Conv2d(40, 40, 4, 2, 1))
            self.up1 = nn.Sequential(
                nn.ConvTranspose2d(40, 40, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(40, 40, 4, 2, 1)
            )
            bottom = 4
        else:  # 7 -> 6 -> 3 and back 3 -> 6 -> 7
            self.down3 = nn.Sequential(nn.Conv2d(40, 40, 2, 1), nn.SiLU(), nn.Conv2d(40, 40, 4, 2, 1))
            self.up1 = nn.Sequential(nn.ConvTranspose2d(40, 40, 4, 2, 1), nn.SiLU(), nn.ConvTranspose2d(40, 40, 2, 1))
            bottom = 3

        # Bottleneck 40 -> 20 -> 20 -> 40.
        self.te_mid = self._make_te(time_emb_dim, 40)
        self.b_mid = _stage(bottom, [40, 20, 20, 40])

        # Second half: each stage sees [skip, upsampled] concatenated.
        self.te4 = self._make_te(time_emb_dim, 80)
        self.b4 = _stage(s3, [80, 40, 20, 20])
        self.up2 = nn.ConvTranspose2d(20, 20, 4, 2, 1)  # Figure 11 says 80 -> 80; b4 outputs 20.
        self.te5 = self._make_te(time_emb_dim, 40)
        self.b5 = _stage(s2, [40, 20, 10, 10])  # Figure 11: 40->20, 20->16, 10->10 do not chain.
        self.up3 = nn.ConvTranspose2d(10, 10, 4, 2, 1)
        self.te_out = self._make_te(time_emb_dim, 20)
        self.b_out = _stage(s1, [20, 10, 10, 10], last_normalize=False)  # Figure 11: 20->16, 10->16 do not chain.
        self.conv_out = nn.Conv2d(10, c, 3, 1, 1)

    @staticmethod
    def _make_te(dim_in: int, dim_out: int) -> nn.Sequential:
        """Two-layer MLP projecting the time embedding to a stage's channels."""
        return nn.Sequential(nn.Linear(dim_in, dim_out), nn.SiLU(), nn.Linear(dim_out, dim_out))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if t.dim() > 1:  # the paper passes t as (N, 1)
            t = t.reshape(-1)
        if t.shape[0] != n:
            raise ValueError(f"MyUNet got {n} images but {t.shape[0]} time steps")
        emb = self.time_embed(t.long())  # (N, time_emb_dim)

        def te(mlp: nn.Module) -> torch.Tensor:  # channel-wise time embedding
            return mlp(emb).reshape(n, -1, 1, 1)

        out1 = self.b1(x + te(self.te1))  # (N, 10, S, S)
        out2 = self.b2(self.down1(out1) + te(self.te2))  # (N, 20, S/2, S/2)
        out3 = self.b3(self.down2(out2) + te(self.te3))  # (N, 40, S/4, S/4)
        out_mid = self.b_mid(self.down3(out3) + te(self.te_mid))  # (N, 40, bottom, bottom)

        out4 = torch.cat((out3, self.up1(out_mid)), dim=1)  # (N, 80, S/4, S/4)
        out4 = self.b4(out4 + te(self.te4))  # (N, 20, S/4, S/4)
        out5 = torch.cat((out2, self.up2(out4)), dim=1)  # (N, 40, S/2, S/2)
        out5 = self.b5(out5 + te(self.te5))  # (N, 10, S/2, S/2)
        out = torch.cat((out1, self.up3(out5)), dim=1)  # (N, 20, S, S)
        out = self.b_out(out + te(self.te_out))  # (N, 10, S, S)
        return self.conv_out(out)  # (N, C, S, S)
