"""Predicting every image of a loader sharded over the ranks: each rank upscales and PNG-encodes its share, then
the encoded images are gathered to the main process, for training's submission CSVs.

Separate from tiles.py (one image, one process) because only this part talks to the collectives.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from insanesr_dist.data.images import encode_png
from insanesr_dist.data.tensors import to_hwc
from insanesr_dist.inference.forward import Forward
from insanesr_dist.inference.tiles import upscale_for_eval


@torch.no_grad()
def predict_pngs(
    forward: Forward, loader: DataLoader, accelerator: Accelerator, tile: int = 0, overlap: int = 0
) -> dict[int, bytes]:
    """PNG bytes of the prediction for every image of an (index, LR) loader, by index: on the main process,
    {} on the others (only the main process writes the submission).

    Images are upscaled as validation scores them (`upscale_for_eval`: whole, or tiled above `tile`, so the
    submissions match the scores). Each rank predicts its shard and encodes its PNGs (the encoding is parallel
    work too), then the encoded images are gathered to the main process alone: an all-gather would copy every
    PNG to every rank. The samples repeated to even out uneven shards have the same index, so they collapse.
    Every rank must call this (a collective).
    """
    pngs: dict[int, bytes] = {}
    for index, lr in loader:
        for i, image in zip(index, lr):
            pngs[int(i)] = encode_png(to_hwc(upscale_for_eval(forward, image, tile=tile, overlap=overlap).cpu()))
    if accelerator.num_processes == 1:
        return pngs
    shards = [None] * accelerator.num_processes if accelerator.is_main_process else None
    torch.distributed.gather_object(pngs, shards, dst=0)
    return {i: png for shard in shards for i, png in shard.items()} if accelerator.is_main_process else {}
