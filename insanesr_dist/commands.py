"""The click classes every insanesr-dist command is declared with (`cls=Command`, `cls=Group`): a UserError
raised while the command parses its options or runs is shown the way click shows its own errors, one
`Error: <message>` line on stderr and exit status 1, with no traceback.

The mapping sits on the commands themselves, not on the `insanesr-dist` group, because each command is also run
alone: `python -m insanesr_dist.train` (and `accelerate launch -m ...`), `python -m insanesr_dist.predict`,
the benchmark scripts of a checkout, and tests calling a command through click's CliRunner. UserError
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


class RenamedOption(click.Option):
    """An option that still accepts its former names for a release (`old_names=["--lr"]`): not shown by --help,
    and using one prints one deprecation line on stderr, then works as the new name.

    `insanesr-dist evaluate --lr DIR` meant a folder of LR images, while `train --lr` is the learning rate; the
    folder options are now `--lr-dir` everywhere, as training's own.
    """

    def __init__(self, *args, old_names: list[str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.old_names = list(old_names)

    @property
    def _old_dest(self) -> str:
        return f"{self.name} (as {'/'.join(self.old_names)})"

    def add_to_parser(self, parser, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        # The former names go to a slot of their own, so that consume_value knows they were used.
        parser.add_option(obj=self, opts=self.old_names, dest=self._old_dest, action="store", nargs=self.nargs)

    def consume_value(self, ctx: click.Context, opts):
        if self.name not in opts and self._old_dest in opts:
            if not ctx.resilient_parsing:
                click.echo(
                    f"{'/'.join(self.old_names)} is deprecated and will be removed; use {self.opts[0]} "
                    "(the same folder)",
                    err=True,
                )
            opts = {**opts, self.name: opts[self._old_dest]}
        return super().consume_value(ctx, opts)


class AliasedChoice(click.Choice):
    """A click.Choice that also accepts former names of its choices (`aliases`: former -> current), as the
    choice each names now; --help lists the current names only."""

    def __init__(self, choices, aliases: dict[str, str]) -> None:
        super().__init__(list(choices))
        self.aliases = dict(aliases)

    def convert(self, value, param, ctx):
        return super().convert(self.aliases.get(value, value), param, ctx)
