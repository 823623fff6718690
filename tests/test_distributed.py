"""Two-process training on the CPU with the gloo backend: torchrun and DistributedDataParallel."""

import os
import socket
import subprocess
import sys

import torch
import torch.multiprocessing as mp
from conftest import ROOT
from datagen import make_mnist
from torch.nn.parallel import DistributedDataParallel

from checkpoint import load_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data_root: str, out: str) -> None:
    """One rank of the package's own training path: loaders, DDP, training_loop."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import distributed
    from utils import TrainState
    from Dataset import get_data_loaders
    from diffusion_model import DiffusionModel
    from recipe import diffusion_loss
    from unet import MyUNet
    from utils import training_loop

    distributed.setup("cpu")
    torch.manual_seed(rank)  # different initial weights on purpose: DDP must broadcast rank 0's
    ddpm = DiffusionModel(MyUNet(n_steps=10), timesteps=10)
    train, val = get_data_loaders("mnist", 4, data_root, rank=rank, world_size=world)
    model = DistributedDataParallel(ddpm, forward_sync_buffers=False)
    optim = torch.optim.Adam(ddpm.parameters(), lr=1e-3)
    trained_on = []  # the images of every batch this rank trained on, in order

    def loss_fn(x0):
        trained_on.append(x0.detach().clone())
        return diffusion_loss(model, x0)

    history = training_loop(TrainState(ddpm, optim, model=model), train, val, 2, loss_fn=loss_fn)
    val_images = torch.cat([batch[0] for batch in val])
    torch.save(dict(params=[p.detach().clone() for p in ddpm.parameters()], history=history,
                    n_batches=len(train), trained_on=trained_on, val_images=val_images), f"{out}/rank{rank}.pt")
    distributed.cleanup()


def test_ddp_ranks_end_with_identical_parameters(tmp_path):
    make_mnist(tmp_path / "data", n_train=24, n_test=6)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path / "data"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["n_batches"] == r1["n_batches"] == 3  # 24 images / 2 ranks / batch 4
    for a, b in zip(r0["params"], r1["params"], strict=True):
        assert torch.equal(a, b)
    # validation loss all-reduced: both ranks report the same numbers
    assert r0["history"]["val_loss"] == r1["history"]["val_loss"]
    assert r0["history"]["train_loss"] == r1["history"]["train_loss"]
    # Equal parameters would also follow if both ranks read the same shard: each epoch, the ranks trained on
    # disjoint halves of the 24 training images that together are all of them; the validation shards too.
    every_image = {key(x) for x in all_training_images(tmp_path / "data")}
    assert len(every_image) == 24
    for epoch in range(2):
        shards = [{key(x) for batch in r["trained_on"][3 * epoch:3 * epoch + 3] for x in batch} for r in (r0, r1)]
        assert len(shards[0]) == len(shards[1]) == 12
        assert len(shards[0] & shards[1]) == 0, f"epoch {epoch}: both ranks trained on the same images"
        assert len(shards[0] | shards[1]) == 24 and shards[0] | shards[1] == every_image, "images left out"
    assert len(r0["trained_on"]) == len(r1["trained_on"]) == 6  # 3 batches per epoch, 2 epochs
    first_epoch = {key(x) for batch in r0["trained_on"][:3] for x in batch}
    assert first_epoch != {key(x) for batch in r0["trained_on"][3:] for x in batch}  # reshuffled each epoch
    val_shards = [{key(x) for x in r["val_images"]} for r in (r0, r1)]
    assert len(val_shards[0]) == len(val_shards[1]) == 3
    assert len(val_shards[0] & val_shards[1]) == 0, "both ranks validated on the same images"


def key(image: torch.Tensor) -> bytes:
    """An image's identity (the test images are all different)."""
    return image.contiguous().numpy().tobytes()


def all_training_images(data_root) -> list:
    """Every training image, as one process sees the training set."""
    from Dataset import get_data_loaders

    train, _ = get_data_loaders("mnist", 4, data_root)
    return [x for batch in train for x in batch[0]]


def test_torchrun_two_processes_write_one_checkpoint_that_samples_alone(tmp_path, run_main):
    make_mnist(tmp_path / "data", n_train=24, n_test=6)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
           str(ROOT / "main.py"), "--dataset", "mnist", "--train", "--epochs", "2", "--timesteps", "10",
           "--batch-size", "4", "--data-root", "data", "--device", "cpu"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch 4 per process x 2 processes = 8" in result.stderr
    assert result.stderr.count("Epoch 2/2 - Training Loss") == 1  # only rank 0 logs
    written = sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith("."))
    assert written == ["ddpm_mnist.pt", "ddpm_mnist_last.pt", "history_mnist.json", "loss_curves_mnist.png"]
    ddpm, ckpt = load_checkpoint(tmp_path / "runs" / "ddpm_mnist.pt")
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert ckpt["train_args"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    sample = run_main("--sample", "--n-samples", "2", cwd=tmp_path)  # one process, no torchrun
    assert sample.returncode == 0, sample.stderr
    assert (tmp_path / "runs" / "samples_mnist.png").is_file()


def test_torchrun_stops_every_rank_when_rank_0_cannot_start(tmp_path):
    """Rank 0 alone checks the output paths; when that fails, the other rank must stop too, not hang."""
    make_mnist(tmp_path / "data", n_train=8, n_test=4)
    (tmp_path / "a_file").write_text("")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
           str(ROOT / "main.py"), "--dataset", "mnist", "--train", "--epochs", "1", "--timesteps", "10",
           "--batch-size", "4", "--data-root", "data", "--device", "cpu", "--checkpoint", "a_file/model.pt"]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "main.py: error: cannot write a_file/model.pt" in result.stderr  # rank 0
    assert "main.py: error: rank 0 failed to prepare the run" in result.stderr  # rank 1, not left waiting
    assert result.stderr.count("main.py: error:") == 2  # one line per rank
    # The only traceback is torchrun's own summary of a failed child (ChildFailedError), none from main.py.
    assert result.stderr.count("Traceback (most recent call last)") <= 1
    assert "ChildFailedError" in result.stderr or "Traceback" not in result.stderr


def test_main_process_first_in_one_process():
    import distributed

    calls = []
    distributed.main_process_first(lambda: calls.append(1))
    assert calls == [1]

    def fail():
        raise OSError("disk full")

    try:
        distributed.main_process_first(fail)
    except OSError as exc:
        assert str(exc) == "disk full"
    else:
        raise AssertionError("the error was swallowed")
