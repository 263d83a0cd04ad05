"""LR/HR pairs as Hugging Face datasets: loading, checking, splitting, cropping, and DataLoaders.

Every source becomes the same table: `id` (string), `lr` and `hr` (`datasets.Image(decode=False)` cells:
a local file's path, or the encoded bytes of a saved or hub dataset). The training pairs are decoded once
into the decoded store (store.py), which is also their check; DataLoader workers cut windows from it (or,
above its budget, decode pairs themselves), and the training step flips/rotates whole batches on its device
(crops.py).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import multiprocessing
import os
import re
import signal
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader

from . import samples, sources, store
from .crops import crop_draws, pair_window
from .errors import UserError
from .samples import cell_name as _name
from .samples import decode_rgb


@dataclass
class Splits:
    """Training pairs, held-out validation pairs and (optionally) LR-only test images."""

    train: datasets.Dataset | datasets.IterableDataset
    val: datasets.Dataset
    test: datasets.Dataset | None
    source: str
    skipped: int = 0  # bad files or pairs left out with --on-bad-sample skip
    pixels: store.Store | None = None  # the decoded pairs, by the tables' `store_row` column (store.py)


def _probe_lr(row: dict[str, Any]) -> dict[str, Any]:
    try:
        lr = decode_rgb(row["lr"], "")
    except UserError as e:
        return _unreadable(row, "lr", e)
    return {"lr_height": lr.shape[0], "lr_width": lr.shape[1], "problem": "", "problem_file": ""}


def _unreadable(row: dict[str, Any], column: str, error: UserError) -> dict[str, Any]:
    # decode_rgb was given no name, so its message is ": <problem>"; the probe names the file instead.
    return {"lr_height": 0, "lr_width": 0, "problem": error.message[2:], "problem_file": _name(row, column)}


# ---------------------------------------------------------------------------------------------
# Sources



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
    columns = ("lr", "hr") if pairs[0][2] is not None else ("lr",)
    cell = {"bytes": datasets.Value("binary"), "path": datasets.Value("string")}
    features = datasets.Features({"id": datasets.Value("string"), **{c: cell for c in columns}})
    # Our own fingerprint (paths, sizes, mtimes): a changed file gives a new table, so its checks run again.
    stats = [(pair, [(os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in pair[1:] if p]) for pair in pairs]
    fingerprint = hashlib.sha256(repr(stats).encode()).hexdigest()[:32]
    table = datasets.Dataset.from_generator(
        _rows_from_files, features=features, gen_kwargs={"pairs": pairs}, fingerprint=fingerprint
    )
    for column in columns:
        table = table.cast_column(column, datasets.Image(decode=False))
    return table


def _folder_pairs(lr_dir: Path | None, hr_dir: Path, scale: int, bad: list[samples.Finding],
                  counts: dict[str, int]) -> list[tuple[str, str, str]]:
    """(id, LR path, HR path) of two folders' pairs, the id being the HR file's relative name (without an LR
    folder, --lr-from-hr: the HR path twice); files that cannot be used (no partner, undecodable names,
    ambiguous ids) go to `bad`, and `counts` adds up the pairs, those paired by the scale suffix and the files
    left over."""
    for d in (lr_dir, hr_dir):
        if d is not None and not d.is_dir():
            raise UserError(f"{d}: missing; a data folder needs train/LR and train/HR (and optionally test/LR); "
                            "with HR images only, --lr-from-hr makes the LR")
    hr_files, hr_findings = samples.scan_folder(hr_dir)
    lr_files, lr_findings = samples.scan_folder(lr_dir) if lr_dir is not None else (hr_files, [])
    if not lr_files and not hr_files:
        raise UserError(f"{lr_dir or hr_dir}: no images found")
    names, orphans = samples.pair_names(lr_files, hr_files, scale)
    bad += [f for f in lr_findings + hr_findings + orphans if f.kind == "bad"]
    counts["pairs"] += len(names)
    counts["suffixed"] += sum(lr != hr for lr, hr in names)
    counts["left over"] += len(orphans)
    return [(hr, str(lr_files[lr]), str(hr_files[hr])) for lr, hr in names]


def _hr_as_lr(batch: dict[str, list], kernel: str) -> dict[str, list]:
    return {"lr": batch["hr"], "lr_from_hr": [kernel] * len(batch["hr"])}


def _lr_made_from_hr(table: datasets.Dataset | None, kernel: str | None) -> datasets.Dataset | None:
    """A table whose LR cells are its HR ones and whose `lr_from_hr` column names the kernel that makes the
    LR from them when decoded (samples.decode_pair): the store then keeps the HR once and the LR beside it."""
    if table is None or not kernel:
        return table
    features = table.features.copy()
    features.update(lr=datasets.Image(decode=False), lr_from_hr=datasets.Value("string"))
    return table.map(_hr_as_lr, batched=True, fn_kwargs={"kernel": kernel}, features=features,
                     desc=f"LR by {kernel}")


def _load_folders(folders: sources.Folders, scale: int, bad: list[samples.Finding], say, lr_from_hr: str | None
                  ) -> tuple[datasets.Dataset | None, datasets.Dataset | None, datasets.Dataset | None]:
    """Tables of the training pairs, the given validation pairs (None: split off later) and the test images
    (None: no test set); says in one line what was paired."""
    counts = dict.fromkeys(("pairs", "suffixed", "left over"), 0)
    train = _folder_pairs(folders.train_lr, folders.train_hr, scale, bad, counts)
    trained = counts["pairs"]
    val = _folder_pairs(folders.val_lr, folders.val_hr, scale, bad, counts) if folders.val_hr else []
    test = None
    if folders.test_lr is not None:
        test_files, findings = samples.scan_folder(folders.test_lr)
        bad += [f for f in findings if f.kind == "bad"]
        if not test_files and not findings:
            raise UserError(f"{folders.test_lr}: no images found")
        test = _table_from_files([(n, str(p), None) for n, p in test_files.items()]) if test_files else None
    kind = "HR image(s)" if lr_from_hr else "pair(s)"
    say(f"data: {folders.describe()}: {trained} training {kind}"
        + (f", {len(val)} validation {kind}" if folders.val_hr else "")
        + (f" ({counts['suffixed']} by the x{scale} suffix of the LR name)" if counts["suffixed"] else "")
        + (f"; LR made from HR by {lr_from_hr} (--lr-from-hr)" if lr_from_hr
           else f"; {counts['left over']} file(s) without a partner")
        + (f"; {len(test) if test is not None else 0} test image(s)" if folders.test_lr else ""))
    train, val = (_lr_made_from_hr(_table_from_files(pairs), lr_from_hr) if pairs else None for pairs in (train, val))
    return train, val, test


def _settle(bad: list[samples.Finding], on_bad_sample: str, say, source: str) -> int:
    """--on-bad-sample: `error` stops at the first bad file, naming it (and counting the rest);
    `skip` logs each one once. Returns how many were skipped."""
    if bad and on_bad_sample == "error":
        more = (f" (and more: `insanesr-dist check-data {source}` lists every problem; "
                "--on-bad-sample skip trains without them)" if len(bad) > 1 else "")
        raise UserError(f"{samples.show(bad[0].path)}: {bad[0].problem}{more}")
    for finding in bad:
        say(f"skipping {samples.show(finding.path)}: {finding.problem}")
    return len(bad)


def _drop_problems(table: datasets.Dataset, bad: list[samples.Finding], patch_size: int = 0) -> datasets.Dataset:
    """Keep the rows whose probe found no problem (and, when given, that fit a `patch_size` crop);
    the others go to `bad`, named by the probe's message."""
    keep = []
    held_out = table["held_out"] if "held_out" in table.column_names else [False] * len(table)
    rows = zip(table["problem"], table["problem_file"], table["lr_height"], table["lr_width"], held_out)
    for i, (problem, path, h, w, whole) in enumerate(rows):  # a given validation set is never cropped
        if not problem and patch_size and min(h, w) < patch_size and not whole:
            problem, path = samples.patch_problem((h, w), patch_size), _name(table[i], "lr")
        if problem:
            bad.append(samples.Finding(path, problem))
        else:
            keep.append(i)
    table = table.select(keep) if len(keep) < len(table) else table
    return table.remove_columns(["problem", "problem_file"])


