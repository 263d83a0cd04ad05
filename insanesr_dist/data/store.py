"""The decoded-pair store: every training pair decoded once, kept as raw uint8 RGB on disk and memory-mapped.

Decoding a 2K PNG takes tens of milliseconds and a training crop uses ~0.3 % of it. So the first run decodes
each pair once, in parallel over the machine's cores, into `part-*.u8` files; every DataLoader worker of every
rank on the node maps the same files (one copy in the page cache, not one per worker), and a crop is a slice.
That pass is also the data check (the rules of pairs.py), and its results are kept beside the pixels, so a
later run over the same files decodes nothing.

A store is a folder named after the file set (local folders; each file's size and mtime are checked when it is
opened) or the dataset's fingerprint (datasets holding the image bytes), and the scale:
  index.json  format, scale, and per row: id, files' (size, mtime), LR shape, part file and offset, problem
  part-*.u8   the LR then the HR pixels of each usable row, one file per process that decoded them
It appears by renaming its finished folder, so a half-built store is never used; a file changed since it was
built is named in one line and decoded again. Above the budget (`--store-gb`) or the free disk space, only the
check results are stored (no pixels), and DataLoader workers decode as before (keeping up to
`--decoded-cache-mb` each).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import mmap
import os
import shutil
import socket
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from insanesr_dist.atomic import write_text_atomic
from insanesr_dist.data import degrade, images, pairs
from insanesr_dist.data.workers import unblock_signals, worker_context
from insanesr_dist.errors import UserError

STORE_FORMAT = 1
_HEADER_BYTES = 1 << 16  # enough for a PNG's or BMP's header, and a JPEG's unless its metadata is huge


def pair_bytes(lr_height: int, lr_width: int, scale: int) -> int:
    """Bytes of a decoded pair as stored: RGB uint8, the LR then the HR (scale x scale times the LR's pixels)."""
    return lr_height * lr_width * 3 * (1 + scale * scale)


def default_dir() -> Path:
    """Beside the Hugging Face datasets cache (HF_DATASETS_CACHE, else HF_HOME/datasets), read when called."""
    import datasets

    home = os.environ.get("HF_HOME")
    cache = os.environ.get("HF_DATASETS_CACHE") or (os.path.join(home, "datasets") if home else None)
    return Path(cache or datasets.config.HF_DATASETS_CACHE) / "insanesr-store"


@dataclass
class Store:
    """An opened store: the check results of every row and, when `pixels`, a pair's arrays by row number."""

    root: Path
    scale: int
    rows: list[dict[str, Any]]  # per row: lr_height, lr_width, problem, problem_file
    pixels: bool
    decoded_bytes: int  # what the pixels take (or would take) on disk
    parts: list[str]
    part: np.ndarray  # per row: index into `parts` (-1: no pixels)
    offset: np.ndarray  # per row: byte offset of its LR pixels (its HR pixels follow)

    def nbytes(self, rows) -> int:
        """Bytes of these rows' decoded pairs."""
        return sum(pair_bytes(self.rows[r]["lr_height"], self.rows[r]["lr_width"], self.scale) for r in rows)

    def __getstate__(self) -> dict:  # sent to DataLoader workers: the index, never the mapped files
        return {k: v for k, v in self.__dict__.items() if k != "_maps"}

    def pair(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """(LR HxWx3, HR) of a row: read-only views of the mapped part file, no copy until cropped."""
        maps = self.__dict__.setdefault("_maps", {})  # opened once per process, on first use
        part = int(self.part[row])
        if part not in maps:  # a plain array over the mapping (np.memmap's subclass hooks cost per slice)
            with open(self.root / self.parts[part], "rb") as f:
                maps[part] = np.frombuffer(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ), dtype=np.uint8)
        h, w, s = self.rows[row]["lr_height"], self.rows[row]["lr_width"], self.scale
        start, lr_bytes = int(self.offset[row]), h * w * 3
        data = maps[part]
        lr = data[start : start + lr_bytes].reshape(h, w, 3)
        hr = data[start + lr_bytes : start + pair_bytes(h, w, s)].reshape(h * s, w * s, 3)
        return lr, hr


def open_or_build(table, *, scale: int, store_dir: Path | None, budget_gb: float, workers: int, say=print) -> Store:
    """The store of `table` (columns id, lr, hr as undecoded image cells), built or brought up to date first.

    One process at a time per store (a file lock): the others, e.g. the other ranks of a node, wait and reuse
    it. `workers` processes decode in parallel. Says in one line which path the run takes and why.
    """
    store_dir = Path(store_dir or default_dir()).expanduser()
    local = _local_files(table)
    key = _key(table, scale, local)
    root = store_dir / key
    try:
        store_dir.mkdir(parents=True, exist_ok=True)
        lock = open(store_dir / f".{key}.lock", "a")  # noqa: SIM115 (held until the store is ready)
    except OSError as e:
        raise UserError(
            f"{store_dir}: cannot create the decoded store there ({e.strerror}); choose another --store-dir"
        ) from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as e:  # e.g. a network file system mounted without locking
            raise UserError(
                f"{store_dir}: cannot lock the decoded store there ({e.strerror}); choose a local --store-dir"
            ) from None
        index = _read_index(root, scale)
        started, changed = time.perf_counter(), []
        decoded = index["decoded_bytes"] if index else _decoded_bytes(table, scale)
        pixels, why = _decide(decoded, int(budget_gb * 1e9), store_dir, on_disk=bool(index and index["pixels"]))
        if index is None or (pixels and not index["pixels"]):
            index = _build(table, scale, root, local, pixels=pixels, workers=workers)
            verb = f"decoded in {time.perf_counter() - started:.1f} s by {max(1, workers)} process(es)"
        else:
            changed = _changed_rows(table, index) if local else []
            for row in changed:
                say(
                    f"store: {images.show(_paths(table, row)[1])} or its LR changed since the store was built; "
                    "decoding the pair again"
                )
            if changed:
                index = _update(table, scale, root, index, changed, workers)
            verb = f"reused, {len(changed)} pair(s) decoded again" if changed else "reused (nothing decoded)"
    store = _opened(root, index)
    store.pixels = store.pixels and pixels
    gb = store.decoded_bytes / 1e9
    where = (
        f"decoded pairs in {root} ({gb:.2f} GB, budget --store-gb {budget_gb:g})"
        if store.pixels
        else f"no decoded store ({why}; {gb:.2f} GB decoded): each DataLoader worker decodes its pairs and keeps up "
        "to --decoded-cache-mb of them"
    )
    # A line from every process that decoded (say: the main process's only): a second build shows up.
    (print if verb.startswith("decoded") or changed else say)(f"data: {where}; {len(store.rows)} pairs checked: {verb}")
    return store


# ---------------------------------------------------------------------------------------------
# Which store, and whether it holds pixels


def _local_files(table) -> bool:
    """Whether the image cells are paths of local files (a folder source) rather than bytes in the table."""
    columns = [table.data.column(c) for c in ("lr", "hr")]
    return all(sum(chunk.field("bytes").null_count for chunk in column.chunks) == len(table) for column in columns)


def _paths(table, row: int) -> tuple[str, str]:
    cells = table.data.slice(row, 1).to_pylist()[0]
    return cells["lr"]["path"], cells["hr"]["path"]


def _key(table, scale: int, local: bool) -> str:
    if local:  # the file set: a changed file is found by its size and mtime, and only it decoded again
        data = table.data
        named = (
            data.column("id").to_pylist(),
            *(data.column(c).combine_chunks().field("path").to_pylist() for c in ("lr", "hr")),
        )
        kernels = data.column("lr_from_hr").to_pylist() if "lr_from_hr" in table.column_names else None
        identity = repr((named, kernels))
    else:  # the table's content, as datasets fingerprints it
        identity = table._fingerprint
    # The rules a pair is checked (and its LR made, degrade.py) by are part of the key: an upgrade that changes
    # them checks every pair again.
    rules = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (images, pairs, degrade))).hexdigest()
    return hashlib.sha256(f"{STORE_FORMAT} {scale} {rules} {identity}".encode()).hexdigest()[:24]


