"""`insanesr-dist check-data DIR_OR_DATASET`: read every file once, one at a time, and list every problem.

One line per finding (file, problem, what training will do), then a summary; exit 1 when training
would stop. The rules are data/pairs.py's: the same functions the decoded store applies before training.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import TYPE_CHECKING

import click

from insanesr_dist.commands import Command
from insanesr_dist.data import sources
from insanesr_dist.data.images import decode_image, max_pixels, sniff_format
from insanesr_dist.data.pairs import Finding, cell_name, pair_names, pair_problem, patch_problem, scan_folder, show
from insanesr_dist.data.sources import Folders
from insanesr_dist.errors import UserError
from insanesr_dist.tools.source_options import source_options

if TYPE_CHECKING:
    from insanesr_dist.data.shards import Source

SHOWN_PER_KIND = 10  # conversions and notes repeat per file; bad files are always all listed


class Report:
    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.fatal: list[str] = []  # problems no option works around
        self.pairs = self.usable = self.test = 0

    def add(self, path, problem: str, kind: str = "bad") -> None:
        self.findings.append(Finding(str(path), problem, kind))

    def lr_from_hr(self, hr: tuple[int, ...], hr_name, scale: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The LR and HR shapes training makes of an HR image (--lr-from-hr): HR cropped to a multiple of the
        scale (recorded as a conversion when it loses rows or columns), LR 1/scale of that."""
        (h, w), rest = hr[:2], hr[2:]
        if h % scale or w % scale:
            self.add(
                hr_name,
                f"HR is {w}x{h}, not a multiple of {scale}: its last {h % scale} row(s) and "
                f"{w % scale} column(s) are cropped ({w - w % scale}x{h - h % scale}) before its LR "
                "is made",
                "converted",
            )
        return (h // scale, w // scale, *rest), (h - h % scale, w - w % scale, *rest)

    def judge_pair(
        self, lr: tuple[int, ...], hr: tuple[int, ...], lr_name, hr_name, *, scale: int, patch_size: int
    ) -> None:
        """Record a decoded pair as usable, or the one problem that makes it not (sizes first)."""
        problem = pair_problem(lr, hr, scale)
        if problem:
            self.add(hr_name, problem)
        elif too_small := patch_problem(lr, patch_size):
            self.add(lr_name, too_small + " (set a smaller --patch-size)")
        else:
            self.usable += 1


def _decode(data: bytes, name: str, report: Report) -> tuple[int, ...] | None:
    """The decoded shape, recording conversions; None (recorded as bad) when the file is unusable."""
    notes: list[str] = []
    try:
        shape = decode_image(data, name, notes).shape
    except UserError as e:
        report.add(name, e.message[len(name) + 2 :])
        return None
    for note in notes:
        report.add(name, note, "converted")
    return shape


def _name_notes(path: Path, report: Report) -> None:
    name = path.name
    if " " in name or not name.isascii():
        what = " and ".join(
            w for w, bad in (("spaces", " " in name), ("non-ASCII characters", not name.isascii())) if bad
        )
        report.add(path, f"file name has {what}; accepted, the id keeps the exact name", "note")


def _sniff_all(files: dict[str, Path], report: Report) -> dict[Path, str | None]:
    """Each readable file's format from its first bytes (an unreadable file is recorded here, once): the
    folder's mix of formats is known before any file is read whole."""
    kinds = {}
    for path in files.values():
        try:
            with open(path, "rb") as f:
                kinds[path] = sniff_format(f.read(16))
        except OSError as e:
            report.add(path, f"cannot be read ({e.strerror})")
    return kinds


def _format_notes(kinds: dict[Path, str | None], report: Report) -> None:
    counts = collections.Counter(k for k in kinds.values() if k)
    for path, kind in kinds.items():
        suffix = {"JPG": "JPEG", "TIF": "TIFF"}.get(path.suffix[1:].upper(), path.suffix[1:].upper())
        if kind and kind != suffix:
            report.add(path, f"is a {kind} file named {path.suffix}; read by its content", "note")
        if kind == "JPEG" and counts["PNG"] > counts["JPEG"]:
            report.add(
                path, "JPEG among PNGs: lossy, its compression artefacts are learnt as if they were detail", "note"
            )


def _read_and_decode(path: Path, report: Report) -> tuple[int, ...] | None:
    """One file read, judged and dropped: only its shape outlives this call, so a folder of any size is
    checked in the memory of its largest image."""
    try:
        data = path.read_bytes()
    except OSError as e:
        report.add(path, f"cannot be read ({e.strerror})")
        return None
    return _decode(data, show(path), report)


def check_folders(folders: Folders, patch_size: int, scale: int, report: Report) -> None:
    """The folders training reads, file by file; without LR folders (--lr-from-hr) each HR image and the LR
    made from it."""
    sets = [(folders.train_lr, folders.train_hr)] + ([(folders.val_lr, folders.val_hr)] if folders.val_hr else [])
    dirs = [d for pair in sets for d in pair if d is not None]
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        for d in missing:
            report.fatal.append(f"{show(d)}: missing; a data folder needs train/LR and train/HR")
        return
    scanned = {}
    for d in dirs + ([folders.test_lr] if folders.test_lr else []):
        files, findings = scan_folder(d)
        report.findings += findings
        if not files and not [f for f in findings if f.kind == "bad"]:
            report.fatal.append(f"{show(d)}: empty folder (no images)")
        scanned[d] = files
    pairs = []
    for (lr_dir, hr_dir), patch in zip(sets, (patch_size, 0)):  # validation images are whole, never cropped
        lr_files = scanned[lr_dir or hr_dir]
        names, orphans = pair_names(lr_files, scanned[hr_dir], scale)
        report.findings += orphans
        report.pairs += len(names) + len(orphans)
        pairs += [(lr_files[lr], scanned[hr_dir][hr], patch) for lr, hr in names]
    shapes = {}
    for files in scanned.values():
        kinds = _sniff_all(files, report)
        _format_notes(kinds, report)
        for path in files.values():
            _name_notes(path, report)
            if path in kinds:
                shapes[path] = _read_and_decode(path, report)
    for lr_path, hr_path, patch in pairs:
        lr, hr = shapes.get(lr_path), shapes.get(hr_path)
        if lr is None or hr is None:
            continue
        if folders.train_lr is None:
            lr, hr = report.lr_from_hr(hr, hr_path, scale)
        report.judge_pair(lr, hr, lr_path, hr_path, scale=scale, patch_size=patch)
    report.test = len(scanned.get(folders.test_lr, {}))


def _read_cell(cell: dict | None, name: str, report: Report) -> tuple[int, ...] | None:
    """An image cell's decoded shape: its bytes, or its file (which a table of paths may lack; a remote one is
    fetched, as a streamed run fetches it)."""
    cell = cell or {}
    if cell.get("bytes") or not cell.get("path"):
        return _decode(cell.get("bytes") or b"", name, report)
    if "://" in cell["path"] and not cell["path"].startswith("file://"):
        from insanesr_dist.data.shards import read_cell

        try:
            return _decode(read_cell(cell)["bytes"], name, report)
        except UserError as e:
            report.add(name, e.message[len(cell["path"]) + 2 :])
            return None
    return _read_and_decode(Path(cell["path"]), report)


def _check_rows(
    rows, split: str, label: str, *, patch_size: int, scale: int, report: Report, lr_from_hr: str | None
) -> None:
    """A split's rows, each (its image cells' names for messages, row): ids unique up to case and extension,
    every image decoded, every pair judged (a test split's LR images only)."""
    images = ("lr",) if split == "test" else ("hr",) if lr_from_hr else ("lr", "hr")
    seen: dict[str, str] = {}
    for names, row in rows:
        key = Path(row["id"]).stem.casefold()
        if key in seen:
            report.add(f"{label} ({split}) id {row['id']}", f"same id as {seen[key]} up to case or extension")
            continue
        seen[key] = row["id"]
        found = [_read_cell(row[column], names[column], report) for column in images]
        if split == "test":
            report.test += 1
            continue
        report.pairs += 1
        if None in found:
            continue
        if lr_from_hr:
            found = report.lr_from_hr(found[0], names["hr"], scale)
        report.judge_pair(*found, names["lr"], names["hr"], scale=scale, patch_size=patch_size)


def check_table(
    source: str,
    kind: str,
    columns: tuple[str, str, str],
    patch_size: int,
    scale: int,
    report: Report,
    lr_from_hr: str | None = None,
) -> None:
    """The tables training reads (sources.load_table: the same columns, ids and image cells), row by row."""
    from insanesr_dist.data.sources import load_table

    train, test = load_table(source, kind, columns, lr_from_hr)
    options = dict(scale=scale, report=report, lr_from_hr=lr_from_hr)
    for split, table in (("train", train), ("test", test)):
        if table is not None:
            rows = (({c: cell_name(row, c) for c in ("lr", "hr") if c in row}, row) for row in table)
            _check_rows(rows, split, source, patch_size=patch_size, **options)


def check_stream(source: Source, patch_size: int, scale: int, report: Report, lr_from_hr: str | None = None) -> None:
    """A source as train --streaming reads it (a shards.Source: every split, shard by shard, row by row, nothing
    cached), by the same rules; a cell is named by its shard and row. A shard that cannot be read is a finding
    of its own (training retries it, then skips it or stops)."""
    from insanesr_dist.data import shards

    report.findings += source.findings
    for split, names in source.splits.items():

        def unreadable(line: str, names: list[str] = names) -> None:
            name = next((n for n in names if line.startswith(f"{n}: ")), "")
            report.add(name, line[len(name) + 2 :] if name else line)

        rows = (
            ({c: f"{where} {c}" for c in ("lr", "hr")}, row)
            for where, row in shards.iter_rows(source, split, bad=unreadable)
        )
        patch = patch_size if split == "train" else 0  # validation images are whole, never cropped
        _check_rows(rows, split, source.text, patch_size=patch, scale=scale, report=report, lr_from_hr=lr_from_hr)


def only_streamed(source: str | None) -> bool:
    """Whether a SOURCE is one only the streaming path reads: a URL (but file://), a brace range or list, a
    glob, or a WebDataset .tar."""
    if source is None:
        return False
    remote = "://" in source and not source.startswith("file://")
    return remote or any(c in source for c in "{*?[") or source.endswith(".tar")


def run_check(
    source: str | None,
    *,
    patch_size: int,
    on_bad_sample: str,
    scale: int = 4,
    columns: tuple[str, str, str] = ("lr", "hr", "id"),
    given: dict[str, str | None] | None = None,
    lr_from_hr: str | None = None,
    streaming: bool = False,
    echo=click.echo,
) -> bool:
    """Print every finding and a summary; True when training would run. `columns`: a table source's LR, HR
    and id columns, as training's --lr-column, --hr-column, --id-column; `given`: folders given one by one
    (sources.Folders field -> path), as training's --hr-dir and siblings; `streaming`: read the source as
    train --streaming does (always, for what only it reads: see only_streamed)."""
    max_pixels()  # a bad $INSANESR_MAX_PIXELS is one line, not a finding on every file
    report = Report()
    streamed = None
    if streaming or only_streamed(source):
        from insanesr_dist.data import shards

        streamed = shards.resolve(source, columns=columns, scale=scale, lr_from_hr=lr_from_hr, folders=given)
        if streamed.kind == "folder":  # an image folder streams its files as they are: checked as a folder
            streamed = None
    kind, folders = (None, None) if streamed else sources.locate(source, given or {}, scale, bool(lr_from_hr))
    if streamed is not None:
        source = streamed.text
        echo(f"check-data: streamed {streamed.describe()}")
        check_stream(streamed, patch_size, scale, report, lr_from_hr)
    elif folders is not None:
        source = source or str(folders.train_hr)
        echo(f"check-data: {folders.describe()}")
        check_folders(folders, patch_size, scale, report)
    else:
        check_table(source, kind, columns, patch_size, scale, report, lr_from_hr)

    shown = collections.Counter()
    for finding in report.findings:
        shown[finding.kind, finding.problem] += 1
        if finding.kind == "bad" or shown[finding.kind, finding.problem] <= SHOWN_PER_KIND:
            echo(finding.line(on_bad_sample))
    for (kind, problem), n in shown.items():
        if kind != "bad" and n > SHOWN_PER_KIND:
            echo(
                f"... and {n - SHOWN_PER_KIND} more file(s): {problem} -> {Finding('', '', kind).action(on_bad_sample)}"
            )
    for line in report.fatal:
        echo(f"{line} -> training stops")
    counts = collections.Counter(f.kind for f in report.findings)
    bad = counts["bad"]
    fails = bool(report.fatal) or report.usable < 2 or (bad and on_bad_sample == "error")
    echo(
        f"check-data: {source}: {report.pairs} training pair(s), {report.usable} usable; {report.test} test image(s); "
        f"{bad} bad, {counts['converted']} conversion(s), {counts['note']} note(s), {counts['ignored']} ignored "
        f"-> training {'would stop' if fails else 'would run'} (--on-bad-sample {on_bad_sample}"
        f"{f', --patch-size {patch_size}' if patch_size else ''})"
    )
    return not fails


@click.command("check-data", cls=Command, context_settings={"max_content_width": 110})
@click.argument("source", required=False)
@click.option("--hr-dir", type=click.Path(), help="As for training: a folder of training HR images (with --lr-dir).")
@click.option("--lr-dir", type=click.Path(), help="As for training: their LR images (0001.png or 0001x4.png).")
@click.option("--val-hr-dir", type=click.Path(), help="As for training: a given validation set's HR images.")
@click.option("--val-lr-dir", type=click.Path(), help="As for training: its LR images.")
@click.option("--test-lr-dir", type=click.Path(), help="As for training: the test LR images.")
@click.option(
    "--on-bad-sample",
    type=click.Choice(["error", "skip"]),
    default="error",
    show_default=True,
    help="As for training: error stops at a bad file, skip trains without it.",
)
@click.option(
    "--patch-size",
    type=click.IntRange(0),
    default=None,
    help="As for training: LR images smaller than this cannot give a crop. [default: training's default]",
)
@source_options("As for training: HR images only, each LR made from its HR by this kernel.")
@click.option(
    "--streaming",
    is_flag=True,
    help="As train --streaming reads it: shard by shard, nothing cached (URLs, brace ranges, globs and "
    "WebDataset tars are always read so).",
)
def check_data_command(
    source: str | None,
    on_bad_sample: str,
    patch_size: int | None,
    hr_dir: str | None,
    lr_dir: str | None,
    val_hr_dir: str | None,
    val_lr_dir: str | None,
    test_lr_dir: str | None,
    lr_column: str,
    hr_column: str,
    id_column: str,
    lr_from_hr: str | None,
    streaming: bool,
) -> None:
    """Read every image of a dataset once and list every problem: one line per file (the problem and what
    training will do), then a summary. Exit status 1 when training would stop.

    SOURCE is what `--data` takes: a DIR with train/LR, train/HR (and test/LR), a DIV2K-like folder, a
    save_to_disk folder, a folder of parquet/arrow/jsonl/csv files (a hub dataset on disk, a `pack` output) or
    a hub id. Data files by URL (a brace range train-{00000..00099}.parquet, a glob) and WebDataset tars are
    read as train --streaming reads them, shard by shard and nothing cached; --streaming reads any source so.
    The folder and column options are training's too.

    \b
    Examples:
      insanesr-dist check-data data/
      insanesr-dist check-data data/ --on-bad-sample skip --patch-size 48
      insanesr-dist check-data DIV2K/
      insanesr-dist check-data --hr-dir shots/HR --lr-dir shots/LR
      insanesr-dist check-data hub-dataset/ --lr-column low --hr-column high --id-column name
      insanesr-dist check-data 'https://host/sets/train-{00000..00099}.parquet' --streaming
    """
    if patch_size is None:
        from insanesr_dist.config import TrainConfig

        patch_size = TrainConfig().patch_size
    given = sources.given_folders(
        dict(hr_dir=hr_dir, lr_dir=lr_dir, val_hr_dir=val_hr_dir, val_lr_dir=val_lr_dir, test_lr_dir=test_lr_dir)
    )
    columns = (lr_column, hr_column, id_column)
    options = dict(columns=columns, given=given, lr_from_hr=lr_from_hr, streaming=streaming)
    if not run_check(source, patch_size=patch_size, on_bad_sample=on_bad_sample, **options):
        raise UserError(f"{source or hr_dir}: training would stop on this data (see the lines above)")