Columns = tuple[str, str, str]  # the source's LR, HR and id columns (--lr-column, --hr-column, --id-column)


def _resolved_paths(batch: dict[str, list], column: str, root: str) -> dict[str, list]:
    """Relative paths of a batch's `column` resolved against `root`; absolute ones stay as they are."""
    return {column: [None if p is None else os.path.join(root, p) for p in batch[column]]}


def _as_image_cells(table: datasets.Dataset, column: str, what: str, root: Path | None) -> datasets.Dataset:
    """A column of images, file paths or encoded bytes as undecoded image cells. Relative paths are resolved
    against the dataset's folder (`root`), so a table loads the same from any working directory."""
    kind = table.features[column]
    if isinstance(kind, datasets.Value) and kind.dtype in ("string", "large_string"):
        if root is not None:
            # A map (a new cached table), not remove_columns + add_column: that table's empty leftover block
            # breaks its unpickling in the store's worker processes (datasets 5.2).
            table = table.map(_resolved_paths, batched=True, fn_kwargs={"column": column, "root": str(root)},
                              desc=f"Resolving {column} paths")
    elif not (isinstance(kind, datasets.Image)
              or isinstance(kind, datasets.Value) and kind.dtype in ("binary", "large_binary")):
        raise UserError(f"{what} holds {kind}, not images, file paths or encoded bytes")
    return table.cast_column(column, datasets.Image(decode=False))