def _free(store_dir: Path) -> int:
    return shutil.disk_usage(store_dir).free


def _decide(decoded: int, budget: int, store_dir: Path, on_disk: bool) -> tuple[bool, str]:
    """Whether to use pixels: they must fit the budget and, unless already `on_disk`, leave a GB of the disk free
    (pixels of an earlier run above today's budget stay unused, not deleted)."""
    if decoded > budget:
        return False, f"above --store-gb {budget / 1e9:g}"
    if on_disk:
        return True, ""
    free = _free(store_dir)
    if decoded > free - 10**9:
        return False, f"only {free / 1e9:.1f} GB free in {store_dir}"
    return True, ""


def _decoded_bytes(table, scale: int) -> int:
    """Bytes of the decoded training pairs, from the files' headers (an unreadable header counts as 0)."""
    total = 0
    derived = "lr_from_hr" in table.column_names
    for row in range(len(table)):
        cell = table.data.slice(row, 1).column("lr").to_pylist()[0]
        if cell["bytes"] is not None:
            head = cell["bytes"][:_HEADER_BYTES]
        else:
            try:
                with open(cell["path"], "rb") as f:
                    head = f.read(_HEADER_BYTES)
            except OSError:
                head = b""
        width, height = images.header_size(head) or (0, 0)
        if derived:  # the cell is the HR image's (--lr-from-hr)
            width, height = width // scale, height // scale
        total += pair_bytes(height, width, scale)
    return total


