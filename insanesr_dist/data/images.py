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

import base64
import os
import struct
from pathlib import Path

import cv2
import numpy as np

from insanesr_dist.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
# The grader's SSIM window (7x7; scoring/metrics, training's SSIM loss): smaller HR images cannot be scored. Here,
# the lowest module all of them may import (data must not import scoring).
SSIM_WINDOW = 7

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
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        if marker == 0xDA:  # scan data before any frame header
            return None
        standalone = marker == 0x01 or 0xD0 <= marker <= 0xD8
        i += 2 if standalone else 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
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
    for n in range(struct.unpack(order + "H", data[ifd : ifd + 2])[0]):
        tag, kind = struct.unpack(order + "HH", data[ifd + 2 + 12 * n : ifd + 6 + 12 * n])
        if tag in (256, 257):
            value = data[ifd + 10 + 12 * n : ifd + 14 + 12 * n]
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
    return (
        f"image is {width}x{height} ({width * height:,} pixels), above the limit of {limit:,} "
        f"pixels (refused before decoding; raise it with {MAX_PIXELS_VARIABLE})"
    )


def _truncated(data: bytes, kind: str) -> bool:
    """A PNG ends with its IEND chunk, a JPEG with its EOI marker, and a BMP is as long as its header says;
    decoders may accept a cut-off file."""
    if kind == "BMP":
        return len(data) < struct.unpack("<I", data[2:6])[0]
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
            notes.append(
                ("gray -> RGB, " if gray else "")
                + (
                    "alpha dropped (fully opaque)"
                    if seen == 0
                    else f"alpha dropped ({100 * seen:.1f}% of pixels not opaque; their RGB kept as stored)"
                )
            )
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


# ---------------------------------------------------------------------------------------------
# Folders and pairs


def encode_png(rgb: np.ndarray) -> bytes:
    """HxWx3 uint8 RGB -> PNG bytes (colours stored as RGB, as any viewer expects)."""
    return encode_image(rgb, "png")


def encode_image(rgb: np.ndarray, kind: str) -> bytes:
    """HxWx3 uint8 RGB -> lossless `kind` ("png", or "bmp": uncompressed, decoded at memory speed) bytes."""
    ok, buffer = cv2.imencode(f".{kind}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"{kind.upper()} encoding failed")
    return buffer.tobytes()


def decode_png_base64(text: str, name: str) -> np.ndarray:
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError:
        raise UserError(f"{name}: not valid base64") from None
    return decode_image(data, name)


def show(path: str | os.PathLike) -> str:
    """A path as printable text, even when its name is not valid UTF-8."""
    return os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")
