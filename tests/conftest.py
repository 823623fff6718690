"""Shared test set-up: each test runs on its own copy of the global random state."""

import pytest
import torch


@pytest.fixture(autouse=True)
def private_rng():
    """Tests that seed or consume the global RNG do not change what the next test sees."""
    with torch.random.fork_rng(devices=[]):
        yield
