"""The one set of rules for what a usable sample is, shared by training, `check-data`, `predict`,
`evaluate` and `visualize`: how an image file becomes the HxWx3 uint8 RGB array the model sees, and
what makes a folder entry or an LR/HR pair unusable.

Conversions (lossless or fixed, so the same file always gives the same pixels):
  gray -> RGB (the value copied to all three channels), palette -> RGB (the palette looked up),
  16-bit -> 8-bit (round(v / 257), so an 8-bit image stored as 16-bit comes back exactly),
  alpha -> dropped (the colour channels are kept as stored, not composited: a game capture's RGB is what
  the grader compares, and compositing on a chosen background would invent colours the file never had).
  EXIF orientation is ignored: pixels are used as stored, the same way for LR and HR.
Refused, with the reason: empty, truncated or undecodable files, content that is no image format we read,
float or signed pixels, channel counts other than 1, 3 or 4, file names that are not valid UTF-8, and images
whose header declares more than `max_pixels()` pixels (refused before any decoding, as PIL's
decompression-bomb guard does: a 1 MB PNG can declare 20000x20000, i.e. 1.2 GB once decoded).
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from . import degrade
from .errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
SSIM_MIN_EDGE = 7  # the grader's SSIM window: smaller HR images cannot be scored

# Our messages name the file and the problem; OpenCV's own decoder warnings on stderr would only
# add a second, vaguer line for the same file.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)

_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
]
_PNG_COLOUR_TYPES = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}

MAX_PIXELS_VARIABLE = "INSANESR_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 16384 * 16384  # 268 M pixels, 805 MB as 8-bit RGB: 32x a 4K frame, far above any game capture


def sniff_format(data: bytes) -> str | None:
    """The image format of a file's content (PNG, JPEG, BMP, TIFF, WEBP), or None."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def max_pixels() -> int:
    """The most pixels an image may declare: $INSANESR_MAX_PIXELS, else DEFAULT_MAX_PIXELS. Read on each call,
    so a run's environment (and its DataLoader workers') decides."""
    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"{MAX_PIXELS_VARIABLE}: must be a positive whole number of pixels, got {text!r}")
    return int(text)


def header_size(data: bytes, kind: str | None = None) -> tuple[int, int] | None:
    """(width, height) as the file's header declares it, read without decoding; None when the header is
    missing or not understood (the decoder then has the last word)."""
    kind = kind or sniff_format(data)
    reader = {"PNG": _png_size, "JPEG": _jpeg_size, "BMP": _bmp_size, "TIFF": _tiff_size, "WEBP": _webp_size}.get(kind)
    try:
        size = reader(data) if reader else None
    except (struct.error, IndexError):  # a header cut short
        return None
    return size if size and size[0] > 0 and size[1] > 0 else None


