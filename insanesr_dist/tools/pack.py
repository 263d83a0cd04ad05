"""`insanesr-dist pack SRC OUT`: any source as parquet shards of sub-images, the layout a hub dataset holds.

Training crops a small window of an image; from whole 2K PNGs each crop costs a 2K decode (crops_per_decode only
divides it). Packed as BasicSR packs DIV2K (extract_subimages: overlapping HR tiles of 480 px every 240 px, the LR
tiles 1/4 of them at the same place), a crop costs one tile's decode. Tiles are image bytes in image columns lr/hr
with an id (<image id>_s001, ...): BMP by default (uncompressed pixels, in zstd-compressed parquet: a third more
bytes than PNG, decoded several times faster; a tile's PNG decode would bound a worker's crops/s), or PNG with
--tile-format png; in shards of about --shard-mb (data/train-00000-of-00012.parquet, readable by
`datasets`, `--data OUT --streaming`, check-data, or pushed to the hub as is). A given validation set is packed
as whole pairs (validation-*.parquet: JM is scored on whole images), test LR images as they are (test-*.parquet).

Every pair is decoded and checked by check-data's rules; each bad one is one line, the rest are packed, and the
exit status is 1 unless --on-bad-sample skip. Each shard is written to a temporary file and renamed when
complete, so OUT never holds a half-written shard.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import time
from pathlib import Path

import click

from insanesr_dist.atomic import atomic_path
from insanesr_dist.commands import Command
from insanesr_dist.data import shards, stream
from insanesr_dist.data.images import encode_image, encode_png
from insanesr_dist.errors import UserError
from insanesr_dist.tools.source_options import source_options

ROWS_PER_GROUP = 64  # a parquet row group: the unit a resumed stream skips without reading, and a read's size


def tile_positions(size: int, tile: int, step: int) -> list[int]:
    """Tile starts along one edge: every `step`, and one more flush with the end so the edge is covered (an
    edge shorter than the tile is one tile of its own length, at 0)."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, step))
    return starts if starts[-1] + tile == size else [*starts, size - tile]


def tiles(lr, hr, *, tile: int, step: int, scale: int):
    """(LR tile, HR tile) of a pair: HR `tile` px every `step` px, the LR tile the matching 1/scale of it."""
    lr_tile, lr_step = tile // scale, step // scale
    height, width = lr.shape[:2]
    for y in tile_positions(height, lr_tile, lr_step):
        for x in tile_positions(width, lr_tile, lr_step):
            h, w = min(lr_tile, height), min(lr_tile, width)
            yield (
                lr[y : y + h, x : x + w],
                hr[y * scale : (y + h) * scale, x * scale : (x + w) * scale],
            )


def _stem(image_id: str) -> str:
    return str(Path(image_id).with_suffix("")) if Path(image_id).suffix else image_id


def _cell(name: str, data: bytes) -> dict:
    return {"bytes": data, "path": name}


def pack_row(item, *, split: str, scale: int, tile: int, step: int, kind: str) -> tuple[list[dict], str | None]:
    """One source row as output rows (tiles, a whole pair, or a test image), or its one-line problem. Runs in the
    pack's worker processes."""
    where, example = item
    try:
        lr, hr = stream.decoded(where, example, scale, lr_only=split == "test")
    except UserError as e:
        return [], e.message
    stem = _stem(example["id"])
    if split == "test":
        return [{"id": example["id"], "lr": _cell(f"{stem}.png", encode_png(lr))}], None
    if split == "validation":
        return [_pair_row(example["id"], stem, lr, hr)], None
    pieces = enumerate(tiles(lr, hr, tile=tile, step=step, scale=scale), 1)
    return [_pair_row(f"{stem}_s{n:03d}", f"{stem}_s{n:03d}", *pair, kind) for n, pair in pieces], None


