"""Training losses: a pixel loss, optionally plus an SSIM term, because JM = 40*SSIM + PSNR.

MSE is what PSNR measures; L1 and Charbonnier weigh small errors more, which sharpens edges; the SSIM
term (differentiable, piq's SSIM formula, computed here) targets the part of JM that carries most of its
spread between models.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from insanesr_dist.data.images import SSIM_WINDOW

CHARBONNIER_EPS = 1e-3
SSIM_SIGMA = 1.5  # the Gaussian window's standard deviation, in pixels (piq's and the SSIM paper's)
SSIM_K1, SSIM_K2 = 0.01, 0.03  # the stabilising constants, as fractions of the data range (1.0 here)


def pixel_loss(name: str, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    if name == "mse":
        return F.mse_loss(sr, hr)
    if name == "l1":
        return F.l1_loss(sr, hr)
    if name == "charbonnier":
        return torch.sqrt((sr - hr).square() + CHARBONNIER_EPS**2).mean()
    raise ValueError(f"unknown pixel loss {name!r}")


def _gaussian_window(channels: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A SSIM_WINDOW x SSIM_WINDOW Gaussian summing to 1, as a depthwise conv weight for `channels` channels.

    Made on the tensors' device with tensor ops (a few tiny kernels, no host-to-device copy to wait for), and
    normalised as a whole 2-D window, which is how piq builds it: the same numbers to the last bit, where a
    product of two normalised 1-D windows differs in the last bits.
    """
    offsets = torch.arange(SSIM_WINDOW, device=device, dtype=dtype) - (SSIM_WINDOW - 1) / 2
    squared = offsets.square()
    window = torch.exp(-(squared[None, :] + squared[:, None]) / (2 * SSIM_SIGMA**2))
    return (window / window.sum()).expand(channels, 1, SSIM_WINDOW, SSIM_WINDOW)


def ssim_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """1 - mean SSIM of two (N, C, H, W) batches in [0, 1] (both output heads guarantee it).

    The SSIM is piq.ssim(sr, hr, data_range=1.0, kernel_size=SSIM_WINDOW, downsample=False): a Gaussian
    window (sigma 1.5), local statistics at valid positions only, averaged over positions, channels and
    images. The grader's SSIM uses a 7x7 uniform window; a 7-tap Gaussian is the nearest smooth match.

    Unlike piq it reads nothing back to the host: piq checks both images' min and max first, four blocking
    device reads per step, and raises an AssertionError on a NaN. Here a NaN (an fp16 overflow in the
    forward) gives a NaN loss, whose non-finite gradients make the optimizer skip the step (training/faults.py).
    Autocast is off inside (training_loss passes float32): the variances are differences of nearly equal
    means, which a half-precision conv would mostly cancel away.
    """
    if sr.shape != hr.shape or sr.dim() != 4:
        raise ValueError(
            f"SSIM needs two (N, C, H, W) batches of one shape, got {tuple(sr.shape)} and {tuple(hr.shape)}"
        )
    if min(sr.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"images must be at least {SSIM_WINDOW}x{SSIM_WINDOW} for SSIM, got {tuple(sr.shape[-2:])}")
    device = sr.device
    full_precision = (
        torch.autocast(device.type, enabled=False)
        if torch.amp.is_autocast_available(device.type)
        else contextlib.nullcontext()
    )
    with full_precision:
        c = sr.shape[1]
        # Two depthwise convs of the stacked maps rather than five: the prediction's maps (which need
        # gradients) and the target's (which do not, so backward leaves them alone).
        window = _gaussian_window(3 * c, device, sr.dtype)
        mu_x, xx, xy = F.conv2d(torch.cat([sr, sr * sr, sr * hr], 1), window, groups=3 * c).split(c, 1)
        mu_y, yy = F.conv2d(torch.cat([hr, hr * hr], 1), window[: 2 * c], groups=2 * c).split(c, 1)
        mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
        c1, c2 = SSIM_K1**2, SSIM_K2**2
        contrast_structure = (2 * (xy - mu_xy) + c2) / ((xx - mu_xx) + (yy - mu_yy) + c2)
        luminance = (2 * mu_xy + c1) / (mu_xx + mu_yy + c1)
        return 1 - (luminance * contrast_structure).mean()


def training_loss(name: str, ssim_weight: float, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """pixel loss + ssim_weight * (1 - SSIM), in float32 whatever the autocast precision."""
    sr, hr = sr.float(), hr.float()
    loss = pixel_loss(name, sr, hr)
    if ssim_weight:
        loss = loss + ssim_weight * ssim_loss(sr, hr)
    return loss
