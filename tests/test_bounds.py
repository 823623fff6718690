"""Bounded whatever the input (issue 32): memory for any N, checkpoints that ask for too much, the files a
command uses, and the small refusals. Each test fails on the package before this issue."""

import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, TINY, one_error_line, tiny_ddpm
from test_samplers import Affine

from diffusion_model import DiffusionModel

import main
import utils
from samplers import SamplingOutOfMemory, make_sampler, noise_seed


# --------------------------------------------------------------------------- sampling in batches


@pytest.mark.parametrize("sampler, steps", [("ddpm", None), ("ddim", 4), ("dpm++", 4)])
def test_the_images_do_not_depend_on_the_batch_size(sampler, steps):
    """Exactly so with a network that treats each image alone; with a UNet, up to its float rounding (a
    convolution's kernels may sum in another order for another batch size)."""
    for ddpm, same in ((DiffusionModel(Affine(8), timesteps=8, image_chw=(1, 4, 4)), torch.equal),
                       (tiny_ddpm(timesteps=8), lambda a, b: torch.allclose(a, b, rtol=0, atol=1e-4))):
        options = {"eta": 0.5} if sampler == "ddim" else {}
        draws = [utils.sample(ddpm, 5, seed=2, sampler=make_sampler(sampler, ddpm, steps, **options),
                              frames_per_gif=3, batch_size=b) for b in (5, 2, 1)]
        for drawn in draws[1:]:
            assert same(drawn.raw, draws[0].raw)
            assert len(drawn.frames) == 3 and all(same(a, b) for a, b in zip(drawn.frames, draws[0].frames))
        assert torch.equal(draws[0].frames[-1], draws[0].raw)
        assert not torch.equal(draws[0].raw, utils.sample(ddpm, 5, seed=3, sampler=make_sampler(
            sampler, ddpm, steps, **options)).raw)  # another seed, other images


def test_each_image_draws_its_noise_from_its_own_generator():
    """x_T of image i is the first draw of its generator (``noise_seed(seed, i)``), whatever else is drawn."""
    ddpm = tiny_ddpm(timesteps=4)
    seen = []
    real = ddpm.guided_backward

    def spy(x, t, y, w):
        if int(t[0]) == 3:
            seen.append(x.clone())
        return real(x, t, y, w)

    ddpm.guided_backward = spy
    utils.sample(ddpm, 3, seed=7, batch_size=2)
    x_T = torch.cat(seen)
    for i in range(3):
        expected = torch.randn(ddpm.image_chw, generator=torch.Generator().manual_seed(noise_seed(7, i)))
        assert torch.equal(x_T[i], expected)