def _pair_row(image_id: str, stem: str, lr, hr, kind: str = "png") -> dict:
    cells = {c: _cell(f"{stem}.{kind}", encode_image(image, kind)) for c, image in (("lr", lr), ("hr", hr))}
    return {"id": image_id, **cells}


class ShardWriter:
    """Rows into parquet shards of about `shard_bytes` each, `<split>-NNNNN.parquet` while packing, renamed to
    `<split>-NNNNN-of-MMMMM.parquet` at the end (the hub's names)."""

    def __init__(self, folder: Path, split: str, shard_bytes: int) -> None:
        import datasets

        columns = {"id": datasets.Value("string"), "lr": datasets.Image(), "hr": datasets.Image()}
        if split == "test":
            columns.pop("hr")
        self.features = datasets.Features(columns)
        self.folder, self.split, self.shard_bytes = folder, split, shard_bytes
        self.written: list[Path] = []
        self.rows = 0
        self._open = None  # (atomic_path context, pyarrow writer, path)
        self._pending: list[dict] = []
        self._pending_bytes = 0

    def add(self, row: dict) -> None:
        size = sum(len(row[c]["bytes"]) for c in ("lr", "hr") if c in row)
        if self._open is None:
            self._start()
        self._pending.append(row)
        self._pending_bytes += size
        self._size += size
        self.rows += 1
        if len(self._pending) >= ROWS_PER_GROUP or self._pending_bytes >= self.shard_bytes // 4:
            self._flush()
        if self._size >= self.shard_bytes:
            self._finish()

    def _start(self) -> None:
        import pyarrow.parquet as pq

        path = self.folder / f"{self.split}-{len(self.written):05d}.parquet"
        context = atomic_path(path)
        temporary = context.__enter__()
        # No min/max statistics of the image bytes: they would copy two images per column and row group into the
        # footer, which every reader (and a resumed stream, per row group) fetches first.
        writer = pq.ParquetWriter(temporary, self.features.arrow_schema, write_statistics=["id"], compression="zstd")
        self._open = (context, writer, path)
        self._size = 0

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            encoded = [self.features.encode_example(row) for row in self._pending]
            self._open[1].write_table(pa.Table.from_pylist(encoded, schema=self.features.arrow_schema))
        self._pending, self._pending_bytes = [], 0

    def _finish(self) -> None:
        self._flush()
        context, writer, path = self._open
        writer.close()
        context.__exit__(None, None, None)
        self.written.append(path)
        self._open = None

    def abort(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open[0].__exit__(RuntimeError, RuntimeError("aborted"), None)
            self._open = None

    def close(self) -> list[Path]:
        if self._open is not None:
            self._finish()
        named = []
        for i, path in enumerate(self.written):
            final = path.with_name(f"{self.split}-{i:05d}-of-{len(self.written):05d}.parquet")
            os.replace(path, final)
            named.append(final)
        return named


def _rows(source: shards.Source, split: str, bad, workers: int, job):
    """Output rows of a split's rows, in source order, made by `workers` processes."""
    rows = shards.iter_rows(source, split, bad=bad)
    if workers <= 1:
        yield from map(job, rows)
        return
    # Not forked: a fork of a process that has started datasets' and pyarrow's threads can deadlock.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap(job, rows, chunksize=1)


def pack(
    src: str | list[str],
    out: Path,
    *,
    tile: int = 480,
    step: int = 240,
    shard_mb: float = 256,
    scale: int = 4,
    columns: tuple[str, str, str] = ("lr", "hr", "id"),
    lr_from_hr: str | None = None,
    workers: int = 1,
    tile_format: str = "bmp",
    say=click.echo,
) -> tuple[dict[str, int], list[str]]:
    """Pack a source into OUT/data; the counts (pairs, tiles, shards, bytes) and the bad inputs' lines."""
    if tile % scale or step % scale or tile <= 0 or step <= 0:
        raise UserError(f"--tile {tile} and --step {step} must be positive multiples of the scale ({scale})")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: not empty; pack writes into a new folder")
    source = shards.resolve(src, columns=columns, scale=scale, lr_from_hr=lr_from_hr)
    problems = [f.line("error").rsplit(" -> ", 1)[0] for f in source.findings]
    for line in problems:
        say(line)

    def bad(line: str) -> None:
        problems.append(line)
        say(line)

    counts = dict.fromkeys(("pairs", "tiles", "shards", "bytes"), 0)
    folder = out / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        if not source.shards(split):
            continue
        writer = ShardWriter(folder, split, int(shard_mb * 2**20))
        job = functools.partial(pack_row, split=split, scale=scale, tile=tile, step=step, kind=tile_format)
        try:
            for rows, problem in _rows(source, split, bad, workers, job):
                if problem:
                    bad(problem)
                    continue
                counts["pairs"] += split == "train"
                for row in rows:
                    writer.add(row)
        except BaseException:
            writer.abort()
            raise
        written = writer.close()
        counts["shards"] += len(written)
        counts["tiles" if split == "train" else split] = writer.rows
        counts["bytes"] += sum(path.stat().st_size for path in written)
    return counts, problems


@click.command("pack", cls=Command, context_settings={"max_content_width": 110})
@click.argument("src", nargs=-1, required=True)
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--tile", default=480, show_default=True, type=click.IntRange(4), help="HR tile edge (px).")
@click.option("--step", default=240, show_default=True, type=click.IntRange(4), help="HR tile step (px): overlap.")
@click.option(
    "--shard-mb", default=256.0, show_default=True, type=click.FloatRange(0, min_open=True), help="Shard size (MB)."
)
@click.option(
    "--tile-format",
    type=click.Choice(["bmp", "png"]),
    default="bmp",
    show_default=True,
    help="Training tiles' image format: bmp decodes several times faster, png takes a quarter fewer bytes.",
)
@source_options("As for training: HR images only, each LR made from its HR by this kernel (the pack then holds both).")
@click.option(
    "--on-bad-sample",
    type=click.Choice(["error", "skip"]),
    default="error",
    show_default=True,
    help="A bad pair is always left out and named; error also makes the exit status 1.",
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Processes decoding and encoding (the output is the same for any number).",
)
def pack_command(
    src: tuple[str, ...],
    out: Path,
    tile: int,
    step: int,
    shard_mb: float,
    lr_column: str,
    hr_column: str,
    id_column: str,
    lr_from_hr: str | None,
    on_bad_sample: str,
    workers: int,
    tile_format: str,
) -> None:
    """Pack SRC (what --data takes: an image folder, data files, URLs, a hub id) into OUT as parquet shards of
    overlapping sub-images, so a training crop decodes a tile, not a whole 2K image.

    \b
    Examples:
      insanesr-dist pack DIV2K/ div2k-packed/ --workers 8
      insanesr-dist pack 'https://host/sets/train-{00000..00099}.parquet' packed/
      insanesr-dist train --data div2k-packed/ --streaming --val-size 100 ...
    """
    started = time.monotonic()
    counts, problems = pack(
        list(src),
        out,
        tile=tile,
        step=step,
        shard_mb=shard_mb,
        columns=(lr_column, hr_column, id_column),
        lr_from_hr=lr_from_hr,
        workers=workers,
        tile_format=tile_format,
    )
    click.echo(
        f"packed {counts['pairs']} pair(s) into {counts['tiles']} tile(s)"
        + "".join(f", {counts[s]} {s}" for s in ("validation", "test") if s in counts)
        + f": {counts['shards']} shard(s), {counts['bytes'] / 2**20:.1f} MB in {out / 'data'} "
        f"({time.monotonic() - started:.1f} s)"
    )
    if problems and on_bad_sample == "error":
        raise UserError(f"{len(problems)} bad input(s), listed above, were left out (--on-bad-sample skip: exit 0)")
