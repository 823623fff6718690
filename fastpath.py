"""The training fast path: optional speed-ups of Algorithm 1 that leave its mathematics alone.

The paper's path is fp32, eager, with a ``DataLoader`` that decodes every image
through PIL transforms; it stays the default (and is what the tests train
with). Each part below can be switched on by name (``--fast-parts``), and
``bench/bench_speed.py`` measures each one alone and all together:

``tensor_data``    the whole (transformed) training set held as one tensor on the
                   training device, batches cut from it by index: no per-image
                   PIL work, and on CUDA no host-to-device copy per batch.
``foreach_adam``   Adam updating all parameters with multi-tensor (``foreach``) kernels.
``fused_adam``     Adam as a single fused kernel (``fused=True``).
``channels_last``  the network and its inputs in NHWC memory format.
``bf16``           the forward pass under bfloat16 autocast (the loss and the
                   weights stay float32).
``compile``        the training loss (noising, network, Eq. 8) through ``torch.compile``.

Nothing here changes which batches are drawn: ``TensorLoader`` cuts the same
batches, in the same order, as the ``DataLoader`` it replaces.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from recipe import diffusion_loss

log = logging.getLogger(__name__)

PARTS = ("tensor_data", "foreach_adam", "fused_adam", "channels_last", "bf16", "compile")

# What --fast switches on, per device type. The CPU set is what bench/bench_speed.py
# measured to help on the project's 2-core x86_64 CPUs with native bfloat16 (channels-last
# and bf16 on the convolutions; the other parts did not beat the machine's noise), less
# channels-last for networks with GroupNorm (its channels-last kernels are slow on the CPU):
# see docs/speed.md. They stay available through --fast-parts. The CUDA set is the customary
# one and was not measured here (no GPU).
RECOMMENDED = {
    "cpu": frozenset({"channels_last", "bf16"}),
    "cuda": frozenset({"tensor_data", "fused_adam", "channels_last", "bf16", "compile"}),
}

# tensor_data falls back to the DataLoader above this size (bytes of float32 images).
MAX_TENSOR_BYTES = 4 * 2**30

LossFn = Callable[..., torch.Tensor]  # (x0, y=None) -> loss


def parse_parts(text: str) -> frozenset[str]:
    """``"compile,bf16"`` -> ``{"compile", "bf16"}``; ``""`` or ``"none"`` -> no part. Unknown names raise."""
    names = {p.strip() for p in text.split(",") if p.strip()} - {"none"}
    unknown = sorted(names - set(PARTS))
    if unknown:
        raise ValueError(f"unknown fast-path part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    if {"foreach_adam", "fused_adam"} <= names:
        raise ValueError("choose one of foreach_adam and fused_adam, not both")
    return frozenset(names)


def recommended_parts(device: torch.device | str, model: nn.Module | None = None) -> frozenset[str]:
    """The parts ``--fast`` uses on this device type for ``model`` (CPU: measured; CUDA: unmeasured defaults).

    Where the hardware has no native bfloat16 (a GPU before Ampere, a CPU without
    AVX512-BF16 or AMX) ``bf16`` is left out: emulated, it would slow training.
    On the CPU, ``channels_last`` is left out for a ``model`` with GroupNorm layers
    (the default ``resattn`` network): PyTorch's channels-last GroupNorm on the CPU
    costs more than the convolutions gain from the layout (docs/speed.md).
    """
    device = torch.device(device)
    parts = RECOMMENDED.get(device.type, frozenset())
    if device.type == "cpu" and model is not None and has_group_norm(model):
        parts -= {"channels_last"}
    if "bf16" in parts and not native_bf16(device):
        parts -= {"bf16"}
        log.info("--fast leaves bf16 out: this %s has no native bfloat16 (%s), and emulated it would slow "
                 "training; --fast here: %s", device.type,
                 "AVX512-BF16 or AMX" if device.type == "cpu" else "Ampere or newer", describe(parts))
    return parts


def has_group_norm(model: nn.Module) -> bool:
    """Whether any layer of ``model`` is an ``nn.GroupNorm``."""
    return any(isinstance(m, nn.GroupNorm) for m in model.modules())


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively (CUDA: Ampere or newer; CPU: AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def restore_optimizer(optim: torch.optim.Optimizer, state: dict) -> None:
    """``optim.load_state_dict(state)``, keeping ``optim``'s own ``foreach``/``fused`` choice.

    A saved state carries the implementation flags of the run that saved it;
    loading them as they are would silently undo (or impose) ``fused_adam`` /
    ``foreach_adam`` on a resumed run.
    """
    state = dict(state, param_groups=[dict(g) for g in state["param_groups"]])
    for saved, now in zip(state["param_groups"], optim.param_groups):
        for flag in ("foreach", "fused"):
            if flag in now:
                saved[flag] = now[flag]
    optim.load_state_dict(state)


def describe(parts: Iterable[str]) -> str:
    """``"fp32 eager"`` for no part, else the parts in ``PARTS`` order joined by ``+``."""
    chosen = [p for p in PARTS if p in set(parts)]
    return "+".join(chosen) if chosen else "fp32 eager"


# --------------------------------------------------------------------------- data


class TensorLoader:
    """Batches cut from one tensor of images (and one of labels) by a sampler's indices.

    Yields ``(images, labels)`` exactly like a ``DataLoader(dataset, batch_size,
    sampler=sampler)`` over the same data, in the same order, without
    ``drop_last``. ``sampler`` keeps its ``set_epoch``, so the training loop's
    per-epoch reshuffle and an exact resume work unchanged.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, sampler: Sampler,
                 dataset: Dataset | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.sampler = sampler
        self.dataset = dataset if dataset is not None else torch.utils.data.TensorDataset(images, labels)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(list(iter(self.sampler)), dtype=torch.long, device=self.images.device)
        for batch in order.split(self.batch_size):
            yield self.images[batch], self.labels[batch]


