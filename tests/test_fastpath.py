"""Tests of the training fast path (fastpath.py): same batches, same losses, clear errors."""

import json
import logging
import math

import pytest
import torch
from conftest import ROOT, tiny_ddpm
from datagen import make_mnist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import fastpath
import main as cli
import utils
from utils import TrainState
from diffusion_model import DiffusionModel, get_loss
from unet import make_unet


def test_parse_parts():
    assert fastpath.parse_parts("none") == frozenset()
    assert fastpath.parse_parts("") == frozenset()
    assert fastpath.parse_parts(" bf16, compile ") == {"bf16", "compile"}
    with pytest.raises(ValueError, match="unknown fast-path part.*amp.*choose from tensor_data, foreach_adam"):
        fastpath.parse_parts("bf16,amp")
    with pytest.raises(ValueError, match="one of foreach_adam and fused_adam"):
        fastpath.parse_parts("foreach_adam,fused_adam")
    assert fastpath.describe([]) == "fp32 eager"
    assert fastpath.describe({"compile", "tensor_data"}) == "tensor_data+compile"  # PARTS order
    assert fastpath.recommended_parts("meta") == frozenset()


def test_fast_leaves_out_bf16_where_it_would_be_emulated(monkeypatch, caplog):
    monkeypatch.setattr(fastpath, "native_bf16", lambda device: True)
    with caplog.at_level(logging.INFO, logger="fastpath"):
        assert fastpath.recommended_parts("cpu") == {"channels_last", "bf16"}
    assert caplog.text == ""  # nothing left out, nothing said
    monkeypatch.setattr(fastpath, "native_bf16", lambda device: False)
    with caplog.at_level(logging.INFO, logger="fastpath"):
        assert fastpath.recommended_parts("cpu") == {"channels_last"}
        assert "bf16" not in fastpath.recommended_parts("cuda")
        assert fastpath.recommended_parts("cpu", make_unet(arch="resattn", n_steps=10, image_size=28)) == set()
    lines = caplog.messages
    assert len(lines) == 3 and all(m.startswith("--fast leaves bf16 out") for m in lines)
    assert "this cpu has no native bfloat16 (AVX512-BF16 or AMX)" in lines[0] and lines[0].endswith(": channels_last")
    assert "(Ampere or newer)" in lines[1]
    assert lines[2].endswith("--fast here: fp32 eager")  # the default network on such a CPU: nothing left to switch on


def test_fast_leaves_out_channels_last_for_group_norm_networks_on_the_cpu(monkeypatch):
    """GroupNorm's channels-last CPU kernels cost more than the layout gains (docs/speed.md): resattn gets bf16 alone."""
    monkeypatch.setattr(fastpath, "native_bf16", lambda device: True)
    resattn = make_unet(arch="resattn", n_steps=10, image_size=28)
    fixed = make_unet(arch="fixed", n_steps=10, image_size=28)
    assert fastpath.has_group_norm(resattn) and not fastpath.has_group_norm(fixed)
    assert fastpath.recommended_parts("cpu", resattn) == {"bf16"}
    assert fastpath.recommended_parts("cpu", fixed) == {"channels_last", "bf16"}
    assert fastpath.recommended_parts("cpu") == {"channels_last", "bf16"}  # no network named: the device's set
    assert "channels_last" in fastpath.recommended_parts("cuda", resattn)  # the CPU's kernels only


def test_tensor_loader_cuts_the_dataloaders_batches():
    """Same sampler, same batch size: identical batches in identical order, every epoch, last one partial."""
    images = torch.arange(23 * 4, dtype=torch.float32).reshape(23, 1, 2, 2)
    labels = torch.arange(23) % 10
    dataset = TensorDataset(images, labels)
    reference = DataLoader(dataset, batch_size=5, sampler=DistributedSampler(dataset, 1, 0, shuffle=True, seed=7))
    fast = fastpath.to_tensor_loader(reference, "cpu")
    assert isinstance(fast, fastpath.TensorLoader) and fast.dataset is dataset
    assert len(fast) == len(reference) == 5
    for epoch in (0, 1):
        reference.sampler.set_epoch(epoch)  # the same sampler object drives both
        expected = list(reference)
        got = list(fast)
        assert [len(x) for x, _ in got] == [5, 5, 5, 5, 3]
        for (x1, y1), (x2, y2) in zip(expected, got):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(expected[0][0], list(DataLoader(dataset, batch_size=5))[0][0])  # it did shuffle


def test_tensor_loader_falls_back_when_the_data_does_not_fit(caplog):
    dataset = TensorDataset(torch.zeros(10, 1, 4, 4), torch.zeros(10, dtype=torch.long))
    loader = DataLoader(dataset, batch_size=3)
    with caplog.at_level(logging.WARNING, logger="fastpath"):
        assert fastpath.to_tensor_loader(loader, "cpu", max_bytes=10 * 16 * 4 - 1) is loader
    assert "keeping the DataLoader" in caplog.text
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        fastpath.TensorLoader(torch.zeros(3, 1), torch.zeros(2), 2, range(3))


