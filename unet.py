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

Three architectures are selectable with ``arch`` (``make_unet`` builds any of them
from a checkpoint's config):

* ``"paper"``: exactly Figure 11. Its first ``MyBlock`` applies LayerNorm over the
  whole (C, H, W) of the raw input, which removes each image's mean and scale: the
  output is invariant to ``x -> a*x + b`` (a > 0), blind to the brightness of x_t.
* ``"fixed"``: the smallest change that removes this: the first block does not
  normalise its raw input (``normalize=False``); later LayerNorms see features.
* ``"resattn"``: not in the paper; a small modern UNet (``ResAttnUNet``): residual
  blocks with GroupNorm and scale-shift time modulation (Dhariwal and Nichol 2021),
  more channels at lower resolution, self-attention at the lowest resolution,
  optional dropout, optional pixel patches (``patch_size``). docs/results.md
  measures it against the other two.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from config import DATASETS, PAPER_ARCHITECTURES

SUPPORTED_IMAGE_SIZES = tuple(sorted({info.image_size for info in DATASETS.values()}))  # (28, 64)
# ResAttnUNet's channel multipliers per side of its grid (image size / patch size): 28 -> 14 -> 7, 16 -> 8 -> 4, ...
DEFAULT_CHANNEL_MULTS = {28: (1, 2, 2), 16: (1, 2, 2), 32: (1, 2, 2), 64: (1, 2, 2, 2)}


def sinusoidal_embedding(n: int, d: int) -> torch.Tensor:
    """Sinusoidal positional encoding of positions 0..n-1 in d dimensions.

    Implements Eq. 10 and Eq. 11 exactly: for i = 0 .. ceil(d/2)-1,
    ``PE[pos, 2i] = sin(pos / 10000^(2i/d))`` and ``PE[pos, 2i+1] = cos(pos / 10000^(2i/d))``.

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


def time_table(n_steps: int, dim: int) -> nn.Embedding:
    """The sinusoidal embedding of steps 0..n_steps-1 (Eq. 10-11) as a frozen lookup table."""
    table = nn.Embedding(n_steps, dim)
    table.weight.data = sinusoidal_embedding(n_steps, dim)
    table.requires_grad_(False)
    return table


def label_embedding(num_classes: int, dim: int) -> nn.Embedding | None:
    """One learned vector per class plus "no label" (index ``num_classes``), added to the time embedding,
    zero at the start (training starts unconditional); None for an unconditional network."""
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if num_classes == 0:
        return None
    embed = nn.Embedding(num_classes + 1, dim)
    nn.init.zeros_(embed.weight)
    return embed


def add_label(emb: torch.Tensor, label_embed: nn.Embedding | None, y: torch.Tensor | None) -> torch.Tensor:
    """The time embedding plus the label's (``y = None``: every image "no label"); unchanged when unconditional."""
    if label_embed is None:
        if y is not None:
            raise ValueError("this network is not class-conditional: it takes no labels")
        return emb
    null = label_embed.num_embeddings - 1
    if y is None:
        y = torch.full((emb.shape[0],), null, dtype=torch.long, device=emb.device)
    y = y.reshape(-1).long()
    if y.shape[0] != emb.shape[0]:
        raise ValueError(f"got {emb.shape[0]} images but {y.shape[0]} labels")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) > null):
        raise ValueError(f"labels must lie in 0..{null} ({null}: no label)")
    return emb + label_embed(y)


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

    ``forward(x, t, y=None)`` takes x of shape (N, C, S, S) and integer time steps t of
    shape (N,) or (N, 1) with values in 0..n_steps-1 (0-based, see
    ``DiffusionModel``) and returns a tensor shaped like x. With ``num_classes > 0``
    (not in the paper: classifier-free guidance) the labels y, shape (N,), values
    0..num_classes (the last: no label), enter through ``label_embedding``.

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
        num_classes: int = 0,
    ) -> None:
        if min(n_steps, time_emb_dim, in_channels) < 1:
            raise ValueError("MyUNet needs n_steps, time_emb_dim and in_channels >= 1")
        if image_size not in SUPPORTED_IMAGE_SIZES:
            raise ValueError(f"MyUNet supports image sizes {SUPPORTED_IMAGE_SIZES}, got {image_size}")
        if arch not in PAPER_ARCHITECTURES:
            raise ValueError(f"MyUNet arch must be one of {PAPER_ARCHITECTURES}, got {arch!r}")
        super().__init__()
        self.config = dict(
            n_steps=n_steps, time_emb_dim=time_emb_dim, image_size=image_size, in_channels=in_channels, arch=arch
        )
        if num_classes:  # (unconditional networks keep the config and weights they always had)
            self.config["num_classes"] = num_classes
        self.label_embed = label_embedding(num_classes, time_emb_dim)
        s1, s2, s3 = image_size, image_size // 2, image_size // 4
        c = in_channels

        self.time_embed = time_table(n_steps, time_emb_dim)

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

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        n = x.shape[0]
        if t.dim() > 1:  # the paper passes t as (N, 1)
            t = t.reshape(-1)
        if t.shape[0] != n:
            raise ValueError(f"MyUNet got {n} images but {t.shape[0]} time steps")
        emb = add_label(self.time_embed(t.long()), self.label_embed, y)  # (N, time_emb_dim)

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


