"""What a run reports, written by the main process only: TensorBoard, metrics.jsonl, console lines."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from .atomic import append_line_atomic
from .metrics import to_uint8
from .predict import Forward

VAL_SCALARS = ("psnr", "ssim", "jm", "psnr_piq", "ssim_piq")


def epoch_line(record: dict, epochs: int, improved: bool) -> str:
    return (
        f"epoch {record['epoch']}/{epochs}  step {record['step']}  loss {record['train_loss']:.6f}  "
        f"PSNR {record['psnr']:.4f}  SSIM {record['ssim']:.4f}  JM {record['jm']:.4f}  "
        f"{record['seconds']:.1f}s  {record['samples_per_s']:.1f} samples/s" + ("  * best" if improved else "")
    )


def log_epoch(accelerator: Accelerator, out_dir: Path, record: dict, epochs: int, improved: bool) -> None:
    """Main process: one metrics.jsonl line, the epoch's TensorBoard scalars and a summary line."""
    if not accelerator.is_main_process:
        return
    # JSON has no infinity: a perfect image's PSNR is written as null.
    clean = {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in record.items()}
    append_line_atomic(out_dir / "metrics.jsonl", json.dumps(clean))
    scalars = {f"val/{k}": record[k] for k in VAL_SCALARS}
    scalars["perf/samples_per_s"] = record["samples_per_s"]
    scalars["perf/epoch_seconds"] = record["seconds"]
    accelerator.log(scalars, step=record["step"])
    accelerator.print(epoch_line(record, epochs, improved))


@torch.no_grad()
def log_panels(accelerator: Accelerator, forward: Forward, images: list, step: int) -> None:
    """Main process: one TensorBoard image per fixed validation image, bilinear LR | SR | HR."""
    if not accelerator.is_main_process or not images:
        return
    writer = accelerator.get_tracker("tensorboard", unwrap=True)
    for image_id, lr, hr in images:
        lr = lr[None].to(accelerator.device).float() / 255
        upsampled = F.interpolate(lr, size=hr.shape[-2:], mode="bilinear", align_corners=False)
        panel = torch.cat([to_uint8(upsampled), to_uint8(forward(lr)), hr[None].to(accelerator.device)], -1)
        writer.add_image(f"panels/{image_id}", np.ascontiguousarray(panel[0].cpu().numpy()), step, dataformats="CHW")
    writer.flush()