def test_eager_loss_function_is_the_training_loops_computation():
    ddpm = tiny_ddpm()
    x0 = torch.rand(6, 1, 28, 28) * 2 - 1
    torch.manual_seed(3)
    _, noise, eta = ddpm(x0)
    expected = get_loss(noise, eta)
    torch.manual_seed(3)
    assert torch.equal(fastpath.loss_function(ddpm, frozenset(), "cpu")(x0), expected)


def test_bf16_and_channels_last_stay_close_to_fp32():
    """Same t and noise: bf16 autocast changes the loss by well under 1%; channels-last by float rounding."""
    ddpm = tiny_ddpm()
    x0 = torch.rand(8, 1, 28, 28) * 2 - 1
    torch.manual_seed(5)
    reference = fastpath.loss_function(ddpm, frozenset(), "cpu")(x0)
    torch.manual_seed(5)
    bf16 = fastpath.loss_function(ddpm, frozenset({"bf16"}), "cpu")(x0)
    assert bf16.dtype == torch.float32
    assert bf16.item() == pytest.approx(reference.item(), rel=1e-2)
    assert bf16.item() != reference.item()  # autocast did run in bfloat16
    fastpath.prepare_model(ddpm, frozenset({"channels_last"}))
    conv = ddpm.backward_process_model.conv_out.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    torch.manual_seed(5)
    last = fastpath.loss_function(ddpm, frozenset({"channels_last"}), "cpu")(x0)
    assert last.item() == pytest.approx(reference.item(), rel=1e-5)
    last.backward()
    trainable = [p for p in ddpm.parameters() if p.requires_grad]  # not the frozen sinusoidal table
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)


