"""training.optimizer: the learning-rate schedule and the optimizer."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from insanesr_dist.training.optimizer import lr_at, make_optimizer

PEAK = 2e-4


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_warmup_rises_linearly_to_the_peak_at_its_last_step(schedule):
    rates = [lr_at(step, peak=PEAK, warmup=4, total=20, schedule=schedule) for step in range(4)]
    assert rates == pytest.approx([PEAK / 4, PEAK / 2, 3 * PEAK / 4, PEAK])
    assert lr_at(0, peak=PEAK, warmup=0, total=20, schedule=schedule) == PEAK  # no warmup: the peak at once


def test_constant_stays_at_the_peak_after_the_warmup_and_past_the_end():
    assert {lr_at(step, peak=PEAK, warmup=3, total=10, schedule="constant") for step in range(3, 30)} == {PEAK}


def test_cosine_falls_from_the_peak_through_half_to_zero_and_stays_there():
    warmup, total = 5, 105
    rates = [lr_at(step, peak=PEAK, warmup=warmup, total=total, schedule="cosine") for step in range(warmup, 120)]
    assert rates[0] == PEAK
    assert all(a > b for a, b in itertools.pairwise(rates[: total - warmup + 1]))  # strictly falling
    assert rates[(total - warmup) // 2] == pytest.approx(PEAK / 2)
    assert rates[total - warmup] == pytest.approx(0, abs=1e-20)
    assert max(rates[total - warmup :]) == pytest.approx(0, abs=1e-20)  # past the end: 0, not rising again
    for k in (10, 37, 81):  # the formula itself, at a few steps
        assert rates[k] == pytest.approx(PEAK * 0.5 * (1 + math.cos(math.pi * k / (total - warmup))))


def test_a_total_within_the_warmup_does_not_divide_by_zero():
    assert lr_at(5, peak=PEAK, warmup=5, total=5, schedule="cosine") == PEAK
    assert lr_at(6, peak=PEAK, warmup=5, total=5, schedule="cosine") == pytest.approx(0, abs=1e-20)


def test_the_optimizer_is_adam_at_the_given_rate_and_steps_the_parameters():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    optimizer = make_optimizer(layer.parameters(), lr=1e-2)
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 1e-2 and optimizer.defaults["fused"]
    before = layer.weight.detach().clone()
    layer(torch.rand(4, 3)).square().sum().backward()
    optimizer.step()
    # Adam's first step moves every parameter with a non-zero gradient by about lr.
    moved = (layer.weight.detach() - before).abs()
    assert torch.allclose(moved[layer.weight.grad != 0], torch.tensor(1e-2), rtol=1e-3)


def test_beta2_is_a_setting_and_beta1_stays_adams():
    from insanesr_dist.config import TrainConfig

    layer = torch.nn.Linear(3, 2)
    assert make_optimizer(layer.parameters(), lr=1e-3).param_groups[0]["betas"] == (0.9, 0.999)
    assert make_optimizer(layer.parameters(), lr=1e-3, beta2=0.99).param_groups[0]["betas"] == (0.9, 0.99)
    assert TrainConfig().adam_beta2 == 0.999 and TrainConfig(adam_beta2=0.99).adam_beta2 == 0.99
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match="adam_beta2 must be in"):
            TrainConfig(adam_beta2=bad)
