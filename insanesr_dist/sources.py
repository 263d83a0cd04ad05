"""What `--data` (and check-data's SOURCE) names, decided by looking at it, and where an image folder keeps its
pairs. Training and `check-data` both start here, so they read the same files.

Kept apart from data.py so check-data can decide without importing torch (its memory is measured), and apart
from samples.py, whose text is part of every decoded store's key (an edit there decodes every store again).

Image folders: the toolkit's own layout, the DIV2K/Flickr2K layout, or folders given one by one (--hr-dir,
--lr-dir, --val-hr-dir, --val-lr-dir, --test-lr-dir):

    DIR/train/LR, DIR/train/HR [, DIR/test/LR]           the toolkit's layout: 90:10 split of train
    ROOT/DIV2K_train_HR, ROOT/DIV2K_train_LR_bicubic/X4  DIV2K (any prefix: Flickr2K/Flickr2K_HR, ...); a
    [, ROOT/DIV2K_valid_HR + DIV2K_valid_LR_bicubic/X4]  "valid" set is the validation set, a "test" LR set the
    [, ROOT/DIV2K_test_LR_bicubic/X4]                    test set; the folders may sit one level down
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import samples
from .errors import UserError
from .samples import show

# Files `datasets.load_dataset(folder)` reads as tables: a hub dataset downloaded or cloned to disk.
DATA_FILE_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".csv")


def data_files(folder: Path) -> list[Path]:
    """The table files in a folder or below it (a hub dataset keeps them in data/). Hidden folders (.git, .cache,
    .huggingface) are not looked in: a clone's history is no data."""
    found = []
    for parent, subfolders, files in os.walk(folder):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        found += [Path(parent, name) for name in sorted(files) if name.endswith(DATA_FILE_SUFFIXES)]
    return found


def source_kind(source: str, scale: int = 4, hr_only: bool = False) -> str:
    """"saved" (a save_to_disk folder), "folder" (an image folder: our layout or DIV2K-like, see `find`),
    "files" (a folder of table files that `datasets.load_dataset` reads) or "hub" (a hub dataset id); a one-line
    UserError for anything else."""
    path = Path(source).expanduser()
    if samples.is_saved_dataset(path):
        return "saved"
    if find(path, scale, hr_only) is not None:
        return "folder"
    if path.is_dir() and data_files(path):
        return "files"
    if path.exists():
        raise UserError(f"{source}: not a data folder (needs train/LR and train/HR, or DIV2K-like X_HR and "
                        "X_LR_bicubic/X4), nor a saved dataset, nor a folder of data files "
                        f"({', '.join(s[1:] for s in DATA_FILE_SUFFIXES)})")
    if source.startswith((".", "/", "~")) or source.count("/") > 1:  # a path, not a hub id
        raise UserError(f"{source}: no such folder")
    return "hub"


@dataclass(frozen=True)
class Folders:
    """The folders of one data source; LR/HR names pair as `samples.pair_names` says."""

    train_lr: Path | None = None
    train_hr: Path | None = None
    val_lr: Path | None = None  # a given validation set instead of the 90:10 split
    val_hr: Path | None = None
    test_lr: Path | None = None
    layout: str = "given folders"

    def describe(self) -> str:
        parts = [f"train {' + '.join(show(d) for d in (self.train_lr, self.train_hr) if d)}"]
        if self.val_hr:
            parts.append(f"validation {' + '.join(show(d) for d in (self.val_lr, self.val_hr) if d)}")
        if self.test_lr:
            parts.append(f"test {show(self.test_lr)}")
        return f"{self.layout}: " + "; ".join(parts)


# --hr-dir and its siblings, by the Folders field each one sets
OPTIONS = {"train_hr": "--hr-dir", "train_lr": "--lr-dir", "val_hr": "--val-hr-dir", "val_lr": "--val-lr-dir",
           "test_lr": "--test-lr-dir"}


def given_folders(settings: dict) -> dict[str, str | None]:
    """Folders field -> path of the options among `settings` (keyword names: hr_dir, lr_dir, ...)."""
    return {field: settings.get(option[2:].replace("-", "_")) for field, option in OPTIONS.items()}


def locate(data: str | None, given: dict[str, str | None], scale: int,
           hr_only: bool = False) -> tuple[str, Folders | None]:
    """What training and check-data read: the source's kind (see `source_kind`; "folder" when only folder options
    are given) and, for image folders, their Folders (see `resolve`; None for a dataset)."""
    kind = source_kind(data, scale, hr_only) if data is not None else "folder"
    return kind, resolve(data, given, scale, hr_only)


