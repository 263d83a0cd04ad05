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


def piq_ssim_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """The SSIM term as it was defined: 1 - piq's SSIM with the grader's window size."""
    return 1 - piq.ssim(sr, hr, data_range=1.0, kernel_size=SSIM_WINDOW, downsample=False)


@pytest.mark.parametrize("shape", [(1, 3, 7, 7), (2, 3, 24, 20), (4, 3, 17, 33), (3, 1, 32, 32)])
@pytest.mark.parametrize("related", [False, True])
def test_the_ssim_term_is_one_minus_piqs_ssim_with_the_graders_window(shape, related):
    hr = images(3, shape)
    noise = images(2, shape)
    # unrelated noise (SSIM near 0), or a prediction close to its target as training sees it (SSIM near 1)
    sr = (hr + 0.1 * (noise - 0.5)).clamp(0, 1) if related else noise
    ours, theirs = sr.clone().requires_grad_(), sr.clone().requires_grad_()
    loss, expected = ssim_loss(ours, hr), piq_ssim_loss(theirs, hr)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert abs(loss.item() - expected.item()) <= 1e-6
    loss.backward()
    expected.backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-5 * theirs.grad.abs().max().item())
    assert ssim_loss(hr, hr).item() == pytest.approx(0, abs=1e-6)
    if not related:
        assert loss.item() > 0.5  # unrelated noise has little structure in common


def test_the_ssim_term_reads_nothing_back_to_the_host():
    # A meta tensor has a shape and no data: any host read (.item(), bool(), piq's `assert 0 <= t.min()`)
    # raises, so a loss and gradient computed on meta tensors prove the step never waits for the device.
    sr = torch.empty(16, 3, 128, 128, device="meta", requires_grad=True)
    hr = torch.empty(16, 3, 128, 128, device="meta")
    loss = training_loss("l1", 0.5, sr, hr)
    loss.backward()
    assert loss.device.type == "meta" and loss.shape == () and sr.grad.shape == sr.shape


def test_a_nan_in_the_prediction_gives_a_nan_loss_and_no_exception():
    # An fp16 overflow in the forward: the bad-step guard (training/faults.py) skips the step on the
    # non-finite gradients, which needs the loss to carry the NaN instead of raising.
    sr, hr = images(8), images(9)
    sr[1, 2, 5, 7] = float("nan")
    sr.requires_grad_()
    loss = training_loss("l1", 0.5, sr, hr)
    assert not torch.isfinite(loss)
    assert not torch.isfinite(ssim_loss(sr, hr))
    loss.backward()
    assert not torch.isfinite(sr.grad).all()


def test_the_ssim_term_is_float32_under_autocast():
    # Its variances are differences of nearly equal means: in bfloat16 they would mostly cancel away.
    sr, hr = images(10), images(11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = ssim_loss(sr, hr)
    assert inside.dtype == torch.float32 and torch.equal(inside, ssim_loss(sr, hr))


@pytest.mark.parametrize("shapes", [((2, 3, 16, 16), (1, 3, 16, 16)), ((1, 3, 6, 16), (1, 3, 6, 16))])
def test_the_ssim_term_refuses_mismatched_or_too_small_images(shapes):
    with pytest.raises(ValueError, match="SSIM"):
        ssim_loss(torch.rand(shapes[0]), torch.rand(shapes[1]))


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
