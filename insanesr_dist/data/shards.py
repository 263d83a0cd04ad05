"""A streaming source as an ordered list of shards, and one shard's rows from any row on.

What `--data` names when it is streamed:
  - data files: a local folder of them (parquet, arrow, jsonl, WebDataset .tar; a hub dataset cloned to disk),
    a local path or glob, or remote URLs: http(s):// and any fsspec protocol whose package is installed
    (s3://, gs://, hf://). A brace range (train-{00000..00099}.parquet) or list ({a,b}) is expanded here, a glob
    by the filesystem where it lists (not http). Files are put in splits by name, as on the hub
    (train-00000.parquet, validation.parquet; a name without a split word is training data);
  - an image folder (train/LR + train/HR, DIV2K-like; sources.py): its pairs by name, in shards of
    FOLDER_SHARD_PAIRS pairs, each file read when its pair is;
  - a hub id: `datasets.load_dataset(id, streaming=True)`, its shards as the hub splits them.
Folders given as for training (--val-hr-dir with --val-lr-dir, --test-lr-dir) are the validation and test splits
of any of these, read as an image folder's; --hr-dir and --lr-dir stand in for an image folder's own.

Rows are read by `datasets` (load_dataset(builder, data_files=..., streaming=True) once per split, a shard being
`.shard()` of it), except an image folder's splits': nothing is downloaded or decoded ahead of the row being read, and
nothing but datasets' lock files lands in a cache (a temporary folder of their own, removed at exit). A row is
{"id", "lr", "hr"} with image cells {"bytes", "path"} as decode_rgb takes them.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import fsspec

from insanesr_dist.data import http_files, pairs, sources
from insanesr_dist.errors import UserError

BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".tar": "webdataset"}
ROWS_PER_READ = 8  # rows converted to Python at a time: a few images' bytes, not a row group's
FOLDER_SHARD_PAIRS = 64  # an image folder's pairs per shard: shards to deal out, each a few seconds of decoding
_SPLITS = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
}
_SPLITS |= {"dev": "validation", "test": "test", "testing": "test"}
_GLOB = re.compile(r"[*?\[]")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)")

http_files.register()  # here and in every DataLoader worker (they import this module to unpickle a Source)


def expand_braces(text: str) -> list[str]:
    """WebDataset-style braces, expanded in order: {00000..00099} (zero-padded as written), {a,b,c}; several
    braces give every combination. Text without braces is returned as is."""
    match = _BRACE.search(text)
    if match is None:
        return [text]
    inner = match[1]
    numbers = _RANGE.fullmatch(inner)
    if numbers:
        first, last = numbers.groups()
        width = len(first) if first.startswith("0") or len(first) == len(last) else 0
        step = 1 if int(last) >= int(first) else -1
        choices = [f"{n:0{width}d}" for n in range(int(first), int(last) + step, step)]
    elif "," in inner:
        choices = inner.split(",")
    else:
        raise UserError(f"{text}: {{{inner}}} is neither a range {{first..last}} nor a list {{a,b}}")
    head, tail = text[: match.start()], text[match.end() :]
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def split_of(name: str) -> str:
    """The split a data file belongs to by its name, as the hub decides (words of its path)."""
    words = re.split(r"[-._ 0-9/]+", name.lower())
    return next((_SPLITS[w] for w in words if w in _SPLITS), "train")


def _remote(name: str) -> bool:
    return "://" in name and not name.startswith("file://")


def _filesystem(url: str) -> fsspec.AbstractFileSystem:
    protocol = url.split("://")[0]
    try:
        return fsspec.filesystem(protocol)
    except (ImportError, ValueError) as e:
        raise UserError(f"{url}: cannot read {protocol}:// here ({e})") from None


def _expand(pattern: str) -> list[tuple[str, str]]:
    """One source text as files: braces expanded, globs listed (sorted), folders searched for data files. Each
    file comes with the part of its name its split is read from: below the folder or the glob's fixed part (a
    hub layout's train/0000.parquet), else its file name."""
    found: list[tuple[str, str]] = []
    for name in expand_braces(pattern):
        magic = _GLOB.search(name)
        fixed = name[: name.rfind("/", 0, magic.start()) + 1] if magic else ""
        if _remote(name):
            fs = _filesystem(name)  # a missing package is said now, not in a worker
            if not magic:
                found.append((name, name.rsplit("/", 1)[-1]))
                continue
            try:
                matches = sorted(fs.glob(name.split("://", 1)[1]))
            except NotImplementedError as e:
                raise UserError(str(e)) from None
            found += [(url, url[len(fixed) :]) for url in map(fs.unstrip_protocol, matches)]
            continue
        path = Path(name).expanduser()
        if magic:
            root = Path(fixed or ".").expanduser()
            found += [(str(p), p.relative_to(root).as_posix()) for p in sorted(root.glob(name[len(fixed) :]))]
        elif path.is_dir():
            files = [p for p in sources.data_files(path) if p.suffix in BUILDERS]
            files += [p for p in sorted(path.rglob("*.tar")) if not any(d.startswith(".") for d in p.parts)]
            found += [(str(p), p.relative_to(path).as_posix()) for p in files]
        elif path.is_file():
            found.append((str(path), path.name))
        else:
            raise UserError(f"{name}: no such file or folder")
    return found