# --------------------------------------------------------------------------- the modern network ("resattn")


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, time scale-shift, GroupNorm -> SiLU -> dropout -> conv, plus the input.

    The time embedding sets a per-channel scale and shift of the second
    normalised feature map, ``h * (1 + scale) + shift`` (Dhariwal and Nichol
    2021), instead of the paper's addition before a stage. The last conv starts
    at zero, so every block starts as the identity.
    """

    def __init__(self, in_c: int, out_c: int, emb_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_c)
        self.conv1 = nn.Conv2d(in_c, out_c, 3, 1, 1)
        self.emb = nn.Linear(emb_dim, 2 * out_c)
        self.norm2 = _group_norm(out_c)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_c, out_c, 3, 1, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_c, out_c, 1) if in_c != out_c else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(self.act(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, added to its input (zero-initialised)."""

    def __init__(self, channels: int, head_dim: int = 32) -> None:
        super().__init__()
        self.heads = max(1, channels // head_dim)
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(n, c, h, w))


class ResAttnUNet(nn.Module):
    """A small modern noise predictor eps_theta(x, t) for 28x28 or 64x64 images (``arch="resattn"``).

    Per resolution, ``blocks`` ``ResBlock``s on the way down and up, the skip of
    each level concatenated on the way up; ``base_channels * mult`` channels per
    level (``channel_mults``, default ``DEFAULT_CHANNEL_MULTS``); stride-2
    convolutions down, nearest-neighbour upsampling plus a conv up;
    ``SelfAttention`` at the lowest resolution of the grid, also in the middle.
    With ``patch_size`` p > 1 the network works on a grid of p x p patches: the
    image enters through ``pixel_unshuffle`` (each patch's p*p pixels become
    channels) and the noise leaves through ``pixel_shuffle``. A 64x64 image in 4x4
    patches (the CLI's default) is a 16x16 grid: much faster to train than at full
    resolution, at a higher loss per time step (docs/results.md, the 4x4-patch network).
    The time step enters as in the paper, the frozen sinusoidal table of Eq. 10-11,
    then one ``_make_te`` MLP to a ``4 * base_channels`` embedding shared by every block.

    ``forward(x, t, y=None)``: x of shape (N, C, S, S), 0-based integer t of shape (N,) or (N, 1),
    and, for a class-conditional network (``num_classes > 0``), labels y (None: "no label").
    """

    def __init__(self, n_steps: int = 1000, time_emb_dim: int = 100, image_size: int = 28, in_channels: int = 1,
                 arch: str = "resattn", base_channels: int = 32,
                 channel_mults: tuple[int, ...] | list[int] | None = None, blocks: int = 1, dropout: float = 0.0,
                 num_classes: int = 0, patch_size: int = 1) -> None:
        super().__init__()
        if arch != "resattn":
            raise ValueError(f"ResAttnUNet is arch 'resattn', got {arch!r}")
        if image_size not in SUPPORTED_IMAGE_SIZES:
            raise ValueError(f"ResAttnUNet supports image sizes {SUPPORTED_IMAGE_SIZES}, got {image_size}")
        if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1 \
                or image_size % patch_size:
            raise ValueError(f"patch_size must be a positive divisor of image size {image_size}, got {patch_size!r}")
        grid = image_size // patch_size
        mults = tuple(channel_mults or DEFAULT_CHANNEL_MULTS.get(grid, DEFAULT_CHANNEL_MULTS[image_size]))
        if grid % 2 ** (len(mults) - 1):
            raise ValueError(f"{len(mults) - 1} halvings do not divide the {grid}x{grid} grid of "
                             f"{image_size}x{image_size} images in {patch_size}x{patch_size} patches")
        if min(n_steps, time_emb_dim, in_channels, base_channels, blocks, *mults) < 1 or not 0 <= dropout < 1:
            raise ValueError("ResAttnUNet needs positive sizes and 0 <= dropout < 1")
        self.config = dict(n_steps=n_steps, time_emb_dim=time_emb_dim, image_size=image_size,
                           in_channels=in_channels, arch=arch, base_channels=base_channels,
                           channel_mults=list(mults), blocks=blocks, dropout=dropout)
        if num_classes:
            self.config["num_classes"] = num_classes
        if patch_size > 1:  # (only then: checkpoints written before the option rebuild unchanged)
            self.config["patch_size"] = patch_size
        self.patch_size = patch_size
        self.label_embed = label_embedding(num_classes, time_emb_dim)
        emb_dim = 4 * base_channels
        self.time_embed = time_table(n_steps, time_emb_dim)
        self.te = MyUNet._make_te(time_emb_dim, emb_dim)
        patch_channels = in_channels * patch_size**2
        self.stem = nn.Conv2d(patch_channels, base_channels, 3, 1, 1)

        widths = [base_channels * m for m in mults]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = base_channels
        for level, width in enumerate(widths):
            self.down.append(nn.ModuleList(ResBlock(c if k == 0 else width, width, emb_dim, dropout)
                                           for k in range(blocks)))
            c = width
            last = level == len(widths) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, 2, 1))
        self.mid1 = ResBlock(c, c, emb_dim, dropout)
        self.mid_attn = SelfAttention(c)
        self.mid2 = ResBlock(c, c, emb_dim, dropout)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(widths))):
            width = widths[level]
            self.up.append(nn.ModuleList(ResBlock(c + width if k == 0 else width, width, emb_dim, dropout)
                                         for k in range(blocks)))
            c = width
            self.upsample.append(nn.Conv2d(c, widths[level - 1], 3, 1, 1) if level > 0 else nn.Identity())
            c = widths[level - 1] if level > 0 else c
        self.attn_down = SelfAttention(widths[-1])
        self.attn_up = SelfAttention(widths[-1])
        self.out = nn.Sequential(_group_norm(c), nn.SiLU(), nn.Conv2d(c, patch_channels, 3, 1, 1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        t = t.reshape(-1)
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"ResAttnUNet got {x.shape[0]} images but {t.shape[0]} time steps")
        emb = self.te(add_label(self.time_embed(t.long()), self.label_embed, y))
        h = self.stem(F.pixel_unshuffle(x, self.patch_size) if self.patch_size > 1 else x)
        skips = []
        lowest = len(self.down) - 1
        for level, (blocks, down) in enumerate(zip(self.down, self.downsample)):
            for block in blocks:
                h = block(h, emb)
            if level == lowest:
                h = self.attn_down(h)
            skips.append(h)
            h = down(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for level, (blocks, up) in enumerate(zip(self.up, self.upsample)):
            h = torch.cat((h, skips.pop()), dim=1)
            for block in blocks:
                h = block(h, emb)
            if level == 0:
                h = self.attn_up(h)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        out = self.out(h)
        return F.pixel_shuffle(out, self.patch_size) if self.patch_size > 1 else out


def make_unet(**config) -> nn.Module:
    """The network of a checkpoint's ``config["network"]``: ``MyUNet`` (paper, fixed) or ``ResAttnUNet``."""
    arch = config.get("arch", "paper")
    if arch == "resattn":
        return ResAttnUNet(**config)
    return MyUNet(**config)
