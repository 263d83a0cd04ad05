"""`insanesr-dist check-data DIR_OR_DATASET`: read every file once, one at a time, and list every problem.

One line per finding (file, problem, what training will do), then a summary; exit 1 when training
would stop. The rules are data/pairs.py's: the same functions the decoded store applies before training.
"""

from __future__ import annotations

import collections
from pathlib import Path

import click

from insanesr_dist.commands import Command
from insanesr_dist.data import sources
from insanesr_dist.data.degrade import KERNELS
from insanesr_dist.data.images import decode_image, max_pixels, sniff_format
from insanesr_dist.data.pairs import Finding, cell_name, pair_names, pair_problem, patch_problem, scan_folder, show
from insanesr_dist.data.sources import Folders
from insanesr_dist.errors import UserError

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
    """An image cell's decoded shape: its bytes, or its file (which a table of paths may lack)."""
    cell = cell or {}
    if cell.get("bytes") or not cell.get("path"):
        return _decode(cell.get("bytes") or b"", name, report)
    return _read_and_decode(Path(cell["path"]), report)


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
    pair = ("hr",) if lr_from_hr else ("lr", "hr")
    for split, table, images in (("train", train, pair), ("test", test, ("lr",))):
        if table is None:
            continue
        seen: dict[str, str] = {}
        for row in table:
            key = Path(row["id"]).stem.casefold()
            if key in seen:
                report.add(f"{source} ({split}) id {row['id']}", f"same id as {seen[key]} up to case or extension")
                continue
            seen[key] = row["id"]
            found = [_read_cell(row[column], cell_name(row, column), report) for column in images]
            if split == "test":
                report.test += 1
                continue
            report.pairs += 1
            if None in found:
                continue
            if lr_from_hr:
                found = report.lr_from_hr(found[0], cell_name(row, "hr"), scale)
            report.judge_pair(*found, cell_name(row, "lr"), cell_name(row, "hr"), scale=scale, patch_size=patch_size)


def run_check(
    source: str | None,
    *,
    patch_size: int,
    on_bad_sample: str,
    scale: int = 4,
    columns: tuple[str, str, str] = ("lr", "hr", "id"),
    given: dict[str, str | None] | None = None,
    lr_from_hr: str | None = None,
    echo=click.echo,
) -> bool:
    """Print every finding and a summary; True when training would run. `columns`: a table source's LR, HR
    and id columns, as training's --lr-column, --hr-column, --id-column; `given`: folders given one by one
    (sources.Folders field -> path), as training's --hr-dir and siblings."""
    max_pixels()  # a bad $INSANESR_MAX_PIXELS is one line, not a finding on every file
    report = Report()
    kind, folders = sources.locate(source, given or {}, scale, hr_only=bool(lr_from_hr))
    if folders is not None:
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
@click.option("--lr-column", default="lr", show_default=True, help="As for training: a dataset's LR image column.")
@click.option("--hr-column", default="hr", show_default=True, help="As for training: a dataset's HR image column.")
@click.option("--id-column", default="id", show_default=True, help="As for training: a dataset's id column.")
@click.option(
    "--lr-from-hr",
    type=click.Choice(KERNELS),
    default=None,
    help="As for training: HR images only, each LR made from its HR by this kernel.",
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
) -> None:
    """Read every image of a dataset once and list every problem: one line per file (the problem and what
    training will do), then a summary. Exit status 1 when training would stop.

    SOURCE is what `--data` takes: a DIR with train/LR, train/HR (and test/LR), a DIV2K-like folder, a
    save_to_disk folder, a folder of parquet/arrow/jsonl/csv files (a hub dataset on disk) or a hub id; the
    folder and column options are training's too.

    \b
    Examples:
      insanesr-dist check-data data/
      insanesr-dist check-data data/ --on-bad-sample skip --patch-size 48
      insanesr-dist check-data DIV2K/
      insanesr-dist check-data --hr-dir shots/HR --lr-dir shots/LR
      insanesr-dist check-data hub-dataset/ --lr-column low --hr-column high --id-column name
    """
    if patch_size is None:
        from insanesr_dist.config import TrainConfig

        patch_size = TrainConfig().patch_size
    given = sources.given_folders(
        dict(hr_dir=hr_dir, lr_dir=lr_dir, val_hr_dir=val_hr_dir, val_lr_dir=val_lr_dir, test_lr_dir=test_lr_dir)
    )
    columns = (lr_column, hr_column, id_column)
    if not run_check(
        source, patch_size=patch_size, on_bad_sample=on_bad_sample, columns=columns, given=given, lr_from_hr=lr_from_hr
    ):
        raise UserError(f"{source or hr_dir}: training would stop on this data (see the lines above)")
