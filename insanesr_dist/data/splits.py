"""The training, validation and test splits of a data source: loaded (sources), checked pair by pair with the
bad ones reported or dropped (--on-bad-sample), the seeded validation hold-out, and the patch-size check.

It composes sources, pairs and store into what training and check-data consume, and is the only data module
that decides which pairs a run trains on.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from insanesr_dist.data import images, pairs, sources, store
from insanesr_dist.data.pairs import cell_name
from insanesr_dist.data.sources import Columns, load_folders, load_table, probe_lr
from insanesr_dist.errors import UserError

# The store's decoding processes start from the DataLoader workers' fork server, an interpreter that imports
# torch first (seconds of CPU): a set of fewer pairs than this is decoded sooner by this process alone.
FEW_PAIRS = 32


@dataclass
class Splits:
    """Training pairs, held-out validation pairs and (optionally) LR-only test images."""

    train: datasets.Dataset | datasets.IterableDataset | None  # None: streamed (stream.open_streaming)
    val: datasets.Dataset
    test: datasets.Dataset | None
    source: str
    skipped: int = 0  # bad files or pairs left out with --on-bad-sample skip
    pixels: store.Store | None = None  # the decoded pairs, by the tables' `store_row` column (store.py)


def _settle(bad: list[pairs.Finding], on_bad_sample: str, say, source: str) -> int:
    """--on-bad-sample: `error` stops at the first bad file, naming it (and counting the rest);
    `skip` logs each one once. Returns how many were skipped."""
    if bad and on_bad_sample == "error":
        more = (
            f" (and more: `insanesr-dist check-data {source}` lists every problem; "
            "--on-bad-sample skip trains without them)"
            if len(bad) > 1
            else ""
        )
        raise UserError(f"{images.show(bad[0].path)}: {bad[0].problem}{more}")
    for finding in bad:
        say(f"skipping {images.show(finding.path)}: {finding.problem}")
    return len(bad)


def _drop_problems(table: datasets.Dataset, bad: list[pairs.Finding], patch_size: int = 0) -> datasets.Dataset:
    """Keep the rows whose probe found no problem (and, when given, that fit a `patch_size` crop);
    the others go to `bad`, named by the probe's message."""
    keep = []
    held_out = table["held_out"] if "held_out" in table.column_names else [False] * len(table)
    rows = zip(table["problem"], table["problem_file"], table["lr_height"], table["lr_width"], held_out)
    for i, (problem, path, h, w, whole) in enumerate(rows):  # a given validation set is never cropped
        if not problem and patch_size and min(h, w) < patch_size and not whole:
            problem, path = pairs.patch_problem((h, w), patch_size), cell_name(table[i], "lr")
        if problem:
            bad.append(pairs.Finding(path, problem))
        else:
            keep.append(i)
    table = table.select(keep) if len(keep) < len(table) else table
    return table.remove_columns(["problem", "problem_file"])


def _code_fingerprint(table: datasets.Dataset, function, *args) -> str:
    """Cache key of `table.map(function)`. datasets hashes a module-level function by its name only,
    so after an upgrade that changed the checks it would reuse the old version's cached results;
    this key changes with the function's code (and the rules module it calls)."""
    import inspect

    code = inspect.getsource(function) + "".join(Path(m.__file__).read_text(encoding="utf-8") for m in (images, pairs))
    return hashlib.sha256(repr((table._fingerprint, code, args)).encode()).hexdigest()[:32]


def load_splits(
    data: str | os.PathLike | None,
    *,
    val_fraction: float,
    seed: int,
    scale: int = 4,
    on_bad_sample: str = "error",
    patch_size: int = 0,
    store_dir: str | None = None,
    store_gb: float = 64,
    store_workers: int | None = None,
    columns: Columns = ("lr", "hr", "id"),
    folders: dict[str, str | None] | None = None,
    lr_from_hr: str | None = None,
    say=print,
) -> Splits:
    """Load a data source, check every pair once (in the decoded store's pass, store.py), and split off
    validation pairs.

    `data` is a folder with train/LR + train/HR (+ test/LR), a DIV2K-like folder, a `save_to_disk` folder, a folder
    of data files `datasets.load_dataset` reads (a hub dataset on disk), or a hub id; `columns`: the LR, HR and id
    columns of a table source (the test split's LR and id too); `folders` (sources.Folders field -> path, from
    --hr-dir and its siblings) replace or stand in for an image folder's own, and a given validation set
    replaces the `val_fraction` split; `lr_from_hr` (a degrade.KERNELS name): the training and validation LR
    images are made from the HR ones, LR files are not read.
    Call under `accelerator.main_process_first()` so one rank builds the caches the others reuse.
    Bad files or pairs (the rules of pairs.py, the same ones `check-data` applies) stop the run with
    one line naming the first, or with `on_bad_sample="skip"` are left out and each logged once through
    `say` (so are, then, pairs too small for a `patch_size` crop). `store_dir`, `store_gb`: the decoded store's
    folder and budget; `store_workers`: processes that build it (default: one per usable core; this process
    alone for fewer than FEW_PAIRS pairs).
    """
    source = os.fspath(data) if data is not None else None
    bad: list[pairs.Finding] = []
    val = None  # the given validation set, or None: split off the training pairs
    kind, found = sources.locate(source, folders or {}, scale, hr_only=bool(lr_from_hr))
    if found is not None:
        source = source or str(found.train_hr)
        train, val, test = load_folders(found, scale, bad, say, lr_from_hr)
        _settle(bad, on_bad_sample, say, source)  # before decoding anything
    else:
        train, test = load_table(source, kind, columns, lr_from_hr)
    if val is not None and train is not None:  # one store and one check pass for both; split again below
        train = datasets.concatenate_datasets(
            [train.add_column("held_out", [False] * len(train)), val.add_column("held_out", [True] * len(val))]
        )

    # Decode every pair once: bad files fail now, naming the file, instead of in a worker mid-epoch. The same
    # pass, over all cores, writes the decoded store (when it fits the budget): the table's `store_row` finds it.
    found, pixels = [], None
    if train is not None:
        decoded = store.open_or_build(
            train,
            scale=scale,
            store_dir=store_dir,
            budget_gb=store_gb,
            workers=store_workers or (1 if len(train) < FEW_PAIRS else len(os.sched_getaffinity(0))),
            say=say,
        )
        pixels = decoded if decoded.pixels else None
        train = train.add_column("store_row", list(range(len(train))))
        for column in ("lr_height", "lr_width", "problem", "problem_file"):
            train = train.add_column(column, [row[column] for row in decoded.rows])
        train = _drop_problems(train, found, patch_size if on_bad_sample == "skip" else 0)
    if test is not None:
        test = test.map(probe_lr, desc="Checking test images", new_fingerprint=_code_fingerprint(test, probe_lr))
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
        raise UserError(
            f"{source}: full-image training (--patch-size 0) with images of different sizes needs --batch-size 1"
        )


def val_subset(count: int, limit: int, seed: int) -> list[int] | None:
    """The validation rows --val-max-images keeps: the first `limit` of a permutation seeded by --seed, in
    split order, so every epoch, rank and rerun scores the same images (None: all `count` of them)."""
    if not limit or limit >= count:
        return None
    return sorted(np.random.default_rng([seed, 14]).permutation(count)[:limit].tolist())
