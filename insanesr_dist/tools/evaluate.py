"""`insanesr-dist evaluate`: score predictions (a folder of PNGs or a submission CSV) against HR images with the
grader-exact metric, per image and on average, with bilinear and bicubic x4 of the LR images as baselines
(--lr-dir) and a per-image CSV report.

It scores files already written; training's in-loop validation, which scores the model's output directly, is
scoring/validation.py.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable
from pathlib import Path

import click
import cv2
import numpy as np

from insanesr_dist.atomic import atomic_path
from insanesr_dist.commands import Command, RenamedOption
from insanesr_dist.errors import UserError
from insanesr_dist.scoring.metrics import joint_metric, psnr_ssim

BASELINES = {"bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}


def _read_folder(folder: Path) -> dict[str, object]:
    from insanesr_dist.data.images import decode_rgb
    from insanesr_dist.data.pairs import some_image_files

    return {p.name: decode_rgb(p.read_bytes(), str(p)) for p in some_image_files(folder)}


def read_predictions(path: Path) -> dict[str, object]:
    """id -> HxWx3 uint8 RGB from a folder of images or a submission CSV."""
    from insanesr_dist.scoring.submission import read_submission

    if path.is_dir():
        return _read_folder(path)
    if path.suffix.lower() == ".csv" and path.is_file():
        return read_submission(path)
    raise UserError(f"{path}: not a folder of images nor a .csv submission")


class Stems:
    """Names by their stem, to pair an image with its partner: the entry of the same name, else the one entry
    with the same stem (`predict --output-dir` writes `a.jpg`'s prediction as `a.png`)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.by_stem: dict[str, list[str]] = {}
        for name in names:
            self.by_stem.setdefault(Path(name).stem, []).append(name)

    def partner(self, name: str, exists: Callable[[str], bool]) -> str | None:
        """`name` where `exists(name)`, else the one name with its stem; None when there is none or several."""
        if exists(name):
            return name
        same_stem = self.by_stem.get(Path(name).stem, [])
        return same_stem[0] if len(same_stem) == 1 else None


class Partners:
    """Finds the file in `folder` that belongs to a prediction id (see Stems)."""

    def __init__(self, folder: Path, what: str) -> None:
        from insanesr_dist.data.pairs import image_files

        self.folder, self.what = folder, what
        self.stems = Stems(p.name for p in image_files(folder))

    def path(self, image_id: str) -> Path:
        name = self.stems.partner(image_id, lambda name: (self.folder / name).is_file())
        if name is None:
            raise UserError(f"{self.folder / image_id}: no {self.what} image for prediction {image_id}")
        return self.folder / name

    def image(self, image_id: str) -> np.ndarray:
        from insanesr_dist.data.images import decode_rgb

        path = self.path(image_id)
        return decode_rgb(path.read_bytes(), str(path))


def baseline(lr: np.ndarray, kind: str, scale: int = 4) -> np.ndarray:
    """The LR image enlarged by OpenCV's bilinear or bicubic resize, uint8 as a submission would store it."""
    return cv2.resize(lr, (lr.shape[1] * scale, lr.shape[0] * scale), interpolation=BASELINES[kind])


def _scores(image: np.ndarray, truth: np.ndarray, prefix: str = "", name: str = "") -> dict[str, float]:
    try:
        psnr, ssim = psnr_ssim(image, truth)[0].tolist()
    except ValueError as e:  # smaller than the SSIM window
        raise UserError(f"{name}: cannot be scored ({e})") from None
    return {f"{prefix}psnr": psnr, f"{prefix}ssim": ssim, f"{prefix}jm": joint_metric(psnr, ssim)}


def score_predictions(pred: Path, hr: Path, lr: Path | None = None) -> list[dict[str, object]]:
    """Grader-exact PSNR, SSIM and JM of every prediction against its HR image, sorted by id; with `lr`,
    also those of the bilinear and bicubic x4 enlargements of the same LR image."""
    predictions = read_predictions(pred)
    targets = Partners(hr, "HR")
    sources = Partners(lr, "LR") if lr else None
    rows = []
    for image_id in sorted(predictions):
        image, truth = predictions[image_id], targets.image(image_id)
        if truth.shape != image.shape:
            raise UserError(
                f"{pred} ({image_id}): prediction is {image.shape[1]}x{image.shape[0]}, "
                f"HR is {truth.shape[1]}x{truth.shape[0]}"
            )
        row = {"id": image_id, **_scores(image, truth, name=f"{pred} ({image_id})")}
        if sources:
            small = sources.image(image_id)
            if (small.shape[0] * 4, small.shape[1] * 4) != truth.shape[:2]:
                raise UserError(
                    f"{sources.path(image_id)}: LR is {small.shape[1]}x{small.shape[0]}, "
                    f"HR is {truth.shape[1]}x{truth.shape[0]}; HR must be exactly 4x the LR"
                )
            for kind in BASELINES:
                row.update(_scores(baseline(small, kind), truth, f"{kind}_"))
        rows.append(row)
    return rows


def mean_scores(rows: list[dict[str, object]]) -> dict[str, float]:
    """Column means over images (JM averaged per image, as the grader does) plus the image count."""
    columns = [k for k in rows[0] if k != "id"]
    means = {k: float(np.mean([row[k] for row in rows])) for k in columns}
    return {**means, "images": len(rows)}


def evaluate_predictions(pred: Path, hr: Path) -> dict[str, float]:
    """Grader-exact mean PSNR, SSIM and JM of predictions against same-named HR images."""
    return mean_scores(score_predictions(pred, hr))


def write_report(path: Path, rows: list[dict[str, object]]) -> None:
    """One CSV line per image: id and every score, full precision (inf for identical images)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: v if k == "id" else repr(float(v)) for k, v in row.items()})


@click.command("evaluate", cls=Command)
@click.option(
    "--pred",
    "pred",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Predictions: a folder of PNGs or a submission CSV.",
)
@click.option(
    "--hr",
    "hr",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of ground-truth HR images with the same file names.",
)
@click.option(
    "--lr-dir",
    "lr_dir",
    cls=RenamedOption,
    old_names=["--lr"],
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Folder of the LR images: also score their bilinear and bicubic x4 enlargements, as baselines.",
)
@click.option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write per-image scores to this CSV (id, psnr, ssim, jm, and the baselines' with --lr-dir).",
)
def evaluate_command(pred: Path, hr: Path, lr_dir: Path | None, report: Path | None) -> None:
    """Score predictions against HR images with the competition's metric (grader-exact).

    \b
    Examples:
      insanesr-dist evaluate --pred runs/x/submissions/epoch_010.csv --hr data/val/HR
      insanesr-dist evaluate --pred pred/ --hr data/val/HR --lr-dir data/val/LR --report scores.csv
    """
    rows = score_predictions(pred, hr, lr_dir)
    r = mean_scores(rows)
    click.echo(f"images {r['images']}  PSNR {r['psnr']:.6f}  SSIM {r['ssim']:.6f}  JM {r['jm']:.6f}")
    for kind in BASELINES if lr_dir else ():
        b = {k: r[f"{kind}_{k}"] for k in ("psnr", "ssim", "jm")}
        click.echo(
            f"{kind:<8} PSNR {b['psnr']:.6f}  SSIM {b['ssim']:.6f}  JM {b['jm']:.6f}  "
            f"gain: JM {r['jm'] - b['jm']:+.4f}  PSNR {r['psnr'] - b['psnr']:+.4f}  "
            f"SSIM {r['ssim'] - b['ssim']:+.5f}"
        )
    if report:
        write_report(report, rows)
        click.echo(f"per-image scores: {report}")
