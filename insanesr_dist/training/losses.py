"""Training losses: a pixel loss, optionally plus an SSIM term, because JM = 40*SSIM + PSNR.

MSE is what PSNR measures; L1 and Charbonnier weigh small errors more, which sharpens edges; the SSIM
term (piq's SSIM, differentiable) targets the part of JM that carries most of its spread between models.
"""

from __future__ import annotations

import piq
import torch
import torch.nn.functional as F

from insanesr_dist.data.images import SSIM_WINDOW

CHARBONNIER_EPS = 1e-3


def pixel_loss(name: str, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    if name == "mse":
        return F.mse_loss(sr, hr)
    if name == "l1":
        return F.l1_loss(sr, hr)
    if name == "charbonnier":
        return torch.sqrt((sr - hr).square() + CHARBONNIER_EPS**2).mean()
    raise ValueError(f"unknown pixel loss {name!r}")


def ssim_loss(sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """1 - mean SSIM; `sr` and `hr` in [0, 1] (both output heads guarantee it)."""
    # The grader's SSIM uses a 7x7 uniform window; piq's is Gaussian, so a 7-tap Gaussian (sigma 1.5) is the
    # nearest match.
    return 1 - piq.ssim(sr, hr, data_range=1.0, kernel_size=SSIM_WINDOW, downsample=False)


def training_loss(name: str, ssim_weight: float, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
    """pixel loss + ssim_weight * (1 - SSIM), in float32 whatever the autocast precision."""
    sr, hr = sr.float(), hr.float()
    loss = pixel_loss(name, sr, hr)
    if ssim_weight:
        loss = loss + ssim_weight * ssim_loss(sr, hr)
    return loss
