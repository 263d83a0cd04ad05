"""LR/HR pairs as files and rows: finding image files in folders (hidden folders pruned), pairing LR and HR
names (with or without the x4 scale suffix), decoding a row's pair, and the one-line problems of a pair or file
(`Finding`: wrong size ratio, too small for SSIM or the patch, unreadable).

Separate from images.py (one image's bytes to pixels) and sources.py (which folders or dataset): it is the rules
a pair must meet, shared by training, check-data and the decoded store.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from insanesr_dist.data import degrade
from insanesr_dist.data.images import IMAGE_SUFFIXES, SSIM_WINDOW, decode_rgb, show
from insanesr_dist.errors import UserError


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


def some_image_files(folder: Path, what: str = "") -> list[Path]:
    """`image_files`, or one line saying that the folder has none (of `what`: "LR " names them) and what it
    looked for: the commands that read a folder of images need at least one."""
    files = image_files(folder)
    if not files:
        raise UserError(f"{folder}: no {what}images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


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
            findings.append(
                Finding(
                    str(path), f"not an image file name (images end in {', '.join(sorted(IMAGE_SUFFIXES))})", "ignored"
                )
            )
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
                findings.append(
                    Finding(
                        str(files.pop(name)),
                        f"same id as {others} up to case or extension (their predictions would overwrite each other)",
                    )
                )
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


def pair_names(
    lr_files: dict[str, Path], hr_files: dict[str, Path], scale: int = 4
) -> tuple[list[tuple[str, str]], list[Finding]]:
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
            findings.append(
                Finding(
                    str(lr_files[name]),
                    f"is named for x{named_scale} (partner {base}), "
                    f"but training is x{scale}: choose the folder of x{scale} LR images",
                )
            )
    lone = [(name, lr_files, hr_files, "HR") for name in set(lr_files) - set(pairs) - wrong_scale]
    lone += [(name, hr_files, lr_files, "LR") for name in set(hr_files) - set(pairs.values())]
    for name, own, other, side in sorted(lone, key=lambda entry: entry[0]):
        partners = [name] + ((scale_suffix(name) or ([],))[0] if side == "HR" else [])
        stems = {Path(n).with_suffix("") for n in partners}
        hint = [n for n in other if Path(n).with_suffix("") in stems]
        findings.append(
            Finding(
                str(own[name]),
                f"has no partner of the same name in the {side} folder"
                + (f" (it has {hint[0]}; pairs need the same file name)" if hint else ""),
            )
        )
    return sorted(pairs.items(), key=lambda pair: pair[1]), findings


def pair_problem(lr_shape: tuple[int, ...], hr_shape: tuple[int, ...], scale: int) -> str | None:
    """Why an LR/HR pair of these (height, width, ...) shapes cannot be trained on and scored, or None."""
    (lh, lw), (hh, hw) = lr_shape[:2], hr_shape[:2]
    if (hh, hw) != (lh * scale, lw * scale):
        off = [
            f"{axis} off by {got - want:+d} px"
            for axis, got, want in (("width", hw, lw * scale), ("height", hh, lh * scale))
            if got != want
        ]
        return (
            f"HR is {hw}x{hh} but its LR is {lw}x{lh}; HR must be exactly {scale}x the LR "
            f"({lw * scale}x{lh * scale}): {', '.join(off)}"
        )
    if min(hh, hw) < SSIM_WINDOW:
        return f"HR is {hw}x{hh}, smaller than the {SSIM_WINDOW} px SSIM window of the metric"
    return None


def patch_problem(lr_shape: tuple[int, ...], patch_size: int) -> str | None:
    """Why an LR image cannot give a training crop of `patch_size`, or None."""
    h, w = lr_shape[:2]
    if patch_size and min(h, w) < patch_size:
        return f"LR is {w}x{h}, smaller than --patch-size {patch_size}"
    return None
