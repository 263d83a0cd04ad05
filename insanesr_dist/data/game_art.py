"""The game-art study set (`insanesr-dist make-demo-data OUT --kind game-art`): game scenes composited from real
CC0 game art, with training, validation and test splits of HR and LR images, to choose a training recipe on art
that is not drawn by this toolkit (docs/study.md). It is built on the user's machine, never shipped as images.

The art: the Kenney.nl sprites and tiles that the `arcade` package on PyPI ships under
arcade/resources/assets/images/, which its License.txt there releases under CC0 1.0. The wheel is read as a zip
file: nothing of it is installed or imported. Only the folders listed in ROLES are read; the same wheel's art of
other artists or other licences (the two parallax sets, the backgrounds, the test textures) is not.

A scene is a pure function of (seed, index) and the art, in integer pixel maths only (alpha-weighted box
shrinking by whole factors, 90-degree turns and mirrors, integer alpha blending), like the procedural demo
frames: every machine and any number of worker processes write the same files. Two kinds of scene:

    top-down   a floor of terrain tiles (sometimes crossed by a road of other tiles), with tanks, trees, ships and
               meteors turned by multiples of 90 degrees
    side view  a sky gradient, ground and floating platforms of platformer tiles, decorations standing on the
               ground, characters, enemies and items

and in either, sometimes a row of item icons as a HUD. LR images are data/degrade.py's bicubic /4, the
degradation of the procedural demo data.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from insanesr_dist.data.degrade import lr_from_hr
from insanesr_dist.data.demo import (
    check_size,
    demo_data_dir,
    frame_hw,
    gradient,
    imwrite_rgb,
    is_nonempty,
    scaled_count,
    write_atomically,
)
from insanesr_dist.errors import UserError

PACKAGE, VERSION = "arcade", "3.3.3"
WHEEL_NAME = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "25f4e0e5b8bcbe7a7d087c0a23b19e9f423b0c70ec00945c8712c9a3e541ebd2"  # PyPI's file, as downloaded
ART_ROOT = "arcade/resources/assets/images/"
LICENCE_FILE = ART_ROOT + "License.txt"
# The folders (path prefixes under ART_ROOT) of Kenney.nl's CC0 packs, by the part each plays in a scene; the
# first matching prefix wins.
ROLES = {
    "topdown_tanks/tile": "floor",  # opaque terrain tiles of the top-down scenes
    "tiles/": "tile",  # platformer ground tiles and decorations of the side views
    "topdown_tanks/": "top",  # tanks, barrels, trees, tracks
    "space_shooter/": "top",
    "alien/": "side",
    "animated_characters/": "side",
    "enemies/": "side",
    "items/": "item",  # coins, gems, keys, flags: side-view sprites and HUD icons
}
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Art:
    """The art of one wheel: RGBA uint8 images by role (sorted by their path in the wheel), and its provenance."""

    images: dict[str, list[tuple[str, np.ndarray]]]
    package: str
    version: str
    sha256: str
    licence: str

    def pool(self, *roles: str) -> list[tuple[str, np.ndarray]]:
        """The images of the first of `roles` that has any (a wheel may lack one kind)."""
        return next((self.images[r] for r in roles if self.images[r]), [])


def _role(path: str) -> str | None:
    inside = path[len(ART_ROOT) :]
    return next((role for prefix, role in ROLES.items() if inside.startswith(prefix)), None)


def _rgba(data: bytes, name: str) -> np.ndarray:
    """A PNG's pixels as RGBA uint8 (grey, palette and 16-bit files included; opaque when it has no alpha)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise UserError(f"{name}: not a readable PNG")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 2:
        img = img[..., None]
    channels = img.shape[2]
    color = img[..., :1].repeat(3, 2) if channels <= 2 else img[..., 2::-1]  # BGR -> RGB
    alpha = img[..., channels - 1 :] if channels in (2, 4) else np.full_like(img[..., :1], 255)
    return np.ascontiguousarray(np.concatenate([color, alpha], 2))


