"""What kind of source `--data` (and check-data's SOURCE) names, decided by looking at it.

Kept apart from data.py so check-data can decide without importing torch (its memory is measured), and apart
from samples.py, whose text is part of every decoded store's key (an edit there decodes every store again).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import samples
from .errors import UserError

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


def source_kind(source: str) -> str:
    """"saved" (a save_to_disk folder), "folder" (our DIR layout), "files" (a folder of table files that
    `datasets.load_dataset` reads) or "hub" (a hub dataset id); a one-line UserError for anything else."""
    path = Path(source).expanduser()
    if samples.is_saved_dataset(path):
        return "saved"
    if (path / "train" / "LR").is_dir() or (path / "train" / "HR").is_dir():
        return "folder"
    if path.is_dir() and data_files(path):
        return "files"
    if (path / "train").is_dir():
        return "folder"  # the folder's own check names what is missing in it
    if path.exists():
        raise UserError(f"{source}: not a data folder (needs train/LR and train/HR), nor a saved dataset, nor a "
                        f"folder of data files ({', '.join(s[1:] for s in DATA_FILE_SUFFIXES)})")
    if source.startswith((".", "/", "~")) or source.count("/") > 1:  # a path, not a hub id
        raise UserError(f"{source}: no such folder")
    return "hub"