# ---------------------------------------------------------------------------------------------
# Reading and writing the index


def _read_index(root: Path, scale: int) -> dict | None:
    """The store's index, if it is one of this format and scale whose part files hold what it says.

    The part files are not fsynced (a cache; fsync made a 2K build ~25 % slower on 2 cores, serially); after an
    operating-system crash a file may lack its end, which the size check finds (the store is then rebuilt)."""
    try:
        index = json.loads((root / "index.json").read_text())
        if index.get("format") != STORE_FORMAT or index.get("scale") != scale:
            return None
        needed: dict[str, int] = {}
        for row in index["rows"]:
            if row["part"]:
                end = row["offset"] + pair_bytes(row["lr_height"], row["lr_width"], scale)
                needed[row["part"]] = max(needed.get(row["part"], 0), end)
        if any((root / part).stat().st_size < end for part, end in needed.items()):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return index


def _index(scale: int, pixels: bool, entries: list[dict[str, Any]], decoded: int | None = None) -> dict:
    if decoded is None:
        decoded = sum(pair_bytes(e["lr_height"], e["lr_width"], scale) for e in entries)
    return {"format": STORE_FORMAT, "scale": scale, "pixels": pixels, "decoded_bytes": decoded, "rows": entries}


def _opened(root: Path, index: dict) -> Store:
    rows = index["rows"]
    parts = sorted({r["part"] for r in rows} - {""})
    number = {name: i for i, name in enumerate(parts)}
    return Store(
        root=root,
        scale=index["scale"],
        rows=rows,
        pixels=index["pixels"],
        decoded_bytes=index["decoded_bytes"],
        parts=parts,
        part=np.array([number.get(r["part"], -1) for r in rows], dtype=np.int32),
        offset=np.array([r["offset"] for r in rows], dtype=np.int64),
    )


def _file_stats(table, row: int) -> list[list[int]]:
    return [[s.st_size, s.st_mtime_ns] for s in map(os.stat, _paths(table, row))]


def _stats_or_none(table, row: int) -> list[list[int]] | None:
    try:
        return _file_stats(table, row)
    except OSError:
        return None  # gone or unreadable: decoding it names the problem


def _changed_rows(table, index: dict) -> list[int]:
    return [
        row
        for row, entry in enumerate(index["rows"])
        if entry["files"] is None or _stats_or_none(table, row) != entry["files"]
    ]


# ---------------------------------------------------------------------------------------------
# Building: every process decodes its share of the rows and appends the pixels to its own part file

_builder: dict[str, Any] = {}  # in each decoding process: the table, the scale, the output folder, its part file


def _start_builder(table, scale: int, folder: str, pixels: bool, local: bool, pool_worker: bool = False) -> None:
    if pool_worker:  # one of several decoding processes
        import cv2

        unblock_signals()  # see data/workers.py: else the pool could not end this process
        cv2.setNumThreads(1)  # OpenCV's own threads would only compete with the other processes
    _builder.update(table=table, scale=scale, folder=Path(folder), pixels=pixels, local=local, part=None)