def _metadata(zf: zipfile.ZipFile, names: list[str]) -> tuple[str, str]:
    """The wheel's package name and version, from its METADATA (else the expected ones)."""
    meta = next((n for n in names if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)), None)
    fields = dict(re.findall(r"^(Name|Version): *(.+?) *$", zf.read(meta).decode("utf-8", "replace"), re.M))
    return fields.get("Name", PACKAGE), fields.get("Version", "unknown")


def read_art(wheel: Path) -> Art:
    """The art in a wheel (or any zip with the same paths); a one-line UserError when it holds none, or when its
    licence file is missing or does not say CC0."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise UserError(f"{wheel}: not a readable wheel ({e})") from None
    with zf:
        names = sorted(zf.namelist())
        images: dict[str, list[tuple[str, np.ndarray]]] = {role: [] for role in dict.fromkeys(ROLES.values())}
        for name in names:
            role = _role(name) if name.startswith(ART_ROOT) and name.lower().endswith(".png") else None
            if role:
                images[role].append((name, _rgba(zf.read(name), f"{wheel}: {name}")))
        art_folders = ", ".join(ROLES)
        if not (images["floor"] or images["tile"]) or not (images["top"] or images["side"] or images["item"]):
            raise UserError(
                f"{wheel}: no game art in it (needs tiles and sprites: PNG files under {ART_ROOT} in "
                f"{art_folders}); expected the {PACKAGE} wheel: pip download --no-deps {PACKAGE}=={VERSION}"
            )
        licence = zf.read(LICENCE_FILE).decode("utf-8", "replace") if LICENCE_FILE in names else ""
        if "CC0" not in licence:
            raise UserError(f"{wheel}: {LICENCE_FILE} is missing or does not say CC0; its art's licence is unknown")
        package, version = _metadata(zf, names)
    return Art(images, package, version, hashlib.sha256(Path(wheel).read_bytes()).hexdigest(), licence)


@functools.lru_cache(maxsize=2)
def _cached_art(path: str, size: int, mtime_ns: int) -> Art:
    return read_art(Path(path))


def load_art(wheel: Path) -> Art:
    """read_art, once per process and wheel file (each worker process reads it once, then draws many scenes)."""
    stat = os.stat(wheel)
    return _cached_art(str(wheel), stat.st_size, stat.st_mtime_ns)


def fetch_wheel() -> Path:
    """The pinned arcade wheel in the cache (beside the demo data's), downloaded by pip when it is not there."""
    folder = demo_data_dir().parent / "wheels"
    wheel = folder / WHEEL_NAME
    if not wheel.is_file():
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        result = subprocess.run(
            [*command, "--dest", str(folder), f"{PACKAGE}=={VERSION}"], capture_output=True, text=True
        )
        if result.returncode != 0 or not wheel.is_file():
            said = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise UserError(
                f"pip could not download {PACKAGE}=={VERSION} ({said}); download it where you can with "
                f"`pip download --no-deps {PACKAGE}=={VERSION}` and give the file with --wheel"
            )
    if hashlib.sha256(wheel.read_bytes()).hexdigest() != WHEEL_SHA256:
        raise UserError(f"{wheel}: not the {WHEEL_NAME} of PyPI (another sha256); delete it to download it again")
    return wheel


# ---------------------------------------------------------------------------------------------
# Drawing (integers only)


def shrink(rgba: np.ndarray, k: int) -> np.ndarray:
    """The k x k box mean of an RGBA image, colours weighted by alpha (edges keep their colour instead of fading
    to the transparent pixels' black), in integers; the last rows and columns that fill no whole box are cut."""
    if k == 1:
        return rgba
    h, w = rgba.shape[0] // k * k, rgba.shape[1] // k * k
    boxes = rgba[:h, :w].astype(np.int64).reshape(h // k, k, w // k, k, 4)
    alpha = boxes[..., 3]
    weight = alpha.sum((1, 3))
    safe = np.maximum(weight, 1)[..., None]
    color = ((boxes[..., :3] * alpha[..., None]).sum((1, 3)) + safe // 2) // safe
    return np.concatenate([color, (weight[..., None] + k * k // 2) // (k * k)], 2).astype(np.uint8)


def paste(img: np.ndarray, rgba: np.ndarray, y: int, x: int) -> None:
    """Alpha-blend `rgba` onto the RGB `img` with its top left corner at (y, x); what falls outside is cut off."""
    h, w = img.shape[:2]
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + rgba.shape[0], h), min(x + rgba.shape[1], w)
    if y0 >= y1 or x0 >= x1:
        return
    src = rgba[y0 - y : y1 - y, x0 - x : x1 - x].astype(np.int32)
    alpha, under = src[..., 3:], img[y0:y1, x0:x1].astype(np.int32)
    img[y0:y1, x0:x1] = (src[..., :3] * alpha + under * (255 - alpha) + 127) // 255


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _sized(rng: np.random.Generator, rgba: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """`rgba` shrunk by a whole factor drawn from those that bring its longer edge into [lo, hi] (else by the
    smallest that brings it under hi)."""
    edge = max(rgba.shape[:2])
    factors = [k for k in range(1, 9) if lo * k <= edge <= hi * k] or [max(1, -(-edge // hi))]
    return shrink(rgba, int(_pick(rng, factors)))


def _family(name: str) -> str:
    """A tile's family: the lower-case start of its file name (grassMid.png, grassCenter.png -> grass)."""
    return re.match(r"[a-z]*", Path(name).name)[0]


def _plain(name: str) -> bool:
    """A plain floor tile (tileGrass1.png, tileSand2.png), not a road or a transition piece."""
    return bool(re.search(r"\d\.png$", name))


def _top_down(img: np.ndarray, rng: np.random.Generator, art: Art) -> None:
    h, w = img.shape[:2]
    s = min(h, w)
    floors = art.images["floor"]
    plain = [f for f in floors if _plain(f[0])] or floors
    _, first = _pick(rng, plain)
    k = max(1, -(-max(first.shape[:2]) // int(rng.choice([s // 8, s * 3 // 16, s // 4]))))
    # Tiles of the first one's size, shrunk alike: they fill one grid.
    same = [(name, shrink(f, k)) for name, f in floors if f.shape == first.shape]
    base = shrink(first, k)
    th, tw = base.shape[:2]
    rows, cols = -(-h // th), -(-w // tw)
    grid = [[base] * cols for _ in range(rows)]
    patches = [t for name, t in same if _plain(name)] or [base]
    for r, c in zip(*np.nonzero(rng.random((rows, cols)) < 0.12)):  # patches of other ground
        grid[r][c] = _pick(rng, patches)
    if rng.random() < 0.6:  # a road across: a row of east-west pieces or a column of north-south ones
        across = rng.random() < 0.5
        pieces = [t for name, t in same if ("East" if across else "North") in name] or [_pick(rng, same)[1]]
        road, line = _pick(rng, pieces), int(rng.integers(rows if across else cols))
        for i in range(cols if across else rows):
            grid[line if across else i][i if across else line] = road
    img[:] = 90
    for r in range(rows):
        for c in range(cols):
            paste(img, grid[r][c], r * th, c * tw)
    sprites = art.pool("top", "side", "item")
    for _ in range(scaled_count(int(rng.integers(3, 9)), h, w)):
        sprite = np.rot90(_sized(rng, _pick(rng, sprites)[1], s // 16, s * 5 // 16), int(rng.integers(4)))
        if rng.random() < 0.5:
            sprite = sprite[:, ::-1]
        sh, sw = sprite.shape[:2]
        paste(img, sprite, int(rng.integers(-sh // 2, h - sh // 2)), int(rng.integers(-sw // 2, w - sw // 2)))


def _side_view(img: np.ndarray, rng: np.random.Generator, art: Art) -> None:
    h, w = img.shape[:2]
    s = min(h, w)
    top_color = (int(rng.integers(30, 140)), int(rng.integers(90, 190)), int(rng.integers(170, 256)))
    img[:] = gradient(h, w, top_color, tuple(min(255, c + 70) for c in top_color))
    tiles = art.images["tile"]
    families: dict[str, list[tuple[str, np.ndarray]]] = {}
    for name, tile in tiles:
        families.setdefault(_family(name), []).append((name, tile))
    grounds = [f for f, members in families.items() if {f + "Mid", f + "Center"} <= {Path(n).stem for n, _ in members}]
    family = _pick(rng, grounds or sorted(families))  # a ground: surface and fill pieces (grassMid, grassCenter)
    members = {Path(n).stem[len(family) :]: t for n, t in families[family]}
    raw = members.get("Mid", _pick(rng, families[family])[1])
    k = max(1, -(-max(raw.shape[:2]) // int(rng.choice([s // 8, s * 3 // 16, s // 4]))))
    surface, fill, ledge = (shrink(members.get(part, raw), k) for part in ("Mid", "Center", "Half_mid"))
    t = surface.shape[1]
    ground = h - int(rng.integers(1, 3)) * surface.shape[0]
    shift = int(rng.integers(t))  # the level scrolled by part of a tile
    for c in range(-(-(w + shift) // t)):
        if rng.random() < 0.08:
            continue  # a pit
        paste(img, surface, ground, c * t - shift)
        for y in range(ground + surface.shape[0], h, fill.shape[0]):
            paste(img, fill, y, c * t - shift)
    for _ in range(int(rng.integers(0, 3))):  # floating platforms
        y, x = int(rng.integers(h // 5, max(h // 5 + 1, ground - 2 * t))), int(rng.integers(-t, w))
        for c in range(int(rng.integers(2, 5))):
            paste(img, ledge, y, x + c * t)
    others = [tile for name, tile in tiles if _family(name) != family] or [tile for _, tile in tiles]
    for _ in range(scaled_count(int(rng.integers(0, 4)), h, w)):  # bushes, crates, signs standing on the ground
        thing = shrink(_pick(rng, others), k)
        paste(img, thing, ground - thing.shape[0], int(rng.integers(-t // 2, w - t // 2)))
    sprites = art.images["side"] + art.images["item"] or art.pool("top")
    for _ in range(scaled_count(int(rng.integers(2, 7)), h, w)):
        sprite = _sized(rng, _pick(rng, sprites)[1], s // 10, s // 4)
        if rng.random() < 0.5:
            sprite = sprite[:, ::-1]
        sh, sw = sprite.shape[:2]
        y = ground - sh if rng.random() < 0.6 else int(rng.integers(0, max(1, ground - sh)))
        paste(img, sprite, y, int(rng.integers(-sw // 2, w - sw // 2)))


def _hud(img: np.ndarray, rng: np.random.Generator, art: Art) -> None:
    """A row of one item's icon at the top left: lives, coins, keys."""
    s = min(img.shape[:2])
    icon = _sized(rng, _pick(rng, art.images["item"])[1], s // 16, s // 10)
    margin = max(2, s // 32)
    for i in range(int(rng.integers(1, 6))):
        paste(img, icon, margin, margin + i * (icon.shape[1] + margin // 2))


def render_scene(rng: np.random.Generator, art: Art, size: int | tuple[int, int]) -> np.ndarray:
    """One RGB uint8 scene, size x size or (height, width); every random choice comes from `rng`."""
    h, w = frame_hw(size)
    img = np.zeros((h, w, 3), np.uint8)
    kinds = [draw for draw, role in ((_top_down, "floor"), (_side_view, "tile")) if art.images[role]]
    _pick(rng, kinds)(img, rng, art)
    if art.images["item"] and rng.random() < 0.5:
        _hud(img, rng, art)
    return img


# ---------------------------------------------------------------------------------------------
# The set on disk


def _split_of(index: int, counts: tuple[int, int, int]) -> str:
    """train for the first counts[0] indices, then val, then test: ids never collide across the splits."""
    for split, end in zip(SPLITS, np.cumsum(counts)):
        if index < end:
            return split
    raise IndexError(index)


def _write_scene(
    tmp: Path, index: int, *, wheel: str, counts: tuple[int, int, int], hr_hw: tuple[int, int], seed: int
) -> None:
    hr = render_scene(np.random.default_rng((seed, index)), load_art(Path(wheel)), hr_hw)
    split, name = _split_of(index, counts), f"{index:05d}.png"
    imwrite_rgb(tmp / split / "HR" / name, hr)
    imwrite_rgb(tmp / split / "LR" / name, lr_from_hr(hr, 4, "bicubic"))


def _readme(art: Art, wheel: Path, counts: tuple[int, int, int], hr_hw: tuple[int, int], seed: int) -> str:
    (h, w), (train, val, test) = hr_hw, counts
    size = f"{w}" if h == w else f"{w}x{h}"
    folders = ", ".join(sorted({prefix.split("/")[0] + "/" for prefix in ROLES}))
    return f"""Game-art study set for insanesr-dist (x4 super-resolution)

Made by:  insanesr-dist make-demo-data OUT --kind game-art --num-train {train} --num-val {val} --num-test {test} \\
          --hr-size {size} --seed {seed} --wheel {wheel.name}
Scenes:   {w}x{h} HR game scenes (top-down and side view) composited from the art below; LR = the HR's bicubic /4
          (OpenCV INTER_CUBIC, insanesr_dist/data/degrade.py "bicubic"), as the procedural demo data.
Splits:   train/HR + train/LR ({train} pairs), val/HR + val/LR ({val} pairs: `--data OUT` validates on them),
          test/LR + test/HR ({test} pairs: training predicts test/LR; test/HR scores those predictions).

Source of the art: the Python package {art.package} {art.version} from PyPI ({wheel.name},
sha256 {art.sha256}), the images under {ART_ROOT} in the folders {folders}
(Kenney.nl's game art; the other folders of that wheel are not used).
Licence: CC0 1.0 Universal (Creative Commons Zero, public domain dedication),
https://creativecommons.org/publicdomain/zero/1.0/ , as the wheel's {LICENCE_FILE} states (copied to LICENSE.txt
here). Credit is not required; it goes to Kenney (www.kenney.nl). The {art.package} library's own code is MIT-licensed
and is not part of this set.
"""


def write_game_art(
    out_dir: str | os.PathLike,
    *,
    wheel: str | os.PathLike | None = None,
    num_train: int = 200,
    num_val: int = 20,
    num_test: int = 20,
    hr_size: int | tuple[int, int] = 256,
    seed: int = 0,
    workers: int = 1,
) -> Path:
    """Write the game-art set to `out_dir` (split/HR and split/LR for train, val and test; README.txt and
    LICENSE.txt) from `wheel` (default: the pinned arcade wheel, downloaded once by pip); return Path(out_dir).

    Raises ValueError for a bad size or count, FileExistsError if `out_dir` is not an empty folder, and
    UserError for a wheel without art or without its CC0 licence file."""
    hr_hw = check_size(hr_size)
    if num_train < 1 or num_val < 0 or num_test < 0 or workers < 1:
        raise ValueError(
            f"need num_train >= 1, num_val >= 0, num_test >= 0 and workers >= 1; got {num_train}, {num_val}, "
            f"{num_test} and {workers}"
        )
    out_dir = Path(out_dir)
    if is_nonempty(out_dir):
        raise FileExistsError(f"{out_dir} already exists and is not empty; pick a new data folder")
    wheel = Path(wheel) if wheel is not None else fetch_wheel()
    art = load_art(wheel)  # here, not first in a worker: a bad wheel is one line before anything is written
    counts = (num_train, num_val, num_test)
    folders = [f"{split}/{kind}" for split, n in zip(SPLITS, counts) if n for kind in ("HR", "LR")]
    files = {"README.txt": _readme(art, wheel, counts, hr_hw, seed), "LICENSE.txt": art.licence}
    write = functools.partial(_write_scene, wheel=str(wheel.resolve()), counts=counts, hr_hw=hr_hw, seed=seed)
    if not write_atomically(out_dir, folders, write, sum(counts), workers, files):
        raise FileExistsError(f"{out_dir} was filled by another process while the set was being written")
    return out_dir