@dataclasses.dataclass
class Source:
    """A streaming source: its shards by split, and how one is read (see `rows`)."""

    text: str
    kind: str  # "files", "folder" or "hub"
    splits: dict[str, list[str]]  # split -> shard names (a file, URL, or "<folder or id> shard i")
    columns: dict[str, dict[str, str]]  # split -> our column (lr, hr, id) -> the source's (id may be missing)
    builder: str | None = None  # files: the datasets builder (parquet, arrow, json, webdataset)
    # the splits read from image folders (a folder source's, or folders given for validation and test):
    # (id, LR path or None, HR path) of each pair, FOLDER_SHARD_PAIRS to a shard
    folder_pairs: dict[str, list[tuple[str, str | None, str]]] = dataclasses.field(default_factory=dict)
    # files and hub: each split's streamed table, made once (datasets' load_dataset also pings the hub's download
    # counter when online: once per source, not per shard); a shard is `.shard()` of it, which reads nothing
    tables: dict[str, datasets.IterableDataset] = dataclasses.field(default_factory=dict)
    lr_from_hr: str | None = None  # a degrade.KERNELS name: LR made from HR, no LR column read
    findings: list[pairs.Finding] = dataclasses.field(default_factory=list)  # folder: files that pair with nothing

    def shards(self, split: str = "train") -> list[str]:
        return self.splits.get(split, [])

    def describe(self) -> str:
        counts = ", ".join(f"{split} {len(names)}" for split, names in self.splits.items())
        what = {"files": f"{self.builder} files", "folder": "an image folder", "hub": "a hub dataset"}[self.kind]
        given = [split for split in self.folder_pairs if split != "train"] if self.kind != "folder" else []
        return f"{self.text}: {what}, shards: {counts}" + (f" ({', '.join(given)} from folders)" if given else "")

    def rows(self, split: str, shard: int, start: int = 0) -> Iterator[tuple[int, dict]]:
        """(row number, row) of one shard from row `start` on; its read errors are raised as they come."""
        name = self.splits[split][shard]
        if split in self.folder_pairs:
            chunk = self.folder_pairs[split][shard * FOLDER_SHARD_PAIRS : (shard + 1) * FOLDER_SHARD_PAIRS]
            for row in range(start, len(chunk)):
                image_id, lr, hr = chunk[row]
                row_cells = {"id": image_id, "lr": _cell(lr or hr), "hr": _cell(hr)}
                if self.lr_from_hr:
                    row_cells["lr_from_hr"] = self.lr_from_hr
                yield row, row_cells
            return
        table = self.tables[split].shard(num_shards=len(self.splits[split]), index=shard)
        if self.kind == "hub":
            rows = _examples(table.skip(start) if start else table)
            yield from enumerate((self._ours(split, example) for example in rows), start)
            return
        base = name.rsplit("/", 1)[0] if _remote(name) else str(Path(name).parent)
        for row, example in self._from_row(table, name, start):
            yield row, self._ours(split, example, base, f"{Path(name).stem}-{row:05d}")

    def _from_row(self, table: datasets.IterableDataset, name: str, start: int) -> Iterator[tuple[int, dict]]:
        """The table's rows from `start`: a parquet file's row groups before it are not read at all (its footer
        says where they end), other formats are read through from their start."""
        if start and self.builder == "parquet":
            import pyarrow.parquet as pq

            with fsspec.open(name, "rb") as f:
                counts = [group.num_rows for group in _row_groups(pq.read_metadata(f))]
            groups = table.reshard()
            if groups.num_shards == len(counts):
                first = next((g for g in range(len(counts)) if sum(counts[: g + 1]) > start), len(counts))
                row = sum(counts[:first])
                for g in range(first, len(counts)):
                    group = groups.shard(num_shards=len(counts), index=g)
                    skip = start - row if g == first else 0
                    yield from enumerate(_examples(group.skip(skip) if skip else group), row + skip)
                    row += counts[g]
                return
        yield from enumerate(_examples(table.skip(start) if start else table), start)

    def _ours(self, split: str, example: dict, base: str | None = None, default_id: str = "") -> dict:
        columns = self.columns[split]
        row = {"id": str(example[columns["id"]]) if columns.get("id") in example else default_id}
        for ours in ("lr", "hr"):
            row[ours] = _cell(example[columns[ours]], base) if ours in columns else _cell(None)
        if self.lr_from_hr and split != "test":
            row["lr"], row["lr_from_hr"] = row["hr"], self.lr_from_hr
        return row


