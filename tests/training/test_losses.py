"""training.losses: the pixel losses and the SSIM term, against their definitions."""

from __future__ import annotations

import piq
import pytest
import torch

from insanesr_dist.data.images import SSIM_WINDOW
from insanesr_dist.training.losses import CHARBONNIER_EPS, pixel_loss, ssim_loss, training_loss


def images(seed: int, shape=(2, 3, 24, 20)) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_the_pixel_losses_are_their_definitions():
    sr, hr = images(0), images(1)
    diff = sr - hr
    assert pixel_loss("mse", sr, hr) == pytest.approx(diff.square().mean().item(), rel=1e-6)
    assert pixel_loss("l1", sr, hr) == pytest.approx(diff.abs().mean().item(), rel=1e-6)
    charbonnier = (diff.square() + CHARBONNIER_EPS**2).sqrt().mean().item()
    assert pixel_loss("charbonnier", sr, hr) == pytest.approx(charbonnier, rel=1e-6)
    # Charbonnier is L1 smoothed at zero: between L1 and L1 + eps, and eps for identical images.
    assert diff.abs().mean() < pixel_loss("charbonnier", sr, hr) <= diff.abs().mean() + CHARBONNIER_EPS
    assert pixel_loss("charbonnier", hr, hr) == pytest.approx(CHARBONNIER_EPS)


def test_an_unknown_pixel_loss_is_refused():
    with pytest.raises(ValueError, match="'huber'"):
        pixel_loss("huber", images(0), images(1))


def test_the_ssim_term_is_one_minus_piqs_ssim_with_the_graders_window():
    sr, hr = images(2), images(3)
    expected = 1 - piq.ssim(sr, hr, data_range=1.0, kernel_size=SSIM_WINDOW, downsample=False)
    assert torch.equal(ssim_loss(sr, hr), expected)
    assert ssim_loss(hr, hr).item() == pytest.approx(0, abs=1e-6)
    assert ssim_loss(sr, hr).item() > 0.5  # unrelated noise has little structure in common


def test_the_training_loss_adds_the_weighted_ssim_term_in_float32():
    sr, hr = images(4), images(5)
    plain = training_loss("l1", 0.0, sr, hr)
    assert torch.equal(plain, pixel_loss("l1", sr, hr))
    assert training_loss("l1", 0.5, sr, hr).item() == pytest.approx(
        plain.item() + 0.5 * ssim_loss(sr, hr).item(), rel=1e-6
    )
    low = training_loss("mse", 0.1, sr.bfloat16(), hr.bfloat16())
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(training_loss("mse", 0.1, sr.bfloat16().float(), hr.bfloat16().float()).item())


def test_the_training_loss_has_gradients_that_lower_it():
    hr = images(6)
    sr = images(7).requires_grad_()
    loss = training_loss("charbonnier", 0.2, sr, hr)
    loss.backward()
    with torch.no_grad():
        stepped = (sr - 0.05 * sr.grad / sr.grad.abs().max()).clamp(0, 1)
    assert training_loss("charbonnier", 0.2, stepped, hr) < loss