def stack_dataset(dataset: Dataset, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``(image, label)`` of ``dataset`` through its transform, stacked into two tensors."""
    images, labels = [], []
    # A private generator: a loader without one draws its base seed from the global RNG, which would
    # shift every later t and noise draw and make a tensor_data run differ from the eager one.
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator()):
        images.append(x)
        labels.append(torch.as_tensor(y))
    return torch.cat(images), torch.cat(labels)


def to_tensor_loader(loader: DataLoader, device: torch.device | str,
                     max_bytes: int = MAX_TENSOR_BYTES) -> DataLoader | TensorLoader:
    """``loader``'s data as a ``TensorLoader`` on ``device``, or ``loader`` itself when it does not fit.

    "Fits" means at most ``max_bytes`` of float32 images and, on CUDA, at most
    half of the free device memory. The stacking pass runs each image through
    the dataset's transform once (a few seconds for MNIST).
    """
    device = torch.device(device)
    dataset = loader.dataset
    c_h_w = dataset[0][0].shape
    need = len(dataset) * c_h_w.numel() * 4
    limit = max_bytes
    if device.type == "cuda":
        limit = min(limit, torch.cuda.mem_get_info(device)[0] // 2)
    if need > limit:
        log.warning("tensor_data: the %d training images need %.1f GiB, more than %.1f GiB; "
                    "keeping the DataLoader", len(dataset), need / 2**30, limit / 2**30)
        return loader
    images, labels = stack_dataset(dataset)
    log.info("tensor_data: %d training images held as one %s tensor on %s (%.0f MiB)",
             len(images), tuple(images.shape), device, need / 2**20)
    return TensorLoader(images.to(device), labels.to(device), loader.batch_size, loader.sampler, dataset)


# --------------------------------------------------------------------------- model and optimizer


def make_optimizer(params: Iterable[nn.Parameter], lr: float, parts: frozenset[str]) -> torch.optim.Adam:
    """Adam (lr of Figure 12): the default implementation, or the ``foreach``/``fused`` kernels."""
    if "fused_adam" in parts:
        return torch.optim.Adam(params, lr=lr, fused=True)
    if "foreach_adam" in parts:
        return torch.optim.Adam(params, lr=lr, foreach=True)
    return torch.optim.Adam(params, lr=lr)


def prepare_model(model: nn.Module, parts: frozenset[str]) -> nn.Module:
    """Put the network's weights in NHWC order for ``channels_last`` (in place; returns ``model``)."""
    if "channels_last" in parts:
        model.to(memory_format=torch.channels_last)
    return model


def loss_function(model: nn.Module, parts: frozenset[str], device: torch.device | str,
                  batch_size: int | None = None, snr_gamma: float | None = None,
                  label_drop: float = 0.0, v_error: bool = False) -> LossFn:
    """``(x0, y=None) -> `` the training loss of one batch, ``diffusion_model.diffusion_loss`` wrapped in the parts.

    ``model`` is the ``DiffusionModel`` (or its DDP wrapper). With no part this
    is exactly ``diffusion_loss(model, x0, snr_gamma, y, label_drop, v_error)``, the paper's fp32 eager
    computation (with Min-SNR weighting when ``snr_gamma`` is given, and the labels ``y`` of a
    class-conditional model);
    ``channels_last`` converts the batch, ``bf16`` runs it under autocast.

    With ``compile``, batches of ``batch_size`` images (default: the size of
    the first batch) run through one compiled graph; any other size (the short
    last batch of an epoch) runs the same computation eagerly, instead of
    paying a second compilation for one batch per epoch.
    """
    device = torch.device(device)
    channels_last = "channels_last" in parts
    bf16 = "bf16" in parts

    def loss_of(x0: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            return diffusion_loss(model, x0, snr_gamma, y, label_drop, v_error)

    if "compile" not in parts:
        return loss_of
    compiled = torch.compile(loss_of, dynamic=False)
    sizes = [batch_size]

    def compiled_or_eager(x0: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if sizes[0] is None:
            sizes[0] = x0.shape[0]
        return compiled(x0, y) if x0.shape[0] == sizes[0] else loss_of(x0, y)

    return compiled_or_eager