def _examples(table: datasets.IterableDataset) -> Iterator[dict]:
    """A streamed table's rows, read in small batches. Not `iter(table)`: in a DataLoader worker that would
    split the table's shards between the workers itself (datasets' own worker sharding), and a one-shard table
    would give every worker but the first nothing."""
    for batch in table.iter(batch_size=ROWS_PER_READ):
        columns = list(batch.values())
        for i in range(len(columns[0]) if columns else 0):
            yield dict(zip(batch, (column[i] for column in columns)))


def _row_groups(metadata) -> list:
    return [metadata.row_group(g) for g in range(metadata.num_row_groups)]


_LOCKS: list[str] = []


def _lock_folder() -> str:
    """Where `datasets` puts the lock files of streamed loads (they hold no data): one temporary folder per
    process, so a long run over many shards leaves none in the user's cache."""
    if not _LOCKS:
        _LOCKS.append(tempfile.mkdtemp(prefix="insanesr-stream-"))
        atexit.register(shutil.rmtree, _LOCKS[0], ignore_errors=True)
    return _LOCKS[0]


def _cell(value, base: str | None = None) -> dict:
    """An image cell as decode_rgb takes it: {"bytes", "path"} from an Image cell, raw bytes or a path (a
    relative one against the shard's folder or URL)."""
    if isinstance(value, dict):
        cell = {"bytes": value.get("bytes"), "path": value.get("path")}
        if cell["bytes"] is None and cell["path"]:
            cell["path"] = _resolved(cell["path"], base)
        return cell
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, str):
        return {"bytes": None, "path": _resolved(value, base)}
    return {"bytes": None, "path": None}  # an empty cell: decode_rgb says "empty file"


def _resolved(path: str, base: str | None) -> str:
    if _remote(path) or base is None or os.path.isabs(path):
        return path
    return f"{base}/{path}" if _remote(base) else str(Path(base) / path)


def read_cell(cell: dict) -> dict:
    """A cell with its bytes: a remote path's file fetched (decode_rgb reads local ones itself)."""
    if cell.get("bytes") is None and cell.get("path") and _remote(cell["path"]):
        try:
            with fsspec.open(cell["path"], "rb") as f:
                return {"bytes": f.read(), "path": cell["path"]}
        except (OSError, ValueError) as e:
            raise UserError(f"{cell['path']}: cannot be read ({e})") from None
    return cell


class ShardUnreadable(Exception):
    """A shard that could not be read, retries included: its one line."""


def shard_rows(
    source: Source, split: str, shard: int, start: int, *, retries: int, backoff_s: float
) -> Iterator[tuple[int, dict]]:
    """(row, row dict) of a shard from `start`; a read that fails is retried from the row it reached, after
    `backoff_s`, 2x, 4x, ... seconds, then raises ShardUnreadable naming the shard."""
    name, row, failures = source.shards(split)[shard], start, 0
    while True:
        try:
            for row_number, example in source.rows(split, shard, row):
                row = row_number + 1
                yield row_number, example
            return
        except Exception as e:  # any loader or filesystem error is this shard's read failing
            failures += 1
            if failures > retries:
                what = f"{type(e).__name__}: {e}".splitlines()[0]
                raise ShardUnreadable(f"{name}: cannot be read (at row {row}, {retries} retries): {what}") from None
            time.sleep(backoff_s * 2 ** (failures - 1))


