"""Submission CSVs: `id` (the test file name) and `Encoded Image` (base64 of a lossless PNG)."""

from __future__ import annotations

import base64
import csv
import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from .atomic import atomic_path
from .errors import UserError

COLUMNS = ("id", "Encoded Image")
csv.field_size_limit(1 << 30)  # one cell holds a whole base64 PNG


def encode_png(rgb: np.ndarray) -> bytes:
    """HxWx3 uint8 RGB -> PNG bytes (colours stored as RGB, as any viewer expects)."""
    ok, buffer = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def decode_png_base64(text: str, name: str) -> np.ndarray:
    from .data import decode_rgb

    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        raise UserError(f"{name}: not valid base64") from None
    return decode_rgb(data, name)


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
