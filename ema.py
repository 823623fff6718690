"""An exponential moving average of a network's weights, for sampling.

After every optimizer step, ``shadow = d * shadow + (1 - d) * weights`` with the
usual warm-up ``d = min(decay, (1 + n) / (10 + n))`` after n updates, so early
updates (when the weights move fast) are not averaged over a long window.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    """Shadow copy of ``model`` whose parameters trail the model's by an exponential average."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay of the next update: the warm-up (1 + n) / (10 + n), capped at ``decay``."""
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow parameters towards ``model``'s; copy its buffers."""
        weight = 1.0 - self.current_decay()
        shadow = [p for p in self.shadow.parameters()]
        live = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(shadow, live, weight)
        for s, b in zip(self.shadow.buffers(), model.buffers()):
            s.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return dict(model=self.shadow.state_dict(), decay=self.decay, num_updates=self.num_updates)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow.load_state_dict(state["model"])
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
