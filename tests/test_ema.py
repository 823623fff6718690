"""Tests of the exponential moving average of the weights (ema.py)."""

import pytest
import torch
from torch import nn

from ema import EMA


def test_warm_up_and_average_by_hand():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        ema.update(model)
        assert ema.shadow.weight.item() == pytest.approx(expected, rel=1e-6)
    assert ema.num_updates == 12 and ema.current_decay() == pytest.approx(13 / 22)  # still warming up
    assert not ema.shadow.weight.requires_grad
    long = EMA(model, decay=0.9)
    long.num_updates = 1000
    assert long.current_decay() == 0.9  # after the warm-up the decay is capped


def test_state_round_trip_and_bad_decay():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.99)
    ema.update(model)
    other = EMA(nn.Linear(2, 2), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == 0.99 and other.num_updates == 1
    assert torch.equal(other.shadow.weight, ema.shadow.weight)
    with pytest.raises(ValueError, match=r"EMA decay must lie in \(0, 1\)"):
        EMA(model, decay=1.0)