@pytest.mark.parametrize("part, flag", [("foreach_adam", "foreach"), ("fused_adam", "fused")])
def test_adam_variants_take_the_same_step(part, flag):
    torch.manual_seed(0)
    reference, other = nn.Linear(4, 3), nn.Linear(4, 3)
    other.load_state_dict(reference.state_dict())
    opt_ref = fastpath.make_optimizer(reference.parameters(), 1e-2, frozenset())
    opt = fastpath.make_optimizer(other.parameters(), 1e-2, frozenset({part}))
    assert opt.defaults[flag] is True and opt_ref.defaults[flag] in (None, False)
    x = torch.randn(5, 4)
    for _ in range(3):
        for model, optim in ((reference, opt_ref), (other, opt)):
            optim.zero_grad()
            model(x).pow(2).sum().backward()
            optim.step()
    for a, b in zip(reference.parameters(), other.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


class Small(nn.Module):
    """A time-conditioned net that compiles in seconds."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.te = nn.Embedding(10, 1)

    def forward(self, x, t):
        return torch.nn.functional.silu(self.conv(x)) + self.te(t).reshape(-1, 1, 1, 1)


def test_training_loop_runs_a_compiled_loss():
    torch.manual_seed(0)
    ddpm = DiffusionModel(Small(), timesteps=10, image_chw=(1, 8, 8))
    data = TensorDataset(torch.rand(10, 1, 8, 8) * 2 - 1, torch.zeros(10, dtype=torch.long))
    loader = DataLoader(data, batch_size=4)  # batches of 4, 4 and 2
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    before = [p.detach().clone() for p in ddpm.parameters()]
    history = utils.training_loop(TrainState(ddpm, torch.optim.Adam(ddpm.parameters(), lr=1e-2)), loader, loader, 2,
                                  loss_fn=fastpath.loss_function(ddpm, frozenset({"compile"}), "cpu"))
    torch._dynamo.reset()
    assert counters["stats"]["unique_graphs"] == 1  # one graph; the short batch ran eagerly, not recompiled
    assert all(math.isfinite(v) for v in history["train_loss"] + history["val_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, ddpm.parameters()))  # the compiled loss trained


def test_compiled_loss_equals_eager():
    """torch.compile of the whole loss (noising, network, Eq. 8); with inductor's eager-identical random
    numbers (fallback_random) the value and the gradients match the eager path."""
    inductor = pytest.importorskip("torch._inductor.config")

    torch.manual_seed(0)
    ddpm = DiffusionModel(Small(), timesteps=10, image_chw=(1, 8, 8))
    x0 = torch.rand(4, 1, 8, 8) * 2 - 1
    torch.manual_seed(1)
    eager = fastpath.loss_function(ddpm, frozenset(), "cpu")(x0)
    eager.backward()
    eager_grads = [p.grad.clone() for p in ddpm.parameters()]
    ddpm.zero_grad()
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    with inductor.patch(fallback_random=True):
        torch.manual_seed(1)
        compiled = fastpath.loss_function(ddpm, frozenset({"compile"}), "cpu")(x0)
        compiled.backward()
    torch._dynamo.reset()
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did capture (and inductor compiled) a graph
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for g, p in zip(eager_grads, ddpm.parameters()):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_cli_fast_parts(tmp_path, monkeypatch, caplog):
    """--fast-parts trains with each part really in use, and the checkpoint samples like any other."""
    make_mnist(tmp_path / "data", n_train=16, n_test=4)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    args = ["--train", "--epochs", "1", "--data-root", "data", "--timesteps", "10", "--batch-size", "8",
            "--device", "cpu", "--fast-parts", "tensor_data,fused_adam,channels_last,bf16"]
    with caplog.at_level(logging.INFO):
        assert cli.main(args) == 0
    assert "tensor_data: 16 training images held as one (16, 1, 28, 28) tensor on cpu" in caplog.text
    assert "(tensor_data+fused_adam+channels_last+bf16)" in caplog.text
    ckpt = torch.load(tmp_path / "runs" / "ddpm_mnist.pt", weights_only=True)
    assert ckpt["train_args"]["fast_parts"] == ["bf16", "channels_last", "fused_adam", "tensor_data"]
    assert ckpt["optimizer"]["param_groups"][0]["fused"] is True
    weight = ckpt["model"]["backward_process_model.out.2.weight"]  # the last conv of the default resattn
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    history = json.loads((tmp_path / "runs" / "history_mnist.json").read_text())
    assert len(history["train_loss"]) == 1 and history["train_loss"][0] > 0
    assert cli.main(["--sample", "--n-samples", "2", "--device", "cpu"]) == 0
    assert (tmp_path / "runs" / "samples_mnist.png").is_file()


def test_cli_fast_uses_the_devices_recommended_parts(tmp_path, monkeypatch, caplog):
    make_mnist(tmp_path / "data", n_train=8, n_test=4)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setattr(fastpath, "native_bf16", lambda device: True)
    with caplog.at_level(logging.INFO):
        assert cli.main(["--train", "--fast", "--epochs", "1", "--data-root", "data", "--timesteps", "10",
                         "--batch-size", "8", "--device", "cpu"]) == 0
    assert "on cpu (bf16)" in caplog.text  # the default network has GroupNorm: no channels_last on the CPU
    ckpt = torch.load(tmp_path / "runs" / "ddpm_mnist.pt", weights_only=True)
    assert ckpt["train_args"]["fast_parts"] == ["bf16"]


def test_tensor_data_and_adam_kernels_leave_the_run_unchanged(tmp_path, monkeypatch):
    """Same seed: held data and foreach Adam give the eager run's losses (same batches, same t and noise)."""
    make_mnist(tmp_path / "data", n_train=16, n_test=4)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    histories = []
    for parts, out in (("none", "a"), ("tensor_data,foreach_adam", "b")):
        args = ["--train", "--epochs", "2", "--data-root", "data", "--timesteps", "10", "--batch-size", "8",
                "--device", "cpu", "--out-dir", out, "--fast-parts", parts]
        assert cli.main(args) == 0
        histories.append(json.loads((tmp_path / out / "history_mnist.json").read_text()))
    for key in ("train_loss", "val_loss"):
        assert histories[1][key] == pytest.approx(histories[0][key], rel=1e-5, abs=0)


def test_resume_keeps_the_runs_adam_kernel():
    """A state saved by plain Adam, loaded into fused Adam, leaves it fused (and vice versa)."""
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    plain = fastpath.make_optimizer(net.parameters(), 1e-3, frozenset())
    net(torch.randn(4, 3)).sum().backward()
    plain.step()
    fused = fastpath.make_optimizer(net.parameters(), 1e-3, frozenset({"fused_adam"}))
    fastpath.restore_optimizer(fused, plain.state_dict())
    assert fused.param_groups[0]["fused"] is True
    assert fused.state_dict()["state"][0]["step"].item() == 1
    again = fastpath.make_optimizer(net.parameters(), 1e-3, frozenset())
    fastpath.restore_optimizer(again, fused.state_dict())
    assert again.param_groups[0]["fused"] in (None, False)
    fused.step()  # the restored fused state is usable


@pytest.mark.parametrize("args, message", [
    (["--train", "--fast-parts", "turbo"], "unknown fast-path part(s) turbo"),
    (["--sample", "--fast"], "--fast and --fast-parts need --train"),
    (["--train", "--fast", "--fast-parts", "bf16"], "give --fast or --fast-parts, not both"),
])
def test_cli_fast_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_peaks_skip_an_emulated_bf16_product(monkeypatch):
    """bench/flops.py: no bf16 matrix product (minutes long when emulated) where the device has no native bf16."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import flops

    timed = []
    monkeypatch.setattr(flops, "matmul_peak", lambda device, dtype: timed.append(dtype) or 400.0)
    monkeypatch.setattr(fastpath, "native_bf16", lambda device: False)
    assert flops.peaks(torch.device("cpu")) == (None, 400.0) and timed == [torch.float32]
    monkeypatch.setattr(fastpath, "native_bf16", lambda device: True)
    assert flops.peaks(torch.device("cpu")) == (400.0, 400.0) and timed[1:] == [torch.bfloat16, torch.float32]
    assert flops.share(100.0, 400.0) == "25.0%" and flops.share(100.0, None) == "n/a"
    assert flops.gflops(383.4) == "383 GFLOP/s" and flops.gflops(None) == "n/a (no native bfloat16)"
