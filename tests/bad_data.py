"""A generator of broken datasets: every bad case `check-data` and the trainer must handle, beside
enough good pairs to train on. Each case is a real file on disk, written the way real tools write it.

`make_bad_folder(root)` returns `{case: Case}`: the file that carries the problem, a phrase the
finding must contain, and its kind (bad / converted / note / ignored).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

PATCH = 8  # the --patch-size the cases are built around (LR images of 12x12 fit it)


@dataclass
class Case:
    path: Path
    needle: str
    kind: str


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header declaring width x height in front of an 8x8 image's data: a few hundred bytes that
    a decoder would size a width*height*3 buffer for (a real all-black 20000x20000 PNG is 1.1 MB of zlib)."""
    png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    ihdr = b"IHDR" + struct.pack(">II", width, height) + png[24:29]  # bit depth, colour type, ...
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def _rgb(rng, h, w):
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(path: Path, array: np.ndarray) -> None:
    """cv2 writes gray (2-D), BGR, BGRA and 16-bit arrays as the matching PNG type."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix if path.suffix.lower() in (".png", ".jpg", ".tif") else ".png", array)
    assert ok
    path.write_bytes(buf.tobytes())


def _pair(root: Path, name: str, lr: np.ndarray, hr: np.ndarray) -> tuple[Path, Path]:
    lr_path, hr_path = root / "train" / "LR" / name, root / "train" / "HR" / name
    _png(lr_path, lr)
    _png(hr_path, hr)
    return lr_path, hr_path


def _up(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(a, 4, 0), 4, 1)


def make_bad_folder(root: Path, *, good: int = 6, seed: int = 0) -> dict[str, Case]:
    rng = np.random.default_rng(seed)
    for i in range(good):
        lr = _rgb(rng, 12, 12)
        _pair(root, f"good_{i}.png", lr, _up(lr))
    (root / "test" / "LR").mkdir(parents=True, exist_ok=True)
    _png(root / "test" / "LR" / "t0.png", _rgb(rng, 12, 12))
    lr_dir, hr_dir = root / "train" / "LR", root / "train" / "HR"
    cases: dict[str, Case] = {}

    # undecodable, empty and truncated files
    lr, _ = _pair(root, "garbage.png", _rgb(rng, 12, 12), _rgb(rng, 48, 48))
    lr.write_bytes(b"this is not a png at all")
    cases["undecodable"] = Case(lr, "not an image", "bad")
    lr, _ = _pair(root, "empty.png", _rgb(rng, 12, 12), _rgb(rng, 48, 48))
    lr.write_bytes(b"")
    cases["empty file"] = Case(lr, "empty file", "bad")
    lr, _ = _pair(root, "cut.png", _rgb(rng, 12, 12), _rgb(rng, 48, 48))
    lr.write_bytes(lr.read_bytes()[:60])
    cases["truncated png"] = Case(lr, "truncated PNG", "bad")
    _, hr = _pair(root, "cutj.jpg", _rgb(rng, 12, 12), _rgb(rng, 48, 48))
    hr.write_bytes(hr.read_bytes()[:-300])
    cases["truncated jpeg"] = Case(hr, "truncated JPEG", "bad")
    lr, _ = _pair(root, "float.tif", _rgb(rng, 12, 12), _rgb(rng, 48, 48))
    _, buf = cv2.imencode(".tif", rng.random((12, 12, 3)).astype(np.float32))
    lr.write_bytes(buf.tobytes())
    cases["float pixels"] = Case(lr, "float32 pixels", "bad")
    lr, _ = _pair(root, "bomb.png", _rgb(rng, 12, 12), _rgb(rng, 48, 48))
    lr.write_bytes(bomb_png())
    cases["decompression bomb"] = Case(lr, "image is 20000x20000 (400,000,000 pixels), above the limit", "bad")

    # non-image files are ignored
    (lr_dir / "notes.txt").write_text("not an image")
    cases["non-image file"] = Case(lr_dir / "notes.txt", "not an image file name", "ignored")

    # partners
    _png(lr_dir / "lonely.png", _rgb(rng, 12, 12))
    cases["LR without HR"] = Case(lr_dir / "lonely.png", "no partner", "bad")
    _png(hr_dir / "orphan.png", _rgb(rng, 48, 48))
    cases["HR without LR"] = Case(hr_dir / "orphan.png", "no partner", "bad")
    _png(lr_dir / "stem.png", _rgb(rng, 12, 12))
    _png(hr_dir / "stem.jpg", _rgb(rng, 48, 48))
    cases["partner by stem only"] = Case(lr_dir / "stem.png", "it has stem.jpg", "bad")

    # sizes
    _, hr = _pair(root, "offbyone.png", _rgb(rng, 12, 12), _rgb(rng, 48, 47))
    cases["off-by-one"] = Case(hr, "width off by -1 px", "bad")
    _, hr = _pair(root, "notx4.png", _rgb(rng, 12, 12), _rgb(rng, 24, 24))
    cases["not x4"] = Case(hr, "exactly 4x", "bad")
    lr, _ = _pair(root, "small.png", _rgb(rng, 4, 6), _up(_rgb(rng, 4, 6)))
    cases["smaller than the patch"] = Case(lr, f"smaller than --patch-size {PATCH}", "bad")
    _, hr = _pair(root, "tiny.png", _rgb(rng, 1, 1), _up(_rgb(rng, 1, 1)))
    cases["smaller than SSIM window"] = Case(hr, "SSIM window", "bad")

    # ids that collide up to case or extension
    lr = _rgb(rng, 12, 12)
    _pair(root, "dup.png", lr, _up(lr))
    lr_dup, _ = _pair(root, "DUP.png", lr, _up(lr))
    cases["duplicate id"] = Case(lr_dup, "same id as dup.png", "bad")

    # file names that are not valid UTF-8 (Linux allows any bytes but / and NUL)
    raw = os.fsencode(lr_dir) + b"/bad\xffname.png"
    _, buf = cv2.imencode(".png", _rgb(rng, 12, 12))
    with open(raw, "wb") as f:
        f.write(buf.tobytes())
    cases["non-UTF-8 name"] = Case(Path(os.fsdecode(raw)), "not valid UTF-8", "bad")

    # converted: gray, gray+alpha, RGBA, 16-bit, palette
    g = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    lr, _ = _pair(root, "gray.png", g, _up(g))
    cases["grayscale"] = Case(lr, "gray -> RGB", "converted")
    a = _rgb(rng, 12, 12)
    rgba = np.dstack([a, rng.integers(0, 256, (12, 12), dtype=np.uint8)])
    lr, _ = _pair(root, "alpha.png", rgba, _up(rgba))
    cases["RGBA"] = Case(lr, "alpha dropped", "converted")
    w = rng.integers(0, 65536, (12, 12, 3), dtype=np.uint16)
    lr, _ = _pair(root, "deep.png", w, _up(w))
    cases["16-bit"] = Case(lr, "16-bit -> 8-bit", "converted")
    p = Image.fromarray(_rgb(rng, 12, 12)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p.save(lr_dir / "pal.png")
    p.resize((48, 48), Image.Resampling.NEAREST).save(hr_dir / "pal.png")
    cases["palette"] = Case(lr_dir / "pal.png", "palette -> RGB", "converted")

    # accepted as they are
    lr = _rgb(rng, 12, 12)
    lr_path, _ = _pair(root, "photo.jpg", lr, _up(lr))
    cases["JPEG among PNGs"] = Case(lr_path, "JPEG among PNGs", "note")
    lr_path, hr_path = _pair(root, "named.png", lr, _up(lr))
    for path, small in ((lr_path, lr), (hr_path, _up(lr))):
        _, buf = cv2.imencode(".jpg", small)
        path.write_bytes(buf.tobytes())
    cases["JPEG named .png"] = Case(lr_path, "is a JPEG file named .png", "note")
    lr_path, _ = _pair(root, "Bühne 01.png", lr, _up(lr))
    cases["unicode and spaced name"] = Case(lr_path, "spaces and non-ASCII", "note")
    return cases


def make_empty_folder(root: Path) -> Path:
    (root / "train" / "LR").mkdir(parents=True)
    (root / "train" / "HR").mkdir(parents=True)
    return root