def _decode_rows(rows: list[int]) -> list[dict[str, Any]]:
    """Check (and with pixels, store) each row: its index entry."""
    b = _builder
    entries = []
    for row in rows:
        record = b["table"][row]
        entry = {
            "id": record["id"],
            "files": _stats_or_none(b["table"], row) if b["local"] else None,
            "part": "",
            "offset": 0,
            "lr_height": 0,
            "lr_width": 0,
            "problem": "",
            "problem_file": "",
        }
        entries.append(entry)
        decoded = []
        for column in pairs.pair_columns(record):
            try:
                decoded.append(images.decode_rgb(record[column], ""))
            except UserError as e:  # its message is ": <problem>", as no name was given
                entry.update(problem=e.message[2:], problem_file=pairs.cell_name(record, column))
                break
        if entry["problem"]:
            continue
        lr, hr = pairs.as_pair(decoded, record, b["scale"])
        entry.update(
            lr_height=lr.shape[0],
            lr_width=lr.shape[1],
            problem_file=pairs.cell_name(record, "hr"),
            problem=pairs.pair_problem(lr.shape, hr.shape, b["scale"]) or "",
        )
        if b["pixels"] and not entry["problem"]:
            if b["part"] is None:  # unique across processes and hosts sharing the folder
                name = f"part-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}.u8"
                b["part"] = (name, open(b["folder"] / name, "ab"))  # noqa: SIM115 (open while the process decodes)
            name, f = b["part"]
            entry.update(part=name, offset=f.tell())
            f.write(np.ascontiguousarray(lr).data)
            f.write(np.ascontiguousarray(hr).data)
    if b["part"] is not None:
        b["part"][1].flush()
    return entries


def _decode_all(
    table, scale: int, folder: Path, rows: list[int], *, pixels: bool, local: bool, workers: int
) -> list[dict[str, Any]]:
    """Decode `rows` with `workers` processes (started from the fork server, as DataLoader workers are)."""
    from tqdm.auto import tqdm

    chunk = max(1, min(4, len(rows) // (4 * max(1, workers))))  # small: the processes finish together
    chunks = [rows[i : i + chunk] for i in range(0, len(rows), chunk)]
    setup = (table, scale, str(folder), pixels, local)
    entries: list[dict[str, Any]] = []
    progress = tqdm(
        total=len(rows), desc="Decoding pairs" + (" into the store" if pixels else " (checks)"), leave=False
    )
    with progress:
        if workers <= 1 or len(chunks) == 1:
            _start_builder(*setup)
            try:
                for part in chunks:
                    entries += _decode_rows(part)
                    progress.update(len(part))
            finally:
                if _builder["part"] is not None:
                    _builder["part"][1].close()
                _builder.clear()
            return entries
        # A worker that dies (killed, out of memory) breaks the pool: an error, never a wait for its results.
        try:
            with ProcessPoolExecutor(
                workers, mp_context=worker_context(__name__), initializer=_start_builder, initargs=(*setup, True)
            ) as pool:
                for done in pool.map(_decode_rows, chunks):
                    entries += done
                    progress.update(len(done))
        except BrokenProcessPool:
            raise UserError(
                f"{folder}: a process decoding the training pairs died (killed, or out of memory); "
                "rerun, or train without a store (--store-gb 0)"
            ) from None
    return entries


def _build(table, scale: int, root: Path, local: bool, *, pixels: bool, workers: int) -> dict:
    """Build the whole store in a private folder, then rename it into place (replacing an older one)."""
    tmp = root.with_name(f".{root.name}.building-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        entries = _decode_all(table, scale, tmp, list(range(len(table))), pixels=pixels, local=local, workers=workers)
        index = _index(scale, pixels, entries)
        write_text_atomic(tmp / "index.json", json.dumps(index))
        if root.exists():  # an older store of these files, without pixels
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            os.rename(root, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, root)
    except OSError as e:
        raise UserError(
            f"{e.filename or root.parent}: cannot write the decoded store ({e.strerror}); make room, "
            "choose another --store-dir, or train without a store (--store-gb 0)"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return index


def _update(table, scale: int, root: Path, index: dict, rows: list[int], workers: int) -> dict:
    """Decode changed rows again into new part files of the store, then replace its index in one rename."""
    try:
        entries = _decode_all(table, scale, root, rows, pixels=index["pixels"], local=True, workers=workers)
        merged = list(index["rows"])
        for row, entry in zip(rows, entries):
            merged[row] = entry
        updated = _index(scale, index["pixels"], merged, decoded=None if index["pixels"] else index["decoded_bytes"])
        write_text_atomic(root / "index.json", json.dumps(updated))
    except OSError as e:
        raise UserError(
            f"{e.filename or root}: cannot update the decoded store ({e.strerror}); make room, "
            "choose another --store-dir, or train without a store (--store-gb 0)"
        ) from None
    # Part files no row points to any more stay: another run's workers may still map them by their old index.
    return updated
