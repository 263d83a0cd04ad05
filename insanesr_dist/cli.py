"""`insanesr-dist`: one command group for everything a user runs besides `accelerate launch`.

Subcommands are imported only when run (or asked for their --help): torch, accelerate and datasets take
over a second to import, which `insanesr-dist --help` and `--version` should not pay.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import click

from insanesr_dist import __version__
from insanesr_dist.commands import Group

# name -> (module:attribute of the click command, the one line `insanesr-dist --help` shows for it)
LAZY_COMMANDS = {
    "train": ("insanesr_dist.train:main", "Train InsaneSRNet (one process; accelerate launch for more)."),
    "predict": ("insanesr_dist.predict:main", "Upscale LR images x4: PNG files and/or a submission CSV."),
    "evaluate": (
        "insanesr_dist.tools.evaluate:evaluate_command",
        "Score predictions against HR images (grader-exact JM).",
    ),
    "check-submission": (
        "insanesr_dist.scoring.submission:check_submission_command",
        "Check a submission CSV before uploading it.",
    ),
    "visualize": ("insanesr_dist.tools.visualize:visualize_command", "Draw LR | prediction | ground truth panels."),
    "export": (
        "insanesr_dist.tools.export:export_command",
        "Write a model folder to share (config.json, model.safetensors, model card; --onnx).",
    ),
    "bench": ("insanesr_dist.tools.bench:bench", "Measure speed and peak memory (from a source checkout)."),
    "check-data": (
        "insanesr_dist.tools.check_data:check_data_command",
        "List every problem of a dataset (one line per file) before training on it.",
    ),
    "pack": (
        "insanesr_dist.tools.pack:pack_command",
        "Pack a dataset into parquet shards of sub-images for streaming (--streaming).",
    ),
    "study": (
        "insanesr_dist.tools.study:study_command",
        "Model-quality grid: each recipe lever alone and the default preset, at one step budget.",
    ),
}


class LazyGroup(Group):
    """A click group whose LAZY_COMMANDS are imported on first use (a UserError shows as one line: commands.py)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in self.commands and name in LAZY_COMMANDS:
            module, attribute = LAZY_COMMANDS[name][0].split(":")
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The listing uses the stored one-liners, so it imports nothing.
        rows = [
            (
                name,
                LAZY_COMMANDS[name][1]
                if name in LAZY_COMMANDS and name not in self.commands
                else self.commands[name].get_short_help_str(formatter.width),
            )
            for name in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="insanesr-dist")
def cli() -> None:
    """Distributed training toolkit for x4 super-resolution of gaming images (InsaneSRNet).

    `insanesr-dist COMMAND --help` shows each command's options and examples.

    \b
    Train (one process, or many with accelerate), watch it:
      insanesr-dist train --epochs 2 --output-dir runs/x
      accelerate launch --multi_gpu --num_processes 2 -m insanesr_dist.train --output-dir runs/x
      tensorboard --logdir runs/
    Score a submission:
      insanesr-dist evaluate --pred runs/x/submissions/epoch_002.csv --hr DIR/HR
    Predict, check and look:
      insanesr-dist predict --checkpoint runs/x/best.safetensors --input DIR/test/LR --csv submission.csv
      insanesr-dist check-submission submission.csv --lr-dir DIR/test/LR
      insanesr-dist visualize --checkpoint runs/x/best.safetensors --lr-dir DIR/LR --hr DIR/HR --output-dir panels
    Share the model (Hugging Face-style folder; ONNX for game engines and chaiNNer):
      insanesr-dist export runs/x models/x --onnx
    """


