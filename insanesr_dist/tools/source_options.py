"""The click options of the commands that read a training source as training does (check-data, pack): the
source's columns and --lr-from-hr, with training's names and defaults."""

from __future__ import annotations

import click

from insanesr_dist.data.degrade import KERNELS


def source_options(lr_from_hr_help: str):
    """A decorator adding --lr-column, --hr-column, --id-column and --lr-from-hr (the command's keyword
    arguments lr_column, hr_column, id_column, lr_from_hr), in this order in its --help."""
    columns = (("--lr-column", "lr", "LR image"), ("--hr-column", "hr", "HR image"), ("--id-column", "id", "id"))
    options = [
        click.option(name, default=default, show_default=True, help=f"As for training: a dataset's {what} column.")
        for name, default, what in columns
    ]
    options.append(click.option("--lr-from-hr", type=click.Choice(KERNELS), default=None, help=lr_from_hr_help))

    def add(command):
        for option in reversed(options):  # as if stacked top to bottom above the command
            command = option(command)
        return command

    return add
