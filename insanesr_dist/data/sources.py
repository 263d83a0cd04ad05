"""What `--data` (and check-data's SOURCE) names, decided by looking at it, and where an image folder keeps its
pairs. Training and `check-data` both start here, so they read the same files.

Kept apart from the DataLoader modules (loaders.py, tensors.py) so check-data can decide without importing torch
(its memory is measured), and apart from images.py and pairs.py, whose text is part of every decoded store's key
(an edit there decodes every store again). Hugging Face datasets (with pyarrow and pandas) is imported
only by the functions that build tables, so deciding on and checking an image folder never loads it.

Image folders: the toolkit's own layout, the DIV2K/Flickr2K layout, or folders given one by one (--hr-dir,
--lr-dir, --val-hr-dir, --val-lr-dir, --test-lr-dir):

    DIR/train/LR, DIR/train/HR [, DIR/test/LR]           the toolkit's layout: 90:10 split of train, or
    [, DIR/val/LR + DIR/val/HR]                          validation on DIR/val when it has both (game-art set)
    ROOT/DIV2K_train_HR, ROOT/DIV2K_train_LR_bicubic/X4  DIV2K (any prefix: Flickr2K/Flickr2K_HR, ...); a
    [, ROOT/DIV2K_valid_HR + DIV2K_valid_LR_bicubic/X4]  "valid" set is the validation set, a "test" LR set the
    [, ROOT/DIV2K_test_LR_bicubic/X4]                    test set; the folders may sit one level down
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from insanesr_dist.data import pairs
from insanesr_dist.data.images import decode_rgb
from insanesr_dist.data.pairs import cell_name, show
from insanesr_dist.errors import UserError

if TYPE_CHECKING:
    import datasets

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
    """ "saved" (a save_to_disk folder), "folder" (an image folder: our layout or DIV2K-like, see `find`),
    "files" (a folder of table files that `datasets.load_dataset` reads) or "hub" (a hub dataset id); a one-line
    UserError for anything else."""
    path = Path(source).expanduser()
    if pairs.is_saved_dataset(path):
        return "saved"
    if find(path, scale, hr_only) is not None:
        return "folder"
    if path.is_dir() and data_files(path):
        return "files"
    if path.exists():
        raise UserError(
            f"{source}: not a data folder (needs train/LR and train/HR, or DIV2K-like X_HR and "
            "X_LR_bicubic/X4), nor a saved dataset, nor a folder of data files "
            f"({', '.join(s[1:] for s in DATA_FILE_SUFFIXES)})"
        )
    if source.startswith((".", "/", "~")) or source.count("/") > 1:  # a path, not a hub id
        raise UserError(f"{source}: no such folder")
    return "hub"


@dataclass(frozen=True)
class Folders:
    """The folders of one data source; LR/HR names pair as `pairs.pair_names` says."""

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
OPTIONS = {
    "train_hr": "--hr-dir",
    "train_lr": "--lr-dir",
    "val_hr": "--val-hr-dir",
    "val_lr": "--val-lr-dir",
    "test_lr": "--test-lr-dir",
}


def given_folders(settings: dict) -> dict[str, str | None]:
    """Folders field -> path of the options among `settings` (keyword names: hr_dir, lr_dir, ...)."""
    return {field: settings.get(option[2:].replace("-", "_")) for field, option in OPTIONS.items()}


def locate(
    data: str | None, given: dict[str, str | None], scale: int, hr_only: bool = False
) -> tuple[str, Folders | None]:
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
        test, val = root / "test" / "LR", root / "val"
        given_val = (val / "HR").is_dir() and ((val / "LR").is_dir() or hr_only)
        return Folders(
            root / "train" / "LR",
            root / "train" / "HR",
            val_lr=val / "LR" if given_val else None,
            val_hr=val / "HR" if given_val else None,
            test_lr=test if test.is_dir() else None,
            layout="DIR layout",
        )
    if root.is_dir():
        sets = _div2k_sets(root, scale, hr_only) or next(
            (found for sub in sorted(root.iterdir()) if sub.is_dir() and (found := _div2k_sets(sub, scale, hr_only))),
            None,
        )
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
            raise UserError(
                f"{hr}: no LR folder {prefix}_LR_<kind>/X{scale} beside it"
                + (f" (it has {', '.join(kinds)} without X{scale})" if kinds else "")
                + "; give it with --lr-dir"
            )
        if role == "test":
            if lr is not None:
                fields["test_lr"] = lr
        elif hr is not None:
            if f"{role}_hr" in fields:
                raise UserError(
                    f"{root}: several {role} sets ({fields[f'{role}_hr'].name}, {hr.name}); choose one "
                    f"with {OPTIONS[role + '_hr']} and {OPTIONS[role + '_lr']}"
                )
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
    raise UserError(
        f"{root}: several LR sets for {prefix} ({', '.join(c.parent.name for c in candidates)}); "
        "choose one with --lr-dir"
    )


def probe_lr(row: dict[str, Any]) -> dict[str, Any]:
    try:
        lr = decode_rgb(row["lr"], "")
    except UserError as e:
        return _unreadable(row, "lr", e)
    return {"lr_height": lr.shape[0], "lr_width": lr.shape[1], "problem": "", "problem_file": ""}


def _unreadable(row: dict[str, Any], column: str, error: UserError) -> dict[str, Any]:
    # decode_rgb was given no name, so its message is ": <problem>"; the probe names the file instead.
    return {"lr_height": 0, "lr_width": 0, "problem": error.message[2:], "problem_file": cell_name(row, column)}


def _rows_from_files(pairs: list[tuple[str, str, str | None]]):
    """Generator for `Dataset.from_generator`: one row per (id, lr_path, hr_path or None)."""
    for image_id, lr_path, hr_path in pairs:
        row = {"id": image_id, "lr": {"path": lr_path, "bytes": None}}
        if hr_path is not None:
            row["hr"] = {"path": hr_path, "bytes": None}
        yield row


def _table_from_files(pairs: list[tuple[str, str, str | None]]) -> datasets.Dataset:
    """An Arrow table of the files' paths (cached by Hugging Face datasets between runs). It holds no second
    copy of the images: they are read from the files (once, into the decoded store, when it is on)."""
    import datasets

    columns = ("lr", "hr") if pairs[0][2] is not None else ("lr",)
    cell = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    features = datasets.Features({"id": datasets.Value("string"), **dict.fromkeys(columns, cell)})
    # Our own fingerprint (paths, sizes, mtimes): a changed file gives a new table, so its checks run again.
    stats = [(pair, [(os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in pair[1:] if p]) for pair in pairs]
    fingerprint = hashlib.sha256(repr(stats).encode()).hexdigest()[:32]
    table = datasets.Dataset.from_generator(
        _rows_from_files, features=features, gen_kwargs={"pairs": pairs}, fingerprint=fingerprint
    )
    for column in columns:
        table = table.cast_column(column, datasets.Image(decode=False))
    return table


def _folder_pairs(
    lr_dir: Path | None, hr_dir: Path, scale: int, bad: list[pairs.Finding], counts: dict[str, int]
) -> list[tuple[str, str, str]]:
    """(id, LR path, HR path) of two folders' pairs, the id being the HR file's relative name (without an LR
    folder, --lr-from-hr: the HR path twice); files that cannot be used (no partner, undecodable names,
    ambiguous ids) go to `bad`, and `counts` adds up the pairs, those paired by the scale suffix and the files
    left over."""
    for d in (lr_dir, hr_dir):
        if d is not None and not d.is_dir():
            raise UserError(
                f"{d}: missing; a data folder needs train/LR and train/HR (and optionally test/LR); "
                "with HR images only, --lr-from-hr makes the LR"
            )
    hr_files, hr_findings = pairs.scan_folder(hr_dir)
    lr_files, lr_findings = pairs.scan_folder(lr_dir) if lr_dir is not None else (hr_files, [])
    if not lr_files and not hr_files:
        raise UserError(f"{lr_dir or hr_dir}: no images found")
    names, orphans = pairs.pair_names(lr_files, hr_files, scale)
    bad += [f for f in lr_findings + hr_findings + orphans if f.kind == "bad"]
    counts["pairs"] += len(names)
    counts["suffixed"] += sum(lr != hr for lr, hr in names)
    counts["left over"] += len(orphans)
    return [(hr, str(lr_files[lr]), str(hr_files[hr])) for lr, hr in names]


def _hr_as_lr(batch: dict[str, list], kernel: str) -> dict[str, list]:
    return {"lr": batch["hr"], "lr_from_hr": [kernel] * len(batch["hr"])}


def _lr_made_from_hr(table: datasets.Dataset | None, kernel: str | None) -> datasets.Dataset | None:
    """A table whose LR cells are its HR ones and whose `lr_from_hr` column names the kernel that makes the
    LR from them when decoded (pairs.decode_pair): the store then keeps the HR once and the LR beside it."""
    import datasets

    if table is None or not kernel:
        return table
    features = table.features.copy()
    features.update(lr=datasets.Image(decode=False), lr_from_hr=datasets.Value("string"))
    return table.map(_hr_as_lr, batched=True, fn_kwargs={"kernel": kernel}, features=features, desc=f"LR by {kernel}")


def load_folders(
    folders: Folders, scale: int, bad: list[pairs.Finding], say, lr_from_hr: str | None
) -> tuple[datasets.Dataset | None, datasets.Dataset | None, datasets.Dataset | None]:
    """Tables of the training pairs, the given validation pairs (None: split off later) and the test images
    (None: no test set); says in one line what was paired."""
    counts = dict.fromkeys(("pairs", "suffixed", "left over"), 0)
    train = _folder_pairs(folders.train_lr, folders.train_hr, scale, bad, counts)
    trained = counts["pairs"]
    val = _folder_pairs(folders.val_lr, folders.val_hr, scale, bad, counts) if folders.val_hr else []
    test = None
    if folders.test_lr is not None:
        test_files, findings = pairs.scan_folder(folders.test_lr)
        bad += [f for f in findings if f.kind == "bad"]
        if not test_files and not findings:
            raise UserError(f"{folders.test_lr}: no images found")
        test = _table_from_files([(n, str(p), None) for n, p in test_files.items()]) if test_files else None
    kind = "HR image(s)" if lr_from_hr else "pair(s)"
    say(
        f"data: {folders.describe()}: {trained} training {kind}"
        + (f", {len(val)} validation {kind}" if folders.val_hr else "")
        + (f" ({counts['suffixed']} by the x{scale} suffix of the LR name)" if counts["suffixed"] else "")
        + (
            f"; LR made from HR by {lr_from_hr} (--lr-from-hr)"
            if lr_from_hr
            else f"; {counts['left over']} file(s) without a partner"
        )
        + (f"; {len(test) if test is not None else 0} test image(s)" if folders.test_lr else "")
    )
    train, val = (_lr_made_from_hr(_table_from_files(pairs), lr_from_hr) if pairs else None for pairs in (train, val))
    return train, val, test


def _resolved_paths(batch: dict[str, list], column: str, root: str) -> dict[str, list]:
    """Relative paths of a batch's `column` resolved against `root`; absolute ones stay as they are."""
    return {column: [None if p is None else os.path.join(root, p) for p in batch[column]]}


