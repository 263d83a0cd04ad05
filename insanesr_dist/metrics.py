"""The competition's metric, computed exactly as its scikit-image grader does, plus piq's versions beside it.

The grader scores uint8 RGB images with `peak_signal_noise_ratio(a, b, data_range=255)` and
`structural_similarity(a, b, channel_axis=-1)` (7x7 uniform window, sample covariance, K1=0.01,
K2=0.03, data_range 255, 3-pixel border cropped, mean over channels), and
Joint Metric = 40 * SSIM + PSNR, averaged over images. We do the same arithmetic in float64 on
the same uint8 values, in torch so a batch is scored where it already lives (CPU or GPU).

Why not the 7x7 filter's border handling: the grader filters with reflected borders and then crops
3 pixels, exactly the pixels whose window touches the border, so only fully-inside ("valid")
windows count; `avg_pool2d` with stride 1 yields exactly those.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WEIGHT = 40.0
_WINDOW = 7
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2
_COV_NORM = _WINDOW**2 / (_WINDOW**2 - 1)  # sample covariance, as the grader's default


def joint_metric(psnr: float | torch.Tensor, ssim: float | torch.Tensor):
    return SSIM_WEIGHT * ssim + psnr


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Quantize [0, 1] float images exactly as the submission PNGs store them (round to nearest)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)


def _as_batch(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (B,3,H,W) tensor, or one HxWxC uint8 array as the grader takes it -> float64 (B,C,H,W)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images)).permute(2, 0, 1)[None]
    if images.dtype != torch.uint8:
        raise TypeError(f"metrics are defined on uint8 images, got {images.dtype}")
    return images.to(torch.float64)


def psnr_ssim(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Per-image grader PSNR and SSIM of uint8 images: a float64 tensor of shape (B, 2).

    Accepts (B, C, H, W) uint8 tensors or single (H, W, C) uint8 arrays. Identical images give
    PSNR = inf, as the grader does.
    """
    x, y = _as_batch(pred), _as_batch(target)
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: prediction {tuple(x.shape)} vs target {tuple(y.shape)}")
    if min(x.shape[-2:]) < _WINDOW:
        raise ValueError(f"images must be at least {_WINDOW}x{_WINDOW} for SSIM, got {tuple(x.shape[-2:])}")

    mse = (x - y).square().flatten(1).mean(1)
    psnr = 10 * torch.log10(255.0**2 / mse)

    b, c = x.shape[:2]
    # One pooling call for the five local moments of every channel of every image.
    moments = F.avg_pool2d(torch.cat([x, y, x * x, y * y, x * y], 1), _WINDOW, stride=1)
    ux, uy, uxx, uyy, uxy = moments.split(c, 1)
    vx = _COV_NORM * (uxx - ux * ux)
    vy = _COV_NORM * (uyy - uy * uy)
    vxy = _COV_NORM * (uxy - ux * uy)
    s = ((2 * ux * uy + _C1) * (2 * vxy + _C2)) / ((ux * ux + uy * uy + _C1) * (vx + vy + _C2))
    ssim = s.flatten(2).mean(2).mean(1)  # mean over pixels per channel, then over channels
    return torch.stack([psnr, ssim], 1).reshape(b, 2)


def piq_psnr_ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """piq's PSNR and SSIM of the same uint8 images, shape (B, 2), for comparison in the logs.

    piq's SSIM uses an 11x11 Gaussian window and downsamples large images, and its PSNR adds
    1e-8 to the MSE, so both differ from the grader's numbers; they are not used for model selection.
    """
    import piq

    x, y = pred.float() / 255, target.float() / 255
    return torch.stack(
        [
            piq.psnr(x, y, data_range=1.0, reduction="none").double(),
            piq.ssim(x, y, data_range=1.0, reduction="none").double(),
        ],
        1,
    )
