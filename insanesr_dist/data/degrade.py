"""LR images made from HR ones (--lr-from-hr), for sets that have only HR images: their own 4K screenshots,
LSDIR-style sets. Each kernel is one exact, documented resize, so it can be matched to a competition's
degradation; an HR image whose size is not a multiple of the scale first loses its last rows and columns (as
DIV2K's and BasicSR's "mod crop" do), so that HR stays exactly scale x LR.

    bicubic            OpenCV cv2.resize(INTER_CUBIC) on uint8: Keys cubic (a = -0.75), no antialiasing, pixel
                       centres aligned, OpenCV's fixed-point uint8 arithmetic, rounded and saturated. How this
                       toolkit's demo data and many Kaggle-style sets were made.
    bicubic-antialias  torch.nn.functional.interpolate(mode="bicubic", antialias=True) on uint8: cubic a = -0.5
                       widened by the scale (a low-pass filter before sampling), weights renormalised at the
                       borders: the algorithm of PIL's Image.resize(BICUBIC), which it equals within one grey
                       level; close to MATLAB's imresize (DIV2K's LR), which pads the borders symmetrically instead.
    area               OpenCV cv2.resize(INTER_AREA) on uint8: the mean of each scale x scale block, rounded.
"""

from __future__ import annotations

import cv2
import numpy as np

KERNELS = ("bicubic", "bicubic-antialias", "area")


def mod_crop(hr: np.ndarray, scale: int) -> np.ndarray:
    """HR without the last rows and columns that do not fill a whole LR pixel."""
    h, w = hr.shape[:2]
    return hr[: h - h % scale, : w - w % scale]


def lr_from_hr(hr: np.ndarray, scale: int, kernel: str) -> np.ndarray:
    """The LR image (HxWx3 uint8) `kernel` makes of a mod-cropped HR image."""
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    if kernel == "bicubic":
        return cv2.resize(hr, (w, h), interpolation=cv2.INTER_CUBIC)
    if kernel == "area":
        return cv2.resize(hr, (w, h), interpolation=cv2.INTER_AREA)
    if kernel == "bicubic-antialias":
        import torch
        import torch.nn.functional as F

        from insanesr_dist.data.tensors import to_hwc

        chw = torch.from_numpy(np.ascontiguousarray(hr)).permute(2, 0, 1)[None]
        lr = F.interpolate(chw, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        return to_hwc(lr[0])
    raise ValueError(f"unknown LR kernel {kernel!r}; one of {', '.join(KERNELS)}")