def iter_rows(
    source: Source, split: str = "train", *, bad: Callable[[str], None], retries: int = 3, backoff_s: float = 0.5
) -> Iterator[tuple[str, dict]]:
    """Every row of a split in canonical order, once: (where: "<shard> row N", row). An unreadable shard is one
    line to `bad`; reading goes on."""
    for shard, name in enumerate(source.shards(split)):
        try:
            for row, example in shard_rows(source, split, shard, 0, retries=retries, backoff_s=backoff_s):
                yield f"{name} row {row}", example
        except ShardUnreadable as e:
            bad(str(e))


# ---------------------------------------------------------------------------------------------
# Resolving


def resolve(
    source: str | list[str] | None,
    *,
    columns: tuple[str, str, str] = ("lr", "hr", "id"),
    scale: int = 4,
    lr_from_hr: str | None = None,
    folders: dict[str, str | None] | None = None,
) -> Source:
    """What a streaming `--data` names (see the module's doc), as shards by split; `columns`: the source's LR,
    HR and id columns (--lr-column, --hr-column, --id-column). Reads one shard's schema (a WebDataset tar: its
    first samples), nothing else. `folders` (sources.Folders field -> path: --hr-dir and its siblings): with an
    image folder, or no `source`, they stand in for its own folders as in map-style training; with data files
    or a hub id, --val-hr-dir/--val-lr-dir and --test-lr-dir are its validation and test splits instead of its
    own."""
    given = {field: path for field, path in (folders or {}).items() if path}
    texts = [] if source is None else [source] if isinstance(source, str) else list(source)
    if not texts or _is_image_folder(texts, scale, bool(lr_from_hr)):
        found = sources.resolve(texts[0] if texts else None, given, scale, hr_only=bool(lr_from_hr))
        return _folder_source(" ".join(texts) or str(found.train_hr), found, scale, lr_from_hr)
    streamed = _table_source(texts, columns, lr_from_hr)
    return _with_eval_folders(streamed, given, scale, lr_from_hr) if given else streamed


def _one_local_name(texts: list[str]) -> Path | None:
    """The path when the source is one local name without braces or globs (a folder, a file, or a hub id)."""
    text = texts[0]
    if len(texts) > 1 or _remote(text) or _GLOB.search(text) or "{" in text:
        return None
    return Path(text).expanduser()


def _is_image_folder(texts: list[str], scale: int, hr_only: bool) -> bool:
    path = _one_local_name(texts)
    return path is not None and path.is_dir() and sources.find(path, scale, hr_only) is not None


def _table_source(texts: list[str], columns: tuple[str, str, str], lr_from_hr: str | None) -> Source:
    """Data files (local or remote) or a hub id as a Source."""
    text = " ".join(texts)
    path = _one_local_name(texts)
    if path is not None and not path.exists():
        if text.startswith((".", "/", "~")) or text.count("/") > 1:
            raise UserError(f"{text}: no such file or folder")
        return _hub_source(text, columns, lr_from_hr)
    named = [found for t in texts for found in _expand(t)]
    files = [name for name, _ in named]
    if not files:
        raise UserError(f"{text}: no data files found (looked for {', '.join(sorted(BUILDERS))})")
    suffixes = collections.Counter(Path(name.split("?")[0]).suffix for name in files)
    suffix = suffixes.most_common(1)[0][0]
    if suffix not in BUILDERS:
        raise UserError(f"{text}: {suffix or 'files without a suffix'} cannot be streamed ({', '.join(BUILDERS)})")
    splits: dict[str, list[str]] = {}
    for name, relative in named:
        if Path(name.split("?")[0]).suffix == suffix:
            splits.setdefault(split_of(relative), []).append(name)
    if "train" not in splits:
        raise UserError(f"{text}: has splits {', '.join(splits)}; a 'train' split is needed")
    builder, tables, mapped = BUILDERS[suffix], {}, {}
    for split, names in splits.items():
        features, mapped[split] = _features(builder, names[0], _wanted(split, columns, lr_from_hr), text)
        files = datasets.data_files.DataFilesDict({split: datasets.data_files.DataFilesList(names, [()] * len(names))})
        options = {"columns": list(features)} if builder == "parquet" else {}
        options.update(split=split, streaming=True, features=features, cache_dir=_lock_folder())
        try:
            table = datasets.load_dataset(builder, data_files=files, **options)
        except Exception as e:  # every loader raises its own types; the user needs one line
            problem = f"{type(e).__name__}: {e}"
            raise UserError(f"{text}: its {split} files cannot be read as {builder} ({problem})") from None
        tables[split] = table if builder == "parquet" else table.select_columns(list(features))
    return Source(text, "files", splits, mapped, builder, tables=tables, lr_from_hr=lr_from_hr)


