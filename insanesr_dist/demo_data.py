"""The embedded demo dataset: procedurally drawn game-like frames, used when training gets no `--data`.

Each frame mixes tiled backgrounds, sky gradients, outlined sprites, nearest-upscaled pixel art and
HUD text, the content a gaming SR model has to handle. A frame is a pure function of (seed, index):
only integer pixel maths and OpenCV's integer rasterisers are used (no sin/exp, whose numpy SIMD
variants can differ between CPUs), so every machine draws the same pixels.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import cv2
import numpy as np

DEMO_VERSION = 1  # bump whenever the frames change: it names the cache folder
DEFAULT_NUM_TRAIN, DEFAULT_NUM_TEST, DEFAULT_HR_SIZE = 200, 20, 256

# Hershey fonts and a scale factor each: PLAIN and COMPLEX_SMALL draw smaller glyphs per unit scale.
_FONTS = {cv2.FONT_HERSHEY_SIMPLEX: 1.0, cv2.FONT_HERSHEY_PLAIN: 1.6, cv2.FONT_HERSHEY_DUPLEX: 1.0,
          cv2.FONT_HERSHEY_COMPLEX: 1.0, cv2.FONT_HERSHEY_TRIPLEX: 1.0, cv2.FONT_HERSHEY_COMPLEX_SMALL: 1.4}
_HUD_WORDS = ("SCORE", "COINS", "TIME", "LEVEL", "GOLD", "XP")
_DIALOGUE = ("PRESS START", "GAME OVER", "You found a key!", "LEVEL CLEAR", "Save game?", "READY")


def _color(rng, lo=0, hi=256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def _shade(color, num: int, den: int) -> tuple[int, int, int]:
    """Scale a colour by num/den in integers (num > den lightens), clipped to 255."""
    return tuple(min(255, c * num // den) for c in color)


def _gradient(h: int, w: int, top, bottom) -> np.ndarray:
    # Integer interpolation: exact everywhere, unlike rounding a float blend.
    t, d = np.arange(h, dtype=np.int32)[:, None, None], max(h - 1, 1)
    col = (np.array(top, np.int32) * (d - t) + np.array(bottom, np.int32) * t) // d
    return np.broadcast_to(col, (h, w, 3)).astype(np.uint8)


def _tiled(rng, h: int, w: int, t: int, kind: str) -> np.ndarray:
    """An h x w area covered by one repeating t x t tile: checkerboard, brick or speckled ground."""
    base = _color(rng, 40, 220)
    tile = np.full((2 * t, 2 * t, 3) if kind == "checker" else (t, t, 3), base, np.uint8)
    half = t // 2
    if kind == "checker":
        tile[:t, :t] = tile[t:, t:] = _shade(base, 3, 4)
    elif kind == "brick":
        mortar = _shade(base, 1, 2)
        tile[0] = tile[half] = mortar                          # horizontal mortar lines
        tile[:half, 0] = tile[half:, half] = mortar            # staggered vertical joints
        tile[1, 1:] = tile[half + 1, 1:] = _shade(base, 5, 4)  # lit top edge of each brick
    else:  # speckles in 2x2 blocks (t is even), like low-res grass/dirt tile art
        r = np.repeat(np.repeat(rng.random((half, half)), 2, 0), 2, 1)
        tile[r < 0.20] = _shade(base, 3, 4)
        tile[r < 0.07] = _shade(base, 5, 4)
    reps = (-(-h // tile.shape[0]), -(-w // tile.shape[1]), 1)
    return np.tile(tile, reps)[:h, :w]


def _background(img: np.ndarray, rng, t: int) -> None:
    size = img.shape[0]
    if rng.random() < 0.5:
        # Side-scroller: sky gradient, sun, clouds, tiled ground under a grass strip, platforms.
        hor = int(size * rng.uniform(0.55, 0.8))
        img[:hor] = _gradient(hor, size, _color(rng, 0, 120), _color(rng, 120, 256))
        sun = (int(rng.integers(0, size)), int(rng.integers(0, hor // 2 + 1)))
        r = int(rng.integers(size // 16, size // 8))
        cv2.circle(img, sun, r, (255, 230, int(rng.integers(60, 200))), -1, cv2.LINE_AA)
        for _ in range(int(rng.integers(1, 4))):
            cx, cy = int(rng.integers(0, size)), int(rng.integers(0, hor // 2 + 1))
            for dx in (-t, 0, t):  # three overlapping ellipses: a flat cartoon cloud
                cv2.ellipse(img, (cx + dx, cy), (t, t * 2 // 3), 0, 0, 360, (250, 250, 250), -1)
        img[hor:] = _tiled(rng, size - hor, size, t, str(rng.choice(["brick", "grass", "checker"])))
        img[hor:hor + max(2, t // 3)] = _color(rng, 0, 100) + np.array([0, 120, 0])
        for _ in range(int(rng.integers(0, 3))):
            n, x = int(rng.integers(2, 6)), int(rng.integers(0, size))
            y = int(rng.integers(hor // 3, max(hor // 3 + 1, hor - t)))
            plat = _tiled(rng, t, n * t, t, "brick")[:, : size - x]
            img[y:y + t, x:x + plat.shape[1]] = plat
    else:
        # Top-down: tiled floor, a brick wall band, sometimes a checkered room with a border.
        img[:] = _tiled(rng, size, size, t, str(rng.choice(["grass", "checker"])))
        wall = int(rng.integers(1, 3)) * t
        img[:wall] = _tiled(rng, wall, size, t, "brick")
        if rng.random() < 0.5:
            x0, y0 = (int(v) for v in rng.integers(0, size // 2, 2))
            x1, y1 = (int(v) for v in rng.integers(size // 2, size, 2))
            img[y0:y1, x0:x1] = _tiled(rng, y1 - y0, x1 - x0, t, "checker")
            cv2.rectangle(img, (x0, y0), (x1, y1), (30, 20, 20), max(1, t // 8))


def _polygon(cx: int, cy: int, r: int, n: int, phase: int) -> np.ndarray:
    # ellipse2Poly uses OpenCV's own sine table (no libm); a 1024 radius avoids merged vertices.
    unit = cv2.ellipse2Poly((0, 0), (1024, 1024), phase, 0, 360, 360 // n)[:n].astype(np.int64)
    return (unit * r // 1024 + (cx, cy)).astype(np.int32)


def _shape_sprite(img: np.ndarray, rng) -> None:
    """A square, circle, regular polygon or star: flat or gradient fill, dark 1-2 px outline."""
    size = img.shape[0]
    r = int(rng.integers(max(3, size // 32), max(4, size // 8)))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    kind, n, fill = int(rng.integers(0, 4)), int(rng.choice([3, 4, 5, 6, 8])), _color(rng, 50, 256)
    pts = None  # kind 1: circle
    if kind == 0:
        pts = np.array([[cx - r, cy - r], [cx + r, cy - r], [cx + r, cy + r], [cx - r, cy + r]], np.int32)
    elif kind == 2:
        pts = _polygon(cx, cy, r, n, -90)
    elif kind == 3:  # star: outer points interleaved with an inner polygon turned half a step
        pts = np.stack([_polygon(cx, cy, r, n, -90), _polygon(cx, cy, r // 2, n, -90 + 180 // n)], 1)
        pts = pts.reshape(-1, 2)
    mask = np.zeros(img.shape[:2], np.uint8)
    if pts is None:
        cv2.circle(mask, (cx, cy), r, 255, -1)
    else:
        cv2.fillPoly(mask, [pts], 255)
    if rng.random() < 0.5:
        shaded = _gradient(size, size, _shade(fill, 5, 4), _shade(fill, 1, 2))
        np.copyto(img, shaded, where=mask[..., None] > 0)
    else:
        img[mask > 0] = fill
    outline, th = _shade(fill, 1, 4), int(rng.integers(1, 3))
    line = cv2.LINE_AA if rng.random() < 0.5 else cv2.LINE_8
    if pts is None:
        cv2.circle(img, (cx, cy), r, outline, th, line)
    else:
        cv2.polylines(img, [pts], True, outline, th, line)


def _pixel_art(img: np.ndarray, rng) -> None:
    """A mirrored little sprite (invader style) with a dark outline, upscaled nearest-neighbour."""
    size, g = img.shape[0], int(rng.integers(6, 13))
    main = _color(rng, 60, 256)
    palette = np.array([(0, 0, 0), (20, 12, 28), main, _shade(main, 2, 3), _color(rng, 128, 256)], np.uint8)
    # Index 0 = transparent, 1 = outline, 2 = body, 3 = shaded lower body, 4 = sparse accents.
    filled = rng.random((g, (g + 1) // 2)) < 0.55
    filled[g // 4: 3 * g // 4, -1] = True  # a solid spine keeps the two mirrored halves joined
    half = np.where(filled, 2, 0)
    half[2 * g // 3:][filled[2 * g // 3:]] = 3
    half[filled & (rng.random(filled.shape) < 0.1)] = 4
    grid = np.concatenate([half, half[:, : g // 2][:, ::-1]], 1)
    body = np.pad(grid > 0, 1)
    grid[(grid == 0) & (body[:-2, 1:-1] | body[2:, 1:-1] | body[1:-1, :-2] | body[1:-1, 2:])] = 1
    k = max(1, round(int(rng.integers(2, 5)) * size / 256))
    grid = np.repeat(np.repeat(grid, k, 0), k, 1)
    h, w = grid.shape
    y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
    np.copyto(img[y:y + h, x:x + w], palette[grid], where=grid[..., None] > 0)


def _text(img, s: str, org, font: int, scale: float, color) -> None:
    # A 1 px drop shadow keeps HUD text readable on any background, as games do.
    cv2.putText(img, s, (org[0] + 1, org[1] + 1), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, s, org, font, scale, color, 1, cv2.LINE_AA)


def _hud(img: np.ndarray, rng) -> None:
    size = img.shape[0]
    u = size / 256
    m, font = max(1, round(6 * u)), int(rng.choice(list(_FONTS)))  # margin, HUD font
    scale = max(0.2, float(rng.uniform(0.35, 0.55)) * u) * _FONTS[font]
    # Health bar: dark background, partly filled, segmented, light frame.
    bw, bh = int(rng.integers(60, 110) * u), max(3, round(8 * u))
    full = int(bw * rng.uniform(0.15, 1.0))
    cv2.rectangle(img, (m, m), (m + bw, m + bh), (60, 10, 10), -1)
    cv2.rectangle(img, (m, m), (m + full, m + bh), _color(rng) if rng.random() < 0.3 else (40, 200, 60), -1)
    for sx in range(m, m + bw, max(2, round(10 * u))):
        cv2.line(img, (sx, m), (sx, m + bh), (0, 0, 0), 1)
    cv2.rectangle(img, (m, m), (m + bw, m + bh), (250, 250, 250), 1)
    _text(img, "HP", (m, m + bh + max(4, round(14 * u))), font, scale, (255, 255, 255))
    # Score box, right-aligned: dark panel, light border, zero-padded counter.
    label = f"{rng.choice(_HUD_WORDS)} {int(rng.integers(0, 1_000_000)):06d}"
    (tw, th), base = cv2.getTextSize(label, font, scale, 1)
    x0, y1 = size - 3 * m - tw, 2 * m + th + base
    cv2.rectangle(img, (x0, m), (size - m, y1), _color(rng, 0, 60), -1)
    cv2.rectangle(img, (x0, m), (size - m, y1), (220, 220, 220), 1)
    _text(img, label, (x0 + m, m + th + m // 2), font, scale, (255, 230, 90))
    if rng.random() < 0.4:  # dialogue box: darkened panel, double border, one line of text
        y0 = int(size * 0.72)
        img[y0:size - m, m:size - m] //= 3
        cv2.rectangle(img, (m, y0), (size - m - 1, size - m - 1), (240, 240, 240), 1)
        cv2.rectangle(img, (m + 2, y0 + 2), (size - m - 3, size - m - 3), (120, 120, 200), 1)
        font2 = int(rng.choice(list(_FONTS)))
        _text(img, str(rng.choice(_DIALOGUE)), (3 * m, (size + y0) // 2), font2,
              scale / _FONTS[font] * _FONTS[font2] * 1.2, (255, 255, 255))


def _render_frame(rng: np.random.Generator, size: int) -> np.ndarray:
    """One RGB uint8 size x size frame; every random choice comes from `rng`."""
    img = np.zeros((size, size, 3), np.uint8)
    t = 2 * max(2, round(int(rng.choice([16, 24, 32])) * size / 512))  # even tile size
    _background(img, rng, t)
    for _ in range(int(rng.integers(2, 6))):
        _shape_sprite(img, rng)
    for _ in range(int(rng.integers(2, 5))):
        _pixel_art(img, rng)
    _hud(img, rng)
    return img


def _layout(num_train: int, num_test: int) -> dict[str, list[str]]:
    """Folder -> file names; test ids continue after the train ids so they never collide."""
    train = [f"{i:05d}.png" for i in range(num_train)]
    return {"train/LR": train, "train/HR": train,
            "test/LR": [f"{i:05d}.png" for i in range(num_train, num_train + num_test)]}


def _is_complete(root: Path, num_train: int, num_test: int) -> bool:
    try:
        layout = _layout(num_train, num_test).items()
        return all(set(os.listdir(root / sub)) >= set(names) for sub, names in layout)
    except OSError:
        return False


def _is_nonempty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def _imwrite(path: Path, rgb: np.ndarray) -> None:
    # Frames are drawn in RGB and OpenCV writes BGR: flip so the colours on disk are as drawn.
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"could not write {path}")


def _write(out_dir: Path, num_train: int, num_test: int, hr_size: int, seed: int) -> bool:
    """Generate into a private sibling temp dir, then rename it to `out_dir` in one step.

    The rename makes the dataset appear complete or not at all. Returns False, with the temp dir
    removed, when `out_dir` was already non-empty at rename time (another process got there first).
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # pid plus a random suffix: unique even across hosts sharing one cache directory.
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        for sub in _layout(num_train, num_test):
            (tmp / sub).mkdir(parents=True)
        for index in range(num_train + num_test):
            # A (seed, index) seed sequence gives each frame its own stream, whereas with
            # seed + index, seed 1's frame 0 would equal seed 0's frame 1.
            hr = _render_frame(np.random.default_rng((seed, index)), hr_size)
            lr = cv2.resize(hr, (hr_size // 4, hr_size // 4), interpolation=cv2.INTER_CUBIC)
            name = f"{index:05d}.png"
            if index < num_train:
                _imwrite(tmp / "train" / "HR" / name, hr)
                _imwrite(tmp / "train" / "LR" / name, lr)
            else:
                _imwrite(tmp / "test" / "LR" / name, lr)
        try:
            os.rename(tmp, out_dir)  # POSIX: replaces an empty dir, fails on a non-empty one
        except OSError:
            if _is_nonempty(out_dir):
                return False
            raise
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left to remove after a successful rename


def write_demo_data(out_dir: str | os.PathLike, *, num_train: int = DEFAULT_NUM_TRAIN,
                    num_test: int = DEFAULT_NUM_TEST, hr_size: int = DEFAULT_HR_SIZE, seed: int = 0) -> Path:
    """Write out_dir/train/{LR,HR}/NNNNN.png and out_dir/test/LR/NNNNN.png; return Path(out_dir).

    HR frames are hr_size x hr_size RGB, LR frames their bicubic /4 downscales. Raises ValueError
    for a bad size or count and FileExistsError if `out_dir` exists and is not an empty directory.
    """
    if hr_size < 16 or hr_size % 4:
        raise ValueError(f"hr_size must be a multiple of 4 and at least 16, got {hr_size}")
    if num_train < 1 or num_test < 0:
        raise ValueError(f"need num_train >= 1 and num_test >= 0, got {num_train} and {num_test}")
    out_dir = Path(out_dir)
    if _is_nonempty(out_dir):
        raise FileExistsError(f"{out_dir} already exists and is not empty; pick a new demo data folder")
    if not _write(out_dir, num_train, num_test, hr_size, seed):
        raise FileExistsError(f"{out_dir} was filled by another process while demo data was being written")
    return out_dir


def demo_data_dir() -> Path:
    """The demo data cache: $XDG_CACHE_HOME (else ~/.cache)/insanesr-dist/demo-v{DEMO_VERSION}."""
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache) if cache else Path.home() / ".cache") / "insanesr-dist" / f"demo-v{DEMO_VERSION}"


def ensure_demo_data() -> Path:
    """Return demo_data_dir(), first generating the default demo set there if it is missing.

    Safe for several processes at once (e.g. training ranks): each generates into its own temp
    dir, the first rename wins, and the others discard their copy and use the winner's.
    """
    out_dir, counts = demo_data_dir(), (DEFAULT_NUM_TRAIN, DEFAULT_NUM_TEST)
    if _is_complete(out_dir, *counts):
        return out_dir
    if _is_nonempty(out_dir):
        raise FileExistsError(f"{out_dir} is not a complete demo dataset; delete it to regenerate it")
    if not _write(out_dir, *counts, DEFAULT_HR_SIZE, seed=0) and not _is_complete(out_dir, *counts):
        raise FileExistsError(f"{out_dir} was filled by another process but is not a complete demo dataset")
    return out_dir
