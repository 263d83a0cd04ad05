"""Images between numpy (HxWx3 uint8, as decoded) and torch (Nx3xHxW float in [0, 1], as the model sees them)."""

from __future__ import annotations

import numpy as np
import torch


def to_chw(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW uint8 tensor (floats are made on the device, 4x less to copy)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def to_hwc(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Quantize [0, 1] float images exactly as the submission PNGs store them (round to nearest)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