def _wanted(split: str, columns: tuple[str, str, str], lr_from_hr: str | None) -> dict[str, str]:
    """Our columns -> the source's, that a split is read for: a test split has no HR, and LR made from the HR
    (lr_from_hr) needs no LR column."""
    lr, hr, image_id = columns
    if split == "test":
        return {"lr": lr, "id": image_id}
    return {"hr": hr, "id": image_id} if lr_from_hr else {"lr": lr, "hr": hr, "id": image_id}


def _features(builder: str, first: str, wanted: dict[str, str], text: str):
    """The columns to read (the source's names for ours) and their features, image columns undecoded."""
    try:
        probe = datasets.load_dataset(
            builder, data_files=[first], split="train", streaming=True, cache_dir=_lock_folder()
        )
        features = probe.features
        if features is None:  # json: known once a row is read
            features = next(iter(probe)) and probe.features
    except Exception as e:  # every loader raises its own types; the user needs one line
        raise UserError(f"{first}: cannot be read as {builder} ({type(e).__name__}: {e})") from None
    if features is None:
        raise UserError(f"{first}: no columns found")
    mapped = {}
    for ours, theirs in wanted.items():
        if theirs in features:
            mapped[ours] = theirs
            continue
        # WebDataset names a sample's files by extension: lr.png, hr.png; its key is the sample's id
        named = [c for c in features if c.split(".")[0] == theirs]
        if len(named) == 1:
            mapped[ours] = named[0]
        elif ours == "id" and "__key__" in features:
            mapped[ours] = "__key__"
        elif ours != "id":
            raise UserError(f"{text}: no column '{theirs}' (--{ours}-column) in {first}; it has: {', '.join(features)}")
    kept = datasets.Features({c: features[c] for c in mapped.values()})
    for ours in ("lr", "hr"):
        column = mapped.get(ours)
        if column is None:
            continue
        kind = kept[column]
        if isinstance(kind, datasets.Image):
            kept[column] = datasets.Image(decode=False)
        elif not (isinstance(kind, datasets.Value) and kind.dtype in ("binary", "large_binary", "string")):
            raise UserError(f"{text}: column '{column}' (--{ours}-column) holds {kind}, not images, bytes or paths")
    return kept, mapped