class HrSize(click.ParamType):
    """`N` (square) or `WxH`, both edges multiples of 4 and at least 16 -> (height, width)."""

    name = "N|WxH"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        # numpy and cv2: imported only when the command runs, never for `insanesr-dist --help`.
        from insanesr_dist.data.demo import parse_size

        try:
            return parse_size(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


@cli.command("make-demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(["procedural", "game-art"]),
    default="procedural",
    show_default=True,
    help="procedural: the embedded demo frames (drawn by code); game-art: scenes composited from the CC0 "
    "Kenney.nl art the arcade wheel on PyPI ships, with a val split and HR for the test split (docs/study.md).",
)
@click.option("--num-train", default=200, show_default=True, type=click.IntRange(2), help="Training pairs.")
@click.option(
    "--num-val",
    default=None,
    type=click.IntRange(0),
    show_default="20",
    help="game-art: validation pairs (val/HR, val/LR). The procedural set has none: training holds out 10% of train.",
)
@click.option(
    "--num-test",
    default=20,
    show_default=True,
    type=click.IntRange(0),
    help="Test images: LR only (procedural), LR and HR (game-art).",
)
@click.option(
    "--hr-size",
    default="256",
    show_default=True,
    type=HrSize(),
    metavar="N|WxH",
    help="HR size: N (square) or WxH, e.g. 2040x1344 (DIV2K); edges multiples of 4, at least 16.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Generator seed.")
@click.option(
    "--wheel",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="game-art: the arcade wheel to read the art from (pip download --no-deps arcade==3.3.3). "
    "Default: that wheel, downloaded once with pip into ~/.cache/insanesr-dist/wheels.",
)
@click.option(
    "--workers",
    default=None,
    show_default="usable cores",
    type=click.IntRange(1),
    help="Processes drawing frames (the files are the same for any number).",
)
def make_demo_data(
    out_dir: Path,
    kind: str,
    num_train: int,
    num_val: int | None,
    num_test: int,
    hr_size: tuple[int, int],
    seed: int,
    wheel: Path | None,
    workers: int | None,
) -> None:
    """Write a demo dataset to OUT_DIR: the embedded procedural frames (train/LR, train/HR, test/LR), or with
    --kind game-art scenes of real CC0 game art (train, val and test, each HR and LR, plus README.txt and
    LICENSE.txt naming the art's source and licence).

    Training without --data uses the procedural data (generated once into ~/.cache/insanesr-dist).
    With --hr-size WxH it draws wide frames, e.g. DIV2K-sized ones (HR 2040x1344, LR 510x336) to
    measure the data path at real size.

    \b
    Examples:
      insanesr-dist make-demo-data demo/
      insanesr-dist make-demo-data demo-small/ --num-train 40 --num-test 5 --hr-size 128
      insanesr-dist train --data demo-small/ --epochs 2
      insanesr-dist make-demo-data div2k-like/ --num-train 800 --num-test 100 --hr-size 2040x1344
      insanesr-dist make-demo-data game-art/ --kind game-art --num-train 400 --num-val 50 --num-test 50
    """
    import os

    from insanesr_dist.errors import UserError

    workers = workers or len(os.sched_getaffinity(0))
    if kind == "procedural" and (num_val is not None or wheel is not None):
        raise click.UsageError("--num-val and --wheel are for --kind game-art")
    try:
        if kind == "game-art":
            from insanesr_dist.data.game_art import write_game_art

            num_val = 20 if num_val is None else num_val
            write_game_art(
                out_dir,
                wheel=wheel,
                num_train=num_train,
                num_val=num_val,
                num_test=num_test,
                hr_size=hr_size,
                seed=seed,
                workers=workers,
            )
        else:
            from insanesr_dist.data.demo import write_demo_data

            write_demo_data(
                out_dir, num_train=num_train, num_test=num_test, hr_size=hr_size, seed=seed, workers=workers
            )
    except FileExistsError as e:
        raise UserError(str(e)) from None
    val = f", {num_val} validation pairs" if kind == "game-art" else ""
    click.echo(
        f"wrote {num_train} training pairs{val} and {num_test} test images (HR {hr_size[1]}x{hr_size[0]}) to {out_dir}"
    )


if __name__ == "__main__":
    cli()
