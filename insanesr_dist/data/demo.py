"""The embedded demo dataset: procedurally drawn game-like frames, used when training gets no `--data`.

Each frame mixes tiled backgrounds, sky gradients, outlined sprites, nearest-upscaled pixel art and
HUD text, the content a gaming SR model has to handle. A frame is a pure function of (seed, index):
only integer pixel maths and OpenCV's integer rasterisers are used (no sin/exp, whose numpy SIMD
variants can differ between CPUs), so every machine draws the same pixels, whatever the number of
worker processes drawing them.

Frames may be wide (h x w, e.g. DIV2K's 1344 x 2040): object sizes follow the short edge s = min(h, w),
positions span the whole frame, and object counts grow with the area h*w / s^2. A square frame draws
exactly what it drew before non-square frames existed (same random draws, same pixels).
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import re
import secrets
import shutil
from pathlib import Path

import cv2
import numpy as np

from insanesr_dist.data.workers import unblock_signals

DEMO_VERSION = 1  # bump whenever the frames change: it names the cache folder
DEFAULT_NUM_TRAIN, DEFAULT_NUM_TEST, DEFAULT_HR_SIZE = 200, 20, 256

# Hershey fonts and a scale factor each: PLAIN and COMPLEX_SMALL draw smaller glyphs per unit scale.
_FONTS = {
    cv2.FONT_HERSHEY_SIMPLEX: 1.0,
    cv2.FONT_HERSHEY_PLAIN: 1.6,
    cv2.FONT_HERSHEY_DUPLEX: 1.0,
    cv2.FONT_HERSHEY_COMPLEX: 1.0,
    cv2.FONT_HERSHEY_TRIPLEX: 1.0,
    cv2.FONT_HERSHEY_COMPLEX_SMALL: 1.4,
}
_HUD_WORDS = ("SCORE", "COINS", "TIME", "LEVEL", "GOLD", "XP")
_DIALOGUE = ("PRESS START", "GAME OVER", "You found a key!", "LEVEL CLEAR", "Save game?", "READY")


def frame_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a frame size given as one edge (square) or as (height, width)."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def parse_size(text: str) -> tuple[int, int]:
    """`N` (square) or `WxH` (width x height, as image sizes are written) -> (height, width).

    Raises ValueError, with a one-line reason, unless both edges are multiples of 4 and at least 16.
    """
    m = re.fullmatch(r"\s*(\d+)(?:\s*[xX]\s*(\d+))?\s*", str(text))
    if not m:
        raise ValueError(f"{text!r} is not N or WxH (e.g. 256 or 2040x1344)")
    w = int(m[1])
    h = int(m[2]) if m[2] else w
    check_size((h, w))
    return h, w


def check_size(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = frame_hw(size)
    if min(h, w) < 16 or h % 4 or w % 4:
        shown = f"{w}" if h == w else f"{w}x{h} (WxH)"
        raise ValueError(f"HR edges must be multiples of 4 and at least 16, got {shown}")
    return h, w


def scaled_count(n: int, h: int, w: int) -> int:
    """n objects per min(h, w)^2 of area, rounded: exactly n on a square frame, more on a wide one."""
    s2 = min(h, w) ** 2
    return (n * h * w + s2 // 2) // s2


def _spread(values, lo: int, s: int, dims) -> tuple[int, ...]:
    """Map draws in [lo, s - lo) of a square s frame onto [lo, d - lo) for each edge d in `dims`.

    Draw-for-draw the same as on a square frame (where it is the identity), so square frames keep
    their pixels while positions on a wide frame still span all of it.
    """
    return tuple(lo + (int(v) - lo) * (d - 2 * lo) // (s - 2 * lo) for v, d in zip(values, dims))


def _color(rng, lo=0, hi=256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(lo, hi, 3))


def _shade(color, num: int, den: int) -> tuple[int, int, int]:
    """Scale a colour by num/den in integers (num > den lightens), clipped to 255."""
    return tuple(min(255, c * num // den) for c in color)


def gradient(h: int, w: int, top, bottom) -> np.ndarray:
    """An h x w RGB uint8 area fading from colour `top` (first row) to `bottom` (last row)."""
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
        tile[0] = tile[half] = mortar  # horizontal mortar lines
        tile[:half, 0] = tile[half:, half] = mortar  # staggered vertical joints
        tile[1, 1:] = tile[half + 1, 1:] = _shade(base, 5, 4)  # lit top edge of each brick
    else:  # speckles in 2x2 blocks (t is even), like low-res grass/dirt tile art
        r = np.repeat(np.repeat(rng.random((half, half)), 2, 0), 2, 1)
        tile[r < 0.20] = _shade(base, 3, 4)
        tile[r < 0.07] = _shade(base, 5, 4)
    reps = (-(-h // tile.shape[0]), -(-w // tile.shape[1]), 1)
    return np.tile(tile, reps)[:h, :w]


def _background(img: np.ndarray, rng, t: int) -> None:
    h, w = img.shape[:2]
    s = min(h, w)
    if rng.random() < 0.5:
        # Side-scroller: sky gradient, sun, clouds, tiled ground under a grass strip, platforms.
        hor = int(h * rng.uniform(0.55, 0.8))
        img[:hor] = gradient(hor, w, _color(rng, 0, 120), _color(rng, 120, 256))
        sun = (int(rng.integers(0, w)), int(rng.integers(0, hor // 2 + 1)))
        r = int(rng.integers(s // 16, s // 8))
        cv2.circle(img, sun, r, (255, 230, int(rng.integers(60, 200))), -1, cv2.LINE_AA)
        for _ in range(scaled_count(int(rng.integers(1, 4)), h, w)):
            cx, cy = int(rng.integers(0, w)), int(rng.integers(0, hor // 2 + 1))
            for dx in (-t, 0, t):  # three overlapping ellipses: a flat cartoon cloud
                cv2.ellipse(img, (cx + dx, cy), (t, t * 2 // 3), 0, 0, 360, (250, 250, 250), -1)
        img[hor:] = _tiled(rng, h - hor, w, t, str(rng.choice(["brick", "grass", "checker"])))
        img[hor : hor + max(2, t // 3)] = _color(rng, 0, 100) + np.array([0, 120, 0])
        for _ in range(scaled_count(int(rng.integers(0, 3)), h, w)):
            n, x = int(rng.integers(2, 6)), int(rng.integers(0, w))
            y = int(rng.integers(hor // 3, max(hor // 3 + 1, hor - t)))
            plat = _tiled(rng, t, n * t, t, "brick")[:, : w - x]
            img[y : y + t, x : x + plat.shape[1]] = plat
    else:
        # Top-down: tiled floor, a brick wall band, sometimes a checkered room with a border.
        img[:] = _tiled(rng, h, w, t, str(rng.choice(["grass", "checker"])))
        wall = int(rng.integers(1, 3)) * t
        img[:wall] = _tiled(rng, wall, w, t, "brick")
        if rng.random() < 0.5:  # corners drawn on the short edge, spread over the frame
            x0, y0 = _spread(rng.integers(0, s // 2, 2), 0, s, (w, h))
            x1, y1 = _spread(rng.integers(s // 2, s, 2), 0, s, (w, h))
            img[y0:y1, x0:x1] = _tiled(rng, y1 - y0, x1 - x0, t, "checker")
            cv2.rectangle(img, (x0, y0), (x1, y1), (30, 20, 20), max(1, t // 8))


def _polygon(cx: int, cy: int, r: int, n: int, phase: int) -> np.ndarray:
    # ellipse2Poly uses OpenCV's own sine table (no libm); a 1024 radius avoids merged vertices.
    unit = cv2.ellipse2Poly((0, 0), (1024, 1024), phase, 0, 360, 360 // n)[:n].astype(np.int64)
    return (unit * r // 1024 + (cx, cy)).astype(np.int32)


def _shape_sprite(img: np.ndarray, rng) -> None:
    """A square, circle, regular polygon or star: flat or gradient fill, dark 1-2 px outline."""
    h, w = img.shape[:2]
    s = min(h, w)
    r = int(rng.integers(max(3, s // 32), max(4, s // 8)))
    cx, cy = _spread(rng.integers(r, s - r, 2), r, s, (w, h))
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
        shaded = gradient(h, w, _shade(fill, 5, 4), _shade(fill, 1, 2))
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
    (h, w), g = img.shape[:2], int(rng.integers(6, 13))
    main = _color(rng, 60, 256)
    palette = np.array([(0, 0, 0), (20, 12, 28), main, _shade(main, 2, 3), _color(rng, 128, 256)], np.uint8)
    # Index 0 = transparent, 1 = outline, 2 = body, 3 = shaded lower body, 4 = sparse accents.
    filled = rng.random((g, (g + 1) // 2)) < 0.55
    filled[g // 4 : 3 * g // 4, -1] = True  # a solid spine keeps the two mirrored halves joined
    half = np.where(filled, 2, 0)
    half[2 * g // 3 :][filled[2 * g // 3 :]] = 3
    half[filled & (rng.random(filled.shape) < 0.1)] = 4
    grid = np.concatenate([half, half[:, : g // 2][:, ::-1]], 1)
    body = np.pad(grid > 0, 1)
    grid[(grid == 0) & (body[:-2, 1:-1] | body[2:, 1:-1] | body[1:-1, :-2] | body[1:-1, 2:])] = 1
    k = max(1, round(int(rng.integers(2, 5)) * min(h, w) / 256))
    grid = np.repeat(np.repeat(grid, k, 0), k, 1)
    gh, gw = grid.shape
    y, x = int(rng.integers(0, h - gh)), int(rng.integers(0, w - gw))
    np.copyto(img[y : y + gh, x : x + gw], palette[grid], where=grid[..., None] > 0)


def _text(img, s: str, org, font: int, scale: float, color) -> None:
    # A 1 px drop shadow keeps HUD text readable on any background, as games do.
    cv2.putText(img, s, (org[0] + 1, org[1] + 1), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, s, org, font, scale, color, 1, cv2.LINE_AA)


def _hud(img: np.ndarray, rng) -> None:
    """Health bar top left, score box top right, sometimes a dialogue box across the bottom."""
    h, w = img.shape[:2]
    u = min(h, w) / 256
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
    x0, y1 = w - 3 * m - tw, 2 * m + th + base
    cv2.rectangle(img, (x0, m), (w - m, y1), _color(rng, 0, 60), -1)
    cv2.rectangle(img, (x0, m), (w - m, y1), (220, 220, 220), 1)
    _text(img, label, (x0 + m, m + th + m // 2), font, scale, (255, 230, 90))
    if rng.random() < 0.4:  # dialogue box: darkened panel, double border, one line of text
        y0 = int(h * 0.72)
        img[y0 : h - m, m : w - m] //= 3
        cv2.rectangle(img, (m, y0), (w - m - 1, h - m - 1), (240, 240, 240), 1)
        cv2.rectangle(img, (m + 2, y0 + 2), (w - m - 3, h - m - 3), (120, 120, 200), 1)
        font2 = int(rng.choice(list(_FONTS)))
        _text(
            img,
            str(rng.choice(_DIALOGUE)),
            (3 * m, (h + y0) // 2),
            font2,
            scale / _FONTS[font] * _FONTS[font2] * 1.2,
            (255, 255, 255),
        )


def _render_frame(rng: np.random.Generator, size: int | tuple[int, int]) -> np.ndarray:
    """One RGB uint8 frame, size x size or (height, width); every random choice comes from `rng`."""
    h, w = frame_hw(size)
    img = np.zeros((h, w, 3), np.uint8)
    t = 2 * max(2, round(int(rng.choice([16, 24, 32])) * min(h, w) / 512))  # even tile size
    _background(img, rng, t)
    for _ in range(scaled_count(int(rng.integers(2, 6)), h, w)):
        _shape_sprite(img, rng)
    for _ in range(scaled_count(int(rng.integers(2, 5)), h, w)):
        _pixel_art(img, rng)
    _hud(img, rng)
    return img


def _layout(num_train: int, num_test: int) -> dict[str, list[str]]:
    """Folder -> file names; test ids continue after the train ids so they never collide."""
    train = [f"{i:05d}.png" for i in range(num_train)]
    return {
        "train/LR": train,
        "train/HR": train,
        "test/LR": [f"{i:05d}.png" for i in range(num_train, num_train + num_test)],
    }


def _is_complete(root: Path, num_train: int, num_test: int) -> bool:
    try:
        layout = _layout(num_train, num_test).items()
        return all(set(os.listdir(root / sub)) >= set(names) for sub, names in layout)
    except OSError:
        return False


def is_nonempty(path: Path) -> bool:
    return path.exists() and (not path.is_dir() or any(path.iterdir()))


def imwrite_rgb(path: Path, rgb: np.ndarray) -> None:
    # Frames are drawn in RGB and OpenCV writes BGR: flip so the colours on disk are as drawn.
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"could not write {path}")


def _write_pair(tmp: Path, index: int, *, num_train: int, hr_hw: tuple[int, int], seed: int) -> None:
    """Draw frame `index` and write it into `tmp`: HR and LR for a training id, LR only for a test id."""
    # A (seed, index) seed sequence gives each frame its own stream, whereas with
    # seed + index, seed 1's frame 0 would equal seed 0's frame 1.
    hr = _render_frame(np.random.default_rng((seed, index)), hr_hw)
    lr = cv2.resize(hr, (hr_hw[1] // 4, hr_hw[0] // 4), interpolation=cv2.INTER_CUBIC)
    name = f"{index:05d}.png"
    if index < num_train:
        imwrite_rgb(tmp / "train" / "HR" / name, hr)
        imwrite_rgb(tmp / "train" / "LR" / name, lr)
    else:
        imwrite_rgb(tmp / "test" / "LR" / name, lr)


def _init_worker() -> None:
    unblock_signals()  # see data/workers.py: else the pool's exit would wait for this process forever
    cv2.setNumThreads(1)  # the pool is the parallelism: OpenCV's own threads would oversubscribe the cores


def _pool_context() -> multiprocessing.context.BaseContext:
    # Never a plain fork: the caller may have threads (a fork copies only the forking one, and can hang).
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def write_atomically(
    out_dir: Path, folders, write_one, count: int, workers: int = 1, files: dict[str, str] | None = None
) -> bool:
    """Write a dataset into a private sibling temp dir, then rename it to `out_dir` in one step.

    `folders` are made first; `write_one(tmp, index)` writes item `index` (of `count`) into the temp dir and must
    be a pure function of the index (and picklable for `workers` > 1), so the files are the same whatever the
    number of workers; `files` (name -> text) are written beside the folders. The rename makes the dataset
    appear complete or not at all. Returns False, with the temp dir removed, when `out_dir` was already
    non-empty at rename time (another process got there first).
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # pid plus a random suffix: unique even across hosts sharing one cache directory.
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        for sub in folders:
            (tmp / sub).mkdir(parents=True)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        workers = min(workers, count)
        if workers <= 1:
            for index in range(count):
                write_one(tmp, index)
        else:
            # Leaving the `with` terminates the workers, also on an error, before the temp dir is removed.
            with _pool_context().Pool(workers, initializer=_init_worker) as pool:
                for _ in pool.imap_unordered(functools.partial(write_one, tmp), range(count)):
                    pass
        try:
            os.rename(tmp, out_dir)  # POSIX: replaces an empty dir, fails on a non-empty one
        except OSError:
            if is_nonempty(out_dir):
                return False
            raise
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left to remove after a successful rename