def _png_size(data: bytes) -> tuple[int, int] | None:
    # The IHDR chunk must come first: 8-byte signature, 4-byte length, b"IHDR", width, height (big-endian).
    return struct.unpack(">II", data[16:24]) if data[12:16] == b"IHDR" else None


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # not DHT, JPG, DAC


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    # Walk the marker segments up to the frame header (SOFn: length, precision, height, width).
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        if marker == 0xDA:  # scan data before any frame header
            return None
        standalone = marker == 0x01 or 0xD0 <= marker <= 0xD8
        i += 2 if standalone else 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def _bmp_size(data: bytes) -> tuple[int, int]:
    if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)  # a negative height means rows stored top-down


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    # The first IFD (the page OpenCV decodes): ImageWidth (256) and ImageLength (257), SHORT or LONG.
    order = "<" if data[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", data[4:8])[0]
    found = {}
    for n in range(struct.unpack(order + "H", data[ifd:ifd + 2])[0]):
        tag, kind = struct.unpack(order + "HH", data[ifd + 2 + 12 * n:ifd + 6 + 12 * n])
        if tag in (256, 257):
            value = data[ifd + 10 + 12 * n:ifd + 14 + 12 * n]
            found[tag] = struct.unpack(order + "H", value[:2])[0] if kind == 3 else struct.unpack(order + "I", value)[0]
    return (found[256], found[257]) if len(found) == 2 else None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: a key frame's 14-bit sizes after its start code
        return struct.unpack("<H", data[26:28])[0] & 0x3FFF, struct.unpack("<H", data[28:30])[0] & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14-bit width-1 and height-1 packed after the signature byte
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas width-1 and height-1
        return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
    return None


def size_problem(size: tuple[int, int] | None) -> str | None:
    """Why an image of this declared (width, height) is refused before decoding, or None."""
    try:
        limit = max_pixels()
    except UserError as e:  # commands check the variable first; here it is still one line naming the file
        return f"cannot be size-checked: {e.message}"
    if size is None or size[0] * size[1] <= limit:
        return None
    width, height = size
    return (f"image is {width}x{height} ({width * height:,} pixels), above the limit of {limit:,} "
            f"pixels (refused before decoding; raise it with {MAX_PIXELS_VARIABLE})")


def _truncated(data: bytes, kind: str) -> bool:
    """A PNG ends with its IEND chunk and a JPEG with its EOI marker; decoders may accept a cut-off file."""
    if kind == "PNG":
        return b"IEND" not in data[-12:]
    if kind == "JPEG":
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    return False


def decode_image(data: bytes, name: str, notes: list[str] | None = None) -> np.ndarray:
    """Encoded image bytes -> HxWx3 uint8 RGB by the module's rules; UserError naming `name` otherwise.

    `notes`, when given, receives one entry per conversion applied (for `check-data`).
    """
    if not data:
        raise UserError(f"{name}: cannot be decoded: empty file")
    kind = sniff_format(data)
    if kind is None:
        raise UserError(f"{name}: cannot be decoded: not an image (content is none of PNG, JPEG, BMP, TIFF, WEBP)")
    if too_big := size_problem(header_size(data, kind)):
        raise UserError(f"{name}: {too_big}")
    if _truncated(data, kind):
        raise UserError(f"{name}: cannot be decoded: truncated {kind} file (its end is missing)")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if array is None or array.size == 0:
        raise UserError(f"{name}: cannot be decoded: corrupt {kind} data")
    if array.dtype == np.uint16:
        array = ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
        _note(notes, "16-bit -> 8-bit")
    elif array.dtype != np.uint8:
        raise UserError(f"{name}: {array.dtype} pixels are not supported; convert it to 8- or 16-bit")
    channels = 1 if array.ndim == 2 else array.shape[2]
    if kind == "PNG" and len(data) > 25 and data[25] == 3:
        _note(notes, "palette -> RGB")
    if channels == 1:
        _note(notes, "gray -> RGB")
        return cv2.cvtColor(array, cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    if channels == 4:
        if notes is not None:
            seen = float((array[..., 3] < 255).mean())
            gray = kind == "PNG" and len(data) > 25 and data[25] in (0, 4)
            notes.append(("gray -> RGB, " if gray else "")
                         + ("alpha dropped (fully opaque)" if seen == 0 else
                            f"alpha dropped ({100 * seen:.1f}% of pixels not opaque; their RGB kept as stored)"))
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    raise UserError(f"{name}: {channels} channels are not supported (1, 3 or 4)")



def decode_rgb(image: dict | bytes, name: str) -> np.ndarray:
    """Encoded image (a `datasets.Image(decode=False)` cell, holding bytes or a local file's path, or raw
    bytes) -> HxWx3 uint8 RGB by the rules of `decode_image`, so every accepted file reaches the model the
    same way, in training, check-data and predict."""
    data = image.get("bytes") if isinstance(image, dict) else image
    if data is None and isinstance(image, dict) and image.get("path"):
        try:
            data = Path(image["path"]).read_bytes()
        except OSError as e:
            raise UserError(f"{name}: cannot be read ({e.strerror})") from None
    return decode_image(data or b"", name)


def cell_name(row: dict, column: str) -> str:
    """The file an image cell of a dataset row came from (its path when known), for messages."""
    cell = row[column]
    return (cell.get("path") if isinstance(cell, dict) else None) or f"{column} of {row['id']}"


def pair_columns(row: dict) -> tuple[str, ...]:
    """The image columns a table row's pair is decoded from: its HR only when its `lr_from_hr` column names the
    kernel that makes the LR (--lr-from-hr, degrade.py)."""
    return ("hr",) if row.get("lr_from_hr") else ("lr", "hr")


def as_pair(images: list[np.ndarray], row: dict, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """The (LR, HR) of a row from its decoded `pair_columns` images."""
    kernel = row.get("lr_from_hr")
    if kernel:
        hr = degrade.mod_crop(images[0], scale)
        return degrade.lr_from_hr(hr, scale, kernel), hr
    return images[0], images[1]


def decode_pair(row: dict, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """A table row's LR and HR images (HxWx3 uint8), errors naming the file."""
    return as_pair([decode_rgb(row[c], cell_name(row, c)) for c in pair_columns(row)], row, scale)


def _note(notes: list[str] | None, text: str) -> None:
    if notes is not None:
        notes.append(text)


def read_image(path: str | os.PathLike, notes: list[str] | None = None) -> np.ndarray:
    """decode_image of a file on disk; an unreadable file is a UserError too."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UserError(f"{show(path)}: cannot be read ({e.strerror})") from None
    return decode_image(data, show(path), notes)


def show(path: str | os.PathLike) -> str:
    """A path as printable text, even when its name is not valid UTF-8."""
    return os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")


# ---------------------------------------------------------------------------------------------
# Folders and pairs


@dataclass
class Finding:
    """One problem or conversion: `kind` is bad (training stops, or skips it with --on-bad-sample skip),
    converted, note (accepted as is) or ignored (not read at all)."""

    path: str
    problem: str
    kind: str = "bad"

    def action(self, on_bad_sample: str) -> str:
        if self.kind == "bad":
            return "skipped" if on_bad_sample == "skip" else "training stops (or skips it with --on-bad-sample skip)"
        return {"converted": "converted", "note": "accepted", "ignored": "ignored"}[self.kind]

    def line(self, on_bad_sample: str) -> str:
        return f"{show(self.path)}: {self.problem} -> {self.action(on_bad_sample)}"


def image_files(folder: Path) -> list[Path]:
    """The image files directly in `folder` (by suffix, any case), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_saved_dataset(path: Path) -> bool:
    """Whether `path` is a folder written by datasets' `save_to_disk` (one split or a DatasetDict)."""
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def scan_folder(folder: Path) -> tuple[dict[str, Path], list[Finding]]:
    """The usable image files under a folder (sub-folders included) by relative name ("a.png", "act1/a.png"),
    and findings about the rest: non-image files and hidden entries (ignored), names that are not valid UTF-8,
    and ids that differ only by case or extension."""
    files: dict[str, Path] = {}
    findings: list[Finding] = []
    entries = []
    for parent, subfolders, names in os.walk(folder):  # symlinked folders are not entered, as rglob does
        hidden = [d for d in subfolders if d.startswith(".")]
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]  # .git/, .ipynb_checkpoints/: not read
        entries += [Path(parent, entry) for entry in hidden + names]
    for path in sorted(entries):
        name = path.relative_to(folder).as_posix()
        if path.name.startswith("."):  # .DS_Store, .ipynb_checkpoints/: said once, not per file inside
            findings.append(Finding(str(path), "hidden entry", "ignored"))
        elif not path.is_file():
            findings.append(Finding(str(path), "not a file", "ignored"))
        elif path.suffix.lower() not in IMAGE_SUFFIXES:
            findings.append(Finding(str(path), f"not an image file name (images end in "
                                               f"{', '.join(sorted(IMAGE_SUFFIXES))})", "ignored"))
        elif not _utf8(name):
            findings.append(Finding(str(path), "file name is not valid UTF-8; rename it"))
        else:
            files[name] = path
    by_id: dict[str, list[str]] = {}
    for name in files:
        by_id.setdefault(str(Path(name).with_suffix("")).casefold(), []).append(name)
    for names in by_id.values():
        if len(names) > 1:
            for name in names:
                others = ", ".join(n for n in names if n != name)
                findings.append(Finding(str(files.pop(name)), f"same id as {others} up to case or extension "
                                        "(their predictions would overwrite each other)"))
    return files, findings


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.listdir gives undecodable bytes as lone surrogates
        return False
    return True


_SCALE_SUFFIX = re.compile(r"(?P<base>.+?)(?P<separator>[_-]?)[xX](?P<scale>[0-9]+)", re.DOTALL)  # any characters


def scale_suffix(name: str) -> tuple[list[str], int] | None:
    """The HR names an LR file named as DIV2K and Flickr2K name theirs may belong to, and the scale its name
    says: (["0001.png"], 4) for "0001x4.png"; (["0001.png", "0001_.png"], 4) for "0001_x4.png" (the separator
    may be part of the HR name); None for a name without such a suffix."""
    path = Path(name)
    match = _SCALE_SUFFIX.fullmatch(path.stem)
    if match is None:
        return None
    bases = dict.fromkeys([match["base"], match["base"] + match["separator"]])
    return [path.with_name(base + path.suffix).as_posix() for base in bases], int(match["scale"])


def pair_names(lr_files: dict[str, Path], hr_files: dict[str, Path],
               scale: int = 4) -> tuple[list[tuple[str, str]], list[Finding]]:
    """The (LR name, HR name) pairs of two folders, and a finding for each file without a partner.

    An LR file pairs with the HR file of the same relative name, or else, when its name ends in the scale
    ("0001x4.png"), with the HR file named without it ("0001.png"). An LR name for another scale ("0001x2.png"
    beside an HR 0001.png, training x4) is a finding of its own: the folder holds the wrong LR set."""
    pairs = {name: name for name in lr_files if name in hr_files}
    findings, wrong_scale = [], set()
    for name in sorted(set(lr_files) - set(pairs)):
        bases, named_scale = scale_suffix(name) or ([], None)
        taken = set(pairs.values())
        base = next((b for b in bases if b in hr_files and b not in taken), None)
        if base is None:
            continue
        if named_scale == scale:
            pairs[name] = base
        else:
            wrong_scale.add(name)
            findings.append(Finding(str(lr_files[name]), f"is named for x{named_scale} (partner {base}), "
                                    f"but training is x{scale}: choose the folder of x{scale} LR images"))
    lone = [(name, lr_files, hr_files, "HR") for name in set(lr_files) - set(pairs) - wrong_scale]
    lone += [(name, hr_files, lr_files, "LR") for name in set(hr_files) - set(pairs.values())]
    for name, own, other, side in sorted(lone, key=lambda entry: entry[0]):
        partners = [name] + ((scale_suffix(name) or ([],))[0] if side == "HR" else [])
        stems = {Path(n).with_suffix("") for n in partners}
        hint = [n for n in other if Path(n).with_suffix("") in stems]
        findings.append(Finding(str(own[name]), f"has no partner of the same name in the {side} folder"
                                + (f" (it has {hint[0]}; pairs need the same file name)" if hint else "")))
    return sorted(pairs.items(), key=lambda pair: pair[1]), findings


def pair_problem(lr_shape: tuple[int, ...], hr_shape: tuple[int, ...], scale: int) -> str | None:
    """Why an LR/HR pair of these (height, width, ...) shapes cannot be trained on and scored, or None."""
    (lh, lw), (hh, hw) = lr_shape[:2], hr_shape[:2]
    if (hh, hw) != (lh * scale, lw * scale):
        off = [f"{axis} off by {got - want:+d} px" for axis, got, want in
               (("width", hw, lw * scale), ("height", hh, lh * scale)) if got != want]
        return (f"HR is {hw}x{hh} but its LR is {lw}x{lh}; HR must be exactly {scale}x the LR "
                f"({lw * scale}x{lh * scale}): {', '.join(off)}")
    if min(hh, hw) < SSIM_MIN_EDGE:
        return f"HR is {hw}x{hh}, smaller than the {SSIM_MIN_EDGE} px SSIM window of the metric"
    return None


def patch_problem(lr_shape: tuple[int, ...], patch_size: int) -> str | None:
    """Why an LR image cannot give a training crop of `patch_size`, or None."""
    h, w = lr_shape[:2]
    if patch_size and min(h, w) < patch_size:
        return f"LR is {w}x{h}, smaller than --patch-size {patch_size}"
    return None