def _with_ids_and_images(table: datasets.Dataset, columns: dict[str, str], where: str,
                         root: Path | None) -> datasets.Dataset:
    """Normalise a user's table to ours: its `columns` (our name -> its name; `id` optional when it is the
    default "id") become `id` (string; made from the row index when absent) and undecoded image cells."""
    if len(set(columns.values())) < len(columns):
        roles = ", ".join(f"--{ours}-column {theirs}" for ours, theirs in columns.items())
        raise UserError(f"{where}: one column given two roles ({roles})")
    for ours, theirs in columns.items():
        if theirs not in table.column_names and (ours, theirs) != ("id", "id"):
            raise UserError(f"{where}: no column '{theirs}' (--{ours}-column); it has: {', '.join(table.column_names)}")
    present = {theirs: ours for ours, theirs in columns.items() if theirs in table.column_names}
    table = table.select_columns(list(present)).rename_columns(present)
    if "id" not in table.column_names:
        table = table.add_column("id", [f"{i:05d}.png" for i in range(len(table))])
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

    files = sources.data_files(root)
    suffix = collections.Counter(f.suffix for f in files).most_common(1)[0][0]
    by_split: dict[str, list[str]] = {}
    for file in (f for f in files if f.suffix == suffix):
        words = set(re.split(r"[-._ 0-9/]+", str(file.relative_to(root).with_suffix("")).lower()))
        split = next((str(s) for s, keywords in SPLIT_KEYWORDS.items() if words & set(keywords)), "train")
        by_split.setdefault(split, []).append(str(file))
    return {".jsonl": "json"}.get(suffix, suffix[1:]), by_split


