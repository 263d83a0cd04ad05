"""`insanesr-dist study`: the model-quality grid behind `--preset default`.

Each variant is one real training run (`python -m insanesr_dist.train`, a fresh process) at the same
optimizer-step budget, on the demo data or `--data`, with the same pixels per step, so every variant costs
about the same compute per step. The table (markdown + CSV) holds each variant's validation JM, PSNR and
SSIM after the budget (EMA weights where EMA is on, as training saves them), its best JM, and its
measured training samples/s, plus the bicubic and bilinear x4 enlargements of the same validation LR images.
"""

from __future__ import annotations

import csv
import json
import shlex
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

# The base is the seed report's recipe on 32x32 LR crops, batch 16; each lever below changes one thing,
# "default" combines the winners, and the last rows take one lever out of it again. Full images (the seed's way)
# appear as a patch/batch variant with the same LR pixels per step on the demo data (64x64 LR images, batch 4 =
# 32x32 crops, batch 16).
BASE = dict(preset="report", patch_size=32, batch_size=16)
VARIANTS: dict[str, dict[str, object]] = {
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
COLUMNS = ["variant", "steps", "jm", "psnr", "ssim", "best_jm", "samples_per_s", "train_seconds", "settings"]


def _train_args(settings: dict[str, object]) -> list[str]:
    args = []
    for name, value in settings.items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def run_variant(
    name: str, settings: dict[str, object], *, out_dir: Path, steps: int, extra: list[str], data: str | None
) -> dict[str, object]:
    """Train one variant for `steps` optimizer steps in a fresh process; its row of the table."""
    run_dir = out_dir / "runs" / "".join(c if c.isalnum() else "_" for c in name).strip("_")
    merged = {**BASE, **settings}
    command = [
        sys.executable,
        "-m",
        "insanesr_dist.train",
        *_train_args(merged),
        "--max-steps",
        str(steps),
        "--epochs",
        "1000",
        "--output-dir",
        str(run_dir),
        "--panel-images",
        "0",
        *extra,
    ]
    if data:
        command += ["--data", data]
    click.echo(f"[study] {name}: {shlex.join(command[3:])}", err=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise UserError(
            f"study variant {name!r} failed (exit {result.returncode}): {failure_line(result.stderr, 'no output')}"
        )
    return read_row(name, merged, run_dir)


def read_row(name: str, settings: dict[str, object], run_dir: Path) -> dict[str, object]:
    """A finished variant's row from its run directory's metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / run_files.METRICS).read_text().splitlines()]
    last = records[-1]
    seconds = sum(r["seconds"] for r in records)
    samples = sum(r["samples_per_s"] * r["seconds"] for r in records)
    shown = {k: v for k, v in settings.items() if v is not None}
    return {
        "variant": name,
        "steps": last["step"],
        "jm": last["jm"],
        "psnr": last["psnr"],
        "ssim": last["ssim"],
        "best_jm": max(r["jm"] for r in records if "jm" in r),
        "samples_per_s": samples / seconds,
        "train_seconds": seconds,
        "settings": " ".join(_train_args(shown)),
    }


def baseline_rows(data: str | None, seed: int = 0, val_fraction: float = 0.1) -> list[dict[str, object]]:
    """Bicubic and bilinear x4 of the validation LR images (the split training uses), scored like the models."""
    from insanesr_dist.data import loaders
    from insanesr_dist.data.demo import ensure_demo_data
    from insanesr_dist.data.splits import load_splits
    from insanesr_dist.data.tensors import to_hwc
    from insanesr_dist.scoring.metrics import joint_metric, psnr_ssim
    from insanesr_dist.tools.evaluate import BASELINES, baseline

    splits = load_splits(data or str(ensure_demo_data()), val_fraction=val_fraction, seed=seed, say=lambda *_: None)
    images = loaders.EvalImages(splits.val, with_hr=True)
    rows = []
    for kind in BASELINES:
        scores = []
        for i in range(len(images)):
            _, lr, hr = images[i]
            up = baseline(to_hwc(lr), kind)
            scores.append(psnr_ssim(up, to_hwc(hr))[0].tolist())
        psnr, ssim = np.mean(scores, axis=0).tolist()
        rows.append(
            {
                "variant": f"{kind} x4 (no training)",
                "steps": 0,
                "jm": joint_metric(psnr, ssim),
                "psnr": psnr,
                "ssim": ssim,
                "best_jm": "",
                "samples_per_s": "",
                "train_seconds": "",
                "settings": "",
            }
        )
    return rows


def _cell(value: object, column: str) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if column == "ssim" else f"{value:.2f}" if column != "jm" else f"{value:.3f}"
    return str(value)


def write_tables(out_dir: Path, rows: list[dict[str, object]], header: str) -> None:
    with atomic_path(out_dir / "study.csv") as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [_cell(row[c], c) for c in COLUMNS]
        cells[-1] = f"`{cells[-1]}`" if cells[-1] else ""
        lines.append("| " + " | ".join(cells) + " |")
    write_text_atomic(out_dir / "study.md", "\n".join(lines) + "\n")


@click.command("study", cls=Command)
@click.option("--data", help="Dataset (as for train). Default: the embedded demo data.")
@click.option(
    "--steps",
    default=110,
    show_default=True,
    type=click.IntRange(1),
    help="Optimizer steps per variant (110 = the default run on the demo data: 10 epochs of 11 steps).",
)
@click.option(
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the runs and study.md / study.csv go.",
)
@click.option(
    "--variants",
    "only",
    multiple=True,
    type=click.Choice(list(VARIANTS)),
    help="Run only these variants (repeatable). Default: all.",
)
@click.option(
    "--train-args",
    default="",
    help='Extra training options for every variant, e.g. "--mixed-precision bf16 --num-rrdb 1 --channels 32".',
)
def study_command(data: str | None, steps: int, output_dir: Path, only: tuple[str, ...], train_args: str) -> None:
    """Run the model-quality grid: every lever alone on the seed recipe, and the default preset, at one step budget.

    \b
    Example (the table in docs/study.md):
      insanesr-dist study --output-dir study --train-args "--mixed-precision bf16"
    """
    if (output_dir / "study.csv").exists():
        raise UserError(f"{output_dir}: already holds a study; choose another --output-dir")
    extra = shlex.split(train_args)
    started = time.monotonic()
    rows = baseline_rows(data)
    for name in only or VARIANTS:
        rows.append(run_variant(name, VARIANTS[name], out_dir=output_dir, steps=steps, extra=extra, data=data))
        write_tables(output_dir, rows, f"Study: {steps} steps per variant; extra options: `{train_args}`")
        click.echo(f"[study] {name}: JM {rows[-1]['jm']:.3f}  ({time.monotonic() - started:.0f} s so far)", err=True)
    click.echo((output_dir / "study.md").read_text())
