"""Validation inside training: the model's predictions of the validation images scored sharded over the ranks,
grader-exact, as one mean per metric.

It scores the model's output directly; the `evaluate` command (tools/evaluate.py) scores PNG folders or CSVs
already written, with a per-image report and baselines.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from insanesr_dist.data.tensors import to_uint8
from insanesr_dist.inference.forward import Forward
from insanesr_dist.inference.tiles import needs_tiles, upscale_for_eval
from insanesr_dist.scoring.metrics import joint_metric, piq_psnr_ssim, psnr_ssim


@torch.no_grad()
def score_images(
    forward: Forward, loader: DataLoader, accelerator: Accelerator, tile: int = 0, overlap: int = 0
) -> dict[str, float]:
    """Mean grader PSNR/SSIM/JM (and piq's PSNR/SSIM) over an (index, LR, HR) loader.

    Every rank scores its shard on uint8-quantized outputs; per-image scores are gathered with
    `gather_for_metrics`, which drops the samples repeated to even out the last batch. Images with an LR
    edge over `tile` (0: none) are upscaled in tiles with `overlap` pixels of context
    (inference.tiles.upscale_for_eval), so a 4K-class image needs the memory of one tile, not of the whole image.
    """
    rows = []
    for _, lr, hr in loader:
        if needs_tiles(lr, tile):
            sr = torch.stack([upscale_for_eval(forward, image, tile=tile, overlap=overlap) for image in lr])
        else:
            sr = to_uint8(forward(lr.float() / 255))
        scores = torch.cat([psnr_ssim(sr, hr), piq_psnr_ssim(sr, hr)], 1)
        rows.append(accelerator.gather_for_metrics(scores))
    psnr, ssim, psnr_piq, ssim_piq = torch.cat(rows).mean(0).tolist()
    return {
        "psnr": psnr,
        "ssim": ssim,
        "jm": joint_metric(psnr, ssim),
        "psnr_piq": psnr_piq,
        "ssim_piq": ssim_piq,
        "images": sum(len(r) for r in rows),
    }
