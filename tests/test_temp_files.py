"""The test suite cleans up after itself: a passing run leaves no file in the system temp folder."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import ROOT
from torch._inductor.runtime.cache_dir_utils import cache_dir


def test_probe_writes_temporary_files(tmp_path):
    """Writes what the suite's tests write: into tmp_path, a temp folder of its own, and one from a child
    process (as torchrun does with its ``torchelastic_*`` folders). The test below runs it alone."""
    (tmp_path / "data.bin").write_bytes(bytes(1 << 20))
    (Path(tempfile.mkdtemp(prefix="torchelastic_")) / "log.txt").write_text("rank 0")
    code = "import pathlib, tempfile; pathlib.Path(tempfile.mkdtemp(prefix='torchelastic_'), 'log.txt').write_text('1')"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    (Path(cache_dir()) / "kernel.cpp").write_text("//")  # where torch.compile keeps its compiled code


def test_a_passing_run_leaves_no_file_in_the_system_temp_folder(tmp_path):
    temp = tmp_path / "system_tmp"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "TORCHINDUCTOR_CACHE_DIR"}
    env.update(TMPDIR=str(temp), OMP_NUM_THREADS="1")
    tests = [f"tests/{Path(__file__).name}::test_probe_writes_temporary_files",
             "tests/test_dataset.py::test_zip_without_png"]
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "2 passed" in result.stdout, result.stdout[-3000:]
    left = sorted(str(p.relative_to(temp)) for p in temp.rglob("*") if p.is_file() or "torchelastic_" in p.name)
    assert left == []