def _load_table(source: str, kind: str, columns: Columns = ("lr", "hr", "id"), lr_from_hr: str | None = None
                ) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The train and test tables of a saved dataset, a folder of data files or a hub dataset (`kind`, from
    sources.source_kind), with the source's `columns` (LR, HR, id) normalised to ours; with `lr_from_hr`,
    the training LR is made from the HR (its LR column is not read)."""
    root = Path(source).expanduser() if kind != "hub" else None
    try:
        if kind == "saved":
            loaded = datasets.load_from_disk(str(root))
        elif kind == "files":
            # Split by split: one load would give every split the first file's columns, and test has no HR.
            builder, files = _builder_and_files(root)
            loaded = datasets.DatasetDict({split: datasets.load_dataset(builder, data_files={split: paths}, split=split)
                                           for split, paths in files.items()})
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
    train = _lr_made_from_hr(_with_ids_and_images(train, wanted, f"{source} (train)", root), lr_from_hr)
    if test is not None:
        test = _with_ids_and_images(test, {"lr": lr, "id": image_id}, f"{source} (test)", root)
    return train, test


def _code_fingerprint(table: datasets.Dataset, function, *args) -> str:
    """Cache key of `table.map(function)`. datasets hashes a module-level function by its name only,
    so after an upgrade that changed the checks it would reuse the old version's cached results;
    this key changes with the function's code (and the rules module it calls)."""
    import inspect

    code = inspect.getsource(function) + Path(samples.__file__).read_text(encoding="utf-8")
    return hashlib.sha256(repr((table._fingerprint, code, args)).encode()).hexdigest()[:32]


def load_splits(data: str | os.PathLike | None, *, val_fraction: float, seed: int, scale: int = 4,
                on_bad_sample: str = "error", patch_size: int = 0, store_dir: str | None = None,
                store_gb: float = 64, store_workers: int | None = None, columns: Columns = ("lr", "hr", "id"),
                folders: dict[str, str | None] | None = None, lr_from_hr: str | None = None, say=print) -> Splits:
    """Load a data source, check every pair once (in the decoded store's pass, store.py), and split off
    validation pairs.

    `data` is a folder with train/LR + train/HR (+ test/LR), a DIV2K-like folder, a `save_to_disk` folder, a folder
    of data files `datasets.load_dataset` reads (a hub dataset on disk), or a hub id; `columns`: the LR, HR and id
    columns of a table source (the test split's LR and id too); `folders` (sources.Folders field -> path, from
    --hr-dir and its siblings) replace or stand in for an image folder's own, and a given validation set
    replaces the `val_fraction` split; `lr_from_hr` (a degrade.KERNELS name): the training and validation LR
    images are made from the HR ones, LR files are not read.
    Call under `accelerator.main_process_first()` so one rank builds the caches the others reuse.
    Bad files or pairs (the rules of `samples`, the same ones `check-data` applies) stop the run with
    one line naming the first, or with `on_bad_sample="skip"` are left out and each logged once through
    `say` (so are, then, pairs too small for a `patch_size` crop). `store_dir`, `store_gb`: the decoded store's
    folder and budget; `store_workers`: processes that build it (default: one per usable core).
    """
    source = os.fspath(data) if data is not None else None
    bad: list[samples.Finding] = []
    val = None  # the given validation set, or None: split off the training pairs
    kind, found = sources.locate(source, folders or {}, scale, hr_only=bool(lr_from_hr))
    if found is not None:
        source = source or str(found.train_hr)
        train, val, test = _load_folders(found, scale, bad, say, lr_from_hr)
        _settle(bad, on_bad_sample, say, source)  # before decoding anything
    else:
        train, test = _load_table(source, kind, columns, lr_from_hr)
    if val is not None and train is not None:  # one store and one check pass for both; split again below
        train = datasets.concatenate_datasets([train.add_column("held_out", [False] * len(train)),
                                               val.add_column("held_out", [True] * len(val))])

    # Decode every pair once: bad files fail now, naming the file, instead of in a worker mid-epoch. The same
    # pass, over all cores, writes the decoded store (when it fits the budget): the table's `store_row` finds it.
    found, pixels = [], None
    if train is not None:
        decoded = store.open_or_build(train, scale=scale, store_dir=store_dir, budget_gb=store_gb,
                                      workers=store_workers or len(os.sched_getaffinity(0)), say=say)
        pixels = decoded if decoded.pixels else None
        train = train.add_column("store_row", list(range(len(train))))
        for column in ("lr_height", "lr_width", "problem", "problem_file"):
            train = train.add_column(column, [row[column] for row in decoded.rows])
        train = _drop_problems(train, found, patch_size if on_bad_sample == "skip" else 0)
    if test is not None:
        test = test.map(_probe_lr, desc="Checking test images", new_fingerprint=_code_fingerprint(test, _probe_lr))
        test = _drop_problems(test, found)
    skipped = len(bad) + _settle(found, on_bad_sample, say, source)
    if skipped:
        say(f"--on-bad-sample skip: left out {skipped} bad file(s) or pair(s), listed above")
    if test is not None and not len(test):
        test = None
    if train is not None and "held_out" in train.column_names:
        held_out = np.asarray(train["held_out"])
        train, val = (train.select(np.flatnonzero(held_out == side)).remove_columns("held_out") for side in (0, 1))
        if not len(train) or not len(val):
            raise UserError(f"{source}: needs at least 1 usable training pair and 1 usable validation pair")
        return Splits(train=train, val=val, test=test, source=source, skipped=skipped, pixels=pixels)
    if train is None or len(train) < 2:
        raise UserError(f"{source}: needs at least 2 usable training pairs to hold out a validation pair")
    parts = train.train_test_split(test_size=val_fraction, seed=seed, shuffle=True)
    return Splits(train=parts["train"], val=parts["test"], test=test, source=source, skipped=skipped, pixels=pixels)


