"""Submission CSVs: `id` (the test file name) and `Encoded Image` (base64 of a lossless PNG); write, read, check."""

from __future__ import annotations

import base64
import csv
import os
from collections.abc import Iterable
from pathlib import Path

import click
import cv2
import numpy as np

from insanesr_dist.atomic import atomic_path
from insanesr_dist.commands import Command, RenamedOption
from insanesr_dist.data.images import decode_png_base64, header_size, max_pixels, read_image, size_problem, sniff_format
from insanesr_dist.data.pairs import some_image_files
from insanesr_dist.errors import UserError

# Images are read through data.images and data.pairs only (no loaders, sources or splits): checking a CSV needs
# neither torch nor datasets, and its memory is measured (tests/test_bounded.py).

COLUMNS = ("id", "Encoded Image")
csv.field_size_limit(1 << 30)  # one cell holds a whole base64 PNG


def write_submission(path: str | os.PathLike, rows: Iterable[tuple[str, bytes]]) -> None:
    """Write (id, PNG bytes) rows as a submission CSV, atomically: a reader never sees half a file."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for image_id, png in rows:
            writer.writerow((image_id, base64.b64encode(png).decode("ascii")))


def read_submission(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Decode every row of a submission CSV: id -> HxWx3 uint8 RGB."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = tuple(next(reader, ()))
            if header != COLUMNS:
                raise UserError(f"{path}: header is {list(header)}, expected {list(COLUMNS)}")
            images = {}
            for line, row in enumerate(reader, start=2):
                if len(row) != 2:
                    raise UserError(f"{path}:{line}: expected 2 columns, got {len(row)}")
                if row[0] in images:
                    raise UserError(f"{path}:{line}: id {row[0]} appears twice")
                images[row[0]] = decode_png_base64(row[1], f"{path}:{line} ({row[0]})")
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot be read as a submission CSV ({e})") from None
    return images


# ---------------------------------------------------------------------------------------------
# Checking a submission before uploading it


def _row_problem(cells: list[str], lr_sizes: dict[str, tuple[int, int]], scale: int) -> str | None:
    """What is wrong with one data row (id already known to be an LR file), or None."""
    if len(cells) != len(COLUMNS):
        return f"has {len(cells)} columns, expected {len(COLUMNS)}"
    try:
        data = base64.b64decode(cells[1], validate=True)
    except ValueError:
        return "Encoded Image is not valid base64"
    if sniff_format(data) != "PNG":
        return "Encoded Image is not a PNG (no PNG signature)"
    # The size comes from the PNG header: a wrong (or absurd) size is reported without decoding, so only
    # an image of exactly the expected size is ever decoded.
    size = header_size(data, "PNG")
    if size is None:
        return "Encoded Image is a damaged PNG (no IHDR header)"
    height, width = lr_sizes[cells[0]]
    if size != (width * scale, height * scale):
        return (
            f"PNG is {size[0]}x{size[1]}, expected {width * scale}x{height * scale} ({scale}x the {width}x{height} LR)"
        )
    if too_big := size_problem(size):  # the right size, yet more than this machine is allowed to decode
        return f"PNG {too_big}"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        return "Encoded Image is a damaged PNG (cannot be decoded)"
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels != 3 or image.dtype != np.uint8:
        return f"PNG has {channels} channel(s) of {image.dtype}, expected 3 (RGB) of uint8"
    return None


def check_submission(path: str | os.PathLike, lr_dir: str | os.PathLike, scale: int = 4) -> tuple[list[str], int]:
    """Every problem of a submission CSV against its LR folder, one line each, and the number of rows.

    Rows are read and decoded one at a time, so a CSV of any size is checked in constant memory.
    """
    max_pixels()  # a bad $INSANESR_MAX_PIXELS is one line, not a problem on every row
    path, lr_dir = Path(path), Path(lr_dir)
    lr_files = some_image_files(lr_dir, "LR ")
    lr_sizes = {p.name: read_image(p).shape[:2] for p in lr_files}
    problems, first_line, rows = [], {}, 0
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise UserError(f"{path}: empty file (expected the header {','.join(COLUMNS)})")
            if tuple(header) != COLUMNS:
                problems.append(f"{path}:1: header is {','.join(header)}, expected {','.join(COLUMNS)}")
            for line, cells in enumerate(reader, start=2):
                rows += 1
                where = f"{path}:{line}"
                if not cells or not cells[0]:
                    problems.append(f"{where}: row has no id")
                    continue
                where += f" (id {cells[0]})"
                if cells[0] in first_line:
                    problems.append(f"{where}: duplicate row, id already on line {first_line[cells[0]]}")
                    continue
                first_line[cells[0]] = line
                if cells[0] not in lr_sizes:
                    problems.append(f"{where}: extra row, no LR image {cells[0]} in {lr_dir}")
                    continue
                problem = _row_problem(cells, lr_sizes, scale)
                if problem:
                    problems.append(f"{where}: {problem}")
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: cannot be read as a CSV ({e})") from None
    problems += [f"{path}: missing row for {lr_dir / name}" for name in lr_sizes if name not in first_line]
    return problems, rows


@click.command("check-submission", cls=Command)
@click.argument("csv_path", metavar="CSV", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--lr-dir",
    "lr_dir",
    cls=RenamedOption,
    old_names=["--lr"],
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The folder of LR test images the CSV predicts.",
)
@click.option("--scale", default=4, show_default=True, type=click.IntRange(1), help="Upscaling factor.")
def check_submission_command(csv_path: Path, lr_dir: Path, scale: int) -> None:
    """Check a submission CSV before uploading it: one row per LR image (id = file name), every row a
    base64 PNG of 3-channel uint8 pixels exactly SCALE x the LR size, no extra rows or columns.

    Prints one line per problem and exits 1 if there is any; otherwise a one-line OK summary.

    \b
    Example:
      insanesr-dist check-submission runs/a/submissions/epoch_010.csv --lr-dir data/test/LR
    """
    problems, rows = check_submission(csv_path, lr_dir, scale)
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise UserError(f"{csv_path}: {len(problems)} problem(s); fix them before uploading")
    click.echo(f"OK: {csv_path}: {rows} rows, one {scale}x RGB PNG for each LR image in {lr_dir}")
