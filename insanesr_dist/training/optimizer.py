"""The optimizer and its learning rate: the seed's Adam, and the rate as a pure function of the optimizer step
(`lr_at`), set by the loop before each step rather than by a scheduler object that each process would step."""

from __future__ import annotations

import math

import torch

ADAM_BETA1 = 0.9  # Adam's default, the seed's; only beta2 is a setting (--adam-beta2)


def make_optimizer(params, lr: float, beta2: float = 0.999) -> torch.optim.Adam:
    """Adam (the seed's optimizer) with betas (0.9, `beta2`), fused: one kernel per step, and able to skip a step
    in-kernel."""
    return torch.optim.Adam(params, lr=lr, betas=(ADAM_BETA1, beta2), fused=True)


def lr_at(step: int, *, peak: float, warmup: int, total: int, schedule: str) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then constant or cosine to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "constant":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