def _write(
    out_dir: Path, num_train: int, num_test: int, hr_size: int | tuple[int, int], seed: int, workers: int = 1
) -> bool:
    """The procedural set, written by write_atomically (False: `out_dir` was filled by another process)."""
    write = functools.partial(_write_pair, num_train=num_train, hr_hw=frame_hw(hr_size), seed=seed)
    return write_atomically(out_dir, _layout(num_train, num_test), write, num_train + num_test, workers)


def write_demo_data(
    out_dir: str | os.PathLike,
    *,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_test: int = DEFAULT_NUM_TEST,
    hr_size: int | tuple[int, int] = DEFAULT_HR_SIZE,
    seed: int = 0,
    workers: int = 1,
) -> Path:
    """Write out_dir/train/{LR,HR}/NNNNN.png and out_dir/test/LR/NNNNN.png; return Path(out_dir).

    HR frames are hr_size x hr_size RGB, or height x width for hr_size=(height, width); LR frames
    are their bicubic /4 downscales. `workers`: processes drawing frames (the files do not depend on
    it). Raises ValueError for a bad size or count and FileExistsError if `out_dir` exists and is not
    an empty directory.
    """
    check_size(hr_size)
    if num_train < 1 or num_test < 0:
        raise ValueError(f"need num_train >= 1 and num_test >= 0, got {num_train} and {num_test}")
    if workers < 1:
        raise ValueError(f"need workers >= 1, got {workers}")
    out_dir = Path(out_dir)
    if is_nonempty(out_dir):
        raise FileExistsError(f"{out_dir} already exists and is not empty; pick a new demo data folder")
    if not _write(out_dir, num_train, num_test, hr_size, seed, workers):
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
    if is_nonempty(out_dir):
        raise FileExistsError(f"{out_dir} is not a complete demo dataset; delete it to regenerate it")
    if not _write(out_dir, *counts, DEFAULT_HR_SIZE, seed=0) and not _is_complete(out_dir, *counts):
        raise FileExistsError(f"{out_dir} was filled by another process but is not a complete demo dataset")
    return out_dir