def _folder_splits(
    folders: sources.Folders, scale: int, lr_from_hr: str | None
) -> tuple[dict[str, list[str]], dict[str, list], list[pairs.Finding]]:
    """The shard names, pairs and bad-file findings of the splits that image folders hold, paired by name as
    training pairs them (files without a partner are findings: `check-data` lists them, training leaves them
    out, as they pair with nothing)."""
    splits, folder_pairs, findings = {}, {}, []
    sets = {"train": (folders.train_lr, folders.train_hr), "validation": (folders.val_lr, folders.val_hr)}
    for split, (lr_dir, hr_dir) in sets.items():
        if hr_dir is None:
            continue
        hr_files, hr_findings = pairs.scan_folder(hr_dir)
        lr_files, lr_findings = pairs.scan_folder(lr_dir) if lr_dir is not None else (hr_files, [])
        names, orphans = pairs.pair_names(lr_files, hr_files, scale)
        findings += [f for f in hr_findings + lr_findings + orphans if f.kind == "bad"]
        found = [(hr, None if lr_from_hr else str(lr_files[lr]), str(hr_files[hr])) for lr, hr in names]
        if found:
            folder_pairs[split] = found
            count = -(-len(found) // FOLDER_SHARD_PAIRS)
            splits[split] = [f"{hr_dir} shard {i}" for i in range(count)]
    if folders.test_lr is not None:
        test_files, _ = pairs.scan_folder(folders.test_lr)
        if test_files:
            folder_pairs["test"] = [(name, str(path), str(path)) for name, path in test_files.items()]
            splits["test"] = [f"{folders.test_lr} shard {i}" for i in range(-(-len(test_files) // FOLDER_SHARD_PAIRS))]
    return splits, folder_pairs, findings


def _folder_source(text: str, folders: sources.Folders, scale: int, lr_from_hr: str | None) -> Source:
    """An image folder's pairs (sources.Folders: its own folders, or those given in their place)."""
    splits, folder_pairs, findings = _folder_splits(folders, scale, lr_from_hr)
    if "train" not in splits:
        raise UserError(f"{text}: no training pairs found ({folders.describe()})")
    columns = {split: {"lr": "lr", "hr": "hr", "id": "id"} for split in splits}
    return Source(text, "folder", splits, columns, folder_pairs=folder_pairs, lr_from_hr=lr_from_hr, findings=findings)


def _with_eval_folders(source: Source, given: dict[str, str], scale: int, lr_from_hr: str | None) -> Source:
    """A data-files or hub source whose validation and test splits are the given folders (--val-hr-dir with
    --val-lr-dir, --test-lr-dir) instead of its own."""
    paths = {field: Path(path).expanduser() for field, path in given.items()}
    training = [sources.OPTIONS[field] for field in ("train_hr", "train_lr") if field in paths]
    if training:
        raise UserError(f"{source.text}: {', '.join(training)} need a folder of images as --data, not a dataset")
    for field, path in paths.items():
        if not path.is_dir():
            raise UserError(f"{path}: no such folder ({sources.OPTIONS[field]})")
    val_lr, val_hr = (None if lr_from_hr else paths.get("val_lr")), paths.get("val_hr")
    if not lr_from_hr and bool(val_lr) != bool(val_hr):
        have, need = ("val_lr", "val_hr") if val_lr else ("val_hr", "val_lr")
        raise UserError(f"{paths[have]}: {sources.OPTIONS[have]} needs {sources.OPTIONS[need]} too")
    folders = sources.Folders(val_lr=val_lr, val_hr=val_hr, test_lr=paths.get("test_lr"))
    splits, folder_pairs, findings = _folder_splits(folders, scale, lr_from_hr)
    for field, split in (("val_hr", "validation"), ("test_lr", "test")):
        if field in paths and split not in splits:
            raise UserError(f"{paths[field]}: no images found ({sources.OPTIONS[field]})")
    tables = {split: table for split, table in source.tables.items() if split not in splits}
    columns = {**source.columns, **{split: {"lr": "lr", "hr": "hr", "id": "id"} for split in splits}}
    return dataclasses.replace(
        source,
        splits={**source.splits, **splits},
        columns=columns,
        tables=tables,
        folder_pairs=folder_pairs,
        findings=source.findings + findings,
    )


def _hub_source(text: str, columns: tuple[str, str, str], lr_from_hr: str | None) -> Source:
    """A hub dataset, streamed as the hub shards it (its parquet files). Kept thin: it needs the network."""
    try:
        hub = datasets.load_dataset(text, streaming=True)
    except Exception as e:  # the hub raises many types; the user needs one line
        raise UserError(f"{text}: cannot be streamed as a hub dataset ({type(e).__name__}: {e})") from None
    if "train" not in hub:
        raise UserError(f"{text}: has splits {', '.join(hub)}; a 'train' split is needed")
    mapped = {}
    for split in list(hub):
        table, mapped[split] = hub[split], _wanted(split, columns, lr_from_hr)
        for ours in ("lr", "hr"):
            column = mapped[split].get(ours)
            if column in (table.features or {}) and isinstance(table.features[column], datasets.Image):
                table = table.cast_column(column, datasets.Image(decode=False))
        hub[split] = table
    splits = {split: [f"{text} {split} shard {i}" for i in range(hub[split].num_shards)] for split in hub}
    return Source(text, "hub", splits, mapped, tables=dict(hub), lr_from_hr=lr_from_hr)