def _as_image_cells(table: datasets.Dataset, column: str, what: str, root: Path | None) -> datasets.Dataset:
    """A column of images, file paths or encoded bytes as undecoded image cells. Relative paths are resolved
    against the dataset's folder (`root`), so a table loads the same from any working directory."""
    import datasets

    kind = table.features[column]
    if isinstance(kind, datasets.Value) and kind.dtype in ("string", "large_string"):
        if root is not None:
            # A map (a new cached table), not remove_columns + add_column: that table's empty leftover block
            # breaks its unpickling in the store's worker processes.
            table = table.map(
                _resolved_paths,
                batched=True,
                fn_kwargs={"column": column, "root": str(root)},
                desc=f"Resolving {column} paths",
            )
    elif not (
        isinstance(kind, datasets.Image)
        or (isinstance(kind, datasets.Value) and kind.dtype in ("binary", "large_binary"))
    ):
        raise UserError(f"{what} holds {kind}, not images, file paths or encoded bytes")
    return table.cast_column(column, datasets.Image(decode=False))


def row_ids(rows: int) -> list[str]:
    """The ids of a table without an id column (training's and predict's): its row numbers as file names,
    00000.png, 00001.png, ..."""
    return [f"{i:05d}.png" for i in range(rows)]


def with_ids_and_images(
    table: datasets.Dataset, columns: dict[str, str], where: str, root: Path | None
) -> datasets.Dataset:
    """Normalise a user's table to ours: its `columns` (our name -> its name; `id` optional when it is the
    default "id") become `id` (string; made from the row index when absent) and undecoded image cells."""
    import datasets

    if len(set(columns.values())) < len(columns):
        roles = ", ".join(f"--{ours}-column {theirs}" for ours, theirs in columns.items())
        raise UserError(f"{where}: one column given two roles ({roles})")
    for ours, theirs in columns.items():
        if theirs not in table.column_names and (ours, theirs) != ("id", "id"):
            raise UserError(f"{where}: no column '{theirs}' (--{ours}-column); it has: {', '.join(table.column_names)}")
    present = {theirs: ours for ours, theirs in columns.items() if theirs in table.column_names}
    table = table.select_columns(list(present)).rename_columns(present)
    if "id" not in table.column_names:
        table = table.add_column("id", row_ids(len(table)))
    elif table.features["id"] != datasets.Value("string"):
        table = table.cast_column("id", datasets.Value("string"))  # numbered ids become "1", "2", ...
    images = [ours for ours in ("lr", "hr") if ours in columns]
    for ours in images:
        table = _as_image_cells(table, ours, f"{where}: column '{columns[ours]}' (--{ours}-column)", root)
    return table.select_columns(["id", *images])


