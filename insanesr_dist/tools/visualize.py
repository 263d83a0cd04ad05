"""`insanesr-dist visualize`: side-by-side panels like the seed report's figures.

LR enlarged (bicubic x4) | prediction | ground truth (when given), a title strip above with the file name
and the scores, a label strip below each image. Small images are enlarged by pixel repetition first, so
their pixels and the captions stay readable; every panel is written as a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import click
import cv2
import numpy as np
import torch

from insanesr_dist.atomic import atomic_path
from insanesr_dist.commands import Command, RenamedOption
from insanesr_dist.data.images import encode_png
from insanesr_dist.data.tensors import to_chw, to_hwc
from insanesr_dist.errors import UserError
from insanesr_dist.scoring.metrics import SSIM_WINDOW, joint_metric, psnr_ssim
from insanesr_dist.tools.evaluate import Partners, Stems, baseline, read_predictions

MIN_WIDTH = 256  # each image is shown at least this wide
STRIP = 26  # caption strip height in pixels
FONT = cv2.FONT_HERSHEY_SIMPLEX
BACKGROUND, INK = (32, 32, 32), (235, 235, 235)


def _caption(width: int, text: str) -> np.ndarray:
    """A dark strip `width` wide with `text` drawn in it, shrunk until it fits."""
    strip = np.full((STRIP, width, 3), BACKGROUND, np.uint8)
    scale = 0.5
    text_width = cv2.getTextSize(text, FONT, scale, 1)[0][0]
    if text_width > width - 8:
        scale *= (width - 8) / text_width
    cv2.putText(strip, text, (4, STRIP - 9), FONT, scale, INK, 1, cv2.LINE_AA)
    return strip


def panel(name: str, lr: np.ndarray, pred: np.ndarray, hr: np.ndarray | None = None) -> np.ndarray:
    """One RGB figure: title strip, the images side by side, a label strip under each image."""
    shown = [baseline(lr, "bicubic", pred.shape[0] // lr.shape[0]), pred] + ([hr] if hr is not None else [])
    labels = ["LR, bicubic x4", "prediction", "ground truth"]
    title = name
    if hr is not None and min(hr.shape[:2]) >= SSIM_WINDOW:
        scores = [psnr_ssim(image, hr)[0].tolist() for image in shown[:2]]
        labels[:2] = [f"{label}: PSNR {p:.2f} SSIM {s:.4f}" for label, (p, s) in zip(labels, scores)]
        (bp, bs), (pp, ps) = scores
        title += f"   JM {joint_metric(pp, ps):.2f} (bicubic {joint_metric(bp, bs):.2f})"
    zoom = math.ceil(MIN_WIDTH / pred.shape[1])
    columns = []
    for image, label in zip(shown, labels):
        image = np.repeat(np.repeat(image, zoom, 0), zoom, 1)
        columns.append(np.concatenate([image, _caption(image.shape[1], label)], 0))
    body = np.concatenate(columns, 1)
    return np.concatenate([_caption(body.shape[1], title), body], 0)


def _predictor(checkpoint: Path, tile: int, overlap: int, tta: bool, allow_pickle: bool = False):
    from insanesr_dist.inference.forward import model_forward
    from insanesr_dist.inference.tiles import self_ensemble, upscale_image
    from insanesr_dist.model.weights import load_model

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(checkpoint, allow_pickle=allow_pickle).to(device, memory_format=torch.channels_last).eval()
    forward = model_forward(model, device, "no")
    forward = self_ensemble(forward) if tta else forward

    def predict(_path: Path, lr: np.ndarray) -> np.ndarray:
        out = upscale_image(forward, to_chw(lr), tile=tile, overlap=overlap, batch_size=4, device=device)
        return to_hwc(out)

    return predict


def _stored(pred: Path):
    """Predictions read back from a folder or a CSV, found by id or (folder of .png files) by stem (see Stems)."""
    images = read_predictions(pred)
    stems = Stems(images)

    def lookup(lr_path: Path, _lr: np.ndarray) -> np.ndarray:
        image_id = stems.partner(lr_path.name, images.__contains__)
        if image_id is None:
            raise UserError(f"{pred}: no prediction for {lr_path.name}")
        return images[image_id]

    return lookup


@click.command("visualize", cls=Command, context_settings={"max_content_width": 110})
@click.option(
    "--lr-dir",
    "lr_dir",
    cls=RenamedOption,
    old_names=["--lr"],
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of LR images to show.",
)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    help="Predict with these weights (.safetensors, or an exported model folder) ...",
)
@click.option(
    "--pred",
    type=click.Path(exists=True, path_type=Path),
    help="... or show stored predictions: a folder of PNGs (as `predict --output-dir` writes) or a CSV.",
)
@click.option(
    "--hr",
    "hr_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of ground-truth HR images: adds a third image and PSNR/SSIM/JM captions.",
)
@click.option(
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the panel PNGs go (one per LR image, same name with .png).",
)
@click.option("--limit", default=8, show_default=True, type=click.IntRange(0), help="Panels to draw; 0 = all.")
@click.option("--tile", default=128, show_default=True, type=click.IntRange(0), help="As for predict.")
@click.option(
    "--tile-overlap", "overlap", default=16, show_default=True, type=click.IntRange(0), help="As for predict."
)
@click.option("--tta/--no-tta", default=False, show_default=True, help="As for predict.")
@click.option("--allow-pickle", is_flag=True, help="As for predict.")
def visualize_command(
    lr_dir: Path,
    checkpoint: Path | None,
    pred: Path | None,
    hr_dir: Path | None,
    output_dir: Path,
    limit: int,
    tile: int,
    overlap: int,
    tta: bool,
    allow_pickle: bool,
) -> None:
    """Draw LR (bicubic x4) | prediction | ground truth panels with file name and PSNR/SSIM captions.

    \b
    Examples:
      insanesr-dist visualize --checkpoint runs/a/best.safetensors --lr-dir val/LR --hr val/HR --output-dir figs
      insanesr-dist visualize --pred submission.csv --lr-dir data/test/LR --output-dir figs --limit 0
    """
    from insanesr_dist.data.images import decode_rgb
    from insanesr_dist.data.pairs import some_image_files

    if (checkpoint is None) == (pred is None):
        raise click.UsageError("give exactly one of --checkpoint (predict now) and --pred (stored predictions)")
    files = some_image_files(lr_dir)
    files = files[:limit] if limit else files
    predict = _predictor(checkpoint, tile, overlap, tta, allow_pickle) if checkpoint else _stored(pred)
    targets = Partners(hr_dir, "HR") if hr_dir else None
    for path in files:
        lr = decode_rgb(path.read_bytes(), str(path))
        image = predict(path, lr)
        if image.shape[0] % lr.shape[0] or image.shape[0] // lr.shape[0] != image.shape[1] // lr.shape[1]:
            raise UserError(
                f"{path}: prediction is {image.shape[1]}x{image.shape[0]}, "
                f"not a whole multiple of the {lr.shape[1]}x{lr.shape[0]} LR"
            )
        hr = targets.image(path.name) if targets else None
        if hr is not None and hr.shape != image.shape:
            raise UserError(
                f"{hr_dir / path.name}: HR is {hr.shape[1]}x{hr.shape[0]}, "
                f"prediction is {image.shape[1]}x{image.shape[0]}"
            )
        figure = panel(path.name, lr, image, hr)
        with atomic_path(output_dir / f"{path.stem}.png") as tmp:
            Path(tmp).write_bytes(encode_png(figure))
    click.echo(f"wrote {len(files)} panel(s) to {output_dir}")
