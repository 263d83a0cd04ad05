"""`insanesr-dist`: one command group for everything a user runs besides `accelerate launch`."""

from __future__ import annotations

from pathlib import Path

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="insanesr-dist")
def cli() -> None:
    """Distributed training toolkit for x4 super-resolution of gaming images (InsaneSRNet).

    \b
    Train (one process, or many with accelerate):
      insanesr-dist train --epochs 2
      accelerate launch --multi_gpu --num_processes 2 -m insanesr_dist.train
    Score a submission:
      insanesr-dist evaluate --pred runs/x/submissions/epoch_002.csv --hr DIR/HR
    """


@cli.command("make-demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--num-train", default=200, show_default=True, type=click.IntRange(2), help="Training pairs.")
@click.option("--num-test", default=20, show_default=True, type=click.IntRange(0), help="LR-only test images.")
@click.option("--hr-size", default=256, show_default=True, type=click.IntRange(16), help="HR edge (multiple of 4).")
@click.option("--seed", default=0, show_default=True, type=int, help="Generator seed.")
def make_demo_data(out_dir: Path, num_train: int, num_test: int, hr_size: int, seed: int) -> None:
    """Write the embedded procedural demo dataset (train/LR, train/HR, test/LR) to OUT_DIR."""
    from .demo_data import write_demo_data

    if hr_size % 4:
        raise click.BadParameter("must be a multiple of 4", param_hint="--hr-size")
    try:
        write_demo_data(out_dir, num_train=num_train, num_test=num_test, hr_size=hr_size, seed=seed)
    except FileExistsError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {num_train} training pairs and {num_test} test images to {out_dir}")


def _register() -> None:
    from .evaluate import evaluate_command
    from .train import main as train_command

    cli.add_command(train_command, "train")
    cli.add_command(evaluate_command, "evaluate")


_register()

if __name__ == "__main__":
    cli()