def streaming_train(train: datasets.Dataset, *, seed: int, rank: int, world_size: int, workers: int):
    """The training pairs as a sharded, shuffled `IterableDataset` holding only this rank's share."""
    from datasets.distributed import split_dataset_by_node

    # Shard counts divisible by ranks x workers give every reader whole shards, not every n-th row.
    shards = world_size * max(1, workers)
    shards *= max(1, min(len(train) // shards, 8))
    stream = train.to_iterable_dataset(num_shards=min(shards, len(train)))
    stream = split_dataset_by_node(stream, rank=rank, world_size=world_size)
    return stream.shuffle(seed=seed, buffer_size=256)


# ---------------------------------------------------------------------------------------------
# Samples


def to_chw(image: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> 3xHxW uint8 tensor (floats are made on the device, 4x less to copy)."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def store_rows(table: datasets.Dataset) -> np.ndarray:
    """Each table row's row in the decoded store."""
    return np.asarray(table["store_row"], dtype=np.int64)


class TrainPairs(torch.utils.data.Dataset):
    """Map-style training samples: one pair's window per index.

    With the decoded store (`pixels`, store.py) a window is a slice of its memory-mapped arrays. Without it
    (above --store-gb) each worker decodes pairs, keeping them up to `cache_mb` (with persistent workers,
    later epochs then decode nothing), and `crops_per_decode` K > 1 makes every K consecutive samples share
    one pair (a seeded choice per epoch): an epoch decodes 1/K of the pairs, K crops each. Consecutive
    samples fall in one batch, so the loader must not shuffle then (`shuffles`).
    """

    def __init__(self, table: datasets.Dataset, *, patch_size: int, scale: int, seed: int,
                 cache_mb: int = 0, pixels: store.Store | None = None, crops_per_decode: int = 1) -> None:
        self.table, self.patch_size, self.scale, self.seed = table, patch_size, scale, seed
        self.pixels, self.rows = pixels, store_rows(table) if pixels is not None else None
        self.crops_per_decode = crops_per_decode if pixels is None else 1
        self.shuffles = self.crops_per_decode == 1  # else the pairs' order is drawn here, per epoch
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, pair order), per worker process
        self._last: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None  # the pair decoded last
        # In shared memory: persistent workers, started once, must see each new epoch's value.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # per worker process
        self._cache_room = cache_mb * 2**20

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.table)

    def _decoded(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.pixels is not None:
            return self.pixels.pair(self.rows[index])
        pair = self._cache.get(index)
        if pair is None:
            pair = samples.decode_pair(self.table[index], self.scale)
            size = pair[0].nbytes + pair[1].nbytes
            if size <= self._cache_room:
                self._cache[index], self._cache_room = pair, self._cache_room - size
        return pair

    def _pair_of(self, index: int) -> int:
        if self.crops_per_decode == 1:
            return index
        epoch = self.epoch
        if self._order is None or self._order[0] != epoch:
            self._order = epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.table))
        return int(self._order[1][index // self.crops_per_decode])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The sample's LR and HR windows (HxWx3 uint8, as stored) and its flip/rotation code, which the
        training step applies to the whole batch on its device (crops.augment)."""
        pair = self._pair_of(index)
        if self._last is None or self._last[0] != pair:
            self._last = pair, self._decoded(pair)
        return pair_window(*self._last[1], self.patch_size, self.scale, crop_draws(self.seed, self.epoch, index))


class StreamedPairs(torch.utils.data.IterableDataset):
    """Iterable training samples from a (rank-sharded) streaming dataset; workers split its shards. Windows come
    from the decoded store when there is one; otherwise each decoded pair gives `crops_per_decode` consecutive
    samples (as TrainPairs)."""

    def __init__(self, stream: datasets.IterableDataset, *, patch_size: int, scale: int, seed: int,
                 pixels: store.Store | None = None, crops_per_decode: int = 1) -> None:
        self.stream, self.patch_size, self.scale, self.seed = stream, patch_size, scale, seed
        self.pixels, self.epoch = pixels, 0
        self.crops_per_decode = crops_per_decode if pixels is None else 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.stream.set_epoch(epoch)  # reshuffles the shard order and the buffer

    def __iter__(self):
        for row in self.stream:
            if self.pixels is not None:
                lr, hr = self.pixels.pair(row["store_row"])
            else:
                lr, hr = samples.decode_pair(row, self.scale)
            key = zlib.crc32(row["id"].encode()) * self.crops_per_decode
            for crop in range(self.crops_per_decode):
                yield pair_window(lr, hr, self.patch_size, self.scale, crop_draws(self.seed, self.epoch, key + crop))


class EvalImages(torch.utils.data.Dataset):
    """Whole images for validation or prediction: (index, LR) or (index, LR, HR), uint8 CHW."""

    def __init__(self, table: datasets.Dataset, *, with_hr: bool, pixels: store.Store | None = None,
                 scale: int = 4) -> None:
        self.table, self.with_hr, self.scale = table, with_hr, scale
        self.pixels, self.rows = pixels, store_rows(table) if pixels is not None else None

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int):
        if self.pixels is not None:  # validation pairs come from the store too
            lr, hr = self.pixels.pair(self.rows[index])
            return (index, to_chw(lr), to_chw(hr)) if self.with_hr else (index, to_chw(lr))
        row = self.table[index]
        if not self.with_hr:
            return index, to_chw(decode_rgb(row["lr"], _name(row, "lr")))
        lr, hr = samples.decode_pair(row, self.scale)
        return index, to_chw(lr), to_chw(hr)


def check_patch_size(table: datasets.Dataset, patch_size: int, batch_size: int, source: str) -> None:
    """Fail before training when crops cannot be taken or full images cannot be batched."""
    heights, widths = table["lr_height"], table["lr_width"]
    if patch_size:
        smallest = min(zip(heights, widths), key=min)
        if min(smallest) < patch_size:
            raise UserError(
                f"{source}: --patch-size {patch_size} is larger than the smallest LR image "
                f"({smallest[1]}x{smallest[0]}); use --patch-size {min(smallest)} or less"
            )
    elif batch_size > 1 and len(set(zip(heights, widths))) > 1:
        raise UserError(f"{source}: full-image training (--patch-size 0) with images of different sizes "
                        "needs --batch-size 1")


def worker_context() -> multiprocessing.context.BaseContext:
    """How DataLoader workers are started: from a fork server, never by forking the training process.

    A training process has threads (gloo's, TensorBoard's writer, tqdm's monitor, CUDA's); a fork copies
    only the forking thread, and an at-fork handler in the child can wait forever on a lock another thread
    held at that moment. That hung a 2-process run at its first validation (its worker was stuck inside
    `os.fork()`). The fork server is a fresh single-threaded interpreter (started by fork+exec) that has
    imported this module once, so each worker forks from it in milliseconds, already set up.
    """
    context = multiprocessing.get_context("forkserver")
    # Preloaded once in the server (when it starts) instead of in every worker: this module, and the main
    # module, which each worker imports again as `__mp_main__` (cheap once its imports are loaded).
    main_spec = getattr(sys.modules["__main__"], "__spec__", None)
    context.set_forkserver_preload(["__main__", __name__, *([main_spec.name] if main_spec else [])])
    return context


def _set_signal_mask(mask: set[signal.Signals], worker_id: int) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def start_worker_server() -> None:
    """Start the fork server now: its one-time import (seconds) then overlaps the run's set-up instead of
    delaying the first batch. Call it before blocking signals: starting it starts multiprocessing's resource
    tracker, which unblocks SIGINT and SIGTERM in this process (Python 3.11's `resource_tracker`)."""
    import multiprocessing.forkserver

    worker_context()
    multiprocessing.forkserver.ensure_running()


def loader_kwargs(num_workers: int, persistent: bool = True, timeout: float = 0) -> dict[str, Any]:
    """Persistent workers start once per run, not once per epoch (seconds each on a small CPU), and keep
    their decoded-image caches; a streaming dataset's workers must restart to see its new epoch.
    `timeout`: seconds to wait for a worker's next batch before failing (0: forever)."""
    # Workers keep this process's signal mask, as forked ones would: a worker started through the fork
    # server would otherwise take the SIGTERM meant for its rank (checkpoint.PreemptionFlag) and die.
    keep_mask = functools.partial(_set_signal_mask, signal.pthread_sigmask(signal.SIG_BLOCK, []))
    workers = ({"multiprocessing_context": worker_context(), "timeout": timeout, "worker_init_fn": keep_mask}
               if num_workers else {})
    return {"num_workers": num_workers, "pin_memory": torch.cuda.is_available(),
            "persistent_workers": persistent and num_workers > 0, **workers}


def collate_windows(samples: list[tuple[np.ndarray, np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A batch of training windows as numpy arrays: (B, h, w, 3) LR, (B, sh, sw, 3) HR, (B,) codes.

    Numpy, not tensors, because a worker pickles them by value through its pipe, which is fast; a tensor
    would be handed over in shared memory through a file descriptor passed over a socket, one round trip per
    tensor and batch: 2,000 against 6,800 crops/s from one worker on 2K pairs (bench data, batch 16).
    """
    lr, hr, codes = zip(*samples)
    return np.stack(lr), np.stack(hr), np.array(codes, np.int64)


def train_loader(table: datasets.Dataset, *, batch_size: int, patch_size: int, scale: int, seed: int,
                 num_workers: int, cache_mb: int = 0, timeout: float = 0, pixels: store.Store | None = None,
                 crops_per_decode: int = 1) -> DataLoader:
    samples = TrainPairs(table, patch_size=patch_size, scale=scale, seed=seed, cache_mb=cache_mb, pixels=pixels,
                         crops_per_decode=crops_per_decode)
    # drop_last: every step sees a full batch, so the loss scale does not change at epoch ends.
    return DataLoader(samples, batch_size=batch_size, shuffle=samples.shuffles, drop_last=len(samples) >= batch_size,
                      collate_fn=collate_windows, **loader_kwargs(num_workers, timeout=timeout))


def eval_loader(table: datasets.Dataset, *, with_hr: bool, num_workers: int, timeout: float = 0,
                pixels: store.Store | None = None) -> DataLoader:
    # Batch of one: validation and test images may all differ in size.
    return DataLoader(EvalImages(table, with_hr=with_hr, pixels=pixels), batch_size=1, shuffle=False,
                      **loader_kwargs(num_workers, timeout=timeout))
