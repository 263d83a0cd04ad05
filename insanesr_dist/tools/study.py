"""`insanesr-dist study`: the model-quality grid behind `--preset default`.

Each variant is one real training run per seed (`python -m insanesr_dist.train`, a fresh process) at the same
optimizer-step budget, on the demo data or `--data`. The `default` grid changes one thing at a time from
`--preset default` (the full default model unless --train-args says otherwise); `levers` is the first study's
grid, each lever alone on the seed report's recipe.

Every run validates and writes its test submission once, at its last step (the final weights: the EMA where EMA
is on). Per run the study reads its validation JM/PSNR/SSIM and measured training samples/s, and, where the test
split has HR images (the game-art set's test/HR), scores that submission with the grader-exact metric. A
`predict --tta` row (x8 self-ensemble) rescores one variant's final weights on the validation and test folders.
The tables hold per variant the mean over the seeds and the spread (max - min), beside bilinear and bicubic x4
of the same images: study.md / study.csv, and every run in runs.csv.

Runs already finished in --output-dir with the same options are reused, so a study that stopped continues where
it was when started again with the same command; each finished run keeps its weights, metrics and submission,
not its checkpoints.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np

from insanesr_dist import run_files
from insanesr_dist.atomic import atomic_path, write_text_atomic
from insanesr_dist.commands import Command
from insanesr_dist.errors import UserError
from insanesr_dist.tools.children import failure_line

# The first study's grid: the seed report's recipe on 32x32 LR crops, batch 16; each lever below changes one
# thing, "preset default" combines the winners, and the last rows take one lever out of it again.
LEVERS_BASE = dict(preset="report", patch_size=32, batch_size=16)
LEVERS: dict[str, dict[str, object]] = {
    "seed recipe (crops 32, batch 16)": {},
    "head: residual": dict(output_head="residual"),
    "loss: l1": dict(loss="l1"),
    "loss: charbonnier": dict(loss="charbonnier"),
    "loss: mse + 0.5 (1-SSIM)": dict(ssim_weight=0.5),
    "lr: 5e-4, warmup 10, cosine": dict(lr=5e-4, warmup_steps=10, schedule="cosine"),
    "ema 0.999": dict(ema_decay=0.999),
    "full images, batch 4": dict(patch_size=0, batch_size=4),
    "crops 16, batch 64": dict(patch_size=16, batch_size=64),
    "preset default": dict(preset="default", patch_size=None, batch_size=None),
    # Leave-one-out from the default: what each of its levers adds in the combination.
    "default without SSIM term": dict(preset="default", patch_size=None, batch_size=None, ssim_weight=0.0),
    "default without EMA": dict(preset="default", patch_size=None, batch_size=None, ema_decay=0.0),
    "default with Adam 1e-4 flat": dict(
        preset="default", patch_size=None, batch_size=None, lr=1e-4, schedule="constant", warmup_steps=0
    ),
}
# One factor at a time from --preset default: peak lr 5e-4 with 10 warmup steps and cosine, L1 + 0.5 (1 - SSIM),
# 32x32 LR crops in batches of 16, EMA 0.999, Adam betas (0.9, 0.999), no gradient clipping. The patch/batch
# variants keep the LR pixels per step (32^2 x 16 = 16,384; 48^2 x 7 = 16,128; 64^2 x 4 = 16,384).
DEFAULT_BASE: dict[str, object] = dict(preset="default")
DEFAULT: dict[str, dict[str, object]] = {
    "preset default": {},
    "lr 2e-4": dict(lr=2e-4),
    "lr 1e-3": dict(lr=1e-3),
    "loss: l1": dict(ssim_weight=0.0),
    "loss: charbonnier": dict(loss="charbonnier", ssim_weight=0.0),
    "loss: l1 + 0.25 (1-SSIM)": dict(ssim_weight=0.25),
    "loss: l1 + 1 (1-SSIM)": dict(ssim_weight=1.0),
    "crops 48, batch 7": dict(patch_size=48, batch_size=7),
    "crops 64, batch 4": dict(patch_size=64, batch_size=4),
    "ema off": dict(ema_decay=0.0),
    "ema 0.9999": dict(ema_decay=0.9999),
    "adam betas (0.9, 0.99)": dict(adam_beta2=0.99),
    "grad clip 1.0": dict(max_grad_norm=1.0),
}
GRIDS = {"default": (DEFAULT_BASE, DEFAULT), "levers": (LEVERS_BASE, LEVERS)}
TTA_VARIANT = "preset default"  # the variant whose final weights the --tta row predicts with, when it runs
# Each run validates and writes its submission at its last step only, and checkpoints every 10 minutes (an
# interrupted run resumes); given before --train-args, which may change them.
CADENCE = ["--val-every", "1000000", "--submit-every", "1000000", "--checkpoint-every-minutes", "10"]
BASELINES = ("bilinear", "bicubic")

SCORES = ("jm", "psnr", "ssim")
RUN_COLUMNS = [
    "variant",
    "seed",
    "steps",
    *(f"{split}_{score}" for split in ("val", "test") for score in SCORES),
    "best_jm",
    "val_gain",
    "test_gain",
    "samples_per_s",
    "train_seconds",
    "settings",
]
COLUMNS = [
    "variant",
    "seeds",
    "steps",
    "val_jm",
    "val_jm_spread",
    "val_gain",
    "test_jm",
    "test_jm_spread",
    "test_gain",
    "val_psnr",
    "val_ssim",
    "samples_per_s",
    "settings",
]


def _train_args(settings: dict[str, object]) -> list[str]:
    args = []
    for name, value in settings.items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def read_row(name: str, settings: dict[str, object], run_dir: Path) -> dict[str, object]:
    """A finished run's scores from its run directory's metrics.jsonl: the last validation's (`jm`, `psnr`,
    `ssim`), the best JM of those recorded, and the training samples/s and seconds over all epochs."""
    records = [json.loads(line) for line in (run_dir / run_files.METRICS).read_text().splitlines()]
    last = records[-1]
    seconds = sum(r["seconds"] for r in records)
    samples = sum(r["samples_per_s"] * r["seconds"] for r in records)
    shown = {k: v for k, v in settings.items() if v is not None}
    return {
        "variant": name,
        "epoch": last["epoch"],
        "steps": last["step"],
        "jm": last["jm"],
        "psnr": last["psnr"],
        "ssim": last["ssim"],
        "best_jm": max(r["jm"] for r in records if "jm" in r),
        "samples_per_s": samples / seconds,
        "train_seconds": seconds,
        "settings": " ".join(_train_args(shown)),
    }


def _finished(run_dir: Path, steps: int) -> bool:
    try:
        last = json.loads((run_dir / run_files.METRICS).read_text().splitlines()[-1])
    except (OSError, IndexError, ValueError):
        return False
    return last.get("step") == steps and "jm" in last


def applied_beta2(run_dir: Path) -> float | None:
    """The beta2 the run's Adam stepped with, read from its newest checkpoint's optimizer state (None without
    one): a setting training would accept but not pass on must not pass for a result."""
    import torch

    states = sorted((run_dir / run_files.CHECKPOINTS).glob("step_*/optimizer*.bin"))
    if not states:
        return None
    groups = torch.load(states[-1], map_location="cpu", weights_only=True)["param_groups"]
    return float(groups[0]["betas"][1])


def train_run(command: list[str], run_dir: Path, steps: int, name: str) -> None:
    """Train one run to `steps` in a fresh process, reusing a finished one trained by the same command and
    resuming an interrupted one (training's own --resume auto)."""
    record = run_dir / "study.json"
    if run_dir.exists():
        if not record.is_file() or json.loads(record.read_text())["command"] != command[3:]:
            raise UserError(
                f"{run_dir}: holds a run of other options than this study's for {name!r}; "
                "choose another --output-dir (or the same options)"
            )
        if _finished(run_dir, steps):
            return
        if not any((run_dir / run_files.CHECKPOINTS).glob("step_*")):
            shutil.rmtree(run_dir)  # stopped before its first checkpoint: start it again
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(record, json.dumps({"command": command[3:]}, indent=1) + "\n")
    click.echo(f"[study] {name}: {shlex.join(command[3:])}", err=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(
            f"study variant {name!r} failed (exit {result.returncode}): {failure_line(result.stderr, 'no output')}"
        )


def run_variant(
    name: str,
    settings: dict[str, object],
    *,
    seed: int,
    out_dir: Path,
    steps: int,
    extra: list[str],
    data: str | None,
    test: tuple[Path, Path] | None = None,
) -> dict[str, object]:
    """Train one variant with one seed for `steps` optimizer steps (see train_run); its row of runs.csv, with the
    test split's grader-exact scores when `test` (LR and HR folders) is given."""
    from insanesr_dist.tools.evaluate import evaluate_predictions

    run_dir = out_dir / "runs" / _slug(name) / f"seed_{seed}"
    command = [
        sys.executable,
        "-m",
        "insanesr_dist.train",
        *_train_args(settings),
        "--seed",
        str(seed),
        "--max-steps",
        str(steps),
        "--epochs",
        "1000000",
        "--output-dir",
        str(run_dir),
        "--panel-images",
        "0",
        *CADENCE,
        *extra,
    ]
    if data:
        command += ["--data", data]
    train_run(command, run_dir, steps, name)
    wanted = json.loads((run_dir / run_files.CONFIG).read_text())["adam_beta2"]
    beta2 = applied_beta2(run_dir)
    if beta2 is not None and abs(beta2 - wanted) > 1e-12:
        raise UserError(
            f"{run_dir}: trained with Adam beta2 {beta2}, not the --adam-beta2 {wanted} it was given: the training "
            "loop must pass cfg.adam_beta2 to make_optimizer"
        )
    shutil.rmtree(run_dir / run_files.CHECKPOINTS, ignore_errors=True)
    row = read_row(name, settings, run_dir)
    runs_row: dict[str, object] = {
        "variant": name,
        "seed": seed,
        "steps": row["steps"],
        **{f"val_{score}": row[score] for score in SCORES},
        **{key: row[key] for key in ("best_jm", "samples_per_s", "train_seconds", "settings")},
    }
    if test is not None:
        submission = run_dir / run_files.SUBMISSIONS / f"epoch_{row['epoch']:03d}.csv"
        scores = evaluate_predictions(submission, test[1])
        runs_row.update({f"test_{score}": scores[score] for score in SCORES})
    return runs_row


def eval_folders(data: str | None) -> dict[str, tuple[Path, Path]]:
    """The (LR, HR) folders of the validation and test splits where the data has them as folders: the game-art
    set's val/ and test/ (test/HR beside test/LR). The demo data has neither (its validation is split off)."""
    from insanesr_dist.data.sources import find

    folders = find(Path(data).expanduser(), 4) if data else None
    found = {}
    if folders is not None and folders.val_lr and folders.val_hr:
        found["val"] = (folders.val_lr, folders.val_hr)
    if folders is not None and folders.test_lr and (folders.test_lr.parent / "HR").is_dir():
        found["test"] = (folders.test_lr, folders.test_lr.parent / "HR")
    return found


def _mean_scores(pairs) -> dict[str, dict[str, float]]:
    """Per baseline kind: mean PSNR, SSIM and JM over (LR, HR) uint8 pairs of the kind's x4 enlargement."""
    from insanesr_dist.scoring.metrics import joint_metric, psnr_ssim
    from insanesr_dist.tools.evaluate import baseline

    pairs = list(pairs)
    means = {}
    for kind in BASELINES:
        psnr, ssim = np.mean([psnr_ssim(baseline(lr, kind), hr)[0].tolist() for lr, hr in pairs], axis=0).tolist()
        means[kind] = {"psnr": psnr, "ssim": ssim, "jm": joint_metric(psnr, ssim)}
    return means


def baseline_scores(data: str | None, seed: int, test: tuple[Path, Path] | None) -> dict[str, dict[str, float]]:
    """Bicubic and bilinear x4 of the validation split that training with `seed` uses (and of the test split,
    where it has HR), scored like the models: per kind, {val,test}_{jm,psnr,ssim}."""
    from insanesr_dist.data import loaders
    from insanesr_dist.data.demo import ensure_demo_data
    from insanesr_dist.data.images import decode_rgb
    from insanesr_dist.data.pairs import some_image_files
    from insanesr_dist.data.splits import load_splits
    from insanesr_dist.data.tensors import to_hwc

    splits = load_splits(data or str(ensure_demo_data()), val_fraction=0.1, seed=seed, say=lambda *_: None)
    images = loaders.EvalImages(splits.val, with_hr=True)
    val = _mean_scores((to_hwc(images[i][1]), to_hwc(images[i][2])) for i in range(len(images)))
    rows = {kind: {f"val_{k}": v for k, v in val[kind].items()} for kind in BASELINES}
    if test is not None:
        lr_dir, hr_dir = test
        read = lambda path: decode_rgb(path.read_bytes(), str(path))  # noqa: E731
        pairs = ((read(lr_dir / p.name), read(p)) for p in some_image_files(hr_dir))
        for kind, scores in _mean_scores(pairs).items():
            rows[kind].update({f"test_{k}": v for k, v in scores.items()})
    return rows


def tta_row(name: str, seed: int, out_dir: Path, folders: dict[str, tuple[Path, Path]]) -> dict[str, object]:
    """`predict --tta` (x8 self-ensemble, float32, whole images) with the final weights of variant `name`'s run
    with `seed`, on each of `folders`, scored by the grader-exact metric."""
    from insanesr_dist.tools.evaluate import evaluate_predictions

    run_dir = out_dir / "runs" / _slug(name) / f"seed_{seed}"
    row: dict[str, object] = {"variant": f"{name} + predict --tta (x8)", "seed": seed, "settings": "--tta"}
    for split, (lr_dir, hr_dir) in folders.items():
        pred = out_dir / "tta" / _slug(name) / f"seed_{seed}" / split
        if pred.exists():
            shutil.rmtree(pred)
        command = [sys.executable, "-m", "insanesr_dist.predict", "--checkpoint", str(run_dir / run_files.LATEST)]
        command += ["--input", str(lr_dir), "--output-dir", str(pred), "--tta", "--tile", "0"]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise UserError(f"predict --tta failed (exit {result.returncode}): {failure_line(result.stderr)}")
        scores = evaluate_predictions(pred, hr_dir)
        row.update({f"{split}_{score}": scores[score] for score in SCORES})
    row["steps"] = read_row(name, {}, run_dir)["steps"]
    return row


def with_gains(row: dict[str, object], bicubic: dict[str, float]) -> dict[str, object]:
    """The row with its JM gains over bicubic x4 of the same images (val_gain, test_gain) where both are known."""
    for split in ("val", "test"):
        if row.get(f"{split}_jm", "") != "" and f"{split}_jm" in bicubic:
            row[f"{split}_gain"] = row[f"{split}_jm"] - bicubic[f"{split}_jm"]
    return row


def summarize(runs: list[dict[str, object]]) -> list[dict[str, object]]:
    """One row per variant (in the order first seen): the mean over its seeds of every score, and the spread
    (max - min over the seeds) of the validation and test JM; blank where a score is missing."""
    by_variant: dict[str, list[dict[str, object]]] = {}
    for run in runs:
        by_variant.setdefault(str(run["variant"]), []).append(run)
    rows = []
    for name, group in by_variant.items():
        row: dict[str, object] = {"variant": name, "seeds": len(group), "steps": group[0].get("steps", "")}
        for column in ("val_jm", "test_jm", "val_gain", "test_gain", "val_psnr", "val_ssim", "samples_per_s"):
            values = [float(r[column]) for r in group if r.get(column, "") != ""]
            row[column] = float(np.mean(values)) if values else ""
            if column in ("val_jm", "test_jm"):
                row[f"{column}_spread"] = max(values) - min(values) if len(values) > 1 else ""
        row["settings"] = group[0].get("settings", "")
        rows.append(row)
    return rows


def _cell(value: object, column: str) -> str:
    if not isinstance(value, float):
        return str(value)
    if column.endswith("ssim"):
        return f"{value:.4f}"
    if column.endswith("gain"):
        return f"{value:+.3f}"
    return f"{value:.3f}" if "jm" in column else f"{value:.2f}"


def _write_csv(path: Path, rows: list[dict[str, object]], columns: list[str]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)


def write_tables(out_dir: Path, runs: list[dict[str, object]], header: str) -> None:
    """runs.csv (every run), study.csv and study.md (per variant: mean and spread over the seeds)."""
    _write_csv(out_dir / "runs.csv", runs, RUN_COLUMNS)
    rows = summarize(runs)
    _write_csv(out_dir / "study.csv", rows, COLUMNS)
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [_cell(row.get(c, ""), c) for c in COLUMNS]
        cells[-1] = f"`{cells[-1]}`" if cells[-1] else ""
        lines.append("| " + " | ".join(cells) + " |")
    write_text_atomic(out_dir / "study.md", "\n".join(lines) + "\n")


def machine() -> str:
    """This machine in words: CPU model, usable cores, and the GPU when there is one."""
    import torch

    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    words = f"{cpu}, {len(os.sched_getaffinity(0))} usable cores"
    return words + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "")


def _seeds(ctx, param, value: str) -> list[int]:
    try:
        seeds = [int(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from None
    if not seeds or len(set(seeds)) < len(seeds):
        raise click.BadParameter(f"{value!r}: give one or more different seeds, e.g. 1,2")
    return seeds


@click.command("study", cls=Command)
@click.option("--data", help="Dataset (as for train). Default: the embedded demo data.")
@click.option(
    "--grid",
    type=click.Choice(list(GRIDS)),
    default="default",
    show_default=True,
    help="default: one factor at a time from --preset default; levers: each lever alone on the seed report's "
    "recipe (the first study's grid).",
)
@click.option(
    "--steps",
    default=600,
    show_default=True,
    type=click.IntRange(1),
    help="Optimizer steps per run.",
)
@click.option(
    "--seeds",
    default="1,2",
    show_default=True,
    callback=_seeds,
    help="Comma-separated training seeds: every variant runs once per seed; the tables show the mean and the "
    "spread (max - min) over them. Without a given validation set the seed also draws the 90:10 split.",
)
@click.option(
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the runs and study.md / study.csv / runs.csv go; a rerun of the same command reuses its finished runs.",
)
@click.option(
    "--variants",
    "only",
    multiple=True,
    type=click.Choice(sorted({*DEFAULT, *LEVERS})),
    help="Run only these variants of the grid (repeatable). Default: all.",
)
@click.option(
    "--tta/--no-tta",
    default=True,
    show_default=True,
    help=f"Add a row for `predict --tta` (x8 self-ensemble) with the final weights of {TTA_VARIANT!r}'s runs "
    "(or of the first variant run), scored on the validation and test folders that have HR (the game-art set's).",
)
@click.option(
    "--train-args",
    default="",
    help='Extra training options for every run, e.g. "--mixed-precision bf16 --num-rrdb 1 --channels 32".',
)
def study_command(
    data: str | None,
    grid: str,
    steps: int,
    seeds: list[int],
    output_dir: Path,
    only: tuple[str, ...],
    tta: bool,
    train_args: str,
) -> None:
    """Run the model-quality grid: every variant once per seed at one step budget, with the mean and spread
    over the seeds, bicubic x4 beside it and the x8 self-ensemble of the default.

    \b
    Example (the game-art set; docs/study.md):
      insanesr-dist make-demo-data game-art/ --kind game-art --num-train 400 --num-val 50 --num-test 50
      insanesr-dist study --data game-art/ --output-dir study --steps 600 --seeds 1,2
    """
    base, variants = GRIDS[grid]
    names = list(dict.fromkeys(only)) or list(variants)
    unknown = [name for name in names if name not in variants]
    if unknown:
        raise UserError(f"--variants {', '.join(unknown)}: not in --grid {grid} (it has: {', '.join(variants)})")
    extra = shlex.split(train_args)
    folders = eval_folders(data)
    test = folders.get("test")
    started, load = time.monotonic(), os.getloadavg()[0]
    header = (
        f"Study (grid {grid}): {steps} steps per run, seeds {','.join(map(str, seeds))}, data "
        f"{data or 'embedded demo'}; extra options: `{train_args}`; {machine()}; load average {load:.1f} at start"
    )
    runs: list[dict[str, object]] = []
    bicubic = {}
    for seed in seeds:
        for kind, scores in baseline_scores(data, seed, test).items():
            if kind == "bicubic":
                bicubic[seed] = scores
            runs.append({"variant": f"{kind} x4 (no training)", "seed": seed, "steps": 0, **scores})
    for name in names:
        for seed in seeds:
            settings = {**base, **variants[name]}
            row = run_variant(
                name, settings, seed=seed, out_dir=output_dir, steps=steps, extra=extra, data=data, test=test
            )
            runs.append(with_gains(row, bicubic[seed]))
            write_tables(output_dir, runs, header)
            shown = f"val JM {row['val_jm']:.3f}" + (f", test JM {row['test_jm']:.3f}" if test else "")
            click.echo(f"[study] {name}, seed {seed}: {shown}  ({time.monotonic() - started:.0f} s so far)", err=True)
    if tta and folders:
        chosen = TTA_VARIANT if TTA_VARIANT in names else names[0]
        for seed in seeds:
            runs.append(with_gains(tta_row(chosen, seed, output_dir, folders), bicubic[seed]))
            write_tables(output_dir, runs, header)
    elif tta:
        click.echo("[study] no --tta row: the data has no validation or test folder with HR images", err=True)
    write_tables(output_dir, runs, header + f", {os.getloadavg()[0]:.1f} at the end")
    click.echo((output_dir / "study.md").read_text())