def resolve(data: str | None, given: dict[str, str | None], scale: int, hr_only: bool = False) -> Folders | None:
    """The image folders to read: those of `data`'s layout, with every folder given by an option in place of
    the layout's own; None when `data` is a dataset (see `source_kind`) and no folder is given. `hr_only`
    (--lr-from-hr): LR folders are neither needed nor read."""
    given = {field: Path(value).expanduser() for field, value in given.items() if value}
    for field, path in given.items():
        if not path.is_dir():
            raise UserError(f"{path}: no such folder ({OPTIONS[field]})")
    folders = Folders() if data is None else find(Path(data).expanduser(), scale, hr_only)
    if folders is None:
        if given:
            raise UserError(f"{data}: {', '.join(OPTIONS[f] for f in given)} need a folder of images, not a dataset")
        return None
    folders = dataclasses.replace(folders, **given)
    if hr_only:
        folders = dataclasses.replace(folders, train_lr=None, val_lr=None)
        if folders.train_hr is None:
            raise UserError("no training data: give --data DIR, or --hr-dir (with --lr-from-hr, no LR is read)")
        return folders
    for a, b in (("train_lr", "train_hr"), ("val_lr", "val_hr")):
        if bool(getattr(folders, a)) != bool(getattr(folders, b)):
            have, need = (a, b) if getattr(folders, a) else (b, a)
            raise UserError(f"{getattr(folders, have)}: {OPTIONS[have]} needs {OPTIONS[need]} too")
    if folders.train_lr is None:
        raise UserError("no training data: give --data DIR, or --hr-dir and --lr-dir")
    return folders


def find(root: Path, scale: int, hr_only: bool = False) -> Folders | None:
    """The layout of an image folder: the toolkit's own or DIV2K-like; None for a folder that holds a dataset
    (parquet, arrow, ...) or for a path that does not exist."""
    if (root / "train" / "LR").is_dir() or (root / "train" / "HR").is_dir():
        test = root / "test" / "LR"
        return Folders(root / "train" / "LR", root / "train" / "HR", test_lr=test if test.is_dir() else None,
                       layout="DIR layout")
    if root.is_dir():
        sets = _div2k_sets(root, scale, hr_only) or next(
            (found for sub in sorted(root.iterdir()) if sub.is_dir() and (found := _div2k_sets(sub, scale, hr_only))),
            None)
        if sets:
            return sets
    return None


_HR = re.compile(r"^(?P<prefix>.+)_HR$")


def _div2k_sets(root: Path, scale: int, hr_only: bool = False) -> Folders | None:
    """DIV2K-like folders directly in `root`: <prefix>_HR beside <prefix>_LR_<kind>/X<scale> (bicubic first).
    A prefix with "valid" is the validation set, one with "test" (LR only) the test set, any other the
    training set (one only)."""
    sets: dict[str, tuple[Path | None, Path | None]] = {}  # prefix -> (HR, LR)
    for hr in sorted(root.iterdir()):
        match = _HR.match(hr.name)
        if hr.is_dir() and match:
            sets[match["prefix"]] = (hr, _lr_folder(root, match["prefix"], scale))
    for lr_kind in sorted(root.glob(f"*_LR_*/X{scale}")):
        prefix = lr_kind.parent.name.split("_LR_")[0]
        sets.setdefault(prefix, (None, _lr_folder(root, prefix, scale)))
    if not sets:
        return None
    fields: dict[str, Path] = {}
    for prefix, (hr, lr) in sets.items():
        role = "val" if "valid" in prefix.lower() else "test" if "test" in prefix.lower() else "train"
        if lr is None and not hr_only:
            kinds = sorted(p.name for p in root.glob(f"{prefix}_LR_*"))
            raise UserError(f"{hr}: no LR folder {prefix}_LR_<kind>/X{scale} beside it"
                            + (f" (it has {', '.join(kinds)} without X{scale})" if kinds else "")
                            + "; give it with --lr-dir")
        if role == "test":
            if lr is not None:
                fields["test_lr"] = lr
        elif hr is not None:
            if f"{role}_hr" in fields:
                raise UserError(f"{root}: several {role} sets ({fields[f'{role}_hr'].name}, {hr.name}); choose one "
                                f"with {OPTIONS[role + '_hr']} and {OPTIONS[role + '_lr']}")
            fields[f"{role}_hr"], fields[f"{role}_lr"] = hr, lr
    if "train_hr" not in fields:
        return None
    return Folders(**fields, layout=f"DIV2K layout in {show(root)}")


def _lr_folder(root: Path, prefix: str, scale: int) -> Path | None:
    """<prefix>_LR_bicubic/X<scale>, else the only <prefix>_LR_<kind>/X<scale> (DIV2K also ships unknown,
    mild, difficult and wild degradations: which one is meant must be said)."""
    candidates = sorted(root.glob(f"{prefix}_LR_*/X{scale}"))
    bicubic = [c for c in candidates if c.parent.name == f"{prefix}_LR_bicubic"]
    if bicubic or len(candidates) <= 1:
        return (bicubic or candidates or [None])[0]
    raise UserError(f"{root}: several LR sets for {prefix} ({', '.join(c.parent.name for c in candidates)}); "
                    "choose one with --lr-dir")