def _builder_and_files(root: Path) -> tuple[str, dict[str, list[str]]]:
    """`datasets.load_dataset` arguments for a folder of data files: the builder of its most common format,
    and those files by split, named as on the hub (data/train-00000-of-00001.parquet, test.jsonl; a file with
    no split in its name is training data). Named explicitly, not left to load_dataset(folder) to infer: beside
    the images a table of paths names, it would take the folder for an image folder."""
    from datasets.data_files import SPLIT_KEYWORDS

    files = data_files(root)
    suffix = collections.Counter(f.suffix for f in files).most_common(1)[0][0]
    by_split: dict[str, list[str]] = {}
    for file in (f for f in files if f.suffix == suffix):
        words = set(re.split(r"[-._ 0-9/]+", str(file.relative_to(root).with_suffix("")).lower()))
        split = next((str(s) for s, keywords in SPLIT_KEYWORDS.items() if words & set(keywords)), "train")
        by_split.setdefault(split, []).append(str(file))
    return {".jsonl": "json"}.get(suffix, suffix[1:]), by_split


def load_table(
    source: str, kind: str, columns: Columns = ("lr", "hr", "id"), lr_from_hr: str | None = None
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The train and test tables of a saved dataset, a folder of data files or a hub dataset (`kind`, from
    source_kind), with the source's `columns` (LR, HR, id) normalised to ours; with `lr_from_hr`,
    the training LR is made from the HR (its LR column is not read)."""
    import datasets

    root = Path(source).expanduser() if kind != "hub" else None
    try:
        if kind == "saved":
            loaded = datasets.load_from_disk(str(root))
        elif kind == "files":
            # Split by split: one load would give every split the first file's columns, and test has no HR.
            builder, files = _builder_and_files(root)
            loaded = datasets.DatasetDict(
                {
                    split: datasets.load_dataset(builder, data_files={split: paths}, split=split)
                    for split, paths in files.items()
                }
            )
        else:
            loaded = datasets.load_dataset(source)
    except Exception as e:  # the hub and disk loaders raise many types; the user needs one line
        raise UserError(f"{source}: cannot be loaded as a dataset ({type(e).__name__}: {e})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise UserError(f"{source}: has splits {', '.join(loaded)}; a 'train' split is needed")
        train, test = loaded["train"], loaded.get("test")
    else:
        train, test = loaded, None
    lr, hr, image_id = columns
    wanted = {"hr": hr, "id": image_id} if lr_from_hr else {"lr": lr, "hr": hr, "id": image_id}
    train = _lr_made_from_hr(with_ids_and_images(train, wanted, f"{source} (train)", root), lr_from_hr)
    if test is not None:
        test = with_ids_and_images(test, {"lr": lr, "id": image_id}, f"{source} (test)", root)
    return train, test


Columns = tuple[str, str, str]  # the source's LR, HR and id columns (--lr-column, --hr-column, --id-column)
