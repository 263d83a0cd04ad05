"""Scoring: sharded validation inside training, and the `evaluate` command on PNG folders or CSVs."""

from __future__ import annotations

from pathlib import Path

import click
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from .errors import UserError
from .metrics import joint_metric, piq_psnr_ssim, psnr_ssim, to_uint8
from .predict import Forward


@torch.no_grad()
def score_images(forward: Forward, loader: DataLoader, accelerator: Accelerator) -> dict[str, float]:
    """Mean grader PSNR/SSIM/JM (and piq's PSNR/SSIM) over an (index, LR, HR) loader.

    Every rank scores its shard on uint8-quantized outputs; per-image scores are gathered with
    `gather_for_metrics`, which drops the samples repeated to even out the last batch.
    """
    rows = []
    for _, lr, hr in loader:
        sr = to_uint8(forward(lr.float() / 255))
        scores = torch.cat([psnr_ssim(sr, hr), piq_psnr_ssim(sr, hr)], 1)
        rows.append(accelerator.gather_for_metrics(scores))
    psnr, ssim, psnr_piq, ssim_piq = torch.cat(rows).mean(0).tolist()
    return {"psnr": psnr, "ssim": ssim, "jm": joint_metric(psnr, ssim), "psnr_piq": psnr_piq,
            "ssim_piq": ssim_piq, "images": sum(len(r) for r in rows)}


def _read_folder(folder: Path) -> dict[str, object]:
    from .data import IMAGE_SUFFIXES, decode_rgb

    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{folder}: no images found")
    return {p.name: decode_rgb(p.read_bytes(), str(p)) for p in files}


def read_predictions(path: Path) -> dict[str, object]:
    """id -> HxWx3 uint8 RGB from a folder of images or a submission CSV."""
    from .submission import read_submission

    if path.is_dir():
        return _read_folder(path)
    if path.suffix.lower() == ".csv" and path.is_file():
        return read_submission(path)
    raise UserError(f"{path}: not a folder of images nor a .csv submission")


def evaluate_predictions(pred: Path, hr: Path) -> dict[str, float]:
    """Grader-exact mean PSNR, SSIM and JM of predictions against same-named HR images."""
    from .data import decode_rgb

    predictions = read_predictions(pred)
    results = []
    for image_id, image in predictions.items():
        target = hr / image_id
        if not target.is_file():
            raise UserError(f"{target}: no HR image for prediction {image_id}")
        truth = decode_rgb(target.read_bytes(), str(target))
        if truth.shape != image.shape:
            raise UserError(f"{pred} ({image_id}): prediction is {image.shape[1]}x{image.shape[0]}, "
                            f"HR is {truth.shape[1]}x{truth.shape[0]}")
        results.append(psnr_ssim(image, truth)[0])
    psnr, ssim = torch.stack(results).mean(0).tolist()
    return {"psnr": psnr, "ssim": ssim, "jm": joint_metric(psnr, ssim), "images": len(results)}


@click.command("evaluate")
@click.option("--pred", "pred", required=True, type=click.Path(exists=True, path_type=Path),
              help="Predictions: a folder of PNGs or a submission CSV.")
@click.option("--hr", "hr", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of ground-truth HR images with the same file names.")
def evaluate_command(pred: Path, hr: Path) -> None:
    """Score predictions against HR images with the competition's metric (grader-exact).

    \b
    Example:
      insanesr-dist evaluate --pred runs/x/submissions/epoch_010.csv --hr data/val/HR
    """
    r = evaluate_predictions(pred, hr)
    click.echo(f"images {r['images']}  PSNR {r['psnr']:.6f}  SSIM {r['ssim']:.6f}  JM {r['jm']:.6f}")


