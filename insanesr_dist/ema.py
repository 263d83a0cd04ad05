"""Exponential moving average of the model's weights (BasicSR calls them `params_ema`).

The average is what gets validated, saved as latest/best and predicted for the submission when EMA is on;
its state travels in the training checkpoint (accelerate's `register_for_checkpointing`) so a resumed run
continues it bit for bit.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    """ema = d * ema + (1 - d) * weights after each optimizer step, with d = min(decay, (1 + n) / (10 + n)):
    the ramp lets a short run's average follow the fast early progress instead of staying near the initial weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema, live in zip(self.module.state_dict().values(), model.state_dict().values()):
            if ema.dtype.is_floating_point:
                ema.lerp_(live.detach(), 1 - d)
            else:
                ema.copy_(live)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "decay": self.decay, "weights": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.updates, self.decay = state["updates"], state["decay"]
        self.module.load_state_dict(state["weights"])
