"""`insanesr-dist bench ...`: the benchmarks of a source checkout (`benchmarks/bench.py`), run with this Python.

The benchmark and acceptance harnesses are not part of the installed package: they measure it from outside, as
scripts beside it in the repository. This command finds them there (an editable install or a checkout on the
path); an installed wheel has none and says so in one line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click

from insanesr_dist.commands import Command
from insanesr_dist.errors import UserError

# The repository holding this package's folder: where a checkout keeps the benchmark scripts.
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench.py"


@click.command(
    "bench",
    cls=Command,
    add_help_option=False,  # `bench --help` is the script's: its subcommands and options
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Measure speed and peak memory (train, data, stream-training, metric, predict, ema), from a source checkout."""
    if not SCRIPT.is_file():
        raise UserError(
            "the benchmarks run from a source checkout (benchmarks/bench.py beside the insanesr_dist folder); "
            "this installation has none: clone the repository and run `insanesr-dist bench` from an editable "
            "install, or `python benchmarks/bench.py`"
        )
    raise SystemExit(subprocess.run([sys.executable, str(SCRIPT), *args]).returncode)
