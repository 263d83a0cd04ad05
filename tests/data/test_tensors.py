"""data.tensors: images between numpy HxWx3 uint8 and torch 3xHxW, and the submission's quantization."""

from __future__ import annotations

import numpy as np
import torch

from insanesr_dist.data.tensors import to_chw, to_hwc, to_uint8


def test_chw_and_hwc_are_inverse_transposes_of_the_same_pixels():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    chw = to_chw(image)
    assert chw.shape == (3, 5, 7) and chw.dtype == torch.uint8
    assert chw[2, 4, 6] == image[4, 6, 2] and chw[0, 1, 3] == image[1, 3, 0]
    back = to_hwc(chw)
    assert back.flags["C_CONTIGUOUS"] and np.array_equal(back, image)
    assert np.array_equal(to_hwc(to_chw(image[:, ::-1])), image[:, ::-1])  # a strided view is copied, not misread


def test_to_uint8_rounds_to_nearest_and_saturates():
    values = torch.tensor([-0.5, 0.0, 0.5 / 255, 0.49 / 255, 1.51 / 255, 0.5, 1.0, 1.7])
    assert to_uint8(values).tolist() == [0, 0, 0, 0, 2, 128, 255, 255]  # 0.5/255 -> 0: round half to even
    images = torch.rand(2, 3, 4, 4, dtype=torch.bfloat16, requires_grad=True)
    out = to_uint8(images)
    assert out.dtype == torch.uint8 and not out.requires_grad
    expected = np.clip(np.rint(images.detach().float().numpy() * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(out.numpy(), expected)
