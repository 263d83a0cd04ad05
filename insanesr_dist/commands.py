"""The click classes every insanesr-dist command is declared with (`cls=Command`, `cls=Group`): a UserError
raised while the command parses its options or runs is shown the way click shows its own errors, one
`Error: <message>` line on stderr and exit status 1, with no traceback.

The mapping sits on the commands themselves, not on the `insanesr-dist` group, because each command is also run
alone: `python -m insanesr_dist.train` (and `accelerate launch -m ...`), `python -m insanesr_dist.predict`,
`python -m insanesr_dist.tools.gpu_checks`, and tests calling a command through click's CliRunner. UserError
(errors.py) knows nothing of click; this module is the one place that turns it into click's error.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

from insanesr_dist.errors import UserError


@contextlib.contextmanager
def _shown_by_click() -> Iterator[None]:
    try:
        yield
    except UserError as e:
        error = click.ClickException(e.message)
        error.exit_code = e.exit_code
        raise error from None


class _ShowsUserErrors:
    """Both places a command's own code runs: parsing (option types and callbacks) and the command itself."""

    def make_context(self, info_name, args, parent=None, **extra) -> click.Context:
        with _shown_by_click():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context):
        with _shown_by_click():
            return super().invoke(ctx)


class Command(_ShowsUserErrors, click.Command):
    """A click command that shows a UserError as `Error: <message>` and exits 1."""


class Group(_ShowsUserErrors, click.Group):
    """A click group whose own code and subcommands show a UserError as `Error: <message>` and exit 1;
    `@group.command()` and `@group.group()` make Command and Group."""

    command_class = Command
    group_class = type  # subgroups are of this same class
