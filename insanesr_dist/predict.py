"""Whole-image prediction, sharded over processes, and the float32 forward used for scores."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from .metrics import to_uint8
from .submission import encode_png

Forward = Callable[[torch.Tensor], torch.Tensor]


def float32_forward(accelerator: Accelerator, model: nn.Module) -> Forward:
    """The model's own forward, bypassing the autocast wrapper `accelerator.prepare` installs and
    the DDP wrapper: validation scores and submissions come from a float32 forward."""
    inner = accelerator.unwrap_model(model)
    return lambda x: type(inner).forward(inner, x)


@torch.no_grad()
def predict_pngs(forward: Forward, loader: DataLoader, accelerator: Accelerator) -> dict[int, bytes]:
    """PNG bytes of the prediction for every image of an (index, LR) loader, on every rank.

    Each rank predicts its shard and encodes its PNGs (the encoding is parallel work too), then the
    encoded images are gathered; `gather_for_metrics` drops the padding samples of uneven shards.
    """
    pngs: dict[int, bytes] = {}
    for index, lr in loader:
        sr = to_uint8(forward(lr.float() / 255)).permute(0, 2, 3, 1).cpu().numpy()
        local = [(int(i), encode_png(np.ascontiguousarray(img))) for i, img in zip(index, sr)]
        pngs.update(accelerator.gather_for_metrics(local, use_gather_object=True))
    return pngs