def test_out_of_memory_while_sampling_is_one_line(tmp_path, run_main, monkeypatch):
    from datagen import make_mnist
    make_mnist(tmp_path / "data", n_train=12, n_test=4)
    assert run_main("--dataset", "mnist", "--train", "--epochs", "1", "--data-root", "data", "--quiet",
                    *TINY, cwd=tmp_path).returncode == 0

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 9663676416 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(main.DiffusionModel, "guided_backward", no_memory)
    result = run_main("--sample", "--n-samples", "4", "--sample-batch", "3", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "main.py: error: out of memory drawing a batch of 3 images on cpu: lower --sample-batch" in result.stderr
    with pytest.raises(SamplingOutOfMemory, match="a batch of 2 images on cpu: lower --sample-batch"):
        utils.sample(tiny_ddpm(timesteps=2), 2)

    def no_gpu_memory(*args, **kwargs):  # what CUDA raises, whatever the device
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(main.DiffusionModel, "guided_backward", no_gpu_memory)
    with pytest.raises(SamplingOutOfMemory, match="out of memory drawing a batch of 1 images"):
        utils.sample(tiny_ddpm(timesteps=2), 2, batch_size=1)
    monkeypatch.setattr(main.DiffusionModel, "guided_backward", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # any other failure is not dressed up as memory
        utils.sample(tiny_ddpm(timesteps=2), 2)


def test_too_many_samples_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main.main(["--sample", "--n-samples", "1000000000"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert "argument --n-samples: must be an integer in 1..100000, got 1000000000" in err


# --------------------------------------------------------------------------- checkpoints that ask for too much


def forged(trained, **change):
    """The trained run's checkpoint with its config changed as ``change`` says (data only: weights_only passes)."""
    path = trained / "runs" / "ddpm_mnist.pt"
    ckpt = torch.load(path, weights_only=True)
    for key, value in change.items():
        target = ckpt["config"]["network"] if key in ckpt["config"]["network"] else ckpt["config"]
        target[key] = value
    out = trained / "forged.pt"
    torch.save(ckpt, out)
    return out


@pytest.mark.parametrize("change, message", [
    (dict(n_steps=10**9, timesteps=10**9), "--timesteps must be an integer in 1..100000, got 1000000000"),
    (dict(time_emb_dim=6000), "--time-emb-dim must be an integer in 1..2048, got 6000"),
    (dict(image_chw=[1, 40000, 40000]), "image_chw [1, 40000, 40000] differs from its network's [1, 28, 28]"),
    (dict(image_size=4096), "image_size must be one of [28, 64], got 4096"),
    (dict(dataset="cifar"), "unknown dataset 'cifar'"),
])
def test_a_checkpoint_asking_for_too_much_is_refused_before_building(trained, change, message, run_main):
    path = forged(trained, **change)
    line = one_error_line(run_main("--sample", "--checkpoint", str(path), cwd=trained))
    assert "asks for a model this package refuses to build" in line and message in line


def test_a_100_gib_network_is_refused_in_a_second_with_little_memory(trained):
    """``base_channels`` 6000 would build a network of about 110 GiB; the refusal comes first, in a fresh process
    (timed from after the imports)."""
    ckpt = torch.load(trained / "runs" / "ddpm_mnist.pt", weights_only=True)
    ckpt["config"]["network"].update(arch="resattn", base_channels=6000, channel_mults=[1, 2, 2], blocks=1,
                                     dropout=0.0)
    torch.save(ckpt, trained / "huge.pt")
    code = ("import resource, sys, time\nimport main\nstart = time.perf_counter()\n"
            "code = main.main(['--sample', '--checkpoint', 'huge.pt'])\n"
            "print(f'seconds={time.perf_counter() - start:.3f} '\n"
            "      f'peak_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}', file=sys.stderr)\n"
            "sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code], cwd=trained, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--channels must be an integer in 1..512, got 6000" in result.stderr
    stats = dict(item.split("=") for item in result.stderr.split() if item.startswith(("seconds=", "peak_kb=")))
    assert float(stats["seconds"]) < 1.0 and int(stats["peak_kb"]) < 1024 * 1024


# --------------------------------------------------------------------------- which file a command uses


def test_sample_of_a_run_stopped_in_its_first_epoch_uses_its_last_state(trained, run_main):
    runs = trained / "runs"
    (runs / "ddpm_mnist.pt").unlink()  # only ddpm_mnist_last.pt is left, as after a stop in epoch 1
    result = run_main("--sample", "--n-samples", "2", "--sampler", "ddim", "--sample-steps", "2", cwd=trained)
    assert result.returncode == 0, result.stderr
    assert "runs/ddpm_mnist.pt does not exist yet" in result.stderr
    assert "sampling its last state runs/ddpm_mnist_last.pt" in result.stderr
    assert "Sampling 2 images from runs/ddpm_mnist_last.pt" in result.stderr
    assert (runs / "samples_mnist.png").is_file()


def test_a_corrupt_last_beside_a_good_best_says_which_file_to_move(trained, run_main):
    last = trained / "runs" / "ddpm_mnist_last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated
    line = one_error_line(run_main("--train", "--epochs", "2", "--resume", "--data-root", "data", *TINY,
                                   cwd=trained))
    assert "runs/ddpm_mnist_last.pt is not a readable checkpoint" in line
    assert "to resume from the best checkpoint runs/ddpm_mnist.pt instead" in line
    assert "move runs/ddpm_mnist_last.pt away, e.g. to runs/ddpm_mnist_last.pt.bad" in line
    shutil.move(last, str(last) + ".bad")  # as told: then it resumes from the best one, and names it
    result = run_main("--train", "--epochs", "2", "--resume", "--data-root", "data", *TINY, cwd=trained)
    assert result.returncode == 0, result.stderr
    assert "Resuming runs/ddpm_mnist.pt from epoch 2" in result.stderr


# --------------------------------------------------------------------------- the small refusals


def test_a_gif_over_the_grid_or_the_checkpoint_is_refused(trained, run_main):
    before = (trained / "runs" / "ddpm_mnist.pt").read_bytes()
    for name in ("runs/samples_mnist.png", "runs/ddpm_mnist.pt"):
        result = run_main("--sample", "--gif", name, cwd=trained)  # refused by the parser: exit 2, one line
        assert result.returncode == 2 and result.stderr.strip().splitlines() == [
            f"main.py: error: --gif writes a GIF: give a file name ending in .gif, got '{name}' (see main.py --help)"]
    assert (trained / "runs" / "ddpm_mnist.pt").read_bytes() == before


def test_another_dataset_than_the_checkpoints_is_refused(trained, run_main):
    line = one_error_line(run_main("--sample", "--dataset", "persian", "--checkpoint", "runs/ddpm_mnist.pt",
                                   cwd=trained))
    assert "--dataset persian, but runs/ddpm_mnist.pt is a mnist model" in line


def test_a_warm_up_longer_than_the_run_is_warned_about(tmp_path, run_main):
    from datagen import make_mnist
    make_mnist(tmp_path / "data", n_train=24, n_test=8)
    result = run_main("--dataset", "mnist", "--train", "--epochs", "1", "--data-root", "data", "--timesteps", "20",
                      "--arch", "fixed", "--batch-size", "8", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("The learning-rate warm-up of 500 steps is longer than the run's 3 optimizer steps: the rate never "
            "reaches --lr 0.001 (it ends at 6e-06); lower --warmup-steps") in result.stderr


def test_a_zip_bomb_through_the_command_line_is_one_line_and_its_limit_a_flag(tmp_path, run_main):
    from test_dataset import bomb_zip
    (tmp_path / "data").mkdir()
    bomb_zip(tmp_path / "data" / "persian_digits.zip", declared=2 << 30)
    result = run_main("--dataset", "persian", "--train", "--data-root", "data", "--epochs", "1", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = next(line for line in result.stderr.splitlines() if line.startswith("main.py: error:"))
    assert "persian_digits.zip" in line and "raise the limit with --zip-max-ratio" in line
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["persian_digits.zip"]  # nothing extracted
    result = run_main("--dataset", "persian", "--train", "--data-root", "data", "--epochs", "1",
                      "--zip-max-ratio", "1e9", "--zip-max-bytes", "1000", cwd=tmp_path)
    assert result.returncode == 1 and "over the limit of 1,000 bytes" in result.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["persian_digits.zip"]
