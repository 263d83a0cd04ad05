"""The model's forward as inference runs it: float32 with IEEE convolutions and matmuls (validation and
submissions, so scores do not depend on TF32 or the GPU), or under an autocast precision (`predict
--mixed-precision`); both as a plain `Forward` callable that tiles.py and sharded.py apply to images.

Kept apart from the training step, whose precision (autocast, gradient scaling) is training/precision.py's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch
from accelerate import Accelerator
from torch import nn

PRECISIONS = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _fp32_precision_knobs() -> list:
    """torch's float32 precision settings for convolutions and matmuls (the `fp32_precision` API of
    torch >= 2.9): cuDNN's and oneDNN's convolutions, cuBLAS's and oneDNN's matmuls."""
    b = torch.backends
    return [b.cudnn.conv, b.cuda.matmul, b.mkldnn.conv, b.mkldnn.matmul]


@contextmanager
def ieee_float32() -> Iterator[None]:
    """IEEE float32 convolutions and matmuls inside, the previous settings restored after.

    torch defaults cuDNN convolutions to TF32 (a 10-bit mantissa) on Ampere and later GPUs, and
    `torch.set_float32_matmul_precision("high")` does the same to matmuls: a "float32" score or
    submission would then depend on the GPU. Scoped, so `--mixed-precision no` training keeps TF32's speed.
    """
    knobs = _fp32_precision_knobs()
    before = [knob.fp32_precision for knob in knobs]
    try:
        for knob in knobs:
            knob.fp32_precision = "ieee"
        yield
    finally:
        for knob, value in zip(knobs, before):
            knob.fp32_precision = value


def float32_forward(accelerator: Accelerator, model: nn.Module) -> Forward:
    """The model's own forward, bypassing the autocast wrapper `accelerator.prepare` installs and
    the DDP wrapper: validation scores and submissions come from an IEEE float32 forward (no TF32)."""
    inner = accelerator.unwrap_model(model)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with ieee_float32():
            return type(inner).forward(inner, x)

    return forward


def model_forward(model: nn.Module, device: torch.device, precision: str) -> Forward:
    """Batches in, float32 batches out; `bf16`/`fp16` run the convolutions under autocast, `no` in IEEE
    float32 (no TF32, see ieee_float32).
    channels_last: oneDNN's and cuDNN's fast convolution kernels want NHWC (over 3x faster on this project's CPU)."""
    dtype = PRECISIONS[precision]

    def forward(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        with (
            torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
            ieee_float32() if dtype is None else nullcontext(),
        ):
            return model(x).float()

    return forward


Forward = Callable[[torch.Tensor], torch.Tensor]
